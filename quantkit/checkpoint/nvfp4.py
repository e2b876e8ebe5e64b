"""NVFP4 arithmetic for checks (not for serving): unpack E2M1 nibbles and dequantize a stored
module in its format's convention, w = e2m1 * block_scale(fp8) * or / global_scale (each format's
module in quantkit/checkpoint/formats/ says which). Two values per byte, the first element in the
low nibble."""

from __future__ import annotations

__all__ = ["E2M1_VALUES", "unpack_e2m1", "dequantize"]

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def unpack_e2m1(packed):
    """uint8 [rows, cols/2] -> float32 [rows, cols]."""
    import torch

    lut = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    low = (packed & 0x0F).long()
    high = (packed >> 4).long()
    out = torch.stack([lut[low], lut[high]], dim=-1)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def dequantize(packed, block_scale, global_scale, divide: bool):
    """One NVFP4 weight (group size 16) to float32: e2m1 * block_scale / global_scale (`divide`)
    or * global_scale. Formats call it with their convention (`Format.dequantize`)."""
    vals = unpack_e2m1(packed)
    scale = block_scale.float().repeat_interleave(16, dim=-1)[..., : vals.shape[-1]]
    g = global_scale.float().reshape(())
    return vals * scale / g if divide else vals * scale * g
