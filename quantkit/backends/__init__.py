"""Quantization backends behind one small interface. Only these modules import a backend
library; each backend class carries what it can do (`algorithms`, `quantizes`) and the format it
writes. Adding a backend: one new module, one line in BACKENDS (and its format's module in
quantkit/checkpoint/formats/ if it writes a new format)."""

from __future__ import annotations

from quantkit.backends.base import Backend, BackendResult
from quantkit.errors import BackendError, RecipeError

__all__ = ["Backend", "BackendResult", "get_backend", "backend_class", "BACKENDS", "DEFAULT_BACKEND",
           "algorithms", "check_algorithm", "backend_for_format", "formats_of_backend"]

# Backend classes import their library only inside methods, so reading their attributes is cheap.
BACKENDS = {"modelopt": "quantkit.backends.modelopt:ModelOptBackend",
            "llmcompressor": "quantkit.backends.llmcompressor:LLMCompressorBackend"}
DEFAULT_BACKEND = "modelopt"  # the fast calibrator (bench/formats.md: 8.5x llm-compressor's calibration on H200)


def backend_class(name: str) -> type:
    import importlib

    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}",
                           hint=f"use --backend {' or --backend '.join(BACKENDS)}") from None
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)


def get_backend(name: str) -> Backend:
    return backend_class(name)()


def algorithms(name: str) -> dict[str, str]:
    """Calibration algorithm -> where it runs ('any' or 'cuda'), as the backend declares it."""
    return dict(backend_class(name).algorithms)


def backend_for_format(fmt: str) -> str:
    """The backend that writes format `fmt`."""
    from quantkit.checkpoint.formats import get_format

    return get_format(fmt).backend


def formats_of_backend(name: str) -> list[str]:
    from quantkit.checkpoint.formats import FORMATS

    return [f.name for f in FORMATS.values() if f.backend == name]


def check_algorithm(backend: str, algorithm: str, cuda: bool) -> None:
    """Fail before anything is loaded if `backend` cannot run `algorithm` here."""
    table = algorithms(backend)
    where = table.get(algorithm)
    here = [a for a, w in table.items() if w == "any" or cuda]
    if where is None or (where == "cuda" and not cuda):
        why = "needs a CUDA GPU" if where == "cuda" else "is not implemented by it"
        others = [b for b in BACKENDS if algorithms(b).get(algorithm) in ("any", "cuda" if cuda else "any")]
        raise RecipeError(f"calibration algorithm {algorithm!r} with backend {backend} {why}; supported here: "
                           f"{', '.join(here)}", hint=(f"use --backend {others[0]} or " if others else "") +
                           f"set calibration.algorithm to one of {', '.join(here)}")
