"""An NVFP4 linear kernel for vLLM's CPU platform, so quantkit can serve ModelOpt and
compressed-tensors NVFP4 checkpoints through vLLM's *real* NVFP4 loaders on a CPU-only machine.

Stock vLLM refuses NVFP4 on CPU ("Failed to find a kernel that can implement the NVFP4 linear
layer"): `_POSSIBLE_NVFP4_KERNELS` in vllm/model_executor/kernels/linear/__init__.py lists CUDA
and ROCm only. This plugin registers, for PlatformEnum.CPU, a subclass of vLLM's own
`EmulationNvFp4LinearKernel` that dequantizes each weight once after loading (same math as the
emulation kernel: `dequantize_to_dtype`, unswizzled scales) and keeps activations W4A4-faithful by
quantizing them to FP4 and back on every call. `quant_dequant` is vLLM's `ref_nvfp4_quant_dequant`
with its FP4 rounding (`cast_to_fp4`: eight masked assignments) replaced by one round-half-even on
the E2M1 grid's step (0.5 below 2, 1 below 4, else 2): bit-identical results (the plugin's test
compares them on random and boundary inputs), 1.6x faster on CPU, where this rounding dominated the
cost of every NVFP4 linear. Numerics equal the emulation kernel's; weights are not re-decoded per token.

What a CPU run validates: the checkpoint's tensors and metadata, vLLM's NVFP4 loaders and weight
processing, and the W4A4 numerics. What it does not: Blackwell kernels (CUTLASS/FlashInfer/Marlin).
Installed into the vLLM environment only (it imports vLLM, never quantkit)."""

from __future__ import annotations

__all__ = ["register", "cast_to_fp4", "quant_dequant"]

_REGISTERED = False


def cast_to_fp4(x):
    """Round float32 values already clamped to [-6, 6] to the nearest FP4 E2M1 value, ties to even:
    the same result as vLLM's `cast_to_fp4`, in five element-wise passes instead of ~40."""
    import torch

    a = x.abs()
    step = torch.where(a < 2.0, 0.5, torch.where(a < 4.0, 1.0, 2.0))
    return torch.round(a / step) * step * torch.sign(x)


def quant_dequant(x, global_scale, block_size: int = 16):
    """vLLM's `ref_nvfp4_quant_dequant` (CPU path), step for step, with the faster `cast_to_fp4`."""
    import torch
    from vllm.model_executor.layers.quantization.utils.nvfp4_emulation_utils import (
        FLOAT4_E2M1_MAX_RECIPROCAL,
        get_reciprocal,
    )

    m, n = x.shape
    xb = x.reshape(m, n // block_size, block_size)
    vec_max = torch.max(torch.abs(xb), dim=-1, keepdim=True)[0].to(torch.float32)
    scale = torch.clamp(global_scale * (vec_max * FLOAT4_E2M1_MAX_RECIPROCAL), max=448, min=-448)
    scale = scale.to(torch.float8_e4m3fn).to(torch.float32)
    output_scale = get_reciprocal(scale * get_reciprocal(global_scale))
    q = cast_to_fp4(torch.clamp(xb.to(torch.float32) * output_scale, -6.0, 6.0))
    return (q * (scale / global_scale)).reshape(m, n).to(x.dtype)


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from vllm.platforms import PlatformEnum, current_platform

    if not current_platform.is_cpu():
        return
    import torch
    from vllm.logger import init_logger
    from vllm.model_executor.kernels.linear import register_linear_kernel
    from vllm.model_executor.kernels.linear.nvfp4.emulation import EmulationNvFp4LinearKernel
    from vllm.model_executor.layers.quantization.utils.nvfp4_emulation_utils import dequantize_to_dtype

    logger = init_logger(__name__)

    class QuantkitCpuNvFp4LinearKernel(EmulationNvFp4LinearKernel):
        """W4A4 NVFP4 on CPU: weights dequantized once, activations fake-quantized per call."""

        @classmethod
        def is_supported(cls, compute_capability: int | None = None) -> tuple[bool, str | None]:
            return (True, None) if current_platform.is_cpu() else (False, "CPU platform only")

        def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
            super().process_weights_after_loading(layer)
            w = dequantize_to_dtype(layer.weight.data.view(torch.uint8), layer.weight_scale.data,
                                    layer.weight_global_scale, torch.bfloat16, 16, swizzle=False)
            layer.quantkit_w_dq = w.contiguous()

        def apply_weights(self, layer: torch.nn.Module, x: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            x_dq = quant_dequant(x2, layer.input_global_scale_inv, 16)
            w = layer.quantkit_w_dq
            if w.dtype != x.dtype:
                w = layer.quantkit_w_dq = w.to(x.dtype)
            out = torch.nn.functional.linear(x_dq, w, bias)
            return out.reshape(*shape[:-1], out.shape[-1])

    register_linear_kernel(QuantkitCpuNvFp4LinearKernel, PlatformEnum.CPU, "nvfp4")
    logger.info("quantkit: registered QuantkitCpuNvFp4LinearKernel (NVFP4 W4A4 on CPU, weights dequantized at load)")
    _REGISTERED = True
