"""Checks against the modules the serving engine builds, not the ones in the file: fused modules
(`qkv_proj`, `gate_up_proj`, Qwen3.5 `in_proj_qkvz` / `in_proj_ba`, one FusedMoE per layer's
experts) whose parts disagree, and fused GDN names the ignore list misses (vLLM issue 40252).
The fused-name tables are data in `quantkit.checkpoint.engine_names`."""

from __future__ import annotations

import re

from quantkit.checkpoint.engine_names import FUSED_MOE_CONTAINER, MATCHED_BY_FUSED_NAME, packed_for, part_to_fused
from quantkit.checkpoint.formats import StoredModule
from quantkit.inspect.names import Declared
from quantkit.inspect.report import Finding

__all__ = ["engine_modules", "engine_findings"]

_FLOAT = {"bf16", "f16", "f32"}
_EXPERT = re.compile(rf"^(.*\.{FUSED_MOE_CONTAINER})\.\d+\.[^.]+$")


def engine_modules(modules: dict[str, StoredModule], model_types: list[str]) -> dict[str, dict[str, StoredModule]]:
    """fused engine module name (in the checkpoint's namespace) -> {part name: stored module}."""
    p2f = part_to_fused(packed_for(model_types))
    out: dict[str, dict[str, StoredModule]] = {}
    for m in modules.values():
        e = _EXPERT.match(m.name) if ".experts." in m.name else None
        if e:  # every projection of every expert of a layer: one FusedMoE (w13 + w2)
            out.setdefault(e.group(1), {})[m.name] = m
            continue
        parent, _, leaf = m.name.rpartition(".")
        fused = p2f.get(leaf)
        if fused:
            out.setdefault(f"{parent}.{fused}", {})[m.name] = m
    return out


def _describe(parts: dict[str, StoredModule], declared: Declared) -> str:
    bits = []
    for name in sorted(parts)[:4]:
        m = parts[name]
        tag = "ignored" if declared(name) else "quantized per metadata"
        bits.append(f"{name.rsplit('.', 1)[-1]} {m.precision.upper()} ({tag})")
    return ", ".join(bits) + (" ..." if len(parts) > 4 else "")


def engine_findings(fused: dict[str, dict[str, StoredModule]], declared: Declared) -> list[Finding]:
    disagree: list[str] = []
    first_detail = ""
    uncovered: list[str] = []
    for name, parts in fused.items():
        precs = {m.precision for m in parts.values()}
        decl = {declared(p) is not None for p in parts}
        if len(precs) > 1 or len(decl) > 1:
            disagree.append(name)
            first_detail = first_detail or f"{name}: {_describe(parts, declared)}"
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in MATCHED_BY_FUSED_NAME and decl == {True} and precs <= _FLOAT and not declared(name):
            uncovered.append(name)
    out = []
    if disagree:
        out.append(Finding.of("fused-parts-disagree", f"{len(disagree)} fused engine module(s) built from parts "
                              f"that differ in precision or metadata; first: {first_detail}", disagree))
    if uncovered:
        out.append(Finding.of("engine-name-uncovered", f"{len(uncovered)} fused GDN module(s) vLLM builds are not "
                              "covered by the ignore list, though their split parts are (e.g. "
                              f"{uncovered[0]})", uncovered))
    return out
