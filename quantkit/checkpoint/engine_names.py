"""The module names a serving engine builds from a checkpoint's module names, as data.

vLLM fuses some projections of the checkpoint into one module (its `packed_modules_mapping`)
and decides quantized-or-not for the fused module as a whole. An `ignore` / `exclude_modules`
entry is only right if it covers the names the engine builds, not just the names in the file
(vLLM issue 40252: split GDN names ignored, fused `in_proj_qkvz` / `in_proj_ba` built as FP4).

One table per architecture (config.json `model_type`), each naming the vLLM file it was read
from. Re-check them when vLLM moves.
"""

from __future__ import annotations

__all__ = ["VLLM_PACKED", "DEFAULT_PACKED", "MATCHED_BY_FUSED_NAME", "FUSED_MOE_CONTAINER", "packed_for",
           "part_to_fused"]

Packed = dict[str, tuple[str, ...]]  # fused leaf name -> the checkpoint leaf names it is built from

# vllm/model_executor/models/llama.py  LlamaForCausalLM.packed_modules_mapping (most decoders copy it)
_DENSE: Packed = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
# vllm/model_executor/models/qwen3_5.py  Qwen3_5ForCausalLMBase.packed_modules_mapping: the
# checkpoint stores split GDN projections, vLLM builds two fused modules from them.
_QWEN3_5_GDN: Packed = {"in_proj_qkvz": ("in_proj_qkv", "in_proj_z"), "in_proj_ba": ("in_proj_b", "in_proj_a")}

VLLM_PACKED: dict[str, Packed] = {
    # vllm/model_executor/models/llama.py
    "llama": _DENSE,
    # vllm/model_executor/models/qwen2.py, qwen3.py, qwen3_moe.py
    "qwen2": _DENSE, "qwen3": _DENSE, "qwen3_moe": _DENSE,
    # vllm/model_executor/models/qwen3_next.py: GDN weights are stored fused already
    # (in_proj_qkvz, in_proj_ba), so only the attention and MLP projections are packed.
    "qwen3_next": _DENSE,
    # vllm/model_executor/models/qwen3_5.py (dense) and qwen3_5_moe.py (MoE, VL subclasses reuse it)
    "qwen3_5": _DENSE | _QWEN3_5_GDN, "qwen3_5_text": _DENSE | _QWEN3_5_GDN,
    "qwen3_5_moe": _DENSE | _QWEN3_5_GDN, "qwen3_5_moe_text": _DENSE | _QWEN3_5_GDN,
    # vllm/model_executor/models/nemotron_h.py  NemotronHForCausalLM: attention only; the Mamba
    # in_proj is one checkpoint tensor already.
    "nemotron_h": {"qkv_proj": ("q_proj", "k_proj", "v_proj")},
    # vllm/model_executor/models/gemma3.py, gemma4.py
    "gemma3": _DENSE, "gemma3_text": _DENSE, "gemma4": _DENSE, "gemma4_text": _DENSE,
}
DEFAULT_PACKED: Packed = _DENSE

# Fused names that some vLLM versions match against `ignore` by the fused name itself instead of
# expanding them to their parts (the Qwen3.5 model class lacked the mapping: issue 40252). An
# ignore list must cover the fused name as well as the parts to be right on every version.
MATCHED_BY_FUSED_NAME: frozenset[str] = frozenset({"in_proj_qkvz", "in_proj_ba"})

# vllm/model_executor/layers/fused_moe/layer.py  FusedMoE: all experts of one layer
# (`<prefix>.experts.<i>.<proj>` on disk) become one module with a single quantization scheme.
FUSED_MOE_CONTAINER = "experts"


def packed_for(model_types: list[str]) -> Packed:
    """The fused modules vLLM builds for a model (union over its model types), else the default."""
    out: Packed = {}
    for mt in model_types:
        out.update(VLLM_PACKED.get(mt, {}))
    return out or dict(DEFAULT_PACKED)


def part_to_fused(packed: Packed) -> dict[str, str]:
    """checkpoint leaf -> the fused leaf vLLM builds from it (`q_proj` -> `qkv_proj`)."""
    return {part: fused for fused, parts in packed.items() for part in parts}
