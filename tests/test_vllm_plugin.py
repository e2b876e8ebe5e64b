"""quantkit's vLLM CPU NVFP4 plugin computes exactly what vLLM's own emulation computes: its faster
FP4 rounding is compared with vLLM's `ref_nvfp4_quant_dequant` inside the vLLM environment, on
random activations and on every rounding boundary of the E2M1 grid."""

from __future__ import annotations

import subprocess

import pytest

from conftest import VLLM_PY

pytestmark = pytest.mark.e2e

CHECK = r"""
import torch
from vllm.model_executor.layers.quantization.utils import nvfp4_emulation_utils as U
from quantkit_vllm_cpu_nvfp4 import cast_to_fp4, quant_dequant
g = torch.Generator().manual_seed(0)
for m, scale in ((1, 3.0), (7, 0.01), (300, 50.0), (2048, 1.0)):
    x = (torch.randn(m, 576, generator=g) * scale).to(torch.bfloat16)
    gs = torch.tensor([448 * 6 / float(x.abs().max())])
    assert torch.equal(U.ref_nvfp4_quant_dequant(x, gs, 16), quant_dequant(x, gs, 16)), m
grid = torch.linspace(-6, 6, 48001)  # steps of 1/4000: every tie (0.25, 0.75, ..., 5.0) is on it
assert torch.equal(U.cast_to_fp4(grid.clone()), cast_to_fp4(grid))
# the GEMM the plugin runs on dequantized weights (vLLM CPU's prepacked oneDNN) = torch's linear
from vllm import _custom_ops as ops
for m in (1, 3, 64, 700):
    x = torch.randn(m, 576, generator=g).to(torch.bfloat16)
    w = torch.randn(1536, 576, generator=g).to(torch.bfloat16)
    if ops._supports_onednn:
        assert torch.equal(ops.onednn_mm(ops.create_onednn_mm(w.t(), 32), x, None), torch.nn.functional.linear(x, w)), m
print("identical")
"""


def test_plugin_rounding_is_bit_identical_to_vllm():
    if not VLLM_PY.exists():
        pytest.skip("no vLLM environment")
    out = subprocess.run([str(VLLM_PY), "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "identical" in out.stdout, out.stderr[-2000:]
