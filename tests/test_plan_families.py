"""`quantkit plan` on tiny configs of every family and of every shipped recipe's architecture:
the plan must keep exactly the layers the family preset says (expectations written out here,
independently of the preset code), with no weights read."""

from __future__ import annotations

import json
import re

import pytest

from quantkit.cli.main import main
from quantkit.plan import build_plan
from tiny_models import tiny_config

ROUTER = re.compile(r"\.(mlp|mixer)\.gate$|\.router(\.|$)|shared_expert_gate")


def _gdn_kept(name: str) -> bool:
    return ".linear_attn." in name or bool(ROUTER.search(name)) or name == "lm_head"


def _nemotron_kept(name: str) -> bool:
    # "M*EM*-": attention layers 1 and 4; layers 0 and 3 are Mamba and feed attention.
    m = re.search(r"layers\.(\d+)\.mixer\.", name)
    return name == "lm_head" or bool(ROUTER.search(name)) or (m is not None and int(m.group(1)) in (0, 1, 3, 4))


def _plain_kept(name: str) -> bool:
    return name == "lm_head" or bool(ROUTER.search(name))


EXPECT = {"llama": _plain_kept, "qwen3_next": _gdn_kept, "qwen3_5": _gdn_kept, "qwen3_5_moe": _gdn_kept,
          "nemotron_h": _nemotron_kept, "gemma3": _plain_kept, "gemma4": _plain_kept, "gemma4_moe": _plain_kept}

# Each shipped recipe -> the tiny architecture it is checked against.
RECIPE_ARCH = {
    "smollm2-135m": "llama", "gemma3-270m": "gemma3", "grm-27b": "qwen3_5", "qwen3.6-27b": "qwen3_5",
    "qwen3.6-35b-a3b": "qwen3_5_moe", "qwen3.5-122b-a10b": "qwen3_5_moe", "nex-n2-mini": "qwen3_5_moe",
    "qwen3-coder-next": "qwen3_next", "nemotron-3-super": "nemotron_h", "nemotron-3-nano": "nemotron_h",
    "gemma-4-31b": "gemma4", "gemma-4-26b-a4b": "gemma4_moe",
}


@pytest.mark.parametrize("kind", sorted(EXPECT))
@pytest.mark.parametrize("backend", ["modelopt", "llmcompressor"])
def test_family_preset_keeps_exactly_the_expected_layers(kind, backend):
    plan = build_plan(tiny_config(kind), model_source=kind, backend=backend)
    kept = {d.module.name for d in plan.kept}
    expected = {d.module.name for d in plan.decisions if EXPECT[kind](d.module.name) or d.module.kind == "conv"}
    assert kept == expected
    assert plan.fp4, "something must be quantized"
    for d in plan.kept:
        assert d.reason and d.source != "default"


def test_gdn_both_naming_schemes_kept():
    fused = build_plan(tiny_config("qwen3_next"), model_source="t", backend="modelopt")
    split = build_plan(tiny_config("qwen3_5"), model_source="t", backend="modelopt")
    assert {"model.layers.0.linear_attn.in_proj_qkvz", "model.layers.0.linear_attn.in_proj_ba",
            "model.layers.0.linear_attn.out_proj", "model.layers.0.linear_attn.conv1d"} <= set(
        d.module.name for d in fused.kept)
    assert {"model.layers.0.linear_attn.in_proj_qkv", "model.layers.0.linear_attn.in_proj_z",
            "model.layers.0.linear_attn.in_proj_a", "model.layers.0.linear_attn.in_proj_b"} <= set(
        d.module.name for d in split.kept)
    # full-attention layers are still FP4
    assert "model.layers.1.self_attn.q_proj" in fused.fp4_names()


def test_nemotron_attention_feeding_reason_and_router_not_linear():
    plan = build_plan(tiny_config("nemotron_h"), model_source="t", backend="modelopt")
    by = {d.module.name: d for d in plan.decisions}
    assert "attention-feeding" in by["model.layers.3.mixer.in_proj"].reason
    assert "attention layer" in by["model.layers.4.mixer.q_proj"].reason
    gate = by["model.layers.2.mixer.gate"]
    assert gate.module.kind == "custom2d" and gate.precision == "bf16" and gate.source == "family:moe"
    assert by["model.layers.2.mixer.experts"].precision == "fp4"  # fused 3-D experts are quantized
    assert by["model.layers.5.mixer.up_proj"].precision == "fp4"  # plain MLP layer


def test_width_not_divisible_by_16_is_kept():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=72, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    plan = build_plan(cfg, model_source="t", backend="modelopt")
    d = next(d for d in plan.decisions if d.module.name.endswith("down_proj"))
    assert d.precision == "bf16" and "not divisible by 16" in d.reason


def test_excluding_everything_is_an_error():
    from quantkit.errors import PlanError

    with pytest.raises(PlanError):
        build_plan(tiny_config("llama"), model_source="t", backend="llmcompressor", cli_patterns=["*"])


@pytest.mark.parametrize("recipe", sorted(RECIPE_ARCH))
def test_every_shipped_recipe_plans_its_architecture(recipe, tmp_path, capsys):
    kind = RECIPE_ARCH[recipe]
    cfg = tmp_path / "config.json"
    tiny_config(kind).to_json_file(cfg)
    assert main(["plan", recipe, "--config", str(cfg), "--json", "--strict"]) == 0
    plan = json.loads(capsys.readouterr().out)
    kept = {m["name"] for m in plan["modules"] if m["precision"] != "fp4"}
    expected = {m["name"] for m in plan["modules"] if EXPECT[kind](m["name"]) or m["kind"] == "conv"}
    assert kept == expected
    assert plan["summary"]["fp4"] > 0 and 4.0 < plan["summary"]["bits_per_param"] < 16


def test_plan_human_output_groups_layers(capsys):
    assert main(["plan", "smollm2-135m"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.*.self_attn.q_proj" in out and "30" in out and "lm_head" in out
    assert "bits/param" in out


def test_nemotron_latent_moe_projections_stay_bf16():
    """Issue 12 case 12: Nemotron-3-Super's latent MoE projections are kept BF16, as NVIDIA's
    exporter does (vLLM's nemotron_h.py relies on an unquantized fc2_latent_proj)."""
    cfg = tiny_config("nemotron_h")
    cfg.moe_latent_size = 32
    plan = build_plan(cfg, model_source="t", backend="modelopt")
    by = {d.module.name: d for d in plan.decisions}
    for proj in ("fc1_latent_proj", "fc2_latent_proj"):
        d = by[f"model.layers.2.mixer.{proj}"]
        assert d.precision == "bf16" and "latent" in d.reason, d
    assert by["model.layers.2.mixer.experts"].precision == "fp4"
