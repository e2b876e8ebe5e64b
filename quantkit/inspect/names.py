"""Name matching at checkpoint scale: which modules the metadata declares unquantized and which
family rule covers a module, cached per name with the expert index folded. A 120B MoE stores
tens of thousands of per-expert modules (`layers.7.mlp.experts.211.up_proj`) whose answers never
depend on the expert index, unless an entry names experts by index (then nothing is folded)."""

from __future__ import annotations

import re
from typing import Any

from quantkit.checkpoint.formats import FormatInfo, unquantized_matcher
from quantkit.families import Family, Rule, name_candidates

__all__ = ["Declared", "FamilyCover", "name_candidates", "fold_expert", "fold_indices", "index_blind",
           "names_experts_by_index"]

_INDEX = re.compile(r"\.\d+(?=\.|$)")
_INDEX_SENSITIVE = re.compile(r"[0-9?\[]|\\d")  # a pattern that can tell layer 3 from layer 13
_INDEX_CHARS = re.compile(r"[\d\[(?{]|\\d")  # digits, classes, groups, single-char wildcards


def fold_expert(name: str) -> str:
    """`...experts.17.up_proj` -> `...experts.*.up_proj` (string scan: called per module, 1e5 times)."""
    i = name.find(".experts.")
    if i < 0:
        return name
    j = k = i + 9
    while k < len(name) and name[k].isdigit():
        k += 1
    return name if k == j else name[:j] + "*" + name[k:]


def names_experts_by_index(entry: str) -> bool:
    """Whether an exclusion entry might tell expert 3 from expert 4: an index-like construct after
    `expert`, or one anywhere in a pattern that starts with a wildcard. Conservative: a false
    positive only turns the name cache's expert folding off (slower, same answers)."""
    body = entry[3:] if entry.startswith("re:") else entry
    i = body.find("expert")
    if i >= 0 and _INDEX_CHARS.search(body[i:]):
        return True
    wild = body[:1] in ("*", "?", "[", "(", ".") or (entry.startswith("re:") and not body[:1].isalnum())
    return wild and _INDEX_CHARS.search(body) is not None


def fold_indices(name: str) -> str:
    """Every numeric index folded: `layers.3.mlp.experts.17.up_proj` -> `layers.*.mlp.experts.*.up_proj`."""
    return _INDEX.sub(".*", name)


class Declared:
    """`declared_unquantized` over many names: the entry declaring a module unquantized, or None."""

    def __init__(self, info: FormatInfo):
        self.info = info
        self._match = unquantized_matcher(info)
        self._fold = not any(names_experts_by_index(e) for e in info.unquantized_entries)
        self._cache: dict[str, str | None] = {}
        self._by_name: dict[str, str | None] = {}

    def __call__(self, name: str) -> str | None:
        try:
            return self._by_name[name]
        except KeyError:
            pass
        key = fold_expert(name) if self._fold else name
        if key not in self._cache:
            self._cache[key] = self._match(name)
        self._by_name[name] = hit = self._cache[key]
        return hit

    def representatives(self, names: set[str]) -> list[str]:
        """One name per expert-folded key (all names when entries name experts by index)."""
        if not self._fold:
            return list(names)
        return list({fold_expert(n): n for n in names}.values())

    def entry_hits(self, entry: str, names: set[str], reps: list[str]) -> bool:
        """Whether one entry matches any of `names` (`reps`: their representatives)."""
        if not any(c in entry for c in "*?[") and not entry.startswith("re:"):
            return entry in names
        one = unquantized_matcher(FormatInfo(self.info.kind, self.info.quant_method, unquantized_entries=[entry]))
        return any(one(n) for n in reps)


def index_blind(patterns: list[str]) -> bool:
    """Whether none of these patterns can distinguish one layer / expert index from another."""
    return not any(_INDEX_SENSITIVE.search(p) for p in patterns)


class FamilyCover:
    """The first family rule (architecture family first) that covers a stored module. Family rules
    (quantkit's own data) never name an expert by index, so expert indices are always folded."""

    def __init__(self, families: list[Family], config: Any):
        self.rules: list[tuple[Family, Rule]] = [(f, r) for f in families for r in f.rules(config)]
        self._fold = fold_indices if index_blind([r.pattern.raw for _, r in self.rules]) else fold_expert
        self._cache: dict[str, tuple[Family, Rule] | None] = {}

    def __call__(self, name: str) -> tuple[Family, Rule] | None:
        key = self._fold(name)
        if key not in self._cache:
            cands = name_candidates(name)
            self._cache[key] = next(((f, r) for f, r in self.rules if any(r.pattern.covers(c) for c in cands)), None)
        return self._cache[key]
