"""The small vocabulary every family module speaks: a Rule (pattern + reason + where it came
from) and a Family (which model types it knows, which rules it adds for a given config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from quantkit.patterns import Pattern

__all__ = ["Rule", "Family", "layer_regex"]


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
    from the config (e.g. which layers are Mamba or feed attention)."""

    name: str
    description: str
    model_types: tuple[str, ...] = ()
    static_rules: tuple[tuple[str, str], ...] = ()
    dynamic_rules: Callable[[Any], list[tuple[str, str]]] | None = None
    moe: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def rules(self, config: Any) -> list[Rule]:
        src = f"family:{self.name}"
        out = [Rule.of(p, r, src) for p, r in self.static_rules]
        if self.dynamic_rules is not None:
            out += [Rule.of(p, r, src) for p, r in self.dynamic_rules(config)]
        return out


def layer_regex(indices: list[int], tail: str) -> str:
    """A `re:` pattern for `<anything>.layers.<i>.<tail>` for the given layer indices, matching
    both in-memory (`model.layers.`) and on-disk (`backbone.layers.`) prefixes."""
    alt = "|".join(str(i) for i in sorted(set(indices)))
    return rf"re:(?:.*\.)?layers\.(?:{alt})\.{tail}"
