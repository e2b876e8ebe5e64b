"""Memory-bounded (layerwise) quantization: the same checkpoint as a full-model run, resumable
after SIGKILL, refused where the stand-in cannot rebuild a layer; and the pre-flight that picks
or refuses a mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quantkit.errors import PlanError, RecipeError, UsageError
from quantkit.progress import SILENT
from quantkit.quantize import QuantizeOptions, quantize
from quantkit.recipe import resolve_recipe
from quantkit.stream.preflight import Estimate, choose_mode, parse_size
from tiny_models import save_tiny_checkpoint

GiB = 1 << 30


def _tensors(d: Path) -> dict:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.element_size() == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


def _recipe(tmp: Path, kind: str, samples: int = 4, seq_len: int = 64, **overrides) -> Path:
    src = save_tiny_checkpoint(kind, tmp / f"src-{kind}", **overrides)
    r = tmp / f"{kind}.yaml"
    r.write_text(f"name: lw-{kind.replace('_', '-')}\nmodel:\n  source: {src}\n"
                 f"calibration:\n  samples: {samples}\n  seq_len: {seq_len}\n")
    return r


def _qc(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())["quantization_config"]


# ---------------------------------------------------------------- equivalence with a full run
@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["llama", "qwen3_5", "gemma3", "qwen3_next", "qwen3_5_moe", "nemotron_h"])
def test_layerwise_modelopt_is_bit_identical_to_full(tmp_path, kind):
    """Dense Llama, Qwen3.5 (GDN linear_attn kept BF16), Gemma-3 (scaled embedding, sliding
    layers), Qwen3-Next / Qwen3.5-MoE (experts per expert on disk, fused in transformers) and
    Nemotron-H (`backbone.` names, whole Mamba/attention layers kept): every tensor equals the
    full-model ModelOpt checkpoint's and the metadata declares the same modules."""
    r = resolve_recipe(str(_recipe(tmp_path, kind)))
    full = quantize(r, QuantizeOptions(formats=["modelopt"], out=tmp_path / "full", mode="full"))[0]
    lw = quantize(r, QuantizeOptions(formats=["modelopt"], out=tmp_path / "lw", mode="layerwise"))[0]
    a, b = _tensors(full.path), _tensors(lw.path)
    assert set(a) == set(b)
    assert [k for k in a if not _same(a[k], b[k])] == []
    hq_lw, hq_full = (json.loads((p / "hf_quant_config.json").read_text())["quantization"] for p in (lw.path, full.path))
    assert set(hq_lw.pop("exclude_modules")) == set(hq_full.pop("exclude_modules")) and hq_lw == hq_full
    qc_lw, qc_full = _qc(lw.path), _qc(full.path)
    assert set(qc_lw.pop("ignore")) == set(qc_full.pop("ignore")) and qc_lw == qc_full
    assert lw.manifest["run"]["mode"] == "layerwise" and lw.manifest["run"]["preflight"]["mode"] == "layerwise"
    assert len(list(lw.path.glob("model-*-of-*.safetensors"))) > 1  # one shard per layer + the rest
    assert not (tmp_path / ".lw.layerwise").exists(), "the resume state must be removed after success"


@pytest.mark.e2e
def test_layerwise_both_formats_match_full(tmp_path):
    """One layer loop writes both formats; compressed-tensors equals the full run except the
    activation global scales, which llm-compressor's full run takes from QDQ-propagated inputs
    (the layerwise run feeds every layer BF16 inputs, as ModelOpt's max calibration does)."""
    r = resolve_recipe(str(_recipe(tmp_path, "llama", num_hidden_layers=3)))
    both = ["modelopt", "compressed-tensors"]
    full = {x.format: x.path for x in quantize(r, QuantizeOptions(formats=both, out=tmp_path / "full", mode="full",
                                                                  calibrate_each=True))}
    lw = {x.format: x.path for x in quantize(r, QuantizeOptions(formats=both, out=tmp_path / "lw", mode="layerwise",
                                                                calibrate_each=True))}
    for fmt in both:
        a, b = _tensors(full[fmt]), _tensors(lw[fmt])
        assert set(a) == set(b), fmt
        for k in a:
            if k.endswith("input_global_scale"):
                assert torch.allclose(a[k], b[k], rtol=0.03), (k, a[k], b[k])
            else:
                assert _same(a[k], b[k]), (fmt, k)
        assert _qc(lw[fmt]) == _qc(full[fmt]), fmt
    assert any(k.endswith("weight_packed") for k in _tensors(lw["compressed-tensors"]))


@pytest.mark.e2e
def test_layerwise_refuses_layers_it_cannot_rebuild(tmp_path):
    """Gemma-4's layer shapes depend on the layer's index (KV-shared layers): a one-layer
    stand-in cannot take them, so the run stops before writing anything, with the way out."""
    r = resolve_recipe(str(_recipe(tmp_path, "gemma4")))
    with pytest.raises(PlanError, match="cannot rebuild layer 1") as exc:
        quantize(r, QuantizeOptions(formats=["modelopt"], out=tmp_path / "q", mode="layerwise"))
    assert "--mode full" in exc.value.hint
    assert not (tmp_path / "q").exists()


# ---------------------------------------------------------------- resume after SIGKILL
def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quantkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.e2e
def test_sigkill_then_resume_gives_the_uninterrupted_checkpoint(tmp_path):
    r = _recipe(tmp_path, "llama", samples=32, seq_len=256, num_hidden_layers=8)
    out = tmp_path / "out" / "ckpt"
    state = tmp_path / "out" / ".ckpt.layerwise" / "state.json"
    args = ["quantize", str(r), "--format", "modelopt", "--mode", "layerwise", "--out", str(out)]
    proc = _cli(*args)
    done, deadline = 0, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            done = json.loads(state.read_text())["layers_done"]
        except (OSError, ValueError):
            done = 0
        if done >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert 2 <= done < 8, f"the run was not killed mid-way (layers done: {done}, rc {proc.returncode})"
    assert not out.exists()

    again = _cli(*args)  # without --resume: refused, state untouched
    _, err = again.communicate(timeout=300)
    assert again.returncode == 3 and "--resume" in err, err[-1500:]
    assert json.loads(state.read_text())["layers_done"] >= done

    resumed = _cli(*args, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    manifest = json.loads((out / "quantkit.json").read_text())
    assert manifest["run"]["resumed_from_layer"] >= 2
    assert not state.parent.exists()

    ref = quantize(resolve_recipe(str(r)), QuantizeOptions(formats=["modelopt"], out=tmp_path / "ref", mode="layerwise"))[0]
    a, b = _tensors(ref.path), _tensors(out)
    assert set(a) == set(b) and [k for k in a if not _same(a[k], b[k])] == []


# ---------------------------------------------------------------- pre-flight
def test_parse_size():
    assert parse_size("20GiB") == 20 * GiB == parse_size("20G") == parse_size("20 gb")
    assert parse_size("512MB") == 512 << 20
    assert parse_size("1.5T") == int(1.5 * (1 << 40))
    for bad in ("20", "lots", "-1G"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_choose_mode():
    est = {"full": Estimate("full", 30 * GiB, 100), "layerwise": Estimate("layerwise", 3 * GiB, 300)}
    assert choose_mode("auto", est, 64 * GiB, "x") == "full"
    assert choose_mode("auto", est, 24 * GiB, "x") == "layerwise"
    with pytest.raises(UsageError, match="--mode full needs") as exc:
        choose_mode("full", est, 24 * GiB, "x")
    assert "--mode layerwise" in exc.value.hint
    with pytest.raises(UsageError, match="no mode fits"):
        choose_mode("auto", est, 2 * GiB, "x")


def test_preflight_on_a_14b_config():
    """The pre-flight reads only the config: a 14B Llama (28 GiB BF16) fits layerwise in 24 GiB,
    full in 128 GiB; --mode full under 24 GiB is refused with the mode that fits."""
    from transformers import LlamaConfig

    from quantkit.quantize.context import preflight as _preflight
    from quantkit.recipe import Recipe

    cfg = LlamaConfig(hidden_size=5120, intermediate_size=13824, num_attention_heads=40, num_key_value_heads=8,
                      head_dim=128, vocab_size=49152, num_hidden_layers=50, tie_word_embeddings=False)
    r = Recipe.model_validate({"name": "big", "model": {"source": "org/big"},
                               "calibration": {"samples": 64, "seq_len": 512}})
    mode, pf = _preflight(r, QuantizeOptions(max_memory=24 * GiB), ["modelopt"], cfg, SILENT)
    assert mode == "layerwise" and pf["estimates"]["full"]["peak_bytes"] > 28 * GiB
    assert pf["estimates"]["layerwise"]["peak_bytes"] < 6 * GiB
    assert _preflight(r, QuantizeOptions(max_memory=128 * GiB), ["modelopt"], cfg, SILENT)[0] == "full"
    with pytest.raises(UsageError, match="--mode full needs") as exc:
        _preflight(r, QuantizeOptions(max_memory=24 * GiB, mode="full"), ["modelopt"], cfg, SILENT)
    assert "--mode layerwise" in exc.value.hint
    with pytest.raises(UsageError, match="no mode fits"):
        _preflight(r, QuantizeOptions(max_memory=GiB), ["modelopt"], cfg, SILENT)
    with pytest.raises(UsageError, match="--resume works with --mode layerwise only"):
        _preflight(r, QuantizeOptions(mode="full", resume=True), ["modelopt"], cfg, SILENT)


@pytest.mark.e2e
def test_cli_max_memory_too_small_is_refused_before_loading(tmp_path):
    r = _recipe(tmp_path, "llama")
    p = _cli("quantize", str(r), "--out", str(tmp_path / "q"), "--max-memory", "100MB")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 3 and "no mode fits" in err, err[-1500:]
    assert not (tmp_path / "q").exists()


def test_nproc_without_gpus_is_refused(tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 GPUs: tests/test_gpu.py runs --nproc 2 for real")
    r = resolve_recipe(str(_recipe(tmp_path, "llama")))
    with pytest.raises(UsageError, match="--nproc 2 needs 2 CUDA GPUs"):
        quantize(r, QuantizeOptions(formats=["modelopt"], out=tmp_path / "q", nproc=2))
    assert not (tmp_path / "q").exists()


def test_calibration_batches_never_pad_and_ordered_keeps_the_order():
    from quantkit.calib import CalibSet

    c = CalibSet(spec="x", input_ids=[[1, 2], [3, 4], [5], [6, 7], [8, 9], [10, 11]], seq_len=2, seed=0, requested=6)
    by_len = [b.tolist() for b in c.batches(4)]
    assert by_len == [[[1, 2], [3, 4], [6, 7], [8, 9]], [[10, 11]], [[5]]]
    ordered = [b.tolist() for b in c.batches(2, ordered=True)]
    assert ordered == [[[1, 2], [3, 4]], [[5]], [[6, 7], [8, 9]], [[10, 11]]]
    assert [t for b in ordered for row in b for t in row] == list(range(1, 12))
