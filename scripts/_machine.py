"""The machine a benchmark ran on, in one shape for every bench script (the "machine" of
bench/*.json): a time or a memory peak in bench/ means something only beside the machine it was
measured on. Scripts import it as `from _machine import machine, describe` (scripts/ is on sys.path
when a script runs)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["machine", "describe"]


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty where there is none)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) * 1024 for k, v in (ln.split(":", 1) for ln in lines if ":" in ln) if v.split()}


def machine(torch_info: bool = False) -> dict:
    """CPU, cores, RAM and swap, Python, OS and the load at the start; with `torch_info` also what
    decides quantization times and low bits (quantkit.checkpoint.manifest.numerics: torch's kernel
    level and threads, the GPU) and torch's version. Without it torch is not imported, so a
    benchmark of a torch-free path (inspect) does not pay for it."""
    from quantkit.checkpoint.manifest import cpu_model

    mem = _meminfo()
    m = {"cpu": cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(),
         "ram_gb": round(mem.get("MemTotal", 0) / 1e9, 1), "swap_gb": round(mem.get("SwapTotal", 0) / 1e9, 1),
         "python": platform.python_version(), "os": platform.platform(),
         "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if torch_info:
        import torch

        from quantkit.checkpoint.manifest import numerics

        n = numerics()
        m.update(torch=torch.__version__, torch_cpu_capability=n["torch_cpu_capability"],
                 torch_threads=n["torch_threads"], gpu=n["cuda_device"])
    return m


def describe(m: dict) -> str:
    """One line for a report, e.g. "AMD EPYC (x86_64), 2 cores, 24.7 GB RAM, no swap, Python 3.11.7"."""
    swap = f"{m['swap_gb']} GB swap" if m.get("swap_gb") else "no swap"
    parts = [f"{m['cpu']} ({m['arch']})", f"{m['cores']} cores", f"{m['ram_gb']} GB RAM", swap, f"Python {m['python']}"]
    if "torch" in m:
        parts += [f"torch {m['torch']} (kernels {m['torch_cpu_capability']}, {m['torch_threads']} threads)",
                  f"GPU: {m['gpu'] or 'none'}"]
    return ", ".join(parts)
