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

from quantkit.backends import backend_for_format, check_algorithm, get_backend
from quantkit.checkpoint.formats import get_format
from quantkit.errors import UsageError
from quantkit.progress import SILENT, Reporter
from quantkit.quantize.context import Context, cuda, preflight
from quantkit.quantize.options import (QuantizeOptions, VariantResult, apply_options, check_nproc, parse_format,
                                       resolve_formats)
from quantkit.recipe import Recipe

__all__ = ["QuantizeOptions", "VariantResult", "quantize", "parse_format"]


def quantize(recipe: Recipe, opts: QuantizeOptions, reporter: Reporter = SILENT) -> list[VariantResult]:
    """Quantize `recipe` into one checkpoint per format (see the module doc)."""
    from quantkit.source import load_config, local_checkpoint

    recipe = apply_options(recipe, opts)
    formats = resolve_formats(recipe, opts)
    check_nproc(opts, formats)
    backends = {f: get_backend(backend_for_format(f)) for f in formats}
    for b in backends.values():
        b.check_available()
        check_algorithm(b.name, recipe.calibration.algorithm_for(b.name), cuda())
    base_out, outs = _outputs(recipe, opts, formats)
    t0 = time.perf_counter()
    reporter.stage("resolve", recipe.model.source)
    m = recipe.model
    config = load_config(m.source, m.revision, m.trust_remote_code)
    mode, pf = preflight(recipe, opts, formats, config, reporter)
    ctx = Context(recipe, opts, formats, backends, outs, base_out, local_checkpoint(m.source, m.revision), pf,
                  reporter, t0)
    primary = calibrating_format(recipe, formats, opts)
    if primary is None:
        return _run_path(ctx, mode, config)
    from quantkit.quantize.context import converted_variant

    reporter.info(f"one calibration ({backends[primary].name}); {', '.join(f for f in formats if f != primary)} "
                  "written from it by conversion (calibration.each: true calibrates every library)")
    one = Context(recipe, opts, [primary], {primary: backends[primary]}, {primary: outs[primary]}, base_out,
                  ctx.local, pf, reporter, t0, stable_scales=True)
    first = _run_path(one, mode, config)[0]
    ctx.plans = one.plans
    return [first] + [converted_variant(ctx, first, f) for f in formats if f != primary]


def calibrating_format(recipe: Recipe, formats: list[str], opts: QuantizeOptions) -> str | None:
    """With several formats: the one whose library calibrates for all (the first, in registry
    order, whose backend runs the recipe's algorithm here), or None when each library must
    calibrate its own (calibration.each / --calibrate-each, different algorithms per backend,
    FP8 mixed precision, which conversion does not carry)."""
    c = recipe.calibration
    if len(formats) < 2 or c.each or opts.calibrate_each:
        return None
    if recipe.mixed_precision is not None and recipe.mixed_precision.keep_as == "fp8":
        return None
    algos = {f: c.algorithm_for(backend_for_format(f)) for f in formats}
    if len(set(algos.values())) > 1:
        return None
    from quantkit.backends import algorithms

    here = {"any", "cuda"} if cuda() else {"any"}
    return next((f for f in formats if algorithms(backend_for_format(f)).get(algos[f]) in here), None)


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
