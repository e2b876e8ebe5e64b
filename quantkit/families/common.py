"""What holds for every architecture: the output head and the embeddings stay out of FP4, and
transformers' generic per-layer field `layer_types` (e.g. `full_attention`, `sliding_attention`,
`linear_attention`) describes the layers."""

from __future__ import annotations

from typing import Any

from quantkit.families.base import Family, config_value

__all__ = ["COMMON"]


def _layer_kinds(config: Any) -> list[str]:
    types = config_value(config, "layer_types")
    return [str(t) for t in types] if isinstance(types, (list, tuple)) else []


def _slice_layer(text: Any, i: int, n: int) -> str | None:
    types = getattr(text, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == n:
        text.layer_types = [types[i]]
    return None


COMMON = Family(
    name="common",
    description="output head and embeddings, kept out of FP4 in every architecture",
    static_rules=(
        ("lm_head", "output head: every token's logits pass through it; NVIDIA and vLLM keep it unquantized"),
        ("*embed_tokens*", "token embeddings: a lookup, not a matmul; FP4 costs accuracy and saves no compute"),
    ),
    layer_kinds=_layer_kinds,
    slice_layer=_slice_layer,
    code="head-in-fp4",
)
