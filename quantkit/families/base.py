"""The small vocabulary every family module speaks: a Rule (pattern + reason + where it came
from) and a Family (which model types it knows, which rules it adds for a given config, how its
config describes and slices layers, how its names differ on disk)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from quantkit.patterns import Pattern

__all__ = ["Rule", "Family", "layer_regex", "config_value"]


@dataclass(frozen=True)
class Rule:
    pattern: Pattern
    reason: str
    source: str  # "cli", "recipe", or "family:<name>"
    precision: str = "bf16"

    @classmethod
    def of(cls, pattern: str, reason: str, source: str) -> "Rule":
        return cls(Pattern(pattern), reason, source)

    def to_dict(self) -> dict:
        return {"pattern": self.pattern.raw, "reason": self.reason, "source": self.source,
                "precision": self.precision}


@dataclass(frozen=True)
class Family:
    """Knowledge about one architecture family.

    `model_types` are the `config.json` `model_type` values (top level or `text_config`) it
    covers; `static_rules` apply whenever the family does; `dynamic_rules(config)` derives rules
    from the config (e.g. which layers are Mamba or feed attention).

    The rest lets other modules ask instead of knowing: `layer_kinds(config)` reads the per-layer
    kinds from the config fields this family knows ([] when they are absent);
    `slice_layer(text_config, i, n)` narrows those per-layer fields in place to layer i of n (for
    the one-layer stand-in of `--mode layerwise`) and returns why layer i cannot stand alone, or
    None; `name_prefixes` are (on-disk, in-memory) name prefixes (`backbone.` -> `model.`);
    `code` is inspect's finding code when a module this family keeps out of FP4 is stored FP4."""

    name: str
    description: str
    model_types: tuple[str, ...] = ()
    static_rules: tuple[tuple[str, str], ...] = ()
    dynamic_rules: Callable[[Any], list[tuple[str, str]]] | None = None
    layer_kinds: Callable[[Any], list[str]] | None = None
    slice_layer: Callable[[Any, int, int], str | None] | None = None
    name_prefixes: tuple[tuple[str, str], ...] = ()
    code: str = ""

    @property
    def finding_code(self) -> str:
        return self.code or f"{self.name}-in-fp4"

    def rules(self, config: Any) -> list[Rule]:
        src = f"family:{self.name}"
        out = [Rule.of(p, r, src) for p, r in self.static_rules]
        if self.dynamic_rules is not None:
            out += [Rule.of(p, r, src) for p, r in self.dynamic_rules(config)]
        return out


def config_value(config: Any, key: str) -> Any:
    """A config field, whether the config is a transformers config object or config.json's dict
    (inspect reads the dict, the stand-in the object)."""
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def layer_regex(indices: list[int], tail: str) -> str:
    """A `re:` pattern for `<anything>.layers.<i>.<tail>` for the given layer indices, matching
    both in-memory (`model.layers.`) and on-disk (`backbone.layers.`) prefixes."""
    alt = "|".join(str(i) for i in sorted(set(indices)))
    return rf"re:(?:.*\.)?layers\.(?:{alt})\.{tail}"
