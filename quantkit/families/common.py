"""Rules that hold for every architecture: the output head and the embeddings."""

from quantkit.families.base import Family

__all__ = ["COMMON"]

COMMON = Family(
    name="common",
    description="output head and embeddings, kept out of FP4 in every architecture",
    static_rules=(
        ("lm_head", "output head: every token's logits pass through it; NVIDIA and vLLM keep it unquantized"),
        ("*embed_tokens*", "token embeddings: a lookup, not a matmul; FP4 costs accuracy and saves no compute"),
    ),
)
