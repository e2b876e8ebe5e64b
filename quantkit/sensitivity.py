"""Sensitivity-guided mixed precision under a bits-per-parameter budget.

1. Measure: with the model in memory, run a few calibration samples once for reference
   log-probabilities; then, for every FP4-planned linear module, fake-quantize only that module
   to NVFP4 (its weight, and for scheme nvfp4 its input activations) and measure the mean per-token
   KL divergence of the model's next-token distribution from the reference. One forward per module.
2. Select: greedily keep the modules with the most KL per extra bit in `keep_as` (BF16 or FP8)
   while the whole model stays within `budget_bits` per parameter, with the same accounting as
   `Plan.bits_per_param` (FP4 4.5, FP8 8, BF16 16 bits/param plus per-tensor scales).

The result is a new Plan whose kept modules say why (`source: sensitivity`, the rank and the
measured KL); the backends then write them unquantized (bf16) or as FP8 layers (fp8).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from quantkit.checkpoint.nvfp4 import E2M1_VALUES
from quantkit.plan import GROUP_SIZE, Decision, Plan
from quantkit.progress import SILENT, Reporter

__all__ = ["nvfp4_qdq", "calibration_batch", "measure_sensitivity", "select_by_budget", "apply_sensitivity",
           "apply_mixed_precision"]

_E2M1_POS = E2M1_VALUES[:8]  # the non-negative magnitudes
_E2M1_MAX, _E4M3_MAX = 6.0, 448.0


def nvfp4_qdq(x, global_amax=None):
    """Fake-quantize `x` to NVFP4 along its last dimension and back, in `x`'s dtype: E2M1 values,
    one FP8-E4M3 scale per 16 consecutive elements, one FP32 per-tensor scale (amax / (6 * 448),
    as ModelOpt's weight_scale_2). Zero blocks stay zero; the last dimension must be a multiple of 16."""
    import torch

    k = x.shape[-1]
    if k % GROUP_SIZE:
        raise ValueError(f"last dimension {k} is not a multiple of {GROUP_SIZE}")
    xf = x.float().reshape(-1, k // GROUP_SIZE, GROUP_SIZE)
    amax = xf.abs().amax() if global_amax is None else torch.as_tensor(global_amax, dtype=torch.float32)
    if float(amax) == 0.0:
        return x.clone()
    scale2 = amax / (_E2M1_MAX * _E4M3_MAX)
    block_amax = xf.abs().amax(-1, keepdim=True)
    block_scale = (block_amax / _E2M1_MAX / scale2).clamp(max=_E4M3_MAX).to(torch.float8_e4m3fn).float() * scale2
    safe = torch.where(block_scale > 0, block_scale, torch.ones_like(block_scale))
    mag = (xf.abs() / safe).clamp(max=_E2M1_MAX)
    pos = torch.tensor(_E2M1_POS, dtype=torch.float32, device=x.device)
    idx = torch.bucketize(mag, (pos[1:] + pos[:-1]) / 2)  # nearest E2M1 magnitude
    q = pos[idx] * torch.sign(xf) * block_scale
    return q.reshape(x.shape).to(x.dtype)


def calibration_batch(tokenizer: Any, dataset: str, samples: int, seq_len: int, seed: int = 0):
    """`samples` x `seq_len` token ids (a LongTensor, no padding) from the calibration spec: its
    samples concatenated and cut into equal rows, so one batched forward covers all of them."""
    import torch

    from quantkit.calib import build_calibration

    calib = build_calibration(tokenizer, dataset, samples * 8, seq_len, seed)
    stream = [t for ids in calib.input_ids for t in ids]
    rows = min(samples, len(stream) // seq_len)
    if rows == 0:
        return torch.tensor([stream], dtype=torch.long)
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def _log_probs(model: Any, input_ids):
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits
    return torch.log_softmax(logits.float(), dim=-1)


def _decoder_layers(model: Any, names: list[str]):
    """(prefix, ModuleList) of the repeated blocks holding most of `names`, or (None, None)."""
    from torch import nn

    best = (None, None, 0)
    for lname, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 1:
            n = sum(1 for x in names if x.startswith(lname + "."))
            if n > best[2]:
                best = (lname, mod, n)
    return best[0], best[1]


def _layer_index(prefix: str | None, name: str) -> int | None:
    if prefix is None or not name.startswith(prefix + "."):
        return None
    head = name[len(prefix) + 1:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def measure_sensitivity(model: Any, input_ids, names: list[str], *, act_quant: bool = True,
                        progress: Callable[[str, int, int], None] | None = None) -> dict[str, float]:
    """Mean per-token KL(reference || one module in NVFP4) for each named nn.Linear of `model`.

    Blocks before the one holding the module replay their reference outputs instead of
    recomputing them (same numbers, half the work on average). The model is left exactly as it
    was (weights restored, hooks and replays removed)."""
    mods = dict(model.named_modules())
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    prefix, layers = _decoder_layers(model, names)
    cached: dict[int, Any] = {}
    hooks = [layer.register_forward_hook(lambda _m, _a, out, j=j: cached.__setitem__(j, out))
             for j, layer in enumerate(layers or [])]
    try:
        ref = _log_probs(model, input_ids)
    finally:
        for h in hooks:
            h.remove()
    p_ref = ref.exp()
    neg_entropy = (p_ref * ref).sum(-1)
    del ref

    def act_hook(_mod, args):
        return (nvfp4_qdq(args[0]),) + tuple(args[1:])

    replayed: list[Any] = []
    scores: dict[str, float] = {}
    try:
        for i, name in enumerate(sorted(names, key=lambda n: _layer_index(prefix, n) or 0)):
            idx = _layer_index(prefix, name)
            while idx is not None and len(replayed) < idx and len(replayed) in cached:
                j = len(replayed)
                layers[j].forward = lambda *a, _out=cached[j], **k: _out
                replayed.append(layers[j])
            mod = mods[name]
            orig = mod.weight.data
            hook = mod.register_forward_pre_hook(act_hook) if act_quant else None
            try:
                mod.weight.data = nvfp4_qdq(orig)
                logp = _log_probs(model, input_ids)
            finally:
                mod.weight.data = orig
                if hook is not None:
                    hook.remove()
            kl = (neg_entropy - (p_ref * logp).sum(-1)).mean()
            scores[name] = max(float(kl), 0.0)
            if progress:
                progress("sensitivity", i + 1, len(names))
    finally:
        for layer in replayed:
            del layer.forward
    return {n: scores[n] for n in names}


def _extra_bytes(d: Decision, keep_as: str) -> float:
    """Bytes added to Plan.estimated_bytes by keeping an FP4 module in `keep_as`."""
    p = d.module.params
    fp4 = p * (4 + 8 / GROUP_SIZE) / 8 + 12
    return (p * 2 if keep_as == "bf16" else p + 8) - fp4


def _units(plan: Plan, cands: list[Decision]) -> dict[str, list[Decision]]:
    """Candidates grouped as the serving engine fuses them (q/k/v -> qkv_proj, gate/up ->
    gate_up_proj): one precision per fused module, so a group is kept or quantized as a whole."""
    from quantkit.checkpoint.engine_names import packed_for, part_to_fused

    fused_of = part_to_fused(packed_for([plan.model_type]))
    units: dict[str, list[Decision]] = {}
    for d in cands:
        parent, _, leaf = d.module.name.rpartition(".")
        key = f"{parent}.{fused_of[leaf]}" if leaf in fused_of else d.module.name
        units.setdefault(key, []).append(d)
    return units


def select_by_budget(plan: Plan, scores: dict[str, float], budget_bits: float, keep_as: str = "bf16") -> Plan:
    """A new Plan keeping the FP4 linears with the most sensitivity per extra bit in `keep_as`
    (greedy, in that order, skipping any that no longer fit) within `budget_bits` per parameter.
    Projections an engine fuses (q/k/v, gate/up) are one unit: their KLs and sizes add up."""
    label = keep_as.upper()
    cands = [d for d in plan.fp4 if d.module.kind == "linear" and d.module.name in scores]
    units = _units(plan, cands)
    score = {k: sum(scores[d.module.name] for d in ds) for k, ds in units.items()}
    extra = {k: sum(_extra_bytes(d, keep_as) for d in ds) for k, ds in units.items()}
    by_score = sorted(units, key=lambda k: -score[k])
    rank = {k: i + 1 for i, k in enumerate(by_score)}
    order = sorted((k for k in units if score[k] > 0), key=lambda k: -score[k] / extra[k])
    limit = budget_bits * max(plan.total_params, 1) / 8
    used = float(plan.estimated_bytes())
    base_bits = plan.bits_per_param()
    warnings: list[str] = []
    chosen: dict[str, Decision] = {}
    if used > limit:
        warnings.append(f"mixed precision: the budget of {budget_bits:g} bits/param cannot be met: the plan is already "
                        f"{base_bits:.2f} bits/param with every eligible layer in FP4 (the rest is kept for the reasons "
                        "shown); no layer was kept for sensitivity")
    else:
        for k in order:
            if used + extra[k] > limit:
                continue
            used += extra[k]
            ds = units[k]
            group = f" ({k.rsplit('.', 1)[-1]}: {len(ds)} fused parts kept together)" if len(ds) > 1 else ""
            for d in ds:
                chosen[d.module.name] = Decision(
                    d.module, keep_as, f"sensitivity rank {rank[k]} of {len(units)}: +{score[k]:.4f} KL when FP4"
                    f"{group}; kept {label} (budget {budget_bits:g} bits/param)", "sensitivity")
        if order and all(d.module.name in chosen for k in order for d in units[k]):
            warnings.append(f"mixed precision: the budget of {budget_bits:g} bits/param keeps every measured layer "
                            f"with a positive sensitivity in {label}")
    decisions = [chosen.get(d.module.name, d) for d in plan.decisions]
    new = dataclasses.replace(plan, decisions=decisions, warnings=list(plan.warnings) + warnings)
    new.mixed_precision = {
        "budget_bits": budget_bits, "keep_as": keep_as, "metric": "mean per-token KL vs unquantized (nats)",
        "measured_modules": len(cands), "units": len(units), "kept_for_sensitivity": len(chosen),
        "bits_per_param_all_fp4": round(base_bits, 3), "bits_per_param": round(new.bits_per_param(), 3),
        "top": [{"unit": k, "modules": [d.module.name for d in units[k]], "kl": round(score[k], 6),
                 "kept": units[k][0].module.name in chosen} for k in by_score[:10]],
    }
    return new


def apply_sensitivity(plan: Plan, model: Any, tokenizer: Any, recipe: Any, reporter: Reporter = SILENT,
                      scores: dict[str, float] | None = None) -> Plan:
    """`plan` with the recipe's mixed precision applied (unchanged if the recipe has none).
    `scores` (from `measure_sensitivity`) may be passed to skip the measurement."""
    mp = getattr(recipe, "mixed_precision", None)
    if mp is None:
        return plan
    if scores is None:
        scores = _measure_for(plan, model, tokenizer, recipe, reporter)
    return select_by_budget(plan, scores, mp.budget_bits, mp.keep_as)


def _measure_for(plan: Plan, model: Any, tokenizer: Any, recipe: Any, reporter: Reporter) -> dict[str, float]:
    mp = recipe.mixed_precision
    names = [d.module.name for d in plan.fp4 if d.module.kind == "linear"]
    dataset = mp.dataset or recipe.calibration.dataset
    reporter.stage("sensitivity", f"{len(names)} layers x {mp.samples} samples x {mp.seq_len} tokens ({dataset})")
    batch = calibration_batch(tokenizer, dataset, mp.samples, mp.seq_len, recipe.calibration.seed)
    t0 = time.perf_counter()
    scores = measure_sensitivity(model, batch, names, act_quant=recipe.scheme == "nvfp4", progress=reporter.advance)
    reporter.info(f"sensitivity: {len(names)} layers measured in {time.perf_counter() - t0:.1f} s")
    return scores


def apply_mixed_precision(plans: dict[str, Plan], model: Any, tokenizer: Any, recipe: Any,
                          reporter: Reporter = SILENT) -> dict[str, Plan]:
    """`apply_sensitivity` for every format's plan, measuring once (the plans share module names)."""
    if getattr(recipe, "mixed_precision", None) is None or not plans:
        return plans
    first = next(iter(plans.values()))
    scores = _measure_for(first, model, tokenizer, recipe, reporter)
    out = {f: apply_sensitivity(p, model, tokenizer, recipe, reporter, scores=scores) for f, p in plans.items()}
    shown = out[next(iter(out))]
    for w in shown.warnings[len(first.warnings):]:
        reporter.info(f"warning: {w}")
    s = shown.mixed_precision or {}
    reporter.info(f"mixed precision: {s.get('kept_for_sensitivity', 0)} layer(s) kept {s.get('keep_as', '').upper()}, "
                  f"{s.get('bits_per_param_all_fp4')} -> {s.get('bits_per_param')} bits/param "
                  f"(budget {s.get('budget_bits')})")
    return out
