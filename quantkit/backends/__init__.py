"""Quantization backends behind one small interface. Only these modules import a backend
library; adding a third backend touches one new module and the registry below."""

from __future__ import annotations

from quantkit.backends.base import Backend, BackendResult
from quantkit.errors import BackendError, RecipeError

__all__ = ["Backend", "BackendResult", "get_backend", "BACKENDS", "ALGORITHMS", "check_algorithm"]

BACKENDS = {"modelopt": "quantkit.backends.modelopt:ModelOptBackend",
            "llmcompressor": "quantkit.backends.llmcompressor:LLMCompressorBackend"}


def get_backend(name: str) -> Backend:
    import importlib

    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}",
                           hint="use --backend modelopt or --backend llmcompressor") from None
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)()


# Calibration algorithms each backend implements for NVFP4, and where they run (measured on the
# pinned versions): ModelOpt's awq_lite and mse fake-quantize during calibration, which asserts
# CUDA ("amax must be a CUDA tensor"); llm-compressor 0.14's AWQ pins memory while smoothing
# (pipelines/cache.py pin_memory), which needs an accelerator; its mse and gptq run on CPU.
ALGORITHMS: dict[str, dict[str, str]] = {
    "modelopt": {"minmax": "any", "mse": "cuda", "awq_lite": "cuda"},
    "llmcompressor": {"minmax": "any", "mse": "any", "gptq": "any", "awq": "cuda"},
}


def check_algorithm(backend: str, algorithm: str, cuda: bool) -> None:
    """Fail before anything is loaded if `backend` cannot run `algorithm` here."""
    table = ALGORITHMS[backend]
    where = table.get(algorithm)
    here = [a for a, w in table.items() if w == "any" or cuda]
    if where is None or (where == "cuda" and not cuda):
        why = "needs a CUDA GPU" if where == "cuda" else "is not implemented by it"
        others = [b for b, t in ALGORITHMS.items() if t.get(algorithm) in ("any", "cuda" if cuda else "any")]
        raise RecipeError(f"calibration algorithm {algorithm!r} with backend {backend} {why}; supported here: "
                           f"{', '.join(here)}", hint=(f"use --backend {others[0]} or " if others else "") +
                           f"set calibration.algorithm to one of {', '.join(here)}")
