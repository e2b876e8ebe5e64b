"""Format detection from metadata, including ModelOpt's NVFP4 variants (AWQ, weight-only)."""

from __future__ import annotations

import json

import pytest

from quantkit.checkpoint.formats import detect_format, format_of


@pytest.mark.parametrize("algo,kind", [("NVFP4", "modelopt-nvfp4"), ("NVFP4_AWQ", "modelopt-nvfp4"),
                                       ("W4A16_NVFP4", "modelopt-nvfp4"), ("FP8", "modelopt-fp8"),
                                       ("MIXED_PRECISION", "mixed"), ("INT4_AWQ", "unknown")])
def test_modelopt_kinds(tmp_path, algo, kind):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "modelopt"}}))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt", "version": "0.47.0"},
         "quantization": {"quant_algo": algo, "group_size": 16, "exclude_modules": ["lm_head"]}}))
    info = detect_format(tmp_path)
    assert info.kind == kind and info.producer == "modelopt" and info.unquantized_entries == ["lm_head"]


def test_compressed_tensors_and_unquantized(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"format": "nvfp4-pack-quantized", "weights": {"group_size": 16}}}}}))
    assert detect_format(tmp_path).kind == "compressed-tensors-nvfp4"
    assert format_of(tmp_path) == "compressed-tensors"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert format_of(tmp_path) == "unquantized"
