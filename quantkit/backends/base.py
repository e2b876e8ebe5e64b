"""The backend interface: quantize a loaded model in place per the plan, calibrating on the
given samples, and export a checkpoint directory in the backend's format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

__all__ = ["Backend", "BackendResult", "StepTimer"]


@dataclass
class BackendResult:
    format: str
    timings: dict[str, float] = field(default_factory=dict)  # calibrate / export seconds
    native_config: Any = None  # what the backend was given (modelopt quant_cfg / llm-compressor recipe)
    notes: list[str] = field(default_factory=list)


class StepTimer:
    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self.timings: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self_inner):
                self_inner.t0 = timer._now()

            def __exit__(self_inner, *exc):
                timer.timings[name] = round(timer._now() - self_inner.t0, 3)

        return _Ctx()


class Backend(Protocol):
    name: str
    format: str

    def check_available(self) -> None:
        """Raise BackendError with an install hint if the library is missing."""

    def quantize(self, model: Any, tokenizer: Any, plan: Any, calib: Any, scheme: str, out_dir: Path,
                 progress: Callable[[str, int, int], None] | None = None) -> BackendResult:
        """Quantize `model` in place per `plan` and write the checkpoint to `out_dir`."""
