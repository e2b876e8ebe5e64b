"""Multi-token-prediction (MTP) heads: the speculative-decoding draft, kept in BF16.

transformers drops MTP weights of qwen3_next / qwen3_5 / nemotron_h on load, so a backend never
sees them; `quantkit.checkpoint.verify` carries the source's MTP tensors over in BF16."""

from quantkit.families.base import Family

__all__ = ["MTP"]

MTP = Family(
    name="mtp",
    description="multi-token-prediction heads (Qwen3-Next/3.5/3.6, Nemotron-3, DeepSeek-style)",
    static_rules=(
        ("*mtp*", "multi-token-prediction head: the speculative-decoding draft; engines load it in BF16"),
        ("re:(?:.*\\.)?nextn", "next-n prediction head (MTP): the speculative-decoding draft; kept in BF16"),
    ),
)
