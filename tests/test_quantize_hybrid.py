"""Tiny random-weight hybrids (real module names) quantized in both formats: the layers the
family preset keeps are BF16 *in the saved tensors*, the metadata declares them, experts are
really FP4, and MTP tensors of the source survive."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantkit.checkpoint.formats import declared_unquantized, detect_format, stored_modules
from quantkit.checkpoint.headers import checkpoint_tensors
from quantkit.quantize import QuantizeOptions, quantize
from quantkit.recipe import resolve_recipe
from tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.e2e


def _with_mtp(ckpt: Path, names: list[str]) -> None:
    """Add MTP tensors to a saved checkpoint, as real Qwen3-Next / Nemotron-H checkpoints have
    (transformers drops them on load)."""
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    for n in names:
        tensors[n] = torch.randn(64, 64, dtype=torch.bfloat16)
    save_file(tensors, str(f), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def hybrids(tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("hybrids")
    out: dict[str, dict[str, Path]] = {}
    for kind, mtp in (("qwen3_next", ["mtp.fc.weight", "mtp.layers.0.mlp.up_proj.weight"]),
                      ("qwen3_5_moe", []),
                      ("nemotron_h", ["mtp.layers.0.mixer.up_proj.weight"])):
        src = root / f"src-{kind}"
        save_tiny_checkpoint(kind, src)
        if mtp:
            _with_mtp(src, mtp)
        recipe = root / f"{kind}.yaml"
        recipe.write_text(f"name: tiny-{kind.replace('_', '-')}\nmodel:\n  source: {src}\n"
                          "calibration:\n  samples: 4\n  seq_len: 64\n")
        res = quantize(resolve_recipe(str(recipe)),
                       QuantizeOptions(formats=["modelopt", "compressed-tensors"], out=root / f"q-{kind}"))
        out[kind] = {r.format: r.path for r in res} | {"src": src}
    return out


KEPT = {
    "qwen3_next": re.compile(r"linear_attn\.|mlp\.gate$|shared_expert_gate$"),
    "qwen3_5_moe": re.compile(r"linear_attn\.|mlp\.gate$|shared_expert_gate$"),
    "nemotron_h": re.compile(r"layers\.[0134]\.mixer\.|mixer\.gate$"),
}


@pytest.mark.parametrize("kind", sorted(KEPT))
@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_kept_layers_are_bf16_in_saved_tensors(hybrids, kind, fmt):
    ckpt = hybrids[kind][fmt]
    mods = stored_modules(checkpoint_tensors(ckpt))
    info = detect_format(ckpt)
    kept = [m for m in mods.values() if KEPT[kind].search(m.name)]
    assert kept, "the kept layers must be in the checkpoint"
    for m in kept:
        assert m.precision == "bf16", f"{m.name} is {m.precision}"
        if m.ndim == 2:
            assert declared_unquantized(info, m.name), f"{m.name} not declared unquantized"
    fp4 = [m for m in mods.values() if m.precision == "fp4"]
    assert fp4 and all(not KEPT[kind].search(m.name) for m in fp4)
    # MoE experts are really quantized (per-expert tensors on disk), never silently BF16.
    experts = [m for m in mods.values() if ".experts." in m.name and "shared" not in m.name]
    assert experts and all(m.precision == "fp4" for m in experts)


def test_gdn_split_and_fused_names_on_disk(hybrids):
    next_mods = stored_modules(checkpoint_tensors(hybrids["qwen3_next"]["modelopt"]))
    moe_mods = stored_modules(checkpoint_tensors(hybrids["qwen3_5_moe"]["compressed-tensors"]))
    assert next_mods["model.layers.0.linear_attn.in_proj_qkvz"].precision == "bf16"
    assert moe_mods["model.layers.0.linear_attn.in_proj_qkv"].precision == "bf16"
    assert moe_mods["model.layers.1.self_attn.q_proj"].precision == "fp4"


def test_compressed_tensors_ignore_covers_engine_fused_names(hybrids):
    info = detect_format(hybrids["qwen3_5_moe"]["compressed-tensors"])
    # vLLM builds fused in_proj_qkvz / in_proj_ba for Qwen3.5 (issue 40252): the written ignore
    # list must cover those names too, not only the split names found in the file.
    assert declared_unquantized(info, "model.layers.0.linear_attn.in_proj_qkvz")
    assert declared_unquantized(info, "model.layers.0.linear_attn.in_proj_ba")
    assert not declared_unquantized(info, "model.layers.1.self_attn.q_proj")


def test_nemotron_modelopt_exclude_entries_are_clean(hybrids):
    hq = json.loads((hybrids["nemotron_h"]["modelopt"] / "hf_quant_config.json").read_text())
    entries = hq["quantization"]["exclude_modules"]
    assert entries and not any("\x00" in e or "sentinel" in e for e in entries)
    tensors = checkpoint_tensors(hybrids["nemotron_h"]["modelopt"])
    assert any(n.startswith("backbone.layers.1.mixer.q_proj") for n in tensors)


@pytest.mark.parametrize("kind,names", [("qwen3_next", ["mtp.fc.weight", "mtp.layers.0.mlp.up_proj.weight"]),
                                        ("nemotron_h", ["mtp.layers.0.mixer.up_proj.weight"])])
@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_mtp_tensors_survive_in_bf16(hybrids, kind, names, fmt):
    ckpt = hybrids[kind][fmt]
    tensors = checkpoint_tensors(ckpt)
    info = detect_format(ckpt)
    for n in names:
        assert n in tensors, f"{n} lost"
        assert tensors[n].dtype == "BF16"
        assert declared_unquantized(info, n.rsplit(".", 1)[0])
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert set(names) <= set(index["weight_map"])


@pytest.mark.parametrize("kind", ["qwen3_next", "qwen3_5_moe", "nemotron_h"])
def test_convert_round_trip_on_hybrids(hybrids, kind, tmp_path):
    """--format both wrote compressed-tensors from ModelOpt's calibration; converting it back gives
    ModelOpt's tensors exactly (reciprocal-stable scales), and both conversions pass inspect
    (GDN / Mamba / router / MTP declarations rewritten in each syntax)."""
    from quantkit.checkpoint.formats import get_format
    from quantkit.convert import convert

    mo, ct = get_format("modelopt"), get_format("compressed-tensors")
    back = convert(hybrids[kind]["compressed-tensors"], "modelopt", tmp_path / "mo")
    again = convert(hybrids[kind]["modelopt"], "compressed-tensors", tmp_path / "ct")
    assert back.inexact_scales == 0 and again.inexact_scales == 0 and back.modules == again.modules > 0
    a, b = checkpoint_tensors(hybrids[kind]["modelopt"]), checkpoint_tensors(tmp_path / "mo")
    assert set(a) == set(b)
    orig = {}
    for f in hybrids[kind]["modelopt"].glob("*.safetensors"):
        orig.update(load_file(str(f)))
    conv = {}
    for f in (tmp_path / "mo").glob("*.safetensors"):
        conv.update(load_file(str(f)))
    assert all(torch.equal(orig[n].view(torch.uint8) if orig[n].dtype == torch.float8_e4m3fn else orig[n],
                           conv[n].view(torch.uint8) if conv[n].dtype == torch.float8_e4m3fn else conv[n])
               for n in orig)
    info = detect_format(tmp_path / "ct")
    for m in stored_modules(checkpoint_tensors(tmp_path / "ct")).values():
        if m.precision != "fp4" and m.ndim == 2 and "embed" not in m.name:
            assert declared_unquantized(info, m.name), m.name


@pytest.mark.parametrize("kind", ["qwen3_next", "nemotron_h"])
def test_llmcompressor_on_hybrids_keeps_the_preset(hybrids, kind, tmp_path):
    """--backend llmcompressor: llm-compressor itself calibrates and writes compressed-tensors (no
    conversion); the same layers stay BF16 as in the converted variant, and verification passed."""
    import json

    src = hybrids[kind]["src"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nmodel:\n  source: {src}\ncalibration:\n  samples: 4\n  seq_len: 64\n")
    (res,) = quantize(resolve_recipe(str(recipe)), QuantizeOptions(backend="llmcompressor", out=tmp_path / "q"))
    assert res.format == "compressed-tensors" and res.backend == "llmcompressor"
    assert "converted_from" not in json.loads((res.path / "quantkit.json").read_text())
    mine = {m.name: m.precision for m in stored_modules(checkpoint_tensors(res.path)).values()}
    conv = {m.name: m.precision for m in stored_modules(checkpoint_tensors(hybrids[kind]["compressed-tensors"])).values()}
    assert {n: p for n, p in mine.items() if p != "fp4"} == {n: p for n, p in conv.items() if p != "fp4" and n in mine}
