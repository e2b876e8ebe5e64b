"""Deliberately broken copies of a good NVFP4 checkpoint, one per failure class users have met.
Each returns the broken copy's path; validation must fail each with the right reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    (dst / "quantkit.json").unlink(missing_ok=True)  # the manifest no longer describes it
    return dst


def _edit_tensors(ckpt: Path, fn) -> None:
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def nan_scales(src: Path, dst: Path) -> Path:
    """Per-block FP8 scales set to NaN in every layer: logits become NaN, which decode to token 0."""
    _copy(src, dst)

    def fn(t):
        nan = torch.tensor(float("nan")).to(torch.float8_e4m3fn)
        for k in t:
            if k.endswith(".weight_scale") and t[k].dtype == torch.float8_e4m3fn:
                t[k] = torch.full_like(t[k], nan)

    _edit_tensors(dst, fn)
    return dst


def scrambled_fp4(src: Path, dst: Path, seed: int = 0) -> Path:
    """Packed FP4 weights replaced by random bytes (scales kept): loads and runs, prints fluent-looking
    garbage."""
    _copy(src, dst)
    g = torch.Generator().manual_seed(seed)

    def fn(t):
        for k in t:
            if t[k].dtype == torch.uint8 and (k.endswith(".weight_packed") or k.endswith(".weight")):
                t[k] = torch.randint(0, 256, t[k].shape, dtype=torch.uint8, generator=g)

    _edit_tensors(dst, fn)
    return dst


def wrong_quant_method(src: Path, dst: Path) -> Path:
    """A ModelOpt checkpoint whose config.json claims compressed-tensors."""
    _copy(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                                  "config_groups": {"group_0": {"targets": ["Linear"], "format": "nvfp4-pack-quantized",
                                                                "weights": {"num_bits": 4, "type": "float", "group_size": 16,
                                                                            "strategy": "tensor_group", "symmetric": True,
                                                                            "dynamic": False}}},
                                  "ignore": ["lm_head"], "quantization_status": "compressed"}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    (dst / "hf_quant_config.json").unlink(missing_ok=True)
    return dst


def wrong_ignore(src: Path, dst: Path) -> Path:
    """A compressed-tensors checkpoint whose ignore list names quantized layers (layer 0's MLP)
    as unquantized: the engine builds BF16 layers for packed FP4 tensors."""
    _copy(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"]["ignore"] = cfg["quantization_config"]["ignore"] + [
        "model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.gate_proj"]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst
