"""Pre-flight: before anything is downloaded or loaded, estimate peak memory and time of each
quantize mode from the config alone, and pick (or refuse) a mode for this machine.

Modes: `full` loads the whole BF16 model (one copy per extra format) and calibrates it in one
pass; `layerwise` holds one decoder layer per format plus the calibration activations.
The constants below are orders of magnitude from this project's runs, checked against
bench/layerwise.md (estimated 3.8 GiB / 916 s, measured 3.66 GiB / 515 s); estimates are meant to
be right within ~2x, which is enough to choose a mode."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from quantkit.errors import UsageError

__all__ = ["Estimate", "estimate", "choose_mode", "parse_size", "available_memory"]

GiB = 1 << 30
BASE_BYTES = int(1.1 * GiB)  # python + torch + transformers + a backend, measured RSS before loading
EXPORT_FACTOR = 0.35  # export/compression buffers, as a fraction of the BF16 model (full mode)
LAYER_FACTOR = 3.0  # source layer + stand-in + backend copies while exporting, per format
READ_BYTES_PER_S = 0.8e9  # safetensors read (page cache cold), conservative
CPU_FLOPS = 2.0e10  # bf16 matmul throughput of 2 CPU cores, measured order of magnitude
GPU_FLOPS = 2.0e14
LAYER_OVERHEAD_S = 3.0  # per layer and format: stand-in build + the backend's own setup/export


@dataclass
class Estimate:
    mode: str
    peak_bytes: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def parse_size(text: str, option: str = "--max-memory") -> int:
    """'20GiB', '20G', '512MB', '1.5TB' -> bytes (G/GB/GiB are all 2**30: memory is sold in GiB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise UsageError(f"cannot read size {text!r} ({option})", hint=f"use e.g. {option} 20GiB or 512MB")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m[2]]
    if m[2] == "" and m[3] is None:
        raise UsageError(f"size {text!r} ({option}) has no unit", hint=f"use e.g. {option} 20GiB")
    return int(float(m[1]) * mult)


def available_memory() -> int:
    """Memory this process can use now: MemAvailable, capped by a cgroup limit if there is one."""
    import psutil

    avail = psutil.virtual_memory().available
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(p).read().strip()
            if raw.isdigit():
                avail = min(avail, int(raw))
        except OSError:
            continue
    return avail


def _layer_params(meta_model: Any) -> tuple[int, int, int]:
    """(decoder layers, params of the largest layer, params outside the layers)."""
    per_layer: dict[str, int] = {}
    other = 0
    for name, p in meta_model.named_parameters():
        m = re.search(r"(^|\.)layers\.(\d+)\.", name)
        if m:
            per_layer[name[: m.end()]] = per_layer.get(name[: m.end()], 0) + p.numel()
        else:
            other += p.numel()
    return len(per_layer), max(per_layer.values(), default=0), other


def estimate(meta_model: Any, total_params: int, formats: int, tokens: int, hidden: int, cuda: bool) -> dict[str, Estimate]:
    n_layers, layer_params, other = _layer_params(meta_model)
    bf16 = 2 * total_params
    flops = GPU_FLOPS if cuda else CPU_FLOPS
    compute = 2 * total_params * tokens / flops
    read = bf16 / READ_BYTES_PER_S
    act = tokens * hidden * 2
    full_peak = BASE_BYTES + bf16 * formats + int(EXPORT_FACTOR * bf16) + 8 * act
    full = Estimate("full", full_peak, round(read + compute * (1 + formats), 1))
    lw_peak = (BASE_BYTES + int(LAYER_FACTOR * 2 * layer_params * formats) + 6 * act
               + min(2 * other, GiB) + (1 << 28))
    lw_time = read + compute * (1 + formats) + LAYER_OVERHEAD_S * n_layers * formats
    return {"full": full, "layerwise": Estimate("layerwise", lw_peak, round(lw_time, 1))}


def choose_mode(requested: str, estimates: dict[str, Estimate], limit: int, limit_source: str) -> str:
    """`requested` is auto, full or layerwise; refuse a mode whose estimate exceeds `limit`."""
    def gib(n):
        return f"{n / GiB:.1f} GiB"

    if requested == "auto":
        if estimates["full"].peak_bytes <= limit:
            return "full"
        requested = "layerwise"
    est = estimates[requested]
    if est.peak_bytes <= limit:
        return requested
    other = "layerwise" if requested == "full" else "full"
    if estimates[other].peak_bytes <= limit:
        raise UsageError(f"--mode {requested} needs ~{gib(est.peak_bytes)} but {limit_source} is {gib(limit)}",
                          hint=f"use --mode {other} (~{gib(estimates[other].peak_bytes)}), or --mode auto")
    raise UsageError(f"no mode fits: layerwise needs ~{gib(estimates['layerwise'].peak_bytes)} "
                      f"and {limit_source} is {gib(limit)}",
                      hint="fewer --samples / --seq-len shrink the activations; or use a machine with more memory")
