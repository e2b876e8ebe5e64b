"""Mixture-of-experts routing: routers and shared-expert gates stay out of FP4.

In transformers 5 many routers are custom classes (e.g. `Qwen3MoeTopKRouter`, Nemotron-H
`mixer.gate`) rather than `nn.Linear`, so they are matched by name, never by class. The experts
themselves are FP4 candidates; `quantkit.plan` says whether the chosen backend really quantizes
fused 3-D expert parameters."""

from __future__ import annotations

from typing import Any

from quantkit.families.base import Family

__all__ = ["MOE", "TOPK_KEYS", "NUM_EXPERTS_KEYS"]

# config.json keys for experts per token and routed experts, as the MoE architectures spell them
# (inspect's decode ceiling reads only the active experts' bytes).
TOPK_KEYS = ("num_experts_per_tok", "top_k_experts", "moe_topk", "num_experts_per_token", "moe_top_k")
NUM_EXPERTS_KEYS = ("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts")

_ROUTER = "MoE router: small, and FP4 noise flips expert choices; NVIDIA keeps routers in higher precision"


def _slice_layer(text: Any, i: int, n: int) -> str | None:
    """Qwen-MoE's `mlp_only_layers` lists dense layers by index; `decoder_sparse_step` makes every
    k-th layer sparse, which a one-layer model cannot express."""
    if isinstance(getattr(text, "mlp_only_layers", None), (list, tuple)):
        text.mlp_only_layers = [0] if i in text.mlp_only_layers else []
    if getattr(text, "decoder_sparse_step", 1) not in (None, 1):
        return f"decoder_sparse_step={text.decoder_sparse_step} ties the layer type to its index"
    return None

MOE = Family(
    name="moe",
    description="MoE routers and shared-expert gates (any MoE architecture)",
    static_rules=(
        ("*.mlp.gate", _ROUTER),
        ("*.mixer.gate", _ROUTER + " (Nemotron-H names it `mixer.gate`)"),
        ("*.block_sparse_moe.gate", _ROUTER),
        ("*.router", _ROUTER),
        ("*.router.*", _ROUTER),
        ("*shared_expert_gate*", "shared-expert gate: a 1-wide sigmoid gate, too small and sensitive for FP4"),
    ),
    slice_layer=_slice_layer,
    code="router-in-fp4",
)
