"""Probe suites as data (`validate/*.yaml`): prompts with expectations for /v1/completions and
/v1/chat/completions (greedy), and the reference-perplexity settings. Running a suite returns
one result per probe; scoring is `quantkit.validate`'s job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantkit.errors import EngineError, RecipeError
from quantkit.probes.detectors import expected_answer, run_detectors
from quantkit.resources import data_dir

__all__ = ["Probe", "Suite", "ProbeResult", "load_suite", "run_probe"]


class Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    kind: Literal["completion", "chat"]
    prompt: str | None = None
    messages: list[dict] | None = None
    max_tokens: int = Field(32, ge=1)
    expect_any: list[str] = []


class PerplexitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    max_tokens_per_request: int = 512
    max_perplexity: float = 120.0
    max_ratio: float = 1.8


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    min_expected_pass: float = Field(0.5, ge=0, le=1)
    perplexity: PerplexitySpec | None = None
    probes: list[Probe]
    path: str | None = None

    def reference_text(self) -> str | None:
        if self.perplexity is None:
            return None
        base = Path(self.path).parent if self.path else data_dir("validate")
        return (base / self.perplexity.text).read_text(encoding="utf-8")


def load_suite(name_or_path: str) -> Suite:
    p = Path(name_or_path)
    if not p.is_file():
        p = data_dir("validate") / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in data_dir("validate").glob("*.yaml") if x.stem not in ("engines", "logscan"))
        raise RecipeError(f"unknown probe suite {name_or_path!r}; known: {', '.join(known)}",
                          hint="pass a suite name or a .yaml file with --suite")
    try:
        return Suite.model_validate({**yaml.safe_load(p.read_text()), "path": str(p)})
    except (ValidationError, yaml.YAMLError) as exc:
        raise RecipeError(f"{p}: invalid probe suite: {str(exc).splitlines()[0]}") from exc


@dataclass
class ProbeResult:
    id: str
    kind: str
    prompt: str
    text: str
    failures: dict[str, str] = field(default_factory=dict)  # hard detectors that fired
    expected: bool | None = None  # None: no expectation
    expected_reason: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return dict(self.__dict__, passed=self.passed)


def run_probe(client, probe: Probe) -> ProbeResult:
    import time

    t0 = time.perf_counter()
    try:
        if probe.kind == "completion":
            resp = client.completion(probe.prompt, max_tokens=probe.max_tokens)
            text, shown = resp["choices"][0]["text"], probe.prompt
        else:
            resp = client.chat(probe.messages, max_tokens=probe.max_tokens)
            text, shown = resp["choices"][0]["message"]["content"] or "", probe.messages[-1]["content"]
    except EngineError as exc:
        return ProbeResult(probe.id, probe.kind, probe.prompt or "", "", {"request": exc.message},
                           seconds=round(time.perf_counter() - t0, 3))
    res = ProbeResult(probe.id, probe.kind, shown, text, run_detectors(text), seconds=round(time.perf_counter() - t0, 3))
    if probe.expect_any:
        reason = expected_answer(text, probe.expect_any)
        res.expected, res.expected_reason = reason is None, reason
    return res
