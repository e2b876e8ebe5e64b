"""What the full and the layerwise paths share: the run's typed context, the pre-flight that picks
the mode, the "plans + calibration" step, and `finish_variant` (tokenizer, recipe, verification,
manifest of one written checkpoint)."""

from __future__ import annotations

import resource
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantkit.backends import backend_for_format
from quantkit.errors import UsageError, VerificationError
from quantkit.progress import Reporter
from quantkit.quantize.options import QuantizeOptions, VariantResult
from quantkit.recipe import Recipe

__all__ = ["Context", "preflight", "plans_and_calibration", "finish_variant", "converted_variant", "cuda",
           "warm_cuda", "expandable_segments"]


@dataclass
class Context:
    """One quantize run: the recipe with the options applied, the formats and their backends and
    output directories, the local source and the pre-flight's decision."""
    recipe: Recipe
    opts: QuantizeOptions
    formats: list[str]
    backends: dict[str, Any]  # format -> Backend
    outs: dict[str, Path]  # format -> final output directory
    base_out: Path
    local: Path
    preflight: dict
    reporter: Reporter
    t0: float
    stable_scales: bool = False  # per-tensor scales made reciprocal-stable (other formats convert from it)
    # the hidden calibrated checkpoint of one calibration for several formats: its manifest is
    # written after the first conversion, which hashes its files as it reads them (no second pass
    # over gigabytes), and before it is renamed to its output (--format both) or removed
    defer_manifest: bool = False
    plans: dict = field(default_factory=dict)  # format -> Plan, once planned
    health: dict = field(default_factory=dict)  # format -> calib_health.Health, once calibrated

    def resolved_recipe(self) -> dict:
        resolved = self.recipe.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.opts.exclude:
            resolved["exclude"] = resolved.get("exclude", []) + [
                {"pattern": p, "reason": "excluded on the command line (--exclude)"} for p in self.opts.exclude]
        return resolved


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def expandable_segments() -> None:
    """The CUDA caching allocator grows by mapping more memory into its segments instead of
    reserving a new segment per new size, unless the user configured it (PYTORCH_CUDA_ALLOC_CONF):
    the first calibration forward of a 7.24B model (64 x 1024 tokens) took 2.86 s instead of 1.87 s
    on the H200 machine, 2.16 s with this (bench/formats.md), and calibration batches fragment less.
    In this process only: the engines quantkit starts later get the environment unchanged.
    Set where quantize starts (`warm_cuda`), before the process's first CUDA allocation."""
    import os

    import torch

    if any(k in os.environ for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")):
        return
    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except Exception:  # noqa: BLE001 - best effort: a torch without the setting keeps its default allocator
        pass


def warm_cuda() -> threading.Thread | None:
    """Where there is a GPU: create the CUDA context and cuBLAS's handle in a daemon thread while
    the main thread imports transformers, reads the config and plans (seconds, cold), instead of in
    the load and the first calibration forward. torch's lazy CUDA init is thread-safe (a CUDA call
    of the main thread waits for it). Best effort: an error here is left to surface where CUDA is
    used for real. Returns the thread (tests join it), None without a GPU."""
    if not cuda():
        return None
    expandable_segments()  # in this thread: before any allocation, and not while the other one runs

    def work() -> None:
        try:
            import torch

            torch.cuda.init()
            x = torch.ones(64, 64, device="cuda", dtype=torch.bfloat16)
            (x @ x).sum().item()
        except Exception:  # noqa: BLE001 - the load reports a broken CUDA with its own message
            pass

    t = threading.Thread(target=work, name="quantkit-warm-cuda", daemon=True)
    t.start()
    return t


def preflight(recipe: Recipe, opts: QuantizeOptions, formats: list[str], config: Any, reporter: Reporter) -> tuple[str, dict]:
    """The mode (full or layerwise) for this model, these formats and the memory there is."""
    from quantkit.modules import meta_model, param_stats
    from quantkit.stream.preflight import choose_mode, estimate

    if opts.mode not in ("auto", "full", "layerwise"):
        raise UsageError(f"unknown mode {opts.mode!r}", hint="use --mode auto, full or layerwise")
    meta = meta_model(config)
    total, _ = param_stats(meta)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tokens = recipe.calibration.samples * recipe.calibration.seq_len
    est = estimate(meta, total, len(formats), tokens, int(getattr(text, "hidden_size", 0) or 0), cuda())
    limit, source = _memory_limit(opts)
    requested = opts.mode
    if opts.mode == "auto":  # --nproc places the whole model on the GPUs; --resume continues a layerwise run
        requested = "full" if opts.nproc > 1 else "layerwise" if opts.resume else "auto"
    if opts.resume and requested == "full":
        raise UsageError("--resume works with --mode layerwise only", hint="drop --mode full, or drop --resume")
    mode = choose_mode(requested, est, limit, source)
    e = est[mode]
    reporter.stage("pre-flight", f"mode {mode}: ~{e.peak_bytes / 2**30:.1f} GiB peak, ~{e.seconds:.0f} s "
                   f"({source} {limit / 2**30:.1f} GiB; full ~{est['full'].peak_bytes / 2**30:.1f} GiB)")
    return mode, {"mode": mode, "limit_bytes": limit, "limit_source": source,
                  "estimates": {k: v.to_dict() for k, v in est.items()}}


def _memory_limit(opts: QuantizeOptions) -> tuple[int, str]:
    from quantkit.stream.preflight import available_memory

    if opts.nproc > 1:  # the weights go straight to the GPUs
        import torch

        return sum(torch.cuda.mem_get_info(i)[0] for i in range(opts.nproc)), f"free memory of {opts.nproc} GPUs"
    if opts.max_memory:
        return opts.max_memory, "--max-memory"
    return available_memory(), "available memory"


def plans_and_calibration(ctx: Context, config: Any, tok: Any, model: Any = None) -> tuple[dict, Any]:
    """One plan per format (on `model`, or on a meta-device model of `config`) and the calibration
    set, batched for this machine. Mixed precision (full mode only) measures on `model`."""
    from quantkit.calib import build_calibration
    from quantkit.plan import build_plan

    recipe, opts, rep = ctx.recipe, ctx.opts, ctx.reporter
    plans = {f: build_plan(config, model_source=recipe.model.source, backend=backend_for_format(f),
                           scheme=recipe.scheme, recipe_rules=recipe.patterns(), cli_patterns=opts.exclude,
                           family=recipe.family, strict=opts.strict, model=model) for f in ctx.formats}
    for w in plans[ctx.formats[0]].warnings:
        rep.info(f"warning: {w}")
    if recipe.mixed_precision is not None:
        from quantkit.sensitivity import apply_mixed_precision

        plans = apply_mixed_precision(plans, model, tok, recipe, rep)
    c = recipe.calibration
    rep.stage("calibration data", c.dataset)
    calib = build_calibration(tok, c.dataset, c.samples, c.seq_len, c.seed)
    calib.batch_size = c.resolved_batch_size(cuda())
    if len(calib.input_ids) < c.samples:
        rep.info(f"note: {c.dataset} has {len(calib.input_ids)} samples; {c.samples} were asked for")
    ctx.plans = plans
    return plans, calib


def finish_variant(ctx: Context, tmp: Path, fmt: str, plan: Any, calib: Any, tok: Any, timings: dict,
                   native_config: Any, t_start: float, run_extra: dict | None = None) -> VariantResult:
    """Tokenizer, recipe, verification and manifest for one written checkpoint in `tmp`."""
    from quantkit.backends.base import timed
    from quantkit.checkpoint.verify import verify_checkpoint

    reporter, local = ctx.reporter, ctx.local
    resolved = ctx.resolved_recipe()
    tok.save_pretrained(tmp)
    if (local / "generation_config.json").is_file() and not (tmp / "generation_config.json").is_file():
        shutil.copy2(local / "generation_config.json", tmp / "generation_config.json")
    (tmp / "quantkit-recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    if ctx.stable_scales:  # <= 1 ulp, so that the formats converted from this one serve identical numbers
        from quantkit.convert import make_reciprocal_stable

        with timed(timings, "stable_scales"):
            moved = make_reciprocal_stable(tmp, fmt)
        native = native_config if isinstance(native_config, dict) else {"native": native_config}
        native_config = {**native, "reciprocal_stable_scales_moved": moved}
    reporter.stage(f"verify [{fmt}]")
    with timed(timings, "verify"):
        report = verify_checkpoint(tmp, plan, fmt, source=local)
    for fix in report.fixes:
        reporter.info(f"fixed: {fix}")
    for w in report.warnings:
        reporter.info(f"warning: {w}")
    manifest = _manifest(ctx, tmp, fmt, plan, calib, report, resolved, timings, native_config, t_start, run_extra)
    return VariantResult(fmt, ctx.backends[fmt].name, ctx.outs[fmt], manifest, timings, _peak_rss(),
                         report.fp4_modules, len(plan.kept), _dir_bytes(tmp), plan.source_bytes)


def _manifest(ctx: Context, tmp: Path, fmt: str, plan: Any, calib: Any, report: Any, resolved: dict, timings: dict,
              native_config: Any, t_start: float, run_extra: dict | None) -> dict:
    from quantkit.checkpoint.manifest import numerics, write_manifest

    recipe = ctx.recipe
    body = {
        "format": fmt, "backend": ctx.backends[fmt].name, "scheme": recipe.scheme,
        "backend_config": native_config,
        "source": {"model": recipe.model.source, "revision": recipe.model.revision, "local_path": str(ctx.local)},
        "recipe": resolved,
        "plan": {**plan.to_dict()["summary"], "families": plan.families, "model_type": plan.model_type,
                 "architecture": plan.architecture,
                 "kept": [{"module": d.module.name, "reason": d.reason, "source": d.source} for d in plan.kept],
                 "rules": [r.to_dict() for r in plan.rules if r.source in ("cli", "recipe")]},
        "calibration": calib.describe(),
        **({"calibration_health": ctx.health[fmt].entry(tmp, recipe.scheme, ctx.reporter)} if fmt in ctx.health else {}),
        "verification": report.to_dict(),
        "run": {"timings_s": timings, "peak_rss_bytes": _peak_rss(), **_gpu_stats(), "numerics": numerics(),
                "wall_s": round(time.perf_counter() - t_start, 3), "preflight": ctx.preflight, **(run_extra or {})},
    }
    return body if ctx.defer_manifest else write_manifest(tmp, body)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gpu_stats() -> dict:
    if not cuda():
        return {"device": "cpu"}
    import torch

    return {"device": torch.cuda.get_device_name(0), "peak_gpu_bytes": torch.cuda.max_memory_allocated()}


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*.safetensors"))


def converted_variant(ctx: Context, primary: VariantResult, fmt: str) -> VariantResult:
    """Format `fmt` written from the calibrated `primary` checkpoint by conversion (same FP4 codes
    and scales; quantkit.convert), verified against the plan and with its own manifest."""
    import dataclasses

    from quantkit.backends.base import timed
    from quantkit.checkpoint.atomic import atomic_dir
    from quantkit.checkpoint.formats import get_format
    from quantkit.checkpoint.verify import verify_checkpoint
    from quantkit.convert import convert_tensors, metadata_lists, write_metadata

    src, dst = get_format(primary.format), get_format(fmt)
    plan = dataclasses.replace(ctx.plans[primary.format], backend=backend_for_format(fmt))
    ctx.reporter.stage(f"convert [{primary.format} -> {fmt}]", "same FP4 codes and scales, no second calibration")
    t_start, timings = time.perf_counter(), {}
    deferred = "content_hash" not in primary.manifest  # ctx.defer_manifest: written below, hashes known
    with atomic_dir(ctx.outs[fmt], overwrite=ctx.opts.overwrite) as tmp:
        with timed(timings, "convert"):
            modules, inexact = convert_tensors(primary.path, tmp, src, dst, hash_source=deferred)
            exact, patterns = metadata_lists(primary.path, src)
            kept = [d.module.name for d in plan.kept if d.module.kind in ("linear", "experts") and d.precision == "bf16"]
            used = {d.rule for d in plan.kept if d.rule}
            write_metadata(primary.path, tmp, dst, list(dict.fromkeys(kept + exact)),
                           patterns + [r.pattern for r in plan.rules if r.pattern.raw in used])
        if inexact:
            raise VerificationError(f"{inexact} per-tensor scales of {primary.format} would not convert exactly",
                                    hint="a quantkit bug: the source was made reciprocal-stable; run with --debug and report it")
        with timed(timings, "verify"):
            report = verify_checkpoint(tmp, plan, fmt, source=ctx.local)
        from quantkit.checkpoint.manifest import write_manifest

        if deferred:
            primary.manifest = write_manifest(primary.path, primary.manifest)
        body = {**primary.manifest, "format": fmt, "verification": report.to_dict(),
                "converted_from": {"format": primary.format, "content_hash": primary.manifest.get("content_hash")},
                "conversion": {"nvfp4_linears": modules, "inexact_scales": inexact},
                "run": {**primary.manifest.get("run", {}), "timings_s": timings,
                        "calibration_timings_s": primary.timings, "wall_s": round(time.perf_counter() - t_start, 3)}}
        for k in ("schema", "created", "versions", "files", "content_hash"):
            body.pop(k, None)
        manifest = write_manifest(tmp, body)
        return VariantResult(fmt, primary.backend, ctx.outs[fmt], manifest, timings, _peak_rss(),
                             report.fp4_modules, len(plan.kept), _dir_bytes(tmp), plan.source_bytes)
