"""One pattern language for module names, and its translation to each backend's native form.

A pattern is either
  * a shell-style glob (``*linear_attn*``, ``lm_head``, ``*.mlp.gate``): ``*`` crosses dots,
    the whole module name must match; or
  * a regular expression prefixed with ``re:`` (``re:.*linear_attn.*``), matched with
    ``re.match`` (anchored at the start, as in llm-compressor / compressed-tensors, so ignore
    lists copied from their examples mean the same thing here).

A module is covered by a pattern when its own name or the name of one of its ancestors
matches: excluding ``model.layers.0.linear_attn`` excludes every linear inside it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

from quantkit.errors import PatternError

__all__ = ["Pattern", "ancestors", "to_llmcompressor_ignore", "to_modelopt_disabled"]

_REGEX_PREFIX = "re:"


def ancestors(name: str) -> list[str]:
    """`a.b.c` -> [`a.b.c`, `a.b`, `a`]: the name itself first, then each parent."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


@dataclass(frozen=True)
class Pattern:
    raw: str

    def __post_init__(self) -> None:
        if not self.raw or not self.raw.strip():
            raise PatternError("empty exclusion pattern", hint="remove it or write e.g. '*linear_attn*'")
        try:
            self._regex  # compile eagerly so a bad regex fails at recipe load, not mid-plan
        except re.error as exc:
            raise PatternError(
                f"invalid regular expression in pattern {self.raw!r}: {exc}",
                hint="fix the regex after 're:', or drop 're:' to use a glob such as '*linear_attn*'",
            ) from exc

    @property
    def is_regex(self) -> bool:
        return self.raw.startswith(_REGEX_PREFIX)

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        if self.is_regex:
            return re.compile(self.raw[len(_REGEX_PREFIX):])
        return re.compile(fnmatch.translate(self.raw))

    def matches_exactly(self, name: str) -> bool:
        """The name itself matches (no ancestor rule). One call for both kinds: a `re:` regex is
        anchored at the start only (as in llm-compressor), fnmatch.translate at both ends."""
        return self._regex.match(name) is not None

    def covers(self, name: str) -> bool:
        """The name, or one of its ancestors, matches."""
        return any(self.matches_exactly(a) for a in ancestors(name))

    # ------------------------------------------------------------------ translations
    def as_regex_source(self) -> str:
        """A Python regex (for `re.match`) covering the module and its children."""
        if self.is_regex:
            body = self.raw[len(_REGEX_PREFIX):]
            # re.match anchors only at the start; children are covered since the body is a prefix
            return body
        glob_re = fnmatch.translate(self.raw)  # '(?s:...)\\Z'
        inner = glob_re[len("(?s:"): -len(")\\Z")] if glob_re.startswith("(?s:") else glob_re
        return f"(?:{inner})(?:\\..*)?$"

    def __str__(self) -> str:
        return self.raw


def to_llmcompressor_ignore(patterns: Iterable[Pattern]) -> list[str]:
    """llm-compressor / compressed-tensors `ignore` entries: every entry a `re:` regex, so that
    no entry is mistaken for a class name and fused engine modules (e.g. vLLM's `in_proj_qkvz`)
    are covered by the same entry as the split names."""
    out: list[str] = []
    for p in patterns:
        entry = _REGEX_PREFIX + p.as_regex_source()
        if entry not in out:
            out.append(entry)
    return out


def to_modelopt_disabled(module_names: Iterable[str]) -> dict[str, dict]:
    """ModelOpt `quant_cfg` entries disabling every quantizer of the given modules.

    ModelOpt matches fnmatch wildcards against quantizer names (`<module>.weight_quantizer`,
    `<module>.input_quantizer`, ...), where `*` crosses dots and later entries win. Exact module
    names from the resolved plan are used instead of translated globs, so ModelOpt disables
    exactly the modules the plan shows, whatever the pattern spelled."""
    return {f"{name}.*": {"enable": False} for name in module_names}
