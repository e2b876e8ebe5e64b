"""Where the data shipped with quantkit lives: `recipes/`, `calib/`, `validate/`.

In a wheel they are package data under `quantkit/_data/` (see pyproject's force-include);
in a source checkout or editable install they are the top-level folders of the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir", "cache_root"]

_PKG = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """The folder holding shipped data of one kind ('recipes', 'calib' or 'validate')."""
    if kind not in ("recipes", "calib", "validate"):
        raise ValueError(f"unknown data kind {kind!r}")
    packaged = _PKG / "_data" / kind
    if packaged.is_dir():
        return packaged
    return _PKG.parent / kind


def cache_root() -> Path:
    """quantkit's cache (embedded models, validation registry): $QUANTKIT_CACHE or ~/.cache/quantkit."""
    return Path(os.environ.get("QUANTKIT_CACHE", Path.home() / ".cache" / "quantkit"))
