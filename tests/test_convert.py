"""`quantkit convert` and `--format both` from one calibration: the same FP4 codes and scales in two
layouts. Unit tests on synthetic tensors (our mapping = compressed-tensors' own converter; the
float32 reciprocal and the reciprocal-stable scales), refusals of what cannot convert losslessly, and
end to end on SmolLM2: both variants identical in the engine's terms, round trips exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantkit.checkpoint.formats import get_format
from quantkit.checkpoint.formats.base import Nvfp4Linear, reciprocal
from quantkit.convert import convert, convert_tensors
from quantkit.errors import UsageError

MO, CT = get_format("modelopt"), get_format("compressed-tensors")


def _linear(seed: int, rows: int = 32, cols: int = 64) -> Nvfp4Linear:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (rows, cols // 2), dtype=torch.uint8, generator=g)
    block = (torch.rand(rows, cols // 16, generator=g) * 400 + 1).to(torch.float8_e4m3fn)
    return Nvfp4Linear(codes, block, torch.rand((), generator=g) * 1e-3 + 1e-5,
                       torch.rand((), generator=g) * 3000 + 10)


def test_modelopt_to_ct_is_compressed_tensors_own_conversion():
    from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import ModelOptNvfp4Converter

    for seed in range(20):
        parts = MO.write_linear(_linear(seed))
        ours = CT.write_linear(MO.read_linear(parts))
        theirs = ModelOptNvfp4Converter(targets=["re:.*"]).process({f"m.{k}": v.clone() for k, v in parts.items()})
        assert set(theirs) == {f"m.{k}" for k in ours}
        for k, v in ours.items():  # same values; the scales shaped [1] as llm-compressor writes them
            assert v.dtype == theirs[f"m.{k}"].dtype and torch.equal(v.reshape(-1), theirs[f"m.{k}"].reshape(-1)), k


def test_reciprocal_is_not_an_involution_but_stable_scales_survive_every_format():
    x = torch.rand(200_000) * 10 + 1e-3
    moved = (reciprocal(reciprocal(x)) != x).float().mean().item()
    assert 0.05 < moved < 0.3  # why conversion needs reciprocal-stable scales
    s = reciprocal(reciprocal(x))
    assert torch.equal(reciprocal(reciprocal(s)), s)
    assert ((s - x).abs() <= torch.finfo(torch.float32).eps * x.abs()).all()  # at most 1 ulp
    for seed in range(50):
        lin = _linear(seed).reciprocal_stable()
        for a in (MO, CT):
            back = a.read_linear(a.write_linear(lin))
            assert back.same(lin), (a.name, seed)
            for b in (MO, CT):
                assert b.read_linear(b.write_linear(back)).same(lin)


def _tiny_ckpt(d: Path, extra: dict | None = None) -> Path:
    d.mkdir(parents=True)
    parts = MO.write_linear(_linear(0))
    tensors = {f"model.layers.0.mlp.down_proj.{k}": v for k, v in parts.items()}
    tensors["model.embed_tokens.weight"] = torch.randn(16, 64, dtype=torch.bfloat16)
    tensors.update(extra or {})
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    qc, files = MO.quant_config(["lm_head"], [], {"quantkit": "test"})
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
    for name, body in files.items():
        (d / name).write_text(json.dumps(body))
    return d


def test_tensor_conversion_round_trips_and_copies_the_rest(tmp_path):
    src = _tiny_ckpt(tmp_path / "mo")
    (tmp_path / "ct").mkdir()
    (tmp_path / "back").mkdir()
    assert convert_tensors(src, tmp_path / "ct", MO, CT)[0] == 1
    convert_tensors(tmp_path / "ct", tmp_path / "back", CT, MO)
    a, c = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "ct" / "model.safetensors"))
    assert torch.equal(c["model.layers.0.mlp.down_proj.weight_packed"], a["model.layers.0.mlp.down_proj.weight"])
    assert torch.equal(c["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    b = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(a) == set(b)
    lin = lambda t: MO.read_linear({k.rpartition(".")[2]: v for k, v in t.items() if "down_proj" in k})
    assert torch.equal(lin(a).codes, lin(b).codes) and torch.equal(lin(a).block_scale.view(torch.uint8),
                                                                   lin(b).block_scale.view(torch.uint8))


@pytest.mark.parametrize("extra,why", [
    ({"model.layers.0.mlp.down_proj.pre_quant_scale": torch.ones(64)}, "AWQ pre-quant scales"),
    ({"model.layers.0.self_attn.k_proj.k_scale": torch.ones(())}, "KV-cache"),
    ({"model.layers.0.mlp.up_proj.weight": torch.zeros(8, 64).to(torch.float8_e4m3fn)}, "FP8"),
])
def test_lossy_conversions_are_refused_before_writing(tmp_path, extra, why):
    src = _tiny_ckpt(tmp_path / "mo", extra)
    with pytest.raises(UsageError, match=why):
        convert(src, "compressed-tensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_same_format_and_unquantized_sources_are_refused(tmp_path):
    src = _tiny_ckpt(tmp_path / "mo")
    with pytest.raises(UsageError, match="already modelopt"):
        convert(src, "modelopt", tmp_path / "out")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError, match="not an NVFP4 checkpoint"):
        convert(plain, "modelopt", tmp_path / "out2")
    with pytest.raises(UsageError, match="unknown format"):
        convert(src, "gguf", tmp_path / "out3")


# ------------------------------------------------------------------ end to end (SmolLM2)
def _linears(ckpt: Path, f) -> dict[str, Nvfp4Linear]:
    tensors = load_file(str(ckpt / "model.safetensors"))
    mods: dict[str, dict] = {}
    for n, t in tensors.items():
        m, _, leaf = n.rpartition(".")
        mods.setdefault(m, {})[leaf] = t
    return {m: f.read_linear(p) for m, p in mods.items() if f.tensors.global_scale in p}


@pytest.mark.e2e
def test_format_both_serves_identical_numbers_in_both_layouts(smollm2_quantized):
    """One calibration: every NVFP4 linear identical in the terms vLLM computes with (codes, block
    scales, weight scale multiplied in, activation scale divided by), so the two variants'
    dequantized weights and activations are bit-identical."""
    mo = _linears(smollm2_quantized["modelopt"], MO)
    ct = _linears(smollm2_quantized["compressed-tensors"], CT)
    assert len(mo) == len(ct) == 210
    assert all(mo[m].same(ct[m]) for m in mo)
    m = "model.layers.3.self_attn.q_proj"  # dequantized as vLLM does for both: codes x block x weight_scale
    w_mo = MO.dequantize(mo[m].codes, mo[m].block_scale, mo[m].weight_scale)
    w_ct = MO.dequantize(ct[m].codes, ct[m].block_scale, ct[m].weight_scale)
    assert torch.equal(w_mo.to(torch.bfloat16), w_ct.to(torch.bfloat16))


@pytest.mark.e2e
def test_convert_round_trip_and_cli(smollm2_quantized, smollm2_each, tmp_path):
    from typer.testing import CliRunner

    from quantkit.cli.main import app

    r = CliRunner().invoke(app, ["convert", str(smollm2_each["modelopt"]), "--to", "ct", "--out", str(tmp_path / "ct")])
    assert r.exit_code == 0, r.output
    assert "210 NVFP4 linears" in r.output and "inspected" in r.output
    back = convert(tmp_path / "ct", "modelopt", tmp_path / "mo")
    assert back.modules == 210 and back.inexact_scales == 0  # CT -> ModelOpt is always exact
    src, rt = _linears(smollm2_each["modelopt"], MO), _linears(tmp_path / "mo", MO)
    assert all(torch.equal(src[m].codes, rt[m].codes) for m in src)
    moved = sum(not src[m].same(rt[m]) for m in src)
    assert moved == json.loads((tmp_path / "ct" / "quantkit.json").read_text())["conversion"]["inexact_scales"]
    assert moved < 0.3 * len(src)  # a ModelOpt export's scales not reciprocal-stable move by 1 ulp
    stable = convert(smollm2_quantized["modelopt"], "compressed-tensors", tmp_path / "ct2")
    twice = convert(tmp_path / "ct2", "modelopt", tmp_path / "mo2")
    assert stable.inexact_scales == 0 and twice.inexact_scales == 0
    a, b = _linears(smollm2_quantized["modelopt"], MO), _linears(tmp_path / "mo2", MO)
    assert all(a[m].same(b[m]) for m in a)  # from a reciprocal-stable source: identical tensors
    cfg = json.loads((tmp_path / "mo2" / "hf_quant_config.json").read_text())
    assert cfg["quantization"]["quant_algo"] == "NVFP4" and "lm_head" in cfg["quantization"]["exclude_modules"]


def _all_tensors(ckpt: Path) -> dict[str, tuple]:
    """name -> (dtype, shape, stored bytes), whichever shard holds it."""
    from quantkit.checkpoint.headers import checkpoint_tensors, tensor_bytes

    return {name: (t.dtype, t.shape, tensor_bytes(ckpt, t)) for name, t in checkpoint_tensors(ckpt).items()}


@pytest.mark.e2e
def test_small_shards_hold_the_same_tensors_and_convert_in_parallel(smollm2_quantized, tmp_path):
    """--max-shard-size: the export writes several shards, the conversion rewrites them in parallel
    threads (each hashed as it is written), and every tensor of both formats is byte-identical to
    the one-shard run of the same recipe; manifests hash what is on disk; inspect finds nothing."""
    from quantkit.checkpoint.manifest import content_hash, file_hashes
    from quantkit.inspect import inspect_checkpoint
    from quantkit.quantize import QuantizeOptions, quantize
    from quantkit.recipe import resolve_recipe

    results = quantize(resolve_recipe("smollm2-135m"), QuantizeOptions(
        formats=["modelopt", "compressed-tensors"], out=tmp_path / "s", max_shard_size=48 << 20))
    for r in results:
        shards = sorted(p.name for p in r.path.glob("*.safetensors"))
        assert len(shards) >= 3, shards
        index = json.loads((r.path / "model.safetensors.index.json").read_text())
        assert sorted(set(index["weight_map"].values())) == shards
        assert _all_tensors(r.path) == _all_tensors(smollm2_quantized[r.format]), r.format
        m = json.loads((r.path / "quantkit.json").read_text())
        assert m["files"] == file_hashes(r.path) and m["content_hash"] == content_hash(m["files"])
        assert not inspect_checkpoint(str(r.path)).errors
    ct = json.loads((results[1].path / "quantkit.json").read_text())
    assert ct["converted_from"]["content_hash"] == results[0].manifest["content_hash"]
    assert ct["run"]["calibration_timings_s"]["calibrate"] > 0  # where the calibrating run's time went


def test_max_shard_size_option_is_checked(tmp_path, capsys):
    from quantkit.cli.main import main

    for bad, why in (("10", "has no unit"), ("512KB", "under 1 MiB"), ("lots", "cannot read size")):
        assert main(["quantize", "smollm2-135m", "--max-shard-size", bad, "--out", str(tmp_path / "x")]) == 3
        err = capsys.readouterr().err
        assert why in err and "--max-shard-size" in err, err
        assert not (tmp_path / "x").exists()
