"""The quantize pipeline: recipe -> plan -> load -> calibration -> backend -> verify -> manifest ->
atomic rename. An interrupted or failed run leaves nothing at --out.

  options.py    what is asked (QuantizeOptions) and returned (VariantResult); request checks
  context.py    the run's typed Context, the pre-flight, the shared "plans + calibration" step,
                finish_variant (tokenizer, verify, manifest)
  full.py       the whole model loaded once, a backend per format
  layerwise.py  one decoder layer at a time (quantkit.stream.LayerwiseRun), resumable"""

from __future__ import annotations

import time
from pathlib import Path

from dataclasses import replace

from quantkit.backends import backend_for_format, check_algorithm, formats_of_backend, get_backend
from quantkit.checkpoint.formats import get_format
from quantkit.errors import UsageError
from quantkit.progress import SILENT, Reporter
from quantkit.quantize.context import Context, cuda, preflight, warm_cuda
from quantkit.quantize.options import (QuantizeOptions, VariantResult, apply_options, check_nproc, check_shard_size,
                                       parse_format,
                                       resolve_formats)
from quantkit.recipe import Recipe

__all__ = ["QuantizeOptions", "VariantResult", "quantize", "parse_format"]


def quantize(recipe: Recipe, opts: QuantizeOptions, reporter: Reporter = SILENT) -> list[VariantResult]:
    """Quantize `recipe` into one checkpoint per format (see the module doc)."""
    from quantkit.source import load_config, local_checkpoint

    recipe = apply_options(recipe, opts)
    formats = resolve_formats(recipe, opts)
    check_nproc(opts, formats)
    check_shard_size(opts)
    primary = calibrating_format(recipe, formats, opts)
    calibrated = [primary] if primary else formats
    backends = {f: get_backend(backend_for_format(f)) for f in dict.fromkeys(calibrated + formats)}
    for f in calibrated:
        backends[f].check_available()
        check_algorithm(backends[f].name, recipe.calibration.algorithm_for(backends[f].name), cuda())
    base_out, outs = _outputs(recipe, opts, formats)
    warm_cuda()  # meanwhile: config, pre-flight, and the imports of the load
    t0 = time.perf_counter()
    reporter.stage("resolve", recipe.model.source)
    m = recipe.model
    config = load_config(m.source, m.revision, m.trust_remote_code)
    mode, pf = preflight(recipe, opts, calibrated, config, reporter)
    ctx = Context(recipe, opts, formats, backends, outs, base_out, local_checkpoint(m.source, m.revision), pf,
                  reporter, t0)
    if primary is None:
        return _run_path(ctx, mode, config)
    return _calibrate_once(ctx, primary, mode, config)


def _calibrate_once(ctx: Context, primary: str, mode: str, config) -> list[VariantResult]:
    """`primary`'s library calibrates into a hidden directory; every other format is converted
    from it, the conversion hashing the calibrated files as it reads them (their manifest is
    written after it: no separate pass over gigabytes); then the calibrated checkpoint is renamed
    to its output when that format was asked for, or removed."""
    import shutil

    from quantkit.checkpoint.atomic import place_dir
    from quantkit.checkpoint.manifest import write_manifest
    from quantkit.quantize.context import converted_variant

    others = [f for f in ctx.formats if f != primary]
    ctx.reporter.info(f"one calibration ({ctx.backends[primary].name}); {', '.join(others)} written from it by "
                      "conversion (--calibrate-each: every library calibrates its own)")
    hidden = ctx.base_out.parent / f".{ctx.base_out.name}.calibrated-{get_format(primary).dir_name}"
    one = Context(ctx.recipe, replace(ctx.opts, overwrite=True),  # our own hidden directory, a crashed run's at most
                  [primary], {primary: ctx.backends[primary]}, {primary: hidden}, ctx.base_out,
                  ctx.local, ctx.preflight, ctx.reporter, ctx.t0, stable_scales=True, defer_manifest=True)
    try:
        first = _run_path(one, mode, config)[0]
        ctx.plans = one.plans
        converted = [converted_variant(ctx, first, f) for f in others]
        if primary not in ctx.outs:
            return converted
        if "content_hash" not in first.manifest:  # no conversion wrote it (none asked for)
            first.manifest = write_manifest(hidden, first.manifest)
        place_dir(hidden, ctx.outs[primary], overwrite=ctx.opts.overwrite)
        return [replace(first, path=ctx.outs[primary])] + converted
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def calibrating_format(recipe: Recipe, formats: list[str], opts: QuantizeOptions) -> str | None:
    """The format whose library calibrates once for all the requested formats, the others being
    converted from it; None when each requested format's own library calibrates.

    Preferred: the default backend's format (ModelOpt, the fast calibrator), also when only
    compressed-tensors is asked for. None when: a backend is named (--backend, recipe `backend`)
    for a single format, calibration.each / --calibrate-each, the requested formats' libraries
    are given different algorithms, no library runs the algorithm here but the format's own, or
    FP8 mixed precision (conversion carries NVFP4 and BF16 only)."""
    from quantkit.backends import DEFAULT_BACKEND, algorithms

    c = recipe.calibration
    if c.each or opts.calibrate_each or (len(formats) == 1 and (opts.backend or recipe.backend)):
        return None
    if recipe.mixed_precision is not None and recipe.mixed_precision.keep_as == "fp8":
        return None
    wanted = {c.algorithm_for(backend_for_format(f)) for f in formats}
    if len(wanted) > 1:
        return None
    algo = wanted.pop()
    here = {"any", "cuda"} if cuda() else {"any"}
    order = list(dict.fromkeys(formats_of_backend(DEFAULT_BACKEND) + formats))
    primary = next((f for f in order if c.algorithm_for(backend_for_format(f)) == algo
                    and algorithms(backend_for_format(f)).get(algo) in here), None)
    return None if primary is None or formats == [primary] else primary


def _run_path(ctx: Context, mode: str, config) -> list[VariantResult]:
    if mode == "layerwise":
        from quantkit.quantize.layerwise import quantize_layerwise

        if ctx.recipe.mixed_precision is not None:
            raise UsageError("mixed_precision measures sensitivity on the whole model, which the layerwise mode "
                             "never loads", hint="use --mode full (with more memory), or drop mixed_precision")
        return quantize_layerwise(ctx, config)
    from quantkit.quantize.full import quantize_full

    return quantize_full(ctx)


def _outputs(recipe: Recipe, opts: QuantizeOptions, formats: list[str]) -> tuple[Path, dict[str, Path]]:
    """--out (default out/<recipe>[-nvfp4]) and each format's directory: <out>/<dir_name> when
    several formats are written. Refuses existing outputs unless --overwrite."""
    base = Path(opts.out) if opts.out else Path("out") / (recipe.name if len(formats) > 1 else f"{recipe.name}-nvfp4")
    outs = {f: (base / get_format(f).dir_name if len(formats) > 1 else base) for f in formats}
    for p in outs.values():
        if p.exists() and not opts.overwrite:
            raise UsageError(f"output path exists: {p}", hint="choose another --out, or pass --overwrite")
    return base, outs
