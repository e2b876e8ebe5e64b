"""Mixture-of-experts routing: routers and shared-expert gates stay out of FP4.

In transformers 5 many routers are custom classes (e.g. `Qwen3MoeTopKRouter`, Nemotron-H
`mixer.gate`) rather than `nn.Linear`, so they are matched by name, never by class. The experts
themselves are FP4 candidates; `quantkit.plan` says whether the chosen backend really quantizes
fused 3-D expert parameters."""

from quantkit.families.base import Family

__all__ = ["MOE"]

_ROUTER = "MoE router: small, and FP4 noise flips expert choices; NVIDIA keeps routers in higher precision"

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
)
