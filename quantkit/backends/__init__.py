"""Quantization backends behind one small interface. Only these modules import a backend
library; adding a third backend touches one new module and the registry below."""

from __future__ import annotations

from quantkit.backends.base import Backend, BackendResult
from quantkit.errors import BackendError

__all__ = ["Backend", "BackendResult", "get_backend", "BACKENDS"]

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
