"""The quantize pipeline: recipe -> plan -> load -> calibration -> backend -> verify ->
manifest -> atomic rename. An interrupted or failed run leaves nothing at --out."""

from __future__ import annotations

import copy
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantkit.atomic import atomic_dir
from quantkit.errors import QuantkitError, RecipeError
from quantkit.progress import SILENT, Reporter
from quantkit.recipe import FORMAT_BACKEND, Recipe

__all__ = ["QuantizeOptions", "VariantResult", "quantize", "atomic_dir", "FORMAT_DIRS", "parse_format"]

FORMAT_DIRS = {"modelopt": "modelopt", "compressed-tensors": "ct"}
_FORMAT_ALIASES = {"modelopt": ["modelopt"], "compressed-tensors": ["compressed-tensors"], "ct": ["compressed-tensors"],
                   "both": ["modelopt", "compressed-tensors"]}


def parse_format(value: str) -> list[str]:
    try:
        return list(_FORMAT_ALIASES[value])
    except KeyError:
        raise RecipeError(f"unknown format {value!r}; use modelopt, compressed-tensors (ct) or both",
                          hint="e.g. --format both") from None


@dataclass
class QuantizeOptions:
    formats: list[str] | None = None
    backend: str | None = None
    exclude: list[str] = field(default_factory=list)
    out: Path | None = None
    overwrite: bool = False
    strict: bool = False
    samples: int | None = None
    seq_len: int | None = None
    model: str | None = None
    algorithm: str | None = None
    mode: str = "auto"  # auto | full | layerwise
    max_memory: int | None = None  # bytes; default: the memory available now
    resume: bool = False
    nproc: int = 1  # GPUs the model is placed across (accelerate device_map, ModelOpt backend)


@dataclass
class VariantResult:
    format: str
    backend: str
    path: Path
    manifest: dict
    timings: dict[str, float]
    peak_rss_bytes: int
    fp4_modules: int
    kept_modules: int
    size_bytes: int
    source_bytes: int


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resolve_formats(recipe: Recipe, opts: QuantizeOptions) -> list[str]:
    if opts.formats:
        formats = opts.formats
    elif opts.backend:
        formats = [f for f, b in FORMAT_BACKEND.items() if b == opts.backend]
    else:
        formats = recipe.resolved_formats()
    if opts.backend and any(FORMAT_BACKEND[f] != opts.backend for f in formats):
        raise RecipeError(f"--backend {opts.backend} cannot write format(s) {', '.join(formats)}",
                          hint="modelopt writes modelopt, llmcompressor writes compressed-tensors; use --format both for both")
    return formats


def apply_options(recipe: Recipe, opts: QuantizeOptions) -> Recipe:
    r = recipe.model_copy(deep=True)
    if opts.model:
        r.model.source = opts.model
    if opts.samples:
        r.calibration.samples = opts.samples
    if opts.seq_len:
        r.calibration.seq_len = opts.seq_len
    if opts.algorithm:
        r.calibration.algorithm = opts.algorithm
    return r


def _load(local: Path, recipe: Recipe, reporter: Reporter, nproc: int = 1):
    import torch
    from transformers import AutoTokenizer

    from quantkit.modules import model_class_for
    from quantkit.source import load_config

    config = load_config(str(local), trust_remote_code=recipe.model.trust_remote_code)
    reporter.stage("load", f"{local}" + (f" across {nproc} GPUs (accelerate device_map)" if nproc > 1 else ""))
    cls, trc = model_class_for(config), recipe.model.trust_remote_code
    # the tokenizer (33 MB of JSON for Gemma) parses in a thread while the weights load
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1)
    tok_future = pool.submit(AutoTokenizer.from_pretrained, str(local), trust_remote_code=trc)
    if nproc > 1:  # accelerate's big-model placement: consecutive layers on consecutive GPUs
        budget = {i: int(torch.cuda.mem_get_info(i)[0] * 0.85) for i in range(nproc)}
        model = cls.from_pretrained(str(local), dtype=torch.bfloat16, trust_remote_code=trc, device_map="balanced",
                                    max_memory=budget).eval()
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = cls.from_pretrained(str(local), dtype=torch.bfloat16, trust_remote_code=trc).to(device).eval()
    tok = tok_future.result()
    pool.shutdown()
    return config, model, tok


def _gpu_stats() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu"}
    return {"device": torch.cuda.get_device_name(0), "peak_gpu_bytes": torch.cuda.max_memory_allocated()}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*.safetensors"))


def _check_nproc(opts: QuantizeOptions, formats: list[str]) -> None:
    if opts.nproc <= 1:
        return
    import torch

    have = torch.cuda.device_count()
    if have < opts.nproc:
        raise RecipeError(f"--nproc {opts.nproc} needs {opts.nproc} CUDA GPUs; this machine has {have}",
                          hint="drop --nproc (one GPU or CPU), or --mode layerwise: one layer at a time fits any model")
    if any(FORMAT_BACKEND[f] != "modelopt" for f in formats):
        raise RecipeError("--nproc places the model across GPUs for the ModelOpt backend; llm-compressor's "
                          "sequential pipeline moves one layer at a time to the GPU itself",
                          hint="use --format modelopt with --nproc, or drop --nproc for compressed-tensors")
    if opts.mode == "layerwise" or opts.resume:
        raise RecipeError("--nproc and --mode layerwise are alternatives", hint="pick one")


def _preflight(recipe: Recipe, opts: QuantizeOptions, formats: list[str], config: Any, reporter: Reporter) -> tuple[str, dict]:
    from quantkit.modules import meta_model, param_stats
    from quantkit.stream.preflight import available_memory, choose_mode, estimate

    if opts.mode not in ("auto", "full", "layerwise"):
        raise RecipeError(f"unknown mode {opts.mode!r}", hint="use --mode auto, full or layerwise")
    meta = meta_model(config)
    total, _ = param_stats(meta)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tokens = recipe.calibration.samples * recipe.calibration.seq_len
    est = estimate(meta, total, len(formats), tokens, int(getattr(text, "hidden_size", 0) or 0), _cuda())
    limit = opts.max_memory or available_memory()
    source = "--max-memory" if opts.max_memory else "available memory"
    if opts.nproc > 1:  # the weights go straight to the GPUs
        import torch

        limit = sum(torch.cuda.mem_get_info(i)[0] for i in range(opts.nproc))
        source = f"free memory of {opts.nproc} GPUs"
    requested = opts.mode
    if opts.mode == "auto":  # --nproc places the whole model on the GPUs; --resume continues a layerwise run
        requested = "full" if opts.nproc > 1 else "layerwise" if opts.resume else "auto"
    if opts.resume and requested == "full":
        raise RecipeError("--resume works with --mode layerwise only", hint="drop --mode full, or drop --resume")
    mode = choose_mode(requested, est, limit, source)
    e = est[mode]
    reporter.stage("pre-flight", f"mode {mode}: ~{e.peak_bytes / 2**30:.1f} GiB peak, ~{e.seconds:.0f} s "
                   f"({source} {limit / 2**30:.1f} GiB; full ~{est['full'].peak_bytes / 2**30:.1f} GiB)")
    return mode, {"mode": mode, "limit_bytes": limit, "limit_source": source,
                  "estimates": {k: v.to_dict() for k, v in est.items()}}


def quantize(recipe: Recipe, opts: QuantizeOptions, reporter: Reporter = SILENT) -> list[VariantResult]:
    from quantkit.backends import check_algorithm, get_backend
    from quantkit.calib import build_calibration
    from quantkit.plan import build_plan
    from quantkit.source import load_config, local_checkpoint

    recipe = apply_options(recipe, opts)
    formats = resolve_formats(recipe, opts)
    _check_nproc(opts, formats)
    backends = {f: get_backend(FORMAT_BACKEND[f]) for f in formats}
    for b in backends.values():
        b.check_available()
        check_algorithm(b.name, recipe.calibration.algorithm_for(b.name), _cuda())
    base_out = Path(opts.out) if opts.out else Path("out") / (recipe.name if len(formats) > 1 else f"{recipe.name}-nvfp4")
    outs = {f: (base_out / FORMAT_DIRS[f] if len(formats) > 1 else base_out) for f in formats}
    for f, p in outs.items():
        if p.exists() and not opts.overwrite:
            raise RecipeError(f"output path exists: {p}", hint="choose another --out, or pass --overwrite")

    t0 = time.perf_counter()
    reporter.stage("resolve", recipe.model.source)
    m = recipe.model
    config = load_config(m.source, m.revision, m.trust_remote_code)
    mode, preflight = _preflight(recipe, opts, formats, config, reporter)
    local = local_checkpoint(m.source, m.revision)
    ctx = _Context(recipe, opts, formats, backends, outs, local, preflight, reporter)
    if mode == "layerwise":
        from quantkit.stream.run import quantize_layerwise

        if recipe.mixed_precision is not None:
            raise RecipeError("mixed_precision measures sensitivity on the whole model, which the layerwise mode "
                              "never loads", hint="use --mode full (with more memory), or drop mixed_precision")

        return quantize_layerwise(ctx, base_out, config, t0)
    config, model, tok = _load(local, recipe, reporter, opts.nproc)
    t_load = time.perf_counter() - t0
    plans = {f: build_plan(config, model_source=m.source, backend=FORMAT_BACKEND[f], scheme=recipe.scheme,
                           recipe_rules=recipe.patterns(), cli_patterns=opts.exclude, family=recipe.family,
                           strict=opts.strict, model=model) for f in formats}
    for w in plans[formats[0]].warnings:
        reporter.info(f"warning: {w}")
    if recipe.mixed_precision is not None:
        from quantkit.sensitivity import apply_mixed_precision

        plans = apply_mixed_precision(plans, model, tok, recipe, reporter)
    reporter.stage("calibration data", recipe.calibration.dataset)
    c = recipe.calibration
    calib = build_calibration(tok, c.dataset, c.samples, c.seq_len, c.seed)
    calib.batch_size = c.resolved_batch_size(_cuda())
    if len(calib.input_ids) < c.samples:
        reporter.info(f"note: {c.dataset} has {len(calib.input_ids)} samples; {c.samples} were asked for")

    results = []
    for i, fmt in enumerate(formats):
        backend, plan = backends[fmt], plans[fmt]
        work_model = copy.deepcopy(model) if i < len(formats) - 1 else model
        reporter.stage(f"quantize [{fmt}]", f"{backend.name}: {len(plan.fp4)} FP4, {len(plan.kept)} kept")
        t_start = time.perf_counter()
        with atomic_dir(outs[fmt], overwrite=opts.overwrite) as tmp:
            res = backend.quantize(work_model, tok, plan, calib, recipe.scheme, tmp, progress=reporter.advance,
                                   kv_cache=recipe.kv_cache, algorithm=recipe.calibration.algorithm_for(backend.name))
            devices = sorted({str(p.device) for p in work_model.parameters()})
            results.append(finish_variant(ctx, tmp, fmt, plan, calib, tok, {"load": round(t_load, 3), **res.timings},
                                          res.native_config, t_start, run_extra={"mode": "full", "devices": devices}))
        del work_model
    return results


@dataclass
class _Context:
    recipe: Recipe
    opts: QuantizeOptions
    formats: list[str]
    backends: dict[str, Any]
    outs: dict[str, Path]
    local: Path
    preflight: dict
    reporter: Reporter

    def resolved_recipe(self) -> dict:
        resolved = self.recipe.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.opts.exclude:
            resolved["exclude"] = resolved.get("exclude", []) + [
                {"pattern": p, "reason": "excluded on the command line (--exclude)"} for p in self.opts.exclude]
        return resolved


def finish_variant(ctx: _Context, tmp: Path, fmt: str, plan: Any, calib: Any, tok: Any, timings: dict,
                   native_config: Any, t_start: float, run_extra: dict | None = None) -> VariantResult:
    """Tokenizer, recipe, verification and manifest for one written checkpoint in `tmp`."""
    from quantkit.backends.base import timed
    from quantkit.checkpoint.manifest import numerics, write_manifest
    from quantkit.checkpoint.verify import verify_checkpoint

    recipe, reporter, local = ctx.recipe, ctx.reporter, ctx.local
    resolved = ctx.resolved_recipe()
    tok.save_pretrained(tmp)
    if (local / "generation_config.json").is_file() and not (tmp / "generation_config.json").is_file():
        shutil.copy2(local / "generation_config.json", tmp / "generation_config.json")
    (tmp / "quantkit-recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    reporter.stage(f"verify [{fmt}]")
    with timed(timings, "verify"):
        report = verify_checkpoint(tmp, plan, fmt, source=local)
    for fix in report.fixes:
        reporter.info(f"fixed: {fix}")
    for w in report.warnings:
        reporter.info(f"warning: {w}")
    backend = ctx.backends[fmt]
    manifest = write_manifest(tmp, {
        "format": fmt, "backend": backend.name, "scheme": recipe.scheme,
        "backend_config": native_config,
        "source": {"model": recipe.model.source, "revision": recipe.model.revision, "local_path": str(local)},
        "recipe": resolved,
        "plan": {**plan.to_dict()["summary"], "families": plan.families, "model_type": plan.model_type,
                 "architecture": plan.architecture,
                 "kept": [{"module": d.module.name, "reason": d.reason, "source": d.source} for d in plan.kept],
                 "rules": [r.to_dict() for r in plan.rules if r.source in ("cli", "recipe")]},
        "calibration": calib.describe(),
        "verification": report.to_dict(),
        "run": {"timings_s": timings, "peak_rss_bytes": _peak_rss(), **_gpu_stats(), "numerics": numerics(),
                "wall_s": round(time.perf_counter() - t_start, 3), "preflight": ctx.preflight, **(run_extra or {})},
    })
    return VariantResult(fmt, backend.name, ctx.outs[fmt], manifest, timings, _peak_rss(),
                         report.fp4_modules, len(plan.kept), _dir_bytes(tmp), plan.source_bytes)
