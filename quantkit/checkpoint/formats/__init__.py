"""Checkpoint formats. One module per format (`modelopt.py`, `compressed_tensors.py`) holds all
of its naming; `registry.py` lists them; `detect.py` reads any checkpoint's metadata through
them. Adding a format: a new module here, one line in `registry.FORMATS`, and its serving flags
in validate/engines.yaml."""

from __future__ import annotations

from quantkit.checkpoint.formats.base import Format, FormatInfo, Tensors
from quantkit.checkpoint.formats.detect import (
    StoredModule,
    declared_precision,
    declared_unquantized,
    detect_format,
    format_of,
    is_embedding,
    module_format,
    stored_modules,
    unquantized_matcher,
)
from quantkit.checkpoint.formats.registry import BOTH, FORMATS, format_for_kind, get_format, parse_formats

__all__ = ["FORMATS", "BOTH", "Format", "FormatInfo", "Tensors", "get_format", "parse_formats", "format_for_kind",
           "StoredModule", "declared_precision", "declared_unquantized", "detect_format", "format_of",
           "is_embedding", "module_format", "stored_modules", "unquantized_matcher"]
