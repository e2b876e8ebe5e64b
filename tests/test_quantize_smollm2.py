"""End to end on a real model: SmolLM2-135M (from its PyPI GGUF) quantized to both NVFP4
formats; tensors, dtypes, metadata (golden), numerics against the BF16 source, manifest, and
generation through transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from quantkit.checkpoint.headers import checkpoint_tensors
from quantkit.checkpoint.manifest import content_hash, file_hashes
from quantkit.checkpoint.formats import get_format

pytestmark = pytest.mark.e2e
GOLDEN = Path(__file__).parent / "golden"
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SUFFIX = {"modelopt": {"weight": "U8", "weight_scale": "F8_E4M3", "weight_scale_2": "F32", "input_scale": "F32"},
          "compressed-tensors": {"weight_packed": "U8", "weight_scale": "F8_E4M3", "weight_global_scale": "F32",
                                 "input_global_scale": "F32"}}


def _golden_check(actual: dict, name: str):
    expected = json.loads((GOLDEN / name).read_text())
    assert actual == expected, f"{name} differs from the golden file"


def test_modelopt_metadata_golden(smollm2_quantized):
    d = smollm2_quantized["modelopt"]
    _golden_check(json.loads((d / "hf_quant_config.json").read_text()), "smollm2-modelopt-hf_quant_config.json")
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "modelopt" and qc["quant_algo"] == "NVFP4"
    assert qc["config_groups"]["group_0"]["weights"]["group_size"] == 16


def test_compressed_tensors_metadata_golden(smollm2_each):
    """llm-compressor's own output (every library calibrating, --calibrate-each)."""
    d = smollm2_each["compressed-tensors"]
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    _golden_check(qc, "smollm2-ct-quantization_config.json")
    assert qc["format"] == "nvfp4-pack-quantized" and qc["quant_method"] == "compressed-tensors"
    assert (d / "recipe.yaml").is_file()
    assert json.loads((d / "quantkit.json").read_text())["backend"] == "llmcompressor"


def test_converted_compressed_tensors_metadata(smollm2_quantized):
    """--format both: the compressed-tensors variant is written from ModelOpt's calibration, its
    metadata built with compressed-tensors' own classes, the plan's kept modules declared by exact
    name and by `re:` entry (fused engine names)."""
    d = smollm2_quantized["compressed-tensors"]
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    golden = json.loads((GOLDEN / "smollm2-ct-quantization_config.json").read_text())
    assert qc["format"] == "nvfp4-pack-quantized" and qc["quant_method"] == "compressed-tensors"
    assert qc["quantization_status"] == "compressed" and qc["config_groups"]["group_0"]["targets"] == ["Linear"]
    for part in ("weights", "input_activations"):
        for key in ("num_bits", "type", "group_size", "strategy", "dynamic", "symmetric"):
            assert qc["config_groups"]["group_0"][part][key] == golden["config_groups"]["group_0"][part][key]
    assert set(golden["ignore"]) <= set(qc["ignore"])
    m = json.loads((d / "quantkit.json").read_text())
    assert m["backend"] == "modelopt" and m["converted_from"]["format"] == "modelopt"
    assert m["conversion"] == {"nvfp4_linears": 210, "inexact_scales": 0}


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_tensor_names_dtypes_shapes(smollm2_quantized, smollm2_dir, fmt):
    tensors = checkpoint_tensors(smollm2_quantized[fmt])
    src = checkpoint_tensors(smollm2_dir)
    for layer in range(30):
        for lin in LINEARS:
            base = f"model.layers.{layer}.{lin}"
            rows, cols = src[f"{base}.weight"].shape
            for suffix, dtype in SUFFIX[fmt].items():
                t = tensors[f"{base}.{suffix}"]
                assert t.dtype == dtype, (base, suffix, t.dtype)
            packed = tensors[f"{base}.weight" if fmt == "modelopt" else f"{base}.weight_packed"]
            assert packed.shape == (rows, cols // 2)
            assert tensors[f"{base}.weight_scale"].shape == (rows, cols // 16)
    assert tensors["model.embed_tokens.weight"].dtype == "BF16"
    assert "lm_head.weight" not in tensors  # tied to the embedding, stored once


@pytest.mark.parametrize("fmt,names", [
    ("modelopt", ("weight", "weight_scale", "weight_scale_2")),
    ("compressed-tensors", ("weight_packed", "weight_scale", "weight_global_scale"))])
def test_dequantized_weights_match_source(smollm2_quantized, smollm2_dir, fmt, names):
    """The packed FP4 values and both global-scale conventions decode to the BF16 weights
    (FP4 error, ~10% relative), and a wrong convention would not."""
    src = safe_open(str(smollm2_dir / "model.safetensors"), "pt")
    out = safe_open(str(smollm2_quantized[fmt] / "model.safetensors"), "pt")
    for base in ("model.layers.0.self_attn.q_proj", "model.layers.17.mlp.down_proj"):
        w = src.get_tensor(base + ".weight").float()
        parts = [out.get_tensor(f"{base}.{n}") for n in names]
        err = ((get_format(fmt).dequantize(*parts) - w).norm() / w.norm()).item()
        assert err < 0.15, (base, err)
        other = "compressed-tensors" if fmt == "modelopt" else "modelopt"
        assert ((get_format(other).dequantize(*parts) - w).norm() / w.norm()).item() > 0.5


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_checkpoint_is_complete_with_manifest(smollm2_quantized, fmt):
    d = smollm2_quantized[fmt]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "quantkit.json", "quantkit-recipe.yaml"):
        assert (d / f).is_file(), f
    m = json.loads((d / "quantkit.json").read_text())
    assert m["format"] == fmt and m["files"] == file_hashes(d) and m["content_hash"] == content_hash(m["files"])
    assert m["calibration"]["samples"] == 32 and m["calibration"]["fingerprint"].startswith("sha256:")
    assert m["versions"]["torch"] and m["versions"]["transformers"] == "5.17.0"
    assert m["plan"]["fp4"] == 210 and m["verification"]["fp4_modules"] == 210
    assert [k["module"] for k in m["plan"]["kept"]] == ["lm_head"]
    assert not list(d.parent.glob(".*partial*")), "no temporary directory left behind"


def test_compressed_tensors_checkpoint_generates_english(smollm2_quantized):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = smollm2_quantized["compressed-tensors"]
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
    texts = []
    for prompt in ("The capital of France is", "Once upon a time, in a small village by the sea, there lived",
                   "To make a cup of tea, first"):
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        texts.append(tok.decode(out[0][ids.input_ids.shape[1]:], skip_special_tokens=True))
    words = " ".join(texts).split()
    assert len(words) >= 20, texts
    wordlike = sum(w.strip(".,;:!?()\"'").isalpha() for w in words) / len(words)
    assert wordlike > 0.7, texts
    for t in texts:
        assert "!!!!" not in t and "\ufffd" not in t
        tw = t.split()
        assert len(tw) < 12 or len(set(tw)) / len(tw) > 0.4, f"repetition loop: {t!r}"
