"""GPU paths (skipped cleanly without CUDA): ModelOpt calibration on the GPU, including the
algorithms that need CUDA (awq_lite, mse), produce verified NVFP4 checkpoints."""

from __future__ import annotations

import json

import pytest

from quantkit.quantize import QuantizeOptions, quantize
from quantkit.recipe import resolve_recipe
from tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("algorithm", ["minmax", "awq_lite", "mse"])
def test_modelopt_on_gpu(tmp_path, algorithm):
    import torch

    save_tiny_checkpoint("llama", tmp_path / "src")
    r = tmp_path / "r.yaml"
    r.write_text(f"name: g\nmodel:\n  source: {tmp_path / 'src'}\ncalibration:\n  algorithm: {algorithm}\n"
                 "  samples: 8\n  seq_len: 128\n")
    (res,) = quantize(resolve_recipe(str(r)), QuantizeOptions(formats=["modelopt"], out=tmp_path / "out"))
    m = json.loads((res.path / "quantkit.json").read_text())
    assert m["run"]["device"] == torch.cuda.get_device_name(0) and m["run"]["peak_gpu_bytes"] > 0
    assert m["verification"]["fp4_modules"] == 14
    assert m["backend_config"]["algorithm"] in ("max", "awq_lite", {"method": "mse"})
