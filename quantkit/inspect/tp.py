"""Tensor parallelism: does every NVFP4 linear split into whole FP4 groups on every rank?

vLLM splits a column-parallel linear (q/k/v, gate/up, in_proj, fused experts' w13) along its
output rows and a row-parallel one (o_proj, down_proj, out_proj, experts' w2) along its input
columns. A row-parallel FP4 weight whose per-rank input width is not a multiple of the NVFP4
group (16 values per FP8 block scale) cannot be sharded: a group and its scale would straddle two
ranks (vLLM fixed a Nemotron-3-Nano TP8 load failure of exactly this kind: 232 values per rank).
A split that is not even a whole number of rows or columns fails on any format."""

from __future__ import annotations

import re

from quantkit.checkpoint.formats import StoredModule
from quantkit.checkpoint.headers import TensorInfo
from quantkit.inspect.report import Finding

__all__ = ["GROUP", "ROW_PARALLEL", "tp_findings"]

GROUP = 16
# leaf names vLLM builds as RowParallelLinear (input split); everything else column-parallel.
ROW_PARALLEL = re.compile(r"(?:^|\.)(?:o_proj|down_proj|out_proj|dense|fc2|w2|c_proj|wo|dense_4h_to_h|"
                          r"fc2_latent_proj)$")


def _shape(m: StoredModule, tensors: dict[str, TensorInfo]) -> tuple[int, int] | None:
    """(output rows, input width) of an FP4 module from its packed codes (two values per byte)."""
    packed = next((tensors[t] for t in m.tensors if t in tensors and tensors[t].dtype == "U8"), None)
    if packed is None or len(packed.shape) < 2:
        return None
    return packed.shape[-2], packed.shape[-1] * 2


def _problem(name: str, rows: int, cols: int, tp: int) -> str | None:
    if ROW_PARALLEL.search(name):
        if cols % tp:
            return f"{name}: input width {cols} does not split into {tp} ranks"
        if (cols // tp) % GROUP:
            return f"{name}: {cols // tp} input values per rank is not a multiple of the NVFP4 group ({GROUP})"
        return None
    if rows % tp:
        return f"{name}: {rows} output rows do not split into {tp} ranks"
    return None


def tp_findings(modules: dict[str, StoredModule], tensors: dict[str, TensorInfo], tp: int) -> list[Finding]:
    """One `tp-split` error listing every FP4 module that cannot be sharded `tp` ways."""
    if tp <= 1:
        return []
    bad, first = [], None
    for m in modules.values():
        shape = _shape(m, tensors) if m.precision == "fp4" else None
        problem = _problem(m.name, *shape, tp) if shape else None
        if problem:
            bad.append(m.name)
            first = first or problem
    if not bad:
        return []
    return [Finding.of("tp-split", f"{len(bad)} FP4 module(s) cannot be sharded for tensor parallelism {tp}, "
                                   f"e.g. {first}", bad)]
