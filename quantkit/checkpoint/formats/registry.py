"""The registry of formats: one line per format module."""

from __future__ import annotations

from quantkit.checkpoint.formats.base import Format
from quantkit.checkpoint.formats.compressed_tensors import COMPRESSED_TENSORS
from quantkit.checkpoint.formats.modelopt import MODELOPT
from quantkit.errors import UsageError

__all__ = ["FORMATS", "BOTH", "DEFAULT_MATCHING", "get_format", "parse_formats", "format_for_kind"]

FORMATS: dict[str, Format] = {f.name: f for f in (MODELOPT, COMPRESSED_TENSORS)}
BOTH = "both"  # --format both: every format
# how the unquantized lists of other checkpoints (transformers FP8's modules_to_not_convert, unknown
# methods) are matched: exact names and `re:` regexes, vLLM's own convention
DEFAULT_MATCHING: Format = COMPRESSED_TENSORS


def get_format(name: str) -> Format:
    """The format called `name` (or one of its aliases)."""
    for f in FORMATS.values():
        if name == f.name or name in f.aliases:
            return f
    raise UsageError(f"unknown format {name!r}; use {_choices()}", hint="e.g. --format both")


def parse_formats(value: str) -> list[str]:
    """--format VALUE -> format names ('both': every format)."""
    return list(FORMATS) if value == BOTH else [get_format(value).name]


def format_for_kind(kind: str) -> Format | None:
    """The format a detect_format kind belongs to (None: unquantized, mixed, unknown)."""
    return next((f for f in FORMATS.values() if kind in f.kinds), None)


def _choices() -> str:
    names = [f.name + (f" ({', '.join(f.aliases)})" if f.aliases else "") for f in FORMATS.values()]
    return ", ".join(names) + f" or {BOTH}"
