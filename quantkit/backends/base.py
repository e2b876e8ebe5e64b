"""The backend interface: quantize a loaded model in place per the plan, calibrating on the
given samples, and export a checkpoint directory in the backend's format."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from quantkit.checkpoint.headers import SHARD_BYTES

__all__ = ["Backend", "BackendResult", "timed"]


@dataclass
class BackendResult:
    format: str
    timings: dict[str, float] = field(default_factory=dict)  # calibrate / export seconds
    native_config: Any = None  # what the backend was given, recorded in quantkit.json


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the wall time of the block in `timings[key]` (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - t0, 3)


class Backend(Protocol):
    name: str
    format: str  # the checkpoint format it writes (quantkit.checkpoint.formats)
    algorithms: dict[str, str]  # calibration algorithm -> "any" | "cuda"
    quantizes: dict[str, bool]  # module kind -> whether it quantizes it
    places_across_gpus: bool  # --nproc: one model placed across several GPUs
    moe_default: str  # calibration.moe `auto`: the library's own default (routed | all-experts)

    def finish_metadata(self, out_dir: Path, plan: Any) -> None:
        """Metadata to add to a checkpoint assembled outside the library (layerwise mode)."""

    def check_available(self) -> None:
        """Raise BackendError with an install hint if the library is missing."""

    def quantize(self, model: Any, tokenizer: Any, plan: Any, calib: Any, scheme: str, out_dir: Path,
                 progress: Callable[[str, int, int], None] | None = None, kv_cache: str = "none",
                 algorithm: str = "minmax", moe: str = "routed", max_shard_size: int = SHARD_BYTES) -> BackendResult:
        """Quantize `model` in place per `plan` (its kept modules stay unquantized), calibrating on
        `calib`, and write the checkpoint in the backend's format to `out_dir`, in safetensors
        shards of at most `max_shard_size` bytes. `moe`: routed or all-experts
        (quantkit.calib_health.MOE_MODES)."""
