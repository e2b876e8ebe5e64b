"""Nemotron-H Mamba-2 hybrids (Nemotron-3-Nano, Nemotron-3-Super, Omni).

transformers 5 names every layer's block `mixer`, whatever it is (Mamba `mixer.in_proj`,
`mixer.out_proj`, `mixer.conv1d`; attention `mixer.q_proj`...; MLP `mixer.up_proj`...; MoE
`mixer.experts`, router `mixer.gate`), so which layers to keep is derived from the config's layer
pattern (`layers_block_type`, formerly `hybrid_override_pattern`: M=Mamba, *=attention,
-=MLP, E=MoE). On disk the prefix is `backbone.`, in memory `model.`: the rules match both."""

from __future__ import annotations

from typing import Any

from quantkit.families.base import Family, config_value, layer_regex

__all__ = ["NEMOTRON_H", "layer_kinds"]

_LEGACY = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
_CANON = {"linear_attention": "mamba", "mamba": "mamba", "full_attention": "attention",
          "attention": "attention", "mlp": "mlp", "moe": "moe"}


_LATENT = ("latent-MoE projection (into / out of the experts' latent space, every token): NVIDIA's "
           "Nemotron-H exporter keeps it BF16 (vLLM nemotron_h.py)")


def layer_kinds(config: Any) -> list[str]:
    """Per-layer kind ('mamba' | 'attention' | 'mlp' | 'moe') from a Nemotron-H config (object
    or config.json dict); an unknown pattern character is kept as it is."""
    types = config_value(config, "layers_block_type") or config_value(config, "layer_types")
    if isinstance(types, (list, tuple)) and types:
        return [_CANON.get(t, t) for t in types]
    pattern = config_value(config, "hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        return [_LEGACY.get(c, c) for c in pattern]
    return []


def _slice_layer(text: Any, i: int, n: int) -> str | None:
    """The legacy pattern string is per layer too (`layers_block_type` is `layer_types` to transformers)."""
    pattern = getattr(text, "hybrid_override_pattern", None)
    if isinstance(pattern, str) and len(pattern) == n:
        text.hybrid_override_pattern = pattern[i]
    return None


def _rules(config: Any) -> list[tuple[str, str]]:
    kinds = layer_kinds(config)
    attn = [i for i, k in enumerate(kinds) if k == "attention"]
    feeding = [i - 1 for i in attn if i > 0 and kinds[i - 1] != "attention"]
    mamba = [i for i, k in enumerate(kinds) if k == "mamba"]
    rules: list[tuple[str, str]] = []
    if attn:
        rules.append((layer_regex(attn, r"mixer\."),
                      "attention layer of a Mamba hybrid: NVIDIA's Nemotron-H recipes keep attention in BF16"))
    if feeding:
        rules.append((layer_regex(feeding, r"mixer\."),
                      "attention-feeding layer (directly before an attention layer): its output is the "
                      "attention input, kept BF16 as in NVIDIA's Nemotron-H recipes"))
    if mamba:
        rules.append((layer_regex(mamba, r"mixer\."),
                      "Mamba-2 mixer (in_proj/out_proj/conv1d carry the SSM state): NVIDIA keeps them "
                      "BF16 or FP8, never plain FP4"))
    return rules


NEMOTRON_H = Family(
    name="nemotron_h",
    description="Nemotron-H Mamba-2 hybrids: Mamba mixers, attention and attention-feeding layers",
    model_types=("nemotron_h",),
    # Latent MoE (Nemotron-3-Super): the projections into and out of the experts' latent space run
    # for every token; NVIDIA's exporter keeps them BF16 and vLLM's nemotron_h.py relies on it
    # (`fc2_latent_proj.reduce_commutative` holds only for an unquantized layer).
    static_rules=(("*.mixer.fc1_latent_proj", _LATENT), ("*.mixer.fc2_latent_proj", _LATENT)),
    dynamic_rules=_rules,
    layer_kinds=layer_kinds,
    slice_layer=_slice_layer,
    name_prefixes=(("backbone.", "model."),),  # on disk `backbone.layers.0`, in memory `model.layers.0`
    code="mamba-hybrid-in-fp4",
)
