"""Tiny random-weight models of real architectures, built from transformers' own config classes.

Every builder uses the public config class of the family (real module names, real layer-type
fields), shrunk to hidden_size 64, 2-6 layers, vocab 512 and 4 experts, so tests run on CPU in
seconds and nothing is downloaded. Every nn.Linear input width is a multiple of 16 (NVFP4 block).

Public API: ``KINDS``, ``tiny_config``, ``tiny_model``, ``tiny_tokenizer``, ``save_tiny_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    Gemma4TextConfig,
    LlamaConfig,
    NemotronHConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
    Qwen3MoeConfig,
    Qwen3NextConfig,
)

VOCAB = 512  # config vocab_size; the tokenizer uses 259 of these ids
PAD, BOS, EOS = 0, 1, 2
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]

# Shared shrunken sizes: 4 q heads x 16 = 64, 2 kv heads (GQA), MLP 128, expert MLP 32.
_COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    max_position_embeddings=256, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
)
# Gated-DeltaNet (linear_attn) sizes for the Qwen3-Next / Qwen3.5 family.
_GDN = dict(
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=16, linear_conv_kernel_dim=4,
)
_QWEN_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                 shared_expert_intermediate_size=32)
_HYBRID = ["linear_attention", "full_attention", "linear_attention", "full_attention"]


def _llama() -> PreTrainedConfig:
    # SmolLM2-like: GQA, SwiGLU, tied embeddings.
    return LlamaConfig(**_COMMON, intermediate_size=128, num_hidden_layers=2, tie_word_embeddings=True)


def _qwen3_next() -> PreTrainedConfig:
    # 3:1 linear:full in the real model (full_attention_interval=4); here 1:1 over 4 layers.
    # All layers sparse (decoder_sparse_step=1, mlp_only_layers=[]), each MoE has a shared expert.
    return Qwen3NextConfig(**_COMMON, **_GDN, **_QWEN_MOE, intermediate_size=128, num_hidden_layers=4,
                           layer_types=list(_HYBRID), decoder_sparse_step=1, mlp_only_layers=[])


def _qwen3_5() -> PreTrainedConfig:
    return Qwen3_5TextConfig(**_COMMON, **_GDN, intermediate_size=128, num_hidden_layers=4,
                             layer_types=list(_HYBRID))


def _qwen3_5_moe() -> PreTrainedConfig:
    return Qwen3_5MoeTextConfig(**_COMMON, **_GDN, **_QWEN_MOE, num_hidden_layers=4,
                                layer_types=list(_HYBRID))


def _qwen3_moe() -> PreTrainedConfig:
    # Qwen3-30B-A3B-like, with one dense-MLP layer (mlp_only_layers): vLLM packs that layer's
    # gate_up_proj only after its quantization config copied the mapping.
    return Qwen3MoeConfig(**_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                          intermediate_size=128, num_hidden_layers=2, decoder_sparse_step=1, mlp_only_layers=[1])


def _nemotron_h() -> PreTrainedConfig:
    # Pattern "M*EM*-": Mamba-2, attention, MoE, Mamba-2, attention, MLP (every block kind once+).
    # Mamba inner width = mamba_num_heads * mamba_head_dim = 128 = expand * hidden_size.
    return NemotronHConfig(
        **_COMMON, hybrid_override_pattern="M*EM*-", intermediate_size=128,
        mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=16, conv_kernel=4,
        expand=2, chunk_size=16, use_mamba_kernels=False,
        n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32, n_group=1, topk_group=1,
    )


def _gemma3() -> PreTrainedConfig:
    return Gemma3TextConfig(**_COMMON, intermediate_size=128, num_hidden_layers=2,
                            layer_types=["sliding_attention", "full_attention"],
                            sliding_window=32, query_pre_attn_scalar=16)


def _gemma4(**kw) -> PreTrainedConfig:
    # gemma-4-31B-like: sliding (head_dim) + full (global_head_dim, k == v, fewer kv heads),
    # no per-layer embeddings (hidden_size_per_layer_input=0), no kv-shared layers.
    base = dict(_COMMON, intermediate_size=128, num_hidden_layers=2, sliding_window=32,
                layer_types=["sliding_attention", "full_attention"], global_head_dim=32,
                num_global_key_value_heads=1, attention_k_eq_v=True, hidden_size_per_layer_input=0,
                vocab_size_per_layer_input=VOCAB, final_logit_softcapping=30.0)
    base.update(kw)
    return Gemma4TextConfig(**base)


_BUILDERS = {
    "llama": _llama,
    "qwen3_next": _qwen3_next,
    "qwen3_5": _qwen3_5,
    "qwen3_5_moe": _qwen3_5_moe,
    "qwen3_moe": _qwen3_moe,
    "nemotron_h": _nemotron_h,
    "gemma3": _gemma3,
    "gemma4": _gemma4,
    # gemma-4-26B-A4B-like: every layer = dense MLP + router/experts in parallel.
    "gemma4_moe": lambda: _gemma4(enable_moe_block=True, num_experts=4, top_k_experts=2,
                                  moe_intermediate_size=32),
    # gemma-4-E2B-like: per-layer embeddings (PLE), last layers share KV, double-wide MLP there.
    "gemma4_e": lambda: _gemma4(num_hidden_layers=4, attention_k_eq_v=False,
                                layer_types=["sliding_attention", "full_attention"] * 2,
                                hidden_size_per_layer_input=16, num_kv_shared_layers=2,
                                use_double_wide_mlp=True),
}
KINDS: tuple[str, ...] = tuple(_BUILDERS)


def tiny_config(kind: str) -> PreTrainedConfig:
    """Return a fresh tiny config of ``kind`` (one of ``KINDS``), built with the family's
    public transformers config class (e.g. ``Qwen3NextConfig``, ``NemotronHConfig``)."""
    try:
        builder = _BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown tiny model kind {kind!r}; known: {', '.join(KINDS)}") from None
    return builder()


def tiny_model(kind: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16, **overrides) -> torch.nn.Module:
    """Build a random-init CausalLM of ``kind`` (deterministic for a given ``seed``).

    Uses ``AutoModelForCausalLM.from_config`` (e.g. Qwen3_5ForCausalLM, Gemma4ForCausalLM,
    NemotronHForCausalLM). Wrap the call in ``with torch.device("meta"):`` for a weightless
    model. The model is returned in eval mode.
    """
    torch.manual_seed(seed)
    config = tiny_config(kind)
    for k, v in overrides.items():  # e.g. num_hidden_layers=8
        setattr(config, k, v)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _byte_level_tokenizer():
    """A merge-free byte-level BPE: 3 specials + 256 byte symbols, encodes any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable byte stand-ins
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Return a 259-token byte-level fast tokenizer (pad=0, bos=1, eos=2, simple chat template)
    that encodes arbitrary text; ids always fit the tiny configs' ``vocab_size`` (512)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(),
        pad_token="<pad>", bos_token="<s>", eos_token="</s>",
    )
    tok.chat_template = _CHAT_TEMPLATE
    tok.model_max_length = 256
    return tok


def save_tiny_checkpoint(kind: str, path: str | Path, seed: int = 0,
                         dtype: torch.dtype = torch.bfloat16, **overrides) -> Path:
    """Save a tiny random model of ``kind`` with ``save_pretrained`` (safetensors) plus the tiny
    tokenizer into ``path``; ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained(path)``
    then work offline. Returns ``path`` as a ``Path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = tiny_model(kind, seed=seed, dtype=dtype, **overrides)
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path
