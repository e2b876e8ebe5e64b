"""Sensitivity-guided mixed precision: the NVFP4 fake-quant, the per-layer measurement, the
budgeted selection (and its plan reasons), the recipe section, and FP8 / BF16 kept layers written
and verified through both backends."""

from __future__ import annotations

import json

import pytest
import torch

from quantkit import sensitivity as S
from quantkit.checkpoint.formats import declared_precision, detect_format, stored_modules
from quantkit.checkpoint.headers import checkpoint_tensors
from quantkit.checkpoint.nvfp4 import E2M1_VALUES
from quantkit.errors import RecipeError, VerificationError
from quantkit.plan import Decision, build_plan
from quantkit.recipe import Recipe, load_recipe
from tiny_models import save_tiny_checkpoint, tiny_config, tiny_model, tiny_tokenizer

SENSITIVE = "model.layers.1.mlp.down_proj"


# ------------------------------------------------------------------------------- nvfp4_qdq
def test_nvfp4_qdq_keeps_representable_values_and_rounds_to_the_grid():
    torch.manual_seed(0)
    # Every block holds 6.0 (its max) and E2M1 values below it: exactly representable at scale 1,
    # with the per-tensor scale chosen so the FP8 block scale is exact too.
    vals = torch.tensor([abs(v) for v in E2M1_VALUES[:8]] * 2).reshape(1, 16)
    signs = torch.where(torch.rand(4, 16) > 0.5, 1.0, -1.0)
    x = vals * signs
    x[:, 7] = 6.0
    assert torch.equal(S.nvfp4_qdq(x), x)

    y = torch.randn(8, 64) * 3
    q = S.nvfp4_qdq(y)
    assert q.shape == y.shape and q.dtype == y.dtype
    rel = ((q - y).norm() / y.norm()).item()
    assert 0.02 < rel < 0.15  # NVFP4 on Gaussian data: ~10% relative error, never lossless
    # Each 16-block is E2M1 values times one scale (the block max maps to 6).
    blocks, qb = y.reshape(-1, 16), q.reshape(-1, 16)
    grid = torch.tensor(sorted({abs(v) for v in E2M1_VALUES}))
    scale = qb.abs().amax(-1, keepdim=True) / 6
    ratio = (qb.abs() / scale)
    assert torch.allclose(ratio.unsqueeze(-1).sub(grid).abs().amin(-1), torch.zeros_like(ratio), atol=1e-4)
    assert torch.all(qb.abs().amax(-1) <= blocks.abs().amax(-1) * 1.07)

    z = torch.zeros(2, 32)
    assert torch.equal(S.nvfp4_qdq(z), z)
    with pytest.raises(ValueError, match="multiple of 16"):
        S.nvfp4_qdq(torch.ones(2, 24))


# ------------------------------------------------------------------------------- measurement
def _make_sensitive(model):
    """One huge weight in SENSITIVE on an input channel that is always 0 (its gate/up rows are
    zeroed): the model computes the same function, but NVFP4's per-tensor scale of that module
    becomes so coarse that every other block's FP8 scale underflows to zero."""
    mlp = model.get_submodule(SENSITIVE.rsplit(".", 1)[0])
    with torch.no_grad():
        mlp.gate_proj.weight[0].zero_()
        mlp.up_proj.weight[0].zero_()
        mlp.down_proj.weight[:, 0] = 0
        mlp.down_proj.weight[0, 0] = 1e5
    return model


def _sensitive_tiny(dtype=torch.float32, seed=0):
    return _make_sensitive(tiny_model("llama", seed=seed, dtype=dtype))


def _linears(model):
    return [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and "lm_head" not in n]


def test_measurement_finds_the_sensitive_layer_and_leaves_the_model_unchanged(monkeypatch):
    m = _sensitive_tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ids = torch.randint(3, 259, (2, 48), generator=torch.Generator().manual_seed(1))
    names = _linears(m)
    scores = S.measure_sensitivity(m, ids, names)
    assert list(scores) == names and all(v >= 0 for v in scores.values())
    assert max(scores, key=scores.get) == SENSITIVE
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any("forward" in layer.__dict__ for layer in m.model.layers)  # replays removed
    assert not any(mod._forward_pre_hooks or mod._forward_hooks for mod in m.modules())
    # Replaying the blocks before a module gives the same numbers as recomputing them.
    monkeypatch.setattr(S, "_decoder_layers", lambda model, names: (None, None))
    assert S.measure_sensitivity(m, ids, names) == scores


def test_activation_quantization_adds_sensitivity():
    m = tiny_model("llama", dtype=torch.float32)
    ids = torch.randint(3, 259, (2, 32), generator=torch.Generator().manual_seed(2))
    name = "model.layers.0.mlp.down_proj"
    w_only = S.measure_sensitivity(m, ids, [name], act_quant=False)[name]
    w_a = S.measure_sensitivity(m, ids, [name], act_quant=True)[name]
    assert w_a > w_only > 0


# ------------------------------------------------------------------------------- budget
@pytest.fixture()
def plan():
    return build_plan(tiny_config("llama"), model_source="tiny", backend="llmcompressor")


def _scores(plan, hot: dict[str, float] | None = None):
    s = {d.module.name: 0.001 for d in plan.fp4}
    s.update(hot or {})
    return s


def test_budget_is_respected_and_the_most_sensitive_unit_is_kept(plan):
    base = plan.bits_per_param()
    budget = base + 1.2  # room for the 8192-param qkv group (+0.88) and a little more
    new = S.select_by_budget(plan, _scores(plan, {"model.layers.0.self_attn.q_proj": 0.5}), budget)
    assert new.bits_per_param() <= budget < S.select_by_budget(plan, _scores(plan), 16).bits_per_param()
    kept = {d.module.name: d for d in new.kept if d.source == "sensitivity"}
    # q/k/v are one fused module in vLLM (qkv_proj): kept together, with the rank and KL shown
    assert {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj"} <= set(kept)
    d = kept["model.layers.0.self_attn.q_proj"]
    assert d.precision == "bf16" and d.reason.startswith("sensitivity rank 1 of ")
    assert "+0.5020 KL when FP4" in d.reason and "budget" in d.reason and "qkv_proj" in d.reason
    assert new.mixed_precision["kept_for_sensitivity"] == len(kept)
    assert new.to_dict()["mixed_precision"]["top"][0]["unit"] == "model.layers.0.self_attn.qkv_proj"
    assert plan.bits_per_param() == base and not any(d.source == "sensitivity" for d in plan.decisions)


def test_selection_is_by_sensitivity_per_extra_bit(plan):
    # o_proj (4096 params) at 0.6 beats down_proj (8192 params) at 1.0 per bit; the budget fits
    # one o_proj but not a down_proj on top of it.
    o, down = "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"
    budget = plan.bits_per_param() + 8 * 4096 * 11.5 / 8 / plan.total_params * 1.5
    new = S.select_by_budget(plan, _scores(plan, {o: 0.6, down: 1.0}), budget)
    kept = {d.module.name for d in new.kept if d.source == "sensitivity"}
    assert o in kept and down not in kept
    assert next(d for d in new.decisions if d.module.name == o).reason.startswith("sensitivity rank 2 ")


def test_fp8_costs_less_than_bf16_so_more_fits(plan):
    budget = plan.bits_per_param() + 1.0
    scores = _scores(plan)
    bf16 = S.select_by_budget(plan, scores, budget, "bf16")
    fp8 = S.select_by_budget(plan, scores, budget, "fp8")
    assert len(fp8.fp8) > len([d for d in bf16.kept if d.source == "sensitivity"]) > 0
    assert fp8.bits_per_param() <= budget and all("kept FP8" in d.reason for d in fp8.fp8)
    assert fp8.to_dict()["summary"]["fp8"] == len(fp8.fp8)
    assert set(fp8.fp8_names()).isdisjoint(fp8.kept_names())  # FP8 is quantized, not disabled


def test_a_budget_that_cannot_be_met_warns_and_keeps_nothing(plan):
    new = S.select_by_budget(plan, _scores(plan, {SENSITIVE: 1.0}), 5.0)
    assert [d.precision for d in new.decisions] == [d.precision for d in plan.decisions]
    assert any("cannot be met" in w and "5 bits/param" in w for w in new.warnings)
    assert new.mixed_precision["kept_for_sensitivity"] == 0


# ------------------------------------------------------------------------------- recipe
def test_recipe_section_is_strict(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nmodel:\n  source: x/y\nmixed_precision:\n  budget_bits: 7.5\n  keep_as: fp8\n")
    mp = load_recipe(p).mixed_precision
    assert (mp.budget_bits, mp.keep_as, mp.samples, mp.seq_len) == (7.5, "fp8", 4, 128)
    p.write_text("name: t\nmodel:\n  source: x/y\nmixed_precision:\n  budget_bits: 7.5\n  keep: fp8\n")
    with pytest.raises(RecipeError, match=r"r.yaml:6: mixed_precision.keep: unknown key"):
        load_recipe(p)
    p.write_text("name: t\nmodel:\n  source: x/y\nscheme: nvfp4-weight-only\nmixed_precision:\n  budget_bits: 7\n"
                 "  keep_as: fp8\n")
    with pytest.raises(RecipeError, match="keep_as: fp8 needs scheme nvfp4"):
        load_recipe(p)
    assert Recipe(name="t", model={"source": "x/y"}).mixed_precision is None


def test_apply_mixed_precision_measures_once_for_every_format(monkeypatch):
    m = _sensitive_tiny(dtype=torch.bfloat16)
    cfg = m.config
    plans = {f: build_plan(cfg, model_source="tiny", backend=b, model=m)
             for f, b in (("modelopt", "modelopt"), ("compressed-tensors", "llmcompressor"))}
    recipe = Recipe(name="t", model={"source": "x/y"},
                    mixed_precision={"budget_bits": plans["modelopt"].bits_per_param() + 0.9, "samples": 2, "seq_len": 32})
    calls = []
    real = S.measure_sensitivity
    monkeypatch.setattr(S, "measure_sensitivity", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = S.apply_mixed_precision(plans, m, tiny_tokenizer(), recipe)
    assert len(calls) == 1
    kept = [{d.module.name for d in p.kept if d.source == "sensitivity"} for p in out.values()]
    assert kept[0] == kept[1] and SENSITIVE in kept[0]
    assert S.apply_mixed_precision(plans, m, None, Recipe(name="t", model={"source": "x/y"})) is plans


# ------------------------------------------------------------------------------- both backends
@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    return save_tiny_checkpoint("llama", tmp_path_factory.mktemp("mp") / "src")


def _quantize(src, out, fmt, keep_as):
    from transformers import AutoModelForCausalLM

    from quantkit.backends import get_backend
    from quantkit.calib import build_calibration
    from quantkit.checkpoint.verify import verify_checkpoint
    from quantkit.backends import backend_for_format

    model = _make_sensitive(AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16).eval())
    tok = tiny_tokenizer()
    plan = build_plan(model.config, model_source=str(src), backend=backend_for_format(fmt), model=model)
    recipe = Recipe(name="t", model={"source": str(src)},
                    mixed_precision={"budget_bits": plan.bits_per_param() + 1.0, "keep_as": keep_as,
                                     "samples": 2, "seq_len": 32})
    plan = S.apply_sensitivity(plan, model, tok, recipe)
    calib = build_calibration(tok, "bundled-en", 4, 64, 0)
    get_backend(backend_for_format(fmt)).quantize(model, tok, plan, calib, "nvfp4", out)
    return plan, verify_checkpoint(out, plan, fmt)


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
@pytest.mark.parametrize("keep_as", ["fp8", "bf16"])
def test_kept_layers_are_written_and_verified(tiny_src, tmp_path, fmt, keep_as):
    plan, report = _quantize(tiny_src, tmp_path / "out", fmt, keep_as)
    out = tmp_path / "out"
    kept = {d.module.name for d in plan.kept if d.source == "sensitivity"}
    assert SENSITIVE in kept and all(d.precision == keep_as for d in plan.kept if d.source == "sensitivity")
    mods = stored_modules(checkpoint_tensors(out))
    info = detect_format(out)
    for name, m in mods.items():
        if name in kept:
            assert m.precision == keep_as, name
        elif name in plan.fp4_names():
            assert m.precision == "fp4" and declared_precision(info, name) == "fp4", name
    if keep_as == "bf16":
        assert info.kind == ("modelopt-nvfp4" if fmt == "modelopt" else "compressed-tensors-nvfp4")
        assert report.kept_modules >= len(kept) and report.fp8_modules == 0
        return
    assert info.kind == "mixed" and report.fp8_modules == len(kept)
    assert all(declared_precision(info, n) == "fp8" for n in kept)
    if fmt == "modelopt":
        q = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
        assert q["quant_algo"] == "MIXED_PRECISION"
        layers = q["quantized_layers"]
        assert {n for n, c in layers.items() if c["quant_algo"] == "FP8"} == kept
        assert {n for n, c in layers.items() if c["quant_algo"] == "NVFP4"} == set(plan.fp4_names())
        assert all(layers[n]["group_size"] == 16 for n in plan.fp4_names())
    else:
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        groups = list(qc["config_groups"].values())
        assert sorted(g["format"] for g in groups) == ["float-quantized", "nvfp4-pack-quantized"]
        fp8_group = next(g for g in groups if g["format"] == "float-quantized")
        assert set(fp8_group["targets"]) == kept and fp8_group["weights"]["num_bits"] == 8


@pytest.mark.e2e
def test_verify_rejects_fp8_where_the_plan_does_not_say_fp8(tiny_src, tmp_path):
    from quantkit.checkpoint.verify import verify_checkpoint

    out = tmp_path / "out"
    plan, _ = _quantize(tiny_src, out, "compressed-tensors", "fp8")
    fp8 = set(plan.fp8_names())
    decisions = plan.decisions
    # The plan has no FP8 at all: the mixed metadata itself is wrong for it.
    plan.decisions = [Decision(d.module, "fp4", "NVFP4", "default") if d.precision == "fp8" else d for d in decisions]
    with pytest.raises(VerificationError, match="metadata says 'mixed'.*expected 'compressed-tensors-nvfp4'"):
        verify_checkpoint(out, plan, "compressed-tensors")
    # The plan has FP8, but on other modules: every FP8 module on disk is one the plan quantizes to FP4.
    other = next(d.module.name for d in decisions if d.precision == "fp4")
    plan.decisions = [Decision(d.module, "fp4", "NVFP4", "default") if d.module.name in fp8 else
                      Decision(d.module, "fp8", "test", "sensitivity") if d.module.name == other else d
                      for d in decisions]
    with pytest.raises(VerificationError, match="is FP8 but the plan says FP4|is FP4 but the plan keeps it FP8"):
        verify_checkpoint(out, plan, "compressed-tensors")
    plan.decisions = decisions
    verify_checkpoint(out, plan, "compressed-tensors")


@pytest.mark.e2e
def test_quantize_pipeline_applies_the_recipe_budget(tiny_src, tmp_path):
    """`quantize` itself runs the measurement when the recipe asks for it: the manifest's plan
    shows the layers kept for sensitivity with their reasons; the layerwise mode refuses it."""
    from quantkit.errors import UsageError
    from quantkit.quantize import QuantizeOptions, quantize
    from quantkit.recipe import resolve_recipe

    r = tmp_path / "r.yaml"
    r.write_text(f"name: mp\nmodel:\n  source: {tiny_src}\ncalibration:\n  samples: 4\n  seq_len: 64\n"
                 "mixed_precision:\n  budget_bits: 9.0\n  samples: 2\n  seq_len: 32\n")
    (res,) = quantize(resolve_recipe(str(r)), QuantizeOptions(formats=["modelopt"], out=tmp_path / "q"))
    kept = [k for k in res.manifest["plan"]["kept"] if k["source"] == "sensitivity"]
    assert kept and all("sensitivity rank" in k["reason"] and "budget 9 bits/param" in k["reason"] for k in kept)
    assert res.manifest["plan"]["bits_per_param"] <= 9.0
    with pytest.raises(UsageError, match="layerwise"):
        quantize(resolve_recipe(str(r)), QuantizeOptions(formats=["modelopt"], out=tmp_path / "q2", mode="layerwise"))
