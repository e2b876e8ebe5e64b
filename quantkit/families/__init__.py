"""Architecture knowledge, one module per family. `families_for(config)` picks the families
that apply to a model; every rule they add carries its reason. The rest of quantkit asks here
instead of knowing: `layer_kinds` (per-layer kinds from a config), `slice_layer` (a config's
per-layer fields narrowed to one layer), `name_candidates` (on-disk names -> in-memory names),
`is_mtp` and each family's `finding_code`. Adding an architecture is one module plus one line
in `ARCH_FAMILIES`."""

from __future__ import annotations

from typing import Any

from quantkit.errors import RecipeError
from quantkit.families.base import Family, Rule, config_value
from quantkit.families.common import COMMON
from quantkit.families.gdn import GDN
from quantkit.families.moe import MOE
from quantkit.families.mtp import MTP, is_mtp
from quantkit.families.nemotron_h import NEMOTRON_H
from quantkit.families.vision import VISION

__all__ = ["Family", "Rule", "ALWAYS", "ARCH_FAMILIES", "FAMILIES", "model_types_of", "families_for",
           "family_by_name", "layer_kinds", "slice_layer", "name_candidates", "is_mtp"]

# Applied to every model: their patterns simply match nothing where the part is absent.
ALWAYS: tuple[Family, ...] = (COMMON, MOE, MTP, VISION)
# Architecture-specific families, detected from config.json's model_type.
ARCH_FAMILIES: tuple[Family, ...] = (GDN, NEMOTRON_H)
FAMILIES: tuple[Family, ...] = ARCH_FAMILIES + ALWAYS
# Every family's (on-disk, in-memory) name prefixes, tried on every name: a prefix that does not
# occur changes nothing, so no detection is needed (inspect may have no config at all).
_PREFIXES: tuple[tuple[str, str], ...] = tuple(p for f in FAMILIES for p in f.name_prefixes)
# Config fields are asked generic first: transformers derives architecture fields from generic
# ones (Nemotron-H's `hybrid_override_pattern` is a read-only view of `layer_types`).
_CONFIG_ORDER: tuple[Family, ...] = ALWAYS + ARCH_FAMILIES


def layer_kinds(config: Any) -> list[str]:
    """Per-layer kinds of a config (object or config.json dict): in the words of its detected
    architecture family (Nemotron-H: 'mamba', 'attention', 'mlp', 'moe'), else transformers'
    generic `layer_types` words ('full_attention', 'sliding_attention', 'linear_attention'); []
    when the config has none. Families read only their own fields, so the undetected ones are
    asked too, last (a config.json without a known model_type)."""
    ordered = families_for(config)
    for f in ordered + [f for f in _CONFIG_ORDER if f not in ordered]:
        kinds = f.layer_kinds(config) if f.layer_kinds is not None else []
        if kinds:
            return kinds
    return []


def slice_layer(text: Any, i: int, n: int) -> str | None:
    """Narrow the per-layer fields of a text config (a copy) to layer i of its n layers, in place,
    asking every family (each touches only fields it knows). Returns why layer i cannot stand
    alone in a one-layer model, or None."""
    for f in _CONFIG_ORDER:
        why = f.slice_layer(text, i, n) if f.slice_layer is not None else None
        if why:
            return why
    return None


def name_candidates(name: str) -> list[str]:
    """A stored name and its in-memory spellings (`backbone.layers.0` -> `model.layers.0`), by the
    name prefixes the families declare; the stored name first."""
    out = [name]
    for pre, repl in _PREFIXES:
        if name.startswith(pre):
            out.append(repl + name[len(pre):])
    return out


def model_types_of(config: Any) -> list[str]:
    """The model_type of the config (object or config.json dict) and of its text sub-config, if any."""
    out = []
    for c in (config, config_value(config, "text_config")):
        mt = config_value(c, "model_type")
        if mt and mt not in out:
            out.append(mt)
    return out


def family_by_name(name: str) -> Family:
    for f in ARCH_FAMILIES + ALWAYS:
        if f.name == name:
            return f
    valid = ", ".join(f.name for f in ARCH_FAMILIES)
    raise RecipeError(f"unknown family {name!r}; known families: {valid}",
                      hint="omit `family:` to detect it from config.json, or use one of those")


def families_for(config: Any, explicit: str | None = None) -> list[Family]:
    """The always-on families plus the architecture family: the recipe's, or detected."""
    if explicit:
        arch = [family_by_name(explicit)]
    else:
        types = model_types_of(config)
        arch = [f for f in ARCH_FAMILIES if any(t in f.model_types for t in types)]
    return arch + [f for f in ALWAYS if f not in arch]
