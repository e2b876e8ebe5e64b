"""The precision map: every linear-like module as FP4 / FP8 / BF16 (from tensor names, dtypes and
shapes, via `quantkit.checkpoint.formats.stored_modules`), with counts, bytes and bits per
parameter, and the format the tensors themselves show."""

from __future__ import annotations

import re
from typing import Any

from quantkit.checkpoint.formats import StoredModule
from quantkit.checkpoint.headers import TensorInfo
from quantkit.inspect.report import natural_key

__all__ = ["SCALE_LEAVES", "GLOBAL_SCALE_LEAVES", "leaves", "tensor_format", "precision_map"]

# Scale tensors: not parameters of the model, but bytes of the checkpoint.
GLOBAL_SCALE_LEAVES = ("weight_scale_2", "weight_global_scale", "input_scale", "input_global_scale",
                       "k_scale", "v_scale")
SCALE_LEAVES = ("weight_scale",) + GLOBAL_SCALE_LEAVES
_FOLD = re.compile(r"\.(\d+)(?=\.|$)")


def leaves(m: StoredModule) -> set[str]:
    """The tensor names of a module without its prefix: {'weight', 'weight_scale', ...}."""
    return {t[len(m.name) + 1:] for t in m.tensors}


def tensor_format(modules: dict[str, StoredModule]) -> tuple[str, list[str]]:
    """(what the tensors are: nvfp4 | fp8 | nvfp4+fp8 | unquantized, the NVFP4 tensor-name
    conventions seen: modelopt (`weight` + `weight_scale_2`) / compressed-tensors (`weight_packed`))."""
    precs = {m.precision for m in modules.values()}
    kind = {(True, False): "nvfp4", (False, True): "fp8", (True, True): "nvfp4+fp8"}.get(
        ("fp4" in precs, "fp8" in precs), "unquantized")
    conv = set()
    for m in modules.values():
        if m.precision == "fp4":
            conv.add("compressed-tensors" if any(t.endswith(".weight_packed") for t in m.tensors) else "modelopt")
    return kind, sorted(conv)


def _params(t: TensorInfo, packed: bool) -> int:
    leaf = t.name.rsplit(".", 1)[-1]
    if leaf in SCALE_LEAVES:
        return 0
    return t.numel * 2 if packed else t.numel


def precision_map(tensors: dict[str, TensorInfo], modules: dict[str, StoredModule]) -> dict[str, Any]:
    """Summary (modules, params, bytes per precision; bits per parameter overall and over the
    linear-like modules) and groups of modules with layer / expert indices folded."""
    packed = {t for m in modules.values() if m.precision == "fp4" for t in m.tensors
              if t.endswith((".weight", ".weight_packed"))}
    total_bytes = sum(t.nbytes for t in tensors.values())
    total_params = sum(_params(t, t.name in packed) for t in tensors.values())
    by: dict[str, dict[str, int]] = {}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    first: dict[tuple[str, str], str] = {}
    for name, m in modules.items():
        s = by.setdefault(m.precision, {"modules": 0, "params": 0, "bytes": 0})
        s["modules"] += 1
        s["params"] += m.params
        s["bytes"] += m.nbytes
        key = (_FOLD.sub(".*", name), m.precision)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"name": key[0], "precision": m.precision, "count": 0, "params": 0, "bytes": 0}
            first[key] = name
        g["count"] += 1
        g["params"] += m.params
        g["bytes"] += m.nbytes
    lin_params = sum(s["params"] for s in by.values())
    lin_bytes = sum(s["bytes"] for s in by.values())
    return {
        "summary": {
            "modules": len(modules), "by_precision": by,
            "total_params": total_params, "total_bytes": total_bytes,
            "bits_per_param": round(8 * total_bytes / total_params, 3) if total_params else None,
            "linear_bits_per_param": round(8 * lin_bytes / lin_params, 3) if lin_params else None,
        },
        "groups": [groups[k] for k in sorted(groups, key=lambda k: natural_key(first[k]))],
    }
