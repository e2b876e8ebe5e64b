"""Architecture knowledge, one module per family. `families_for(config)` picks the families
that apply to a model; every rule they add carries its reason."""

from __future__ import annotations

from typing import Any

from quantkit.errors import RecipeError
from quantkit.families.base import Family, Rule
from quantkit.families.common import COMMON
from quantkit.families.gdn import GDN
from quantkit.families.moe import MOE
from quantkit.families.mtp import MTP
from quantkit.families.nemotron_h import NEMOTRON_H
from quantkit.families.vision import VISION

__all__ = ["Family", "Rule", "ALWAYS", "ARCH_FAMILIES", "model_types_of", "families_for", "family_by_name"]

# Applied to every model: their patterns simply match nothing where the part is absent.
ALWAYS: tuple[Family, ...] = (COMMON, MOE, MTP, VISION)
# Architecture-specific families, detected from config.json's model_type.
ARCH_FAMILIES: tuple[Family, ...] = (GDN, NEMOTRON_H)


def model_types_of(config: Any) -> list[str]:
    """The model_type of the config and of its text sub-config, if any."""
    out = []
    for c in (config, getattr(config, "text_config", None)):
        mt = getattr(c, "model_type", None)
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
