"""`quantkit quantize --mode layerwise`: the pipeline around LayerwiseRun — plan on the meta
device, calibration tokens, the layer loop, then per format: shards moved into the atomic output,
index, config.json + quantization metadata merged from the layers, tokenizer, verify, manifest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from quantkit.recipe import FORMAT_BACKEND

__all__ = ["quantize_layerwise"]


def quantize_layerwise(ctx: Any, base_out: Path, config: Any, t0: float) -> list:
    from transformers import AutoTokenizer

    from quantkit.calib import build_calibration
    from quantkit.plan import build_plan
    from quantkit.quantize import atomic_dir, finish_variant
    from quantkit.stream.layerwise import LayerwiseRun, work_dir

    recipe, opts, rep, local = ctx.recipe, ctx.opts, ctx.reporter, ctx.local
    tok = AutoTokenizer.from_pretrained(str(local), trust_remote_code=recipe.model.trust_remote_code)
    plans = {f: build_plan(config, model_source=recipe.model.source, backend=FORMAT_BACKEND[f], scheme=recipe.scheme,
                           recipe_rules=recipe.patterns(), cli_patterns=opts.exclude, family=recipe.family,
                           strict=opts.strict) for f in ctx.formats}
    for w in plans[ctx.formats[0]].warnings:
        rep.info(f"warning: {w}")
    c = recipe.calibration
    rep.stage("calibration data", c.dataset)
    calib = build_calibration(tok, c.dataset, c.samples, c.seq_len, c.seed)
    import torch

    calib.batch_size = c.resolved_batch_size(torch.cuda.is_available())
    run = LayerwiseRun(local, config, tok, plans, ctx.backends, calib, recipe, work_dir(base_out),
                       resume=opts.resume, overwrite=opts.overwrite)
    rep.stage("quantize [layerwise]", f"{', '.join(ctx.formats)}: one decoder layer at a time; state in {run.work}")
    t_start = time.perf_counter()
    try:
        parts = run.run(progress=rep.advance, info=rep.info)
    except BaseException:
        state = run._state() if run.work.is_dir() else None
        if state and state.get("layers_done"):
            rep.info(f"state kept: {state['layers_done']}/{state['layers']} layers done; rerun the same command "
                     "with --resume to continue")
        raise
    results = []
    for fmt in ctx.formats:
        part = parts[fmt]
        writer = part["writer"]
        shard_dir = writer.out
        with atomic_dir(ctx.outs[fmt], overwrite=opts.overwrite) as tmp:
            t_fin = time.perf_counter()
            for k in range(writer.total):
                os.link(shard_dir / writer.name(k), tmp / writer.name(k))  # the state keeps its copy until the end
            writer.out = tmp
            writer.write_index()
            _write_metadata(tmp, local, fmt, part["metadata"], plans[fmt], part["prefix"], part["skipped"])
            timings = {**run.timings, "finalize": round(time.perf_counter() - t_fin, 3)}
            native = {"mode": "layerwise", "layers": run.layers, "resumed_from_layer": run.resumed_from,
                      "backend_library": ctx.backends[fmt].name}
            results.append(finish_variant(ctx, tmp, fmt, plans[fmt], calib, tok, timings, native, t_start,
                                          run_extra={"mode": "layerwise", "resumed_from_layer": run.resumed_from}))
    run.cleanup()
    return results


def _write_metadata(out: Path, local: Path, fmt: str, meta: dict, plan: Any, prefix: str = "",
                    skipped: list[int] = ()) -> None:
    """config.json = the source's, with the quantization_config merged from the layers;
    hf_quant_config.json for ModelOpt; llm-compressor's ignore regexes for compressed-tensors.
    Layers without any FP4 module (`skipped`) are declared unquantized as a whole."""
    import re

    meta = json.loads(json.dumps(meta))
    qc = meta["quantization_config"]
    if skipped and fmt == "modelopt":
        entries = [f"{prefix}.{i}.*" for i in skipped]
        hq = meta["hf_quant_config"]["quantization"]
        hq["exclude_modules"] = list(hq.get("exclude_modules") or []) + entries
        qc["ignore"] = list(qc.get("ignore") or []) + entries
    elif skipped:
        qc["ignore"] = list(qc.get("ignore") or []) + [f"re:{re.escape(prefix)}\\.{i}\\..*" for i in skipped]
    cfg = json.loads((local / "config.json").read_text())
    cfg["quantization_config"] = meta["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if fmt == "modelopt":
        (out / "hf_quant_config.json").write_text(json.dumps(meta["hf_quant_config"], indent=4))
    else:
        from quantkit.backends.llmcompressor import _append_regex_ignores, ignore_list

        _append_regex_ignores(out / "config.json", [e for e in ignore_list(plan) if e.startswith("re:")])
