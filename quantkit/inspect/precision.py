"""The precision map: every linear-like module as FP4 / FP8 / BF16 (from tensor names, dtypes and
shapes, via `quantkit.checkpoint.formats.stored_modules`), with counts, bytes and bits per
parameter, and the format the tensors themselves show."""

from __future__ import annotations

import re
from typing import Any

from quantkit.checkpoint.formats import StoredModule, module_format
from quantkit.checkpoint.headers import TensorInfo
from quantkit.inspect.report import natural_key

__all__ = ["SCALE_LEAVES", "GLOBAL_SCALE_LEAVES", "outside_modules", "tensor_format", "precision_map"]

# Scale tensors: not parameters of the model, but bytes of the checkpoint.
GLOBAL_SCALE_LEAVES = ("weight_scale_2", "weight_global_scale", "input_scale", "input_global_scale",
                       "k_scale", "v_scale")
SCALE_LEAVES = ("weight_scale",) + GLOBAL_SCALE_LEAVES
_FOLD = re.compile(r"\.(\d+)(?=\.|$)")


def outside_modules(tensors: dict[str, TensorInfo], modules: dict[str, StoredModule]) -> dict[str, TensorInfo]:
    """The tensors no linear-like module holds (norms, conv biases, SSM parameters...): with the
    modules' totals they account for every byte without another pass over 10^5 tensors."""
    inside = {t for m in modules.values() for t in m.tensors}
    return {n: t for n, t in tensors.items() if n not in inside}


def tensor_format(modules: dict[str, StoredModule]) -> tuple[str, list[str]]:
    """(what the tensors are: nvfp4 | fp8 | nvfp4+fp8 | unquantized, the NVFP4 tensor-name
    conventions seen: the formats whose FP4 tensor names the modules use)."""
    precs = {m.precision for m in modules.values()}
    kind = {(True, False): "nvfp4", (False, True): "fp8", (True, True): "nvfp4+fp8"}.get(
        ("fp4" in precs, "fp8" in precs), "unquantized")
    conv = set()
    for m in modules.values():
        if m.precision == "fp4":
            conv.add(module_format(m.tensors) or "unknown")
    return kind, sorted(conv)


def precision_map(tensors: dict[str, TensorInfo], modules: dict[str, StoredModule],
                  others: dict[str, TensorInfo] | None = None) -> dict[str, Any]:
    """Summary (modules, params, bytes per precision; bits per parameter overall and over the
    linear-like modules) and groups of modules with layer / expert indices folded."""
    others = outside_modules(tensors, modules) if others is None else others
    total_bytes = sum(m.nbytes for m in modules.values()) + sum(t.nbytes for t in others.values())
    total_params = sum(m.params for m in modules.values())  # packed FP4 counts 2 per byte
    total_params += sum(tensors[t].numel for m in modules.values() for t in m.tensors if t.endswith(".bias"))
    total_params += sum(t.numel for n, t in others.items() if n.rsplit(".", 1)[-1] not in SCALE_LEAVES)
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
