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


def _tensors(d):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_layerwise_on_gpu_matches_full(tmp_path):
    """The layer loop on a GPU (each stand-in moved to CUDA) gives the full run's checkpoint."""
    import torch

    save_tiny_checkpoint("llama", tmp_path / "src", num_hidden_layers=4)
    r = tmp_path / "r.yaml"
    r.write_text(f"name: g\nmodel:\n  source: {tmp_path / 'src'}\ncalibration:\n  samples: 8\n  seq_len: 128\n")
    recipe = resolve_recipe(str(r))
    full = quantize(recipe, QuantizeOptions(formats=["modelopt"], out=tmp_path / "full", mode="full"))[0]
    lw = quantize(recipe, QuantizeOptions(formats=["modelopt"], out=tmp_path / "lw", mode="layerwise"))[0]
    a, b = _tensors(full.path), _tensors(lw.path)
    assert set(a) == set(b)
    for k in a:
        if a[k].dtype == torch.uint8 or a[k].element_size() == 1:
            same = (a[k].view(torch.uint8) != b[k].view(torch.uint8)).float().mean().item()
            assert same < 0.01, (k, same)  # GPU matmul order may flip a rounding here and there
        else:
            assert torch.allclose(a[k].float(), b[k].float(), rtol=0.02), k


def test_nproc2_places_the_model_across_two_gpus(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    save_tiny_checkpoint("llama", tmp_path / "src", num_hidden_layers=4)
    r = tmp_path / "r.yaml"
    r.write_text(f"name: g\nmodel:\n  source: {tmp_path / 'src'}\ncalibration:\n  samples: 8\n  seq_len: 128\n")
    (res,) = quantize(resolve_recipe(str(r)), QuantizeOptions(formats=["modelopt"], out=tmp_path / "out", nproc=2))
    m = json.loads((res.path / "quantkit.json").read_text())
    assert m["run"]["devices"] == ["cuda:0", "cuda:1"]
    assert m["verification"]["fp4_modules"] == 28


def test_cuda_warm_up_thread_initialises_cuda_and_cublas():
    """quantize's warm-up thread leaves CUDA initialised (its context and a cuBLAS handle the
    main thread's matmuls reuse), and the process's first matmul afterwards gives the right answer."""
    import torch

    from quantkit.quantize.context import warm_cuda

    t = warm_cuda()
    assert t is not None
    t.join(timeout=120)
    assert not t.is_alive() and torch.cuda.is_initialized()
    a = torch.randn(128, 64, device="cuda", dtype=torch.float32)
    b = torch.randn(64, 32, device="cuda", dtype=torch.float32)
    ref = (a.double() @ b.double()).float()
    assert ((a @ b - ref).norm() / ref.norm()).item() < 1e-2
