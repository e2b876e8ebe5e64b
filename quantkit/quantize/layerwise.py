"""`quantkit quantize --mode layerwise`: the pipeline around `stream.LayerwiseRun` — plan on the
meta device, calibration tokens, the layer loop, then per format: shards moved into the atomic
output, index, config.json + quantization metadata merged from the layers, tokenizer, verify,
manifest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from quantkit.calib_health import Health, moe_setting, resolve_moe
from quantkit.checkpoint.atomic import atomic_dir
from quantkit.checkpoint.formats import get_format
from quantkit.quantize.context import Context, finish_variant, plans_and_calibration
from quantkit.quantize.options import VariantResult

__all__ = ["quantize_layerwise"]


def quantize_layerwise(ctx: Context, config: Any) -> list[VariantResult]:
    from transformers import AutoTokenizer

    from quantkit.stream.layerwise import LayerwiseRun, work_dir

    recipe, opts, rep = ctx.recipe, ctx.opts, ctx.reporter
    tok = AutoTokenizer.from_pretrained(str(ctx.local), trust_remote_code=recipe.model.trust_remote_code)
    plans, calib = plans_and_calibration(ctx, config, tok)
    run = LayerwiseRun(ctx.local, config, tok, plans, ctx.backends, calib, recipe, work_dir(ctx.base_out),
                       resume=opts.resume, overwrite=opts.overwrite)
    rep.stage("quantize [layerwise]", f"{', '.join(ctx.formats)}: one decoder layer at a time; state in {run.work}")
    t_start = time.perf_counter()
    try:
        done = run.run(progress=rep.advance, info=rep.info)
    except BaseException:
        state = run.state() if run.work.is_dir() else None
        if state and state.get("layers_done"):
            rep.info(f"state kept: {state['layers_done']}/{state['layers']} layers done; rerun the same command "
                     "with --resume to continue")
        raise
    for fmt in ctx.formats:  # calibration health as in full mode: tokens per expert counted layer by layer
        backend, routing = ctx.backends[fmt], done.routing.get(fmt)
        tap = SimpleNamespace(counts=routing["counts"], widened=set(routing["widened"])) if routing else None
        ctx.health[fmt] = Health(moe_setting(recipe.calibration, backend, config),
                                 resolve_moe(recipe.calibration, backend), tap, backend)
    results = [_finish(ctx, run, done, fmt, plans[fmt], calib, tok, t_start) for fmt in ctx.formats]
    run.cleanup()
    return results


def _finish(ctx: Context, run: Any, done: Any, fmt: str, plan: Any, calib: Any, tok: Any,
            t_start: float) -> VariantResult:
    """Move one format's finished shards into its atomic output, with index and metadata."""
    writer = done.writers[fmt]
    shard_dir = writer.out
    with atomic_dir(ctx.outs[fmt], overwrite=ctx.opts.overwrite) as tmp:
        t_fin = time.perf_counter()
        for k in range(writer.total):
            os.link(shard_dir / writer.name(k), tmp / writer.name(k))  # the state keeps its copy until the end
        writer.out = tmp
        writer.write_index()
        _write_metadata(tmp, ctx.local, fmt, done.metadata[fmt], done.prefix, done.skipped.get(fmt, []))
        ctx.backends[fmt].finish_metadata(tmp, plan)
        timings = {**run.timings, "finalize": round(time.perf_counter() - t_fin, 3)}
        native = {"mode": "layerwise", "layers": run.layers, "resumed_from_layer": run.resumed_from,
                  "backend_library": ctx.backends[fmt].name}
        return finish_variant(ctx, tmp, fmt, plan, calib, tok, timings, native, t_start,
                              run_extra={"mode": "layerwise", "resumed_from_layer": run.resumed_from})


def _write_metadata(out: Path, local: Path, fmt: str, meta: dict, prefix: str = "", skipped: list[int] = ()) -> None:
    """config.json = the source's, with the quantization_config merged from the layers, plus the
    format's own metadata files. Layers without any FP4 module (`skipped`) are declared
    unquantized as a whole, in the format's own syntax."""
    f = get_format(fmt)
    meta = json.loads(json.dumps(meta))
    cfg = json.loads((local / "config.json").read_text())
    cfg["quantization_config"] = meta["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    f.write_metadata(out, meta)
    if skipped:
        f.add_unquantized(out, [f.subtree_entry(f"{prefix}.{i}") for i in skipped])
