import re

import pytest

from quantkit.errors import PatternError
from quantkit.patterns import Pattern, ancestors, to_llmcompressor_ignore, to_modelopt_disabled

NAMES = [
    "model.layers.0.linear_attn.in_proj_qkvz",
    "model.layers.0.linear_attn.in_proj_ba",
    "model.layers.0.linear_attn.conv1d",
    "model.layers.0.linear_attn.out_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.mlp.gate",
    "model.layers.1.mlp.gate_proj",
    "model.layers.1.mlp.shared_expert_gate",
    "backbone.layers.3.mixer.in_proj",
    "lm_head",
]


def covered(p: str) -> list[str]:
    return [n for n in NAMES if Pattern(p).covers(n)]


def test_glob_star_crosses_dots_and_matches_whole_name():
    assert covered("*linear_attn*") == NAMES[:4]
    assert covered("lm_head") == ["lm_head"]
    assert covered("*.mlp.gate") == ["model.layers.1.mlp.gate"]  # not gate_proj


def test_parent_pattern_covers_children():
    assert covered("model.layers.0.linear_attn") == NAMES[:4]
    assert covered("model.layers.1") == NAMES[4:8]


def test_regex_is_anchored_at_start_like_llmcompressor():
    assert covered("re:.*mlp\\.gate$") == ["model.layers.1.mlp.gate"]
    assert covered("re:mlp") == []  # re.match: anchored at the start
    assert covered("re:(?:.*\\.)?layers\\.3\\.mixer\\.") == ["backbone.layers.3.mixer.in_proj"]


def test_bad_patterns_raise_pattern_error_with_hint():
    with pytest.raises(PatternError) as e:
        Pattern("re:(unclosed")
    assert "invalid regular expression" in e.value.message and e.value.hint
    with pytest.raises(PatternError):
        Pattern("  ")


def test_ancestors():
    assert ancestors("a.b.c") == ["a.b.c", "a.b", "a"]


@pytest.mark.parametrize("pattern", ["*linear_attn*", "lm_head", "*.mlp.gate", "model.layers.1",
                                     "re:.*mlp\\.gate$", "re:.*linear_attn.*"])
def test_llmcompressor_translation_selects_the_same_modules(pattern):
    (entry,) = to_llmcompressor_ignore([Pattern(pattern)])
    assert entry.startswith("re:")
    rx = re.compile(entry[3:])
    assert [n for n in NAMES if rx.match(n)] == covered(pattern)


def test_llmcompressor_translation_covers_vllm_fused_names():
    # vLLM builds in_proj_qkvz from split in_proj_qkv + in_proj_z (vLLM issue 40252):
    (entry,) = to_llmcompressor_ignore([Pattern("*linear_attn*")])
    assert re.match(entry[3:], "model.layers.7.linear_attn.in_proj_qkvz")
    assert re.match(entry[3:], "model.layers.7.linear_attn.in_proj_qkv")


def test_modelopt_entries_disable_exact_modules_only():
    import fnmatch

    cfg = to_modelopt_disabled(["model.layers.1.mlp.gate"])
    (wild,) = cfg
    assert cfg[wild] == {"enable": False}
    assert fnmatch.fnmatch("model.layers.1.mlp.gate.weight_quantizer", wild)
    assert not fnmatch.fnmatch("model.layers.1.mlp.gate_proj.weight_quantizer", wild)
