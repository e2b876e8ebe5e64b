"""The full-model path: load the model once, plan and calibrate, then per format a backend
quantizes (a deep copy for every format but the last) and exports into an atomic directory."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

from quantkit.calib_health import calibrating
from quantkit.checkpoint.atomic import atomic_dir
from quantkit.progress import Reporter
from quantkit.quantize.context import Context, expandable_segments, finish_variant, plans_and_calibration
from quantkit.quantize.options import VariantResult
from quantkit.recipe import Recipe

__all__ = ["quantize_full", "load_model"]


def load_model(local: Path, recipe: Recipe, reporter: Reporter, nproc: int = 1, meanwhile: Callable[[], Any] | None = None):
    """(config, model in BF16 on the GPU or CPU, tokenizer); the tokenizer parses in a thread
    while the weights load (33 MB of JSON for Gemma). `meanwhile` is called in that thread once
    the tokenizer is loaded (the backends' background imports start there: by then every module
    the load needs is imported, so the two threads do not import the same modules at once)."""
    import torch
    from concurrent.futures import ThreadPoolExecutor
    from transformers import AutoTokenizer

    from quantkit.modules import model_class_for
    from quantkit.source import load_config

    config = load_config(str(local), trust_remote_code=recipe.model.trust_remote_code)
    reporter.stage("load", f"{local}" + (f" across {nproc} GPUs (accelerate device_map)" if nproc > 1 else ""))
    cls, trc = model_class_for(config), recipe.model.trust_remote_code
    with ThreadPoolExecutor(max_workers=1) as pool:
        def tokenizer():
            tok = AutoTokenizer.from_pretrained(str(local), trust_remote_code=trc)
            if meanwhile is not None:
                meanwhile()
            return tok

        tok_future = pool.submit(tokenizer)
        if nproc > 1:  # accelerate's big-model placement: consecutive layers on consecutive GPUs
            budget = {i: int(torch.cuda.mem_get_info(i)[0] * 0.85) for i in range(nproc)}
            model = cls.from_pretrained(str(local), dtype=torch.bfloat16, trust_remote_code=trc,
                                        device_map="balanced", max_memory=budget).eval()
        elif torch.cuda.is_available():  # straight onto the GPU: no BF16 copy of the model in host memory first
            expandable_segments()  # set already where quantize started: a library caller's load
            model = cls.from_pretrained(str(local), dtype=torch.bfloat16, trust_remote_code=trc, device_map="cuda").eval()
        else:
            model = cls.from_pretrained(str(local), dtype=torch.bfloat16, trust_remote_code=trc).eval()
        tok = tok_future.result()
    return config, model, tok


def quantize_full(ctx: Context) -> list[VariantResult]:
    # the backends' own imports (ModelOpt's: seconds, cold) run while the weights load
    preloads = [b.preload for b in ctx.backends.values() if hasattr(b, "preload")]
    config, model, tok = load_model(ctx.local, ctx.recipe, ctx.reporter, ctx.opts.nproc,
                                    meanwhile=lambda: [p() for p in preloads])
    t_load = time.perf_counter() - ctx.t0
    plans, calib = plans_and_calibration(ctx, config, tok, model)
    results = []
    for i, fmt in enumerate(ctx.formats):
        work_model = copy.deepcopy(model) if i < len(ctx.formats) - 1 else model
        results.append(_one_format(ctx, fmt, work_model, tok, plans[fmt], calib, t_load))
        del work_model
    return results


def _one_format(ctx: Context, fmt: str, model: Any, tok: Any, plan: Any, calib: Any, t_load: float) -> VariantResult:
    backend, recipe = ctx.backends[fmt], ctx.recipe
    ctx.reporter.stage(f"quantize [{fmt}]", f"{backend.name}: {len(plan.fp4)} FP4, {len(plan.kept)} kept")
    t_start = time.perf_counter()
    with atomic_dir(ctx.outs[fmt], overwrite=ctx.opts.overwrite) as tmp:
        with calibrating(model, model.config, backend, recipe.calibration) as ctx.health[fmt]:
            res = backend.quantize(model, tok, plan, calib, recipe.scheme, tmp, progress=ctx.reporter.advance,
                                   kv_cache=recipe.kv_cache, algorithm=recipe.calibration.algorithm_for(backend.name),
                                   moe=ctx.health[fmt].moe, max_shard_size=ctx.opts.max_shard_size)
        devices = sorted({str(p.device) for p in model.parameters()})
        return finish_variant(ctx, tmp, fmt, plan, calib, tok, {"load": round(t_load, 3), **res.timings},
                              res.native_config, t_start, run_extra={"mode": "full", "devices": devices})
