"""Gated DeltaNet (GDN) linear attention: Qwen3-Next, Qwen3.5, Qwen3.6 and models built on
them (GRM-2.6-Opus, Nex-N2-mini, Qwen3-Coder-Next)."""

from quantkit.families.base import Family

__all__ = ["GDN"]

_WHY = ("Gated DeltaNet linear attention: FP4 breaks the recurrent state (the first GRM-2.6 "
        "self-quantization answered only blank space); llm-compressor's Qwen3-Next examples ignore it too")

GDN = Family(
    name="gdn",
    description="Qwen3-Next / Qwen3.5 / Qwen3.6 hybrids with Gated DeltaNet `linear_attn`",
    model_types=("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text"),
    # One glob covers both naming schemes: fused in_proj_qkvz/in_proj_ba (Qwen3-Next, vLLM's
    # modules) and split in_proj_qkv/in_proj_z/in_proj_a/in_proj_b (Qwen3.5 in transformers 5),
    # plus out_proj and conv1d.
    static_rules=(("*linear_attn*", _WHY),),
)
