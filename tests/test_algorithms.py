"""Calibration algorithms as recipe options: each llm-compressor option produces a verified
NVFP4 checkpoint of a tiny model; unsupported combinations fail before anything is loaded."""

from __future__ import annotations

import pytest

from quantkit.cli.main import main
from quantkit.checkpoint.formats import stored_modules
from quantkit.checkpoint.headers import checkpoint_tensors
from tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    p = tmp_path_factory.mktemp("alg") / "src"
    save_tiny_checkpoint("llama", p)
    return p


@pytest.mark.e2e  # quantizes; the refusals below fail before anything is loaded and are fast
@pytest.mark.parametrize("algorithm", ["minmax", "mse", "gptq"])
def test_llmcompressor_algorithms_produce_verified_nvfp4(tiny_src, tmp_path, algorithm):
    import json

    r = tmp_path / "r.yaml"
    r.write_text(f"name: t\nmodel:\n  source: {tiny_src}\ncalibration:\n  algorithm: {algorithm}\n  samples: 4\n"
                 "  seq_len: 64\n")
    out = tmp_path / "out"
    assert main(["quantize", str(r), "--format", "ct", "--backend", "llmcompressor", "--out", str(out)]) == 0
    mods = stored_modules(checkpoint_tensors(out))
    assert sum(m.precision == "fp4" for m in mods.values()) == 14
    m = json.loads((out / "quantkit.json").read_text())
    assert m["recipe"]["calibration"]["algorithm"] == algorithm


@pytest.mark.parametrize("fmt,algorithm", [("modelopt", "awq_lite"), ("modelopt", "mse"), ("ct", "awq")])
def test_gpu_only_algorithms_fail_before_loading_on_cpu(capsys, fmt, algorithm):
    from conftest import cuda_available

    if cuda_available():
        pytest.skip("has a GPU")
    assert main(["quantize", "smollm2-135m", "--format", fmt, "--algorithm", algorithm,
                 "--out", "/nonexistent/never-written"]) == 3
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "supported here: minmax" in err


def test_unknown_algorithm_lists_supported(capsys):
    assert main(["quantize", "smollm2-135m", "--format", "ct", "--algorithm", "smoothquant",
                 "--out", "/nonexistent/x"]) == 3
    assert "supported here: minmax, mse, gptq" in capsys.readouterr().err


@pytest.mark.e2e
def test_one_algorithm_per_backend(tiny_src, tmp_path):
    """`algorithm: {modelopt: minmax, llmcompressor: gptq}`: each library runs its own best option
    in one `--format both` run; the manifests record what each was given."""
    import json

    r = tmp_path / "r.yaml"
    r.write_text(f"name: t\nmodel:\n  source: {tiny_src}\ncalibration:\n"
                 "  algorithm: {modelopt: minmax, llmcompressor: gptq}\n  samples: 4\n  seq_len: 64\n")
    out = tmp_path / "out"
    assert main(["quantize", str(r), "--format", "both", "--out", str(out)]) == 0
    mo = json.loads((out / "modelopt" / "quantkit.json").read_text())["backend_config"]
    ct = json.loads((out / "ct" / "quantkit.json").read_text())["backend_config"]
    assert mo["algorithm"] == "max" and ct["algorithm"] == "gptq"


def test_per_backend_algorithm_is_checked_per_backend(tmp_path, capsys):
    from conftest import cuda_available

    if cuda_available():
        pytest.skip("has a GPU")
    r = tmp_path / "r.yaml"
    r.write_text("name: t\nmodel:\n  source: embedded:smollm2-135m\ncalibration:\n"
                 "  algorithm: {modelopt: awq_lite, llmcompressor: gptq}\n")
    assert main(["quantize", str(r), "--format", "both", "--out", str(tmp_path / "q")]) == 3
    assert "'awq_lite' with backend modelopt needs a CUDA GPU" in capsys.readouterr().err
    r.write_text("name: t\nmodel:\n  source: x/y\ncalibration:\n  algorithm: {vllm: gptq}\n")
    assert main(["quantize", str(r), "--out", str(tmp_path / "q")]) == 3
    assert "calibration.algorithm" in capsys.readouterr().err
