"""The architecture knowledge other modules ask `quantkit.families` for, instead of knowing it:
per-layer kinds (inspect's KV-cache size), per-layer config slicing (the layerwise stand-in),
on-disk -> in-memory names (verify, inspect), MTP tensors (verify) and finding codes (inspect).
Expectations are written out here, independently of the family code. Configs only: no weights."""

from __future__ import annotations

import pytest

from quantkit.errors import PlanError
from quantkit.families import FAMILIES, is_mtp, layer_kinds, name_candidates
from quantkit.inspect.hardware import _kv_layers
from quantkit.stream.mini import layer_config
from tiny_models import tiny_config


@pytest.mark.parametrize("config,kv", [
    ({"layer_types": ["linear_attention", "full_attention", "sliding_attention"]}, 2),
    ({"layers_block_type": ["mamba", "attention", "moe"]}, 1),
    ({"model_type": "nemotron_h", "hybrid_override_pattern": "M*M*-E*"}, 3),
    ({"layer_types": [], "hybrid_override_pattern": "M*", "num_hidden_layers": 9}, 1),
    ({"num_hidden_layers": 5}, 5),
    ({}, 0),
])
def test_kv_cache_layers_from_the_families_layer_kinds(config, kv):
    assert _kv_layers(config) == kv


def test_layer_kinds_of_config_objects():
    assert layer_kinds(tiny_config("nemotron_h")) == ["mamba", "attention", "moe", "mamba", "attention", "mlp"]
    assert layer_kinds(tiny_config("qwen3_next")) == ["linear_attention", "full_attention"] * 2
    assert layer_kinds(tiny_config("llama")) == []


@pytest.mark.parametrize("kind,i,want", [("nemotron_h", 1, ["full_attention"]), ("nemotron_h", 2, ["moe"]),
                                         ("qwen3_next", 2, ["linear_attention"]), ("gemma3", 0, ["sliding_attention"])])
def test_stand_in_config_is_sliced_to_layer_i(kind, i, want):
    cfg = tiny_config(kind)
    cfg.num_nextn_predict_layers = 1
    text = layer_config(cfg, i, vocab=7).get_text_config()
    assert text.num_hidden_layers == 1 and text.vocab_size == 7 and list(text.layer_types) == want
    assert not text.num_nextn_predict_layers
    assert getattr(text, "mlp_only_layers", None) in (None, [])


def test_stand_in_refuses_a_layer_type_tied_to_its_index():
    cfg = tiny_config("qwen3_next")
    cfg.mlp_only_layers = [1]
    assert layer_config(cfg, 1, vocab=7).mlp_only_layers == [0]
    cfg.decoder_sparse_step = 2
    with pytest.raises(PlanError, match="cannot rebuild layer 1: decoder_sparse_step=2"):
        layer_config(cfg, 1, vocab=7)


def test_one_name_map_for_verify_and_inspect():
    from quantkit.checkpoint.verify import plan_name_for

    assert name_candidates("backbone.layers.0.mixer.in_proj") == ["backbone.layers.0.mixer.in_proj",
                                                                  "model.layers.0.mixer.in_proj"]
    assert "model.layers.1.mlp.gate" in name_candidates("model.language_model.layers.1.mlp.gate")
    planned = {"model.layers.0.mixer.in_proj", "model.layers.0.mlp.experts", "lm_head"}
    assert plan_name_for("backbone.layers.0.mixer.in_proj", planned) == "model.layers.0.mixer.in_proj"
    assert plan_name_for("model.layers.0.mlp.experts.3.up_proj", planned) == "model.layers.0.mlp.experts"
    # an MTP layer is not the decoder layer of the same index
    assert plan_name_for("mtp.layers.0.mlp.experts.3.up_proj", planned) is None


def test_mtp_tensors_include_nextn_heads():
    for name in ("mtp.fc.weight", "mtp.layers.0.mlp.up_proj.weight", "model.nextn.eh_proj.weight"):
        assert is_mtp(name), name
    for name in ("model.layers.0.mlp.up_proj.weight", "lm_head.weight"):
        assert not is_mtp(name), name


def test_each_family_names_its_finding_code():
    from quantkit.inspect.checks import FAMILY_CODES

    assert FAMILY_CODES == {"gdn": "gdn-in-fp4", "nemotron_h": "mamba-hybrid-in-fp4", "moe": "router-in-fp4",
                            "common": "head-in-fp4", "mtp": "mtp-in-fp4", "vision": "vision-in-fp4"}
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
