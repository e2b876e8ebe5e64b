"""Calibration health (issue 15, item 1): how many calibration tokens the router sent to each
expert of every MoE layer, and each FP4 module's activation amax as exported; experts routed fewer
than `calibration.min_expert_tokens` are flagged, with the remedy the recipe chose.

Tokens are counted by forward hooks on the routers (`*.mlp.gate`, `*.mixer.gate`, `*.router`: in
transformers 5 they return `(logits, weights, top-k indices)`), during the backend's own
calibration, so no extra forward runs. Two passes are not counted: ModelOpt's calibration-only
forward with every expert chosen (`moe_calib_experts_ratio`, seen as indices wider than top-k), and
llm-compressor's propagation pass (its hooks disabled), which repeats tokens already counted.

The amax is read from the exported scales (ModelOpt `input_scale` = amax / (6 * 448),
compressed-tensors `input_global_scale` = 6 * 448 / amax): what the engine will load, the same
way in both modes. ModelOpt 0.47 shares one input quantizer across a layer's fused experts
(transformers 5), so there a starved expert's scale is its layer's and only the token count shows
the starvation; llm-compressor calibrates each expert's own."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = ["THRESHOLD_REASON", "MOE_MODES", "RouterTap", "router_tap", "moe_setting", "summarise",
           "exported_amax", "manifest_entry", "warning_line", "card_lines", "inspect_findings", "amax_findings",
           "is_moe", "resolve_moe", "Health", "calibrating"]

THRESHOLD_REASON = (
    "an expert routed fewer calibration tokens than one NVFP4 block holds values (16) has its input amax "
    "taken over too few rows to stand for the activations it will serve, and at 0 it has none of its own "
    "(a missing or infinite input_scale gives NaN on the prompts that reach it: vLLM issue 45212, "
    "ModelOpt PR 1421, llm-compressor PR 1864)")
MOE_MODES = {
    "routed": "each expert calibrated on the tokens its router sends it (as served)",
    "all-experts": "every expert calibrated on every calibration token; the routed output is unchanged "
                   "(llm-compressor moe_calibrate_all_experts, ModelOpt moe_calib_experts_ratio=1.0)",
}
NOT_APPLIED = "all-experts was asked for, but the backend did not apply it to this layer"
# an activation amax outside this range is no calibration of a BF16 model: dead inputs below, and
# above, beyond the largest "massive activations" reported (~1e4); llm-compressor leaves an expert
# without statistics with its torch.empty input_global_scale (measured: 1.2e-26 and 3.9e36)
PLAUSIBLE_AMAX = (1e-6, 1e6)
_ROUTERS = (".mlp.gate", ".mixer.gate", ".block_sparse_moe.gate", ".router")
_FP4_FP8 = 6.0 * 448.0  # amax = input_scale * 2688 = 2688 / input_global_scale


def is_moe(config: Any) -> bool:
    from quantkit.families.moe import NUM_EXPERTS_KEYS

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return any((getattr(text, k, 0) or 0) > 1 for k in NUM_EXPERTS_KEYS)


def _top_k(config: Any) -> int | None:
    from quantkit.families.moe import TOPK_KEYS

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return next((int(v) for k in TOPK_KEYS if (v := getattr(text, k, None))), None)


def resolve_moe(calibration: Any, backend: Any) -> str:
    """calibration.moe with `auto` resolved to the backend library's own default."""
    return calibration.moe if calibration.moe != "auto" else backend.moe_default


def moe_setting(calibration: Any, backend: Any, config: Any) -> dict | None:
    """The MoE calibration setting a run uses (None for a dense model)."""
    if not is_moe(config):
        return None
    mode = resolve_moe(calibration, backend)
    return {"moe": mode, "asked": calibration.moe, "why": MOE_MODES[mode],
            "min_expert_tokens": calibration.min_expert_tokens, "threshold_reason": THRESHOLD_REASON}


class RouterTap:
    """Forward hooks on a model's MoE routers counting the tokens routed to each expert.
    `paused()`: the backend is re-running tokens already counted; `rename`: a module name -> its
    name in the full model (the layerwise stand-in is layer 0)."""

    def __init__(self, model: Any, top_k: int | None, paused: Callable[[], bool] = lambda: False,
                 rename: Callable[[str], str] = lambda n: n):
        self.model, self.default_k, self.paused, self.rename = model, top_k, paused, rename
        self.counts: dict[str, list[int]] = {}
        self.widened: set[str] = set()  # layers calibrated with every expert chosen (ModelOpt)
        self._handles: list = []

    def __enter__(self) -> "RouterTap":
        for name, mod in self.model.named_modules():
            if name.endswith(_ROUTERS):
                k = getattr(mod, "top_k", None) or self.default_k
                self._handles.append(mod.register_forward_hook(self._hook(self.rename(name).rsplit(".", 1)[0], k)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: str, k: int | None) -> Callable:
        import torch

        def hook(module, args, output):
            idx = output[2] if isinstance(output, tuple) and len(output) >= 3 else None
            if idx is None or not torch.is_tensor(idx) or k is None:
                return  # not a top-k router (a dense gate named like one)
            n = int(getattr(module, "num_experts", 0) or 0) or int(output[0].shape[-1])
            if idx.shape[-1] > k:
                self.widened.add(layer)  # calibration-only forward through every expert
                return
            if self.paused():
                return
            c = torch.bincount(idx.reshape(-1).long().cpu(), minlength=n).tolist()
            have = self.counts.setdefault(layer, [0] * n)
            self.counts[layer] = [a + b for a, b in zip(have, c)]
        return hook


def router_tap(model: Any, config: Any, backend: Any, rename: Callable[[str], str] = lambda n: n) -> RouterTap | None:
    """A RouterTap for `model` calibrated by `backend`, or None for a dense model."""
    if not is_moe(config):
        return None
    paused = getattr(backend, "routing_paused", None) or (lambda: False)
    return RouterTap(model, _top_k(config), paused, rename)


def summarise(counts: dict[str, list[int]], widened: set[str] | list[str], setting: dict, backend: Any = None) -> dict:
    """Per MoE layer: experts, min/median/max routed tokens, and the experts under the threshold;
    `starved` (flagged) when they were calibrated on their routed tokens only, `remedied` when
    every expert saw every token (all-experts applied: ModelOpt's widened forward seen on that
    layer, or llm-compressor's all-experts calibration)."""
    threshold = setting["min_expert_tokens"]
    all_experts = setting["moe"] == "all-experts"
    layers, flagged = {}, 0
    for layer, c in sorted(counts.items(), key=lambda kv: _natural(kv[0])):
        under = {str(e): n for e, n in enumerate(c) if n < threshold}
        applied = all_experts and (layer in widened or bool(getattr(backend, "moe_all_experts_native", False)))
        row = {"experts": len(c), "min": min(c), "median": statistics.median(c), "max": max(c),
               "calibrated_on": "all tokens" if applied else "routed tokens"}
        if under:
            row["remedied" if applied else "starved"] = under
            flagged += 0 if applied else len(under)
        if all_experts and not applied:
            row["note"] = getattr(backend, "moe_all_experts_limit", None) or NOT_APPLIED
        layers[layer] = row
    return {"layers": layers, "starved_experts": flagged,
            "starved_layers": sum(1 for r in layers.values() if "starved" in r)}


def _natural(name: str) -> list:
    from quantkit.inspect.report import natural_key

    return natural_key(name)


def exported_amax(ckpt: Path, w4a4: bool = True, tensors: dict | None = None) -> dict:
    """Each FP4 module's activation amax from its exported input scale: count, range, and the
    modules whose amax is zero, not finite, or missing (a W4A4 module without an input scale).
    `tensors`: the checkpoint's headers where the caller has read them already."""
    from safetensors import safe_open

    from quantkit.checkpoint.formats import stored_modules
    from quantkit.checkpoint.headers import checkpoint_tensors

    tensors = tensors if tensors is not None else checkpoint_tensors(ckpt)
    fp4 = [n for n, m in stored_modules(tensors).items() if m.precision == "fp4"]
    amax, missing = {}, []
    by_file: dict[str, list[tuple[str, str, bool]]] = {}
    for n in fp4:
        t = tensors.get(f"{n}.input_scale") or tensors.get(f"{n}.input_global_scale")
        if t is None:
            missing.append(n)
        else:
            by_file.setdefault(t.file, []).append((n, t.name, t.name.endswith("global_scale")))
    for f, items in by_file.items():
        with safe_open(str(Path(ckpt) / Path(f).name), "pt") as h:
            for n, key, inverse in items:
                s = float(h.get_tensor(key).float().reshape(-1)[0])
                amax[n] = (_FP4_FP8 / s if s else math.inf) if inverse else s * _FP4_FP8
    finite = [v for v in amax.values() if math.isfinite(v) and v > 0]
    return {"modules": len(fp4), "with_amax": len(amax), "min": min(finite, default=None),
            "max": max(finite, default=None),
            "zero": sorted(n for n, v in amax.items() if v == 0),
            "not_finite": sorted(n for n, v in amax.items() if not math.isfinite(v)),
            "implausible": sorted(n for n, v in amax.items() if math.isfinite(v) and v != 0  # negative too
                                  and not PLAUSIBLE_AMAX[0] <= v <= PLAUSIBLE_AMAX[1]),
            "missing": sorted(missing) if w4a4 else [], "values": amax}


def _expert_amax(values: dict[str, float], layer: str, expert: str) -> dict[str, float]:
    pre = f"{layer}.experts.{expert}."
    return {k[len(pre):]: round(v, 6) for k, v in values.items() if k.startswith(pre)}


def manifest_entry(tap: RouterTap | None, setting: dict | None, backend: Any, ckpt: Path, scheme: str,
                   reporter: Any = None) -> dict:
    """The manifest's `calibration_health` section for one calibrated checkpoint (and its one-line
    warning through `reporter` when experts are starved)."""
    amax = exported_amax(ckpt, w4a4=scheme == "nvfp4")
    values = amax.pop("values")
    body: dict[str, Any] = {"activation_amax": amax}
    if setting is not None:
        routing = summarise(tap.counts if tap else {}, tap.widened if tap else set(), setting, backend)
        for layer, row in routing["layers"].items():
            for e in (row.get("starved") or {}):
                row.setdefault("starved_amax", {})[e] = _expert_amax(values, layer, e)
        body = {**setting, "routing": routing, **body} if tap is not None else {
            **setting, "routing": None, "routing_note": "not recorded in this mode", **body}
    line = warning_line({"calibration_health": body})
    if line and reporter is not None:
        reporter.info(f"warning: {line}")
    return body


def _starved(section: dict) -> list[tuple[str, dict]]:
    layers = ((section.get("routing") or {}).get("layers") or {})
    return [(name, row["starved"]) for name, row in layers.items() if row.get("starved")]


def warning_line(manifest: dict) -> str | None:
    """One line (with the next step) when calibration starved experts, else None."""
    section = manifest.get("calibration_health") or {}
    starved = _starved(section)
    if not starved:
        return None
    n = sum(len(s) for _, s in starved)
    first, s0 = starved[0]
    eg = ", ".join(f"expert {e}: {c}" for e, c in list(s0.items())[:4])
    layers = section["routing"]["layers"]
    if section.get("moe") == "all-experts" and any(layers[name].get("note") for name, _ in starved):
        step = ("calibration.moe: all-experts did not apply here; quantize with --backend llmcompressor (its "
                "all-experts calibration covers fused experts) or raise calibration.samples")
    else:
        step = "set calibration.moe: all-experts in the recipe (or raise calibration.samples) and quantize again"
    return (f"calibration: {n} expert(s) in {len(starved)} MoE layer(s) were routed fewer than "
            f"{section.get('min_expert_tokens')} calibration tokens ({first}: {eg}) -> {step}")


def card_lines(manifest: dict) -> list[str]:
    """The model card's sentences on calibration health (empty when the manifest has none)."""
    section = manifest.get("calibration_health")
    if not section:
        return []
    a = section.get("activation_amax") or {}
    out = [f"Activation amax: {a.get('with_amax')} of {a.get('modules')} FP4 modules recorded; "
           f"zero {len(a.get('zero', []))}, not finite {len(a.get('not_finite', []))}, "
           f"implausible {len(a.get('implausible', []))}, "
           f"missing {len(a.get('missing', []))}."]
    if "moe" not in section:
        return out
    routing = section.get("routing")
    head = (f"MoE calibration: `{section['moe']}` ({section.get('why')}); experts routed fewer than "
            f"{section.get('min_expert_tokens')} tokens are flagged.")
    if routing is None:
        return out + [head + " Tokens per expert were not recorded in this mode."]
    starved = _starved(section)
    if not starved:
        return out + [head + f" None flagged ({len(routing['layers'])} MoE layers)."]
    rows = [f"| `{layer}` | " + ", ".join(f"{e}: {c}" for e, c in s.items()) + " |" for layer, s in starved]
    return out + [head + f" **{routing['starved_experts']} expert(s) flagged**: their activation scales "
                  "come from too few tokens.", "", "| MoE layer | experts: routed tokens |", "|---|---|"] + rows


def inspect_findings(manifest: dict | None) -> list:
    """inspect's findings from a checkpoint's `quantkit.json` (none without a calibration_health
    section): starved experts, and activation amax recorded zero or not finite."""
    from quantkit.inspect.report import Finding

    section = (manifest or {}).get("calibration_health")
    if not section:
        return []
    out = []
    starved = _starved(section)
    if starved:
        names = [f"{layer}.experts.{e}" for layer, s in starved for e in s]
        out.append(Finding.of("starved-experts", warning_line(manifest).split(" -> ")[0] + " (from quantkit.json; "
                              f"calibration.moe was {section.get('moe')!r})", names))
    out += amax_findings(section.get("activation_amax") or {}, "at quantize time (from quantkit.json)")
    return out


def amax_findings(a: dict, where: str) -> list:
    """The `calibration-amax` finding for an exported_amax() summary (none when every amax is plausible)."""
    from quantkit.inspect.report import Finding

    bad = [n for k in ("zero", "not_finite", "implausible") for n in a.get(k, [])]
    if not bad:
        return []
    return [Finding.of("calibration-amax", f"{len(bad)} FP4 module(s) have an activation amax that is zero "
                       f"({len(a.get('zero', []))}), not finite ({len(a.get('not_finite', []))}) or outside "
                       f"{PLAUSIBLE_AMAX} ({len(a.get('implausible', []))}) {where}", bad)]


@dataclass
class Health:
    """What one calibration recorded: the MoE setting (None: dense), the resolved mode, the tap."""
    setting: dict | None
    moe: str
    tap: RouterTap | None
    backend: Any

    def entry(self, ckpt: Path, scheme: str, reporter: Any = None) -> dict:
        return manifest_entry(self.tap, self.setting, self.backend, ckpt, scheme, reporter)


@contextmanager
def calibrating(model: Any, config: Any, backend: Any, calibration: Any,
                rename: Callable[[str], str] = lambda n: n) -> Iterator[Health]:
    """Around a backend's calibration of `model`: routers tapped while it runs."""
    tap = router_tap(model, config, backend, rename)
    health = Health(moe_setting(calibration, backend, config), resolve_moe(calibration, backend), tap, backend)
    if tap is None:
        yield health
        return
    with tap:
        yield health
