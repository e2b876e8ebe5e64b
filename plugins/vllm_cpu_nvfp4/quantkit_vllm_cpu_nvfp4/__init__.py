"""An NVFP4 linear kernel for vLLM's CPU platform, so quantkit can serve ModelOpt and
compressed-tensors NVFP4 checkpoints through vLLM's *real* NVFP4 loaders on a CPU-only machine.

Stock vLLM refuses NVFP4 on CPU ("Failed to find a kernel that can implement the NVFP4 linear
layer"): `_POSSIBLE_NVFP4_KERNELS` in vllm/model_executor/kernels/linear/__init__.py lists CUDA
and ROCm only. This plugin registers, for PlatformEnum.CPU, a subclass of vLLM's own
`EmulationNvFp4LinearKernel` that dequantizes each weight once after loading (same math as the
emulation kernel: `dequantize_to_dtype`, unswizzled scales) and keeps activations W4A4-faithful by
quantizing them to FP4 and back on every call (`ref_nvfp4_quant_dequant`). Numerics equal the
emulation kernel's; it is only ~10x faster because weights are not re-decoded per token.

What a CPU run validates: the checkpoint's tensors and metadata, vLLM's NVFP4 loaders and weight
processing, and the W4A4 numerics. What it does not: Blackwell kernels (CUTLASS/FlashInfer/Marlin).
Installed into the vLLM environment only (it imports vLLM, never quantkit)."""

from __future__ import annotations

__all__ = ["register"]

_REGISTERED = False


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
    from vllm.model_executor.layers.quantization.utils.nvfp4_emulation_utils import (
        dequantize_to_dtype,
        ref_nvfp4_quant_dequant,
    )

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
            x_dq = ref_nvfp4_quant_dequant(x2, layer.input_global_scale_inv, 16)
            w = layer.quantkit_w_dq
            if w.dtype != x.dtype:
                w = layer.quantkit_w_dq = w.to(x.dtype)
            out = torch.nn.functional.linear(x_dq, w, bias)
            return out.reshape(*shape[:-1], out.shape[-1])

    register_linear_kernel(QuantkitCpuNvFp4LinearKernel, PlatformEnum.CPU, "nvfp4")
    logger.info("quantkit: registered QuantkitCpuNvFp4LinearKernel (NVFP4 W4A4 on CPU, weights dequantized at load)")
    _REGISTERED = True
