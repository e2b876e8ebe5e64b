"""Deliberately broken copies of a good NVFP4 checkpoint, one per failure class users have met.
Each returns the broken copy's path; validation must fail each with the right reason.

The loud ones (NaN scales, scrambled codes, wrong metadata) break every layer. The subtle ones
break one tensor of one layer and load and answer fluently: the gate has to see them in the numbers
(perplexity ratio, knowledge retained, long-generation drift), not in the text."""

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


# One format's tensor names for each role of an NVFP4 linear (see docs/formats.md).
ROLES = {
    "modelopt": {"packed": "weight", "block_scale": "weight_scale", "global_scale": "weight_scale_2",
                 "input_scale": "input_scale"},
    "compressed-tensors": {"packed": "weight_packed", "block_scale": "weight_scale",
                           "global_scale": "weight_global_scale", "input_scale": "input_global_scale"},
}


def _format(ckpt: Path) -> str:
    return "modelopt" if (ckpt / "hf_quant_config.json").is_file() else "compressed-tensors"


def _edit_one(src: Path, dst: Path, module: str, role: str, fn) -> Path:
    """A copy of `src` whose tensor `module`.<role> is replaced by fn(tensor)."""
    _copy(src, dst)
    key = f"{module}.{ROLES[_format(dst)][role]}"

    def edit(t):
        if key not in t:
            raise KeyError(f"{key} not in the checkpoint")
        t[key] = fn(t[key])

    _edit_tensors(dst, edit)
    return dst


def block_scales_x4(src: Path, dst: Path, module: str = "model.layers.10.mlp.down_proj") -> Path:
    """One linear's FP8 block scales x4 (saturating at 448): a scale-export or repacking bug that
    leaves the layer's weights 4x too large."""
    return _edit_one(src, dst, module, "block_scale",
                     lambda s: (s.to(torch.float32) * 4).clamp(max=448).to(torch.float8_e4m3fn))


def zero_projection(src: Path, dst: Path, module: str = "model.layers.1.self_attn.k_proj") -> Path:
    """One attention projection's FP4 codes all zero (ollama 15866: the K projection of early layers
    entirely zero in an FP4 export, no load error)."""
    return _edit_one(src, dst, module, "packed", torch.zeros_like)


def flipped_signs(src: Path, dst: Path, module: str = "model.layers.15.mlp.gate_proj") -> Path:
    """The sign bit of every FP4 code of one linear flipped (W -> -W): a nibble-order or bit-layout
    bug in a packer."""
    return _edit_one(src, dst, module, "packed", lambda p: p ^ 0x88)


def inverted_global_scale(src: Path, dst: Path, module: str = "model.layers.20.self_attn.o_proj") -> Path:
    """One linear's per-tensor weight global scale in the other format's convention (ModelOpt stores
    amax/(6*448), compressed-tensors its inverse): the classic converter bug between the two layouts."""
    return _edit_one(src, dst, module, "global_scale", lambda g: 1.0 / g)


SUBTLE = {"block-scales-x4": block_scales_x4, "zero-k-proj": zero_projection, "flipped-signs": flipped_signs,
          "inverted-global-scale": inverted_global_scale}


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
