"""Multi-token-prediction (MTP) heads: the speculative-decoding draft, kept in BF16.

transformers drops MTP weights of qwen3_next / qwen3_5 / nemotron_h on load, so a backend never
sees them; `quantkit.checkpoint.verify` carries the source's MTP tensors (`is_mtp`) over in BF16."""

from __future__ import annotations

from typing import Any

from quantkit.families.base import Family

__all__ = ["MTP", "is_mtp"]

# Config fields counting MTP layers: the one-layer stand-in has none.
_COUNT_KEYS = ("num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_layers")


def _slice_layer(text: Any, i: int, n: int) -> str | None:
    for key in _COUNT_KEYS:
        if getattr(text, key, None):
            setattr(text, key, 0)
    return None


MTP = Family(
    name="mtp",
    description="multi-token-prediction heads (Qwen3-Next/3.5/3.6, Nemotron-3, DeepSeek-style)",
    static_rules=(
        ("*mtp*", "multi-token-prediction head: the speculative-decoding draft; engines load it in BF16"),
        ("re:(?:.*\\.)?nextn", "next-n prediction head (MTP): the speculative-decoding draft; kept in BF16"),
    ),
    slice_layer=_slice_layer,
    code="mtp-in-fp4",
)
_PATTERNS = [r.pattern for r in MTP.rules(None)]


def is_mtp(name: str) -> bool:
    """Whether a module or tensor name belongs to an MTP head (by the rules above)."""
    return any(p.covers(name) for p in _PATTERNS)
