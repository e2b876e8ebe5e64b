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
compares them on random and boundary inputs), 2.2x faster on CPU (prefill), where this rounding dominated the
cost of every NVFP4 linear. The GEMM on the dequantized weight is vLLM CPU's own prepacked oneDNN
handle, as for its unquantized linears. Numerics equal the emulation kernel's; weights are not
re-decoded per token.

What a CPU run validates: the checkpoint's tensors and metadata, vLLM's NVFP4 loaders and weight
processing, and the W4A4 numerics. What it does not: Blackwell kernels (CUTLASS/FlashInfer/Marlin).
Installed into the vLLM environment only (it imports vLLM, never quantkit)."""

from __future__ import annotations

import os

__all__ = ["register", "cast_to_fp4", "quant_dequant"]

_REGISTERED = False


def cast_to_fp4(x):
    """Round float32 values already clamped to [-6, 6] to the nearest FP4 E2M1 value, ties to even:
    the same result as vLLM's `cast_to_fp4`, in seven element-wise passes instead of ~40. The E2M1
    step is 0.5 below 2, 1 below 4, else 2: half the power of two of max(|x|, 1). Adding
    C = step * 2**23 puts the float32 ulp exactly at `step`, so `(|x| + C) - C` is IEEE
    round-half-even to a multiple of `step`, which is what vLLM's masked assignments compute."""
    import torch

    a = x.abs()
    c = a.clamp_min(1.0).view(torch.int32).bitwise_and_(0x7F800000).view(torch.float32).mul_(4194304.0)
    return a.add_(c).sub_(c).copysign_(x)


def quant_dequant(x, global_scale, block_size: int = 16, inv_global_scale=None):
    """vLLM's `ref_nvfp4_quant_dequant` (CPU path), step for step, with the faster `cast_to_fp4` and
    element-wise passes done in place (bit-identical; half the time on prefill-sized inputs).
    `inv_global_scale`: vLLM's `get_reciprocal(global_scale)`, precomputed per layer."""
    import torch
    from vllm.model_executor.layers.quantization.utils.nvfp4_emulation_utils import (
        FLOAT4_E2M1_MAX_RECIPROCAL,
        get_reciprocal,
    )

    m, n = x.shape
    xb = x.reshape(m, n // block_size, block_size)
    vec_max = torch.amax(torch.abs(xb), dim=-1, keepdim=True).to(torch.float32)
    scale = torch.clamp(global_scale * (vec_max * FLOAT4_E2M1_MAX_RECIPROCAL), max=448, min=-448)
    scale = scale.to(torch.float8_e4m3fn).to(torch.float32)
    if inv_global_scale is None:
        inv_global_scale = get_reciprocal(global_scale)
    output_scale = get_reciprocal(scale * inv_global_scale)
    q = cast_to_fp4(xb.to(torch.float32).mul_(output_scale).clamp_(-6.0, 6.0))
    return q.mul_(scale / global_scale).reshape(m, n).to(x.dtype)


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
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers.quantization.utils.nvfp4_emulation_utils import (
        dequantize_to_dtype,
        get_reciprocal,
    )

    logger = init_logger(__name__)

    class QuantkitCpuNvFp4LinearKernel(EmulationNvFp4LinearKernel):
        """W4A4 NVFP4 on CPU: weights dequantized once, activations fake-quantized per call."""

        @classmethod
        def is_supported(cls, compute_capability: int | None = None) -> tuple[bool, str | None]:
            return (True, None) if current_platform.is_cpu() else (False, "CPU platform only")

        def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
            super().process_weights_after_loading(layer)
            packed = layer.weight.data.view(torch.uint8)
            if os.environ.get("QUANTKIT_CPU_NVFP4_FAULT") == "nibble-order":  # test instrumentation only
                packed = ((packed & 0x0F) << 4) | (packed >> 4)
            w = dequantize_to_dtype(packed, layer.weight_scale.data,
                                    layer.weight_global_scale, torch.bfloat16, 16, swizzle=False)
            layer.quantkit_w_dq = w.contiguous()
            layer.quantkit_inv_gs = get_reciprocal(layer.input_global_scale_inv)
            layer.quantkit_mm = _onednn(layer.quantkit_w_dq)

        def apply_weights(self, layer: torch.nn.Module, x: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
            if _STOCK:  # vLLM's own emulation path, untouched (differential kernel check)
                return super().apply_weights(layer, x, bias)
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            x_dq = quant_dequant(x2, layer.input_global_scale_inv, 16, layer.quantkit_inv_gs)
            w = layer.quantkit_w_dq
            if w.dtype != x.dtype:
                w = layer.quantkit_w_dq = w.to(x.dtype)
                layer.quantkit_mm = _onednn(w)
            if layer.quantkit_mm is not None:
                out = ops.onednn_mm(layer.quantkit_mm, x_dq, bias)
            else:
                out = torch.nn.functional.linear(x_dq, w, bias)
            return out.reshape(*shape[:-1], out.shape[-1])

    # QUANTKIT_CPU_NVFP4_KERNEL=vllm-emulation: every call goes through vLLM's EmulationNvFp4LinearKernel
    # (dequantize per call, vLLM's own activation rounding) instead of this plugin's faster path.
    _STOCK = os.environ.get("QUANTKIT_CPU_NVFP4_KERNEL") == "vllm-emulation"

    def _onednn(w: torch.Tensor):
        """vLLM CPU's own prepacked oneDNN GEMM, as its unquantized linears use (2.4x faster than
        torch's linear at decode sizes; same result); None where this build lacks it."""
        if not (ops._supports_onednn and w.dtype == torch.bfloat16):
            return None
        try:
            return ops.create_onednn_mm(w.t(), 32)
        except RuntimeError as exc:  # pragma: no cover - depends on the CPU
            logger.warning("quantkit: oneDNN GEMM unavailable (%s); using torch linear", exc)
            return None

    register_linear_kernel(QuantkitCpuNvFp4LinearKernel, PlatformEnum.CPU, "nvfp4")
    logger.info("quantkit: registered QuantkitCpuNvFp4LinearKernel (NVFP4 W4A4 on CPU, weights dequantized at load)")
    _REGISTERED = True
