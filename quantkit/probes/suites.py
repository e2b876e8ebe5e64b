"""Probe suites as data (`validate/*.yaml`): greedy prompts for /v1/completions and
/v1/chat/completions (hard detectors; expected answers are informational), the reference-perplexity,
knowledge-bank and long-generation settings, and every threshold with its reason. Running the probes
returns one result per probe; judging is `quantkit.judge`'s and `quantkit.validate`'s job."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from quantkit.datafile import load_yaml_model
from quantkit.errors import EngineError, UsageError
from quantkit.probes.detectors import expected_answer, run_detectors
from quantkit.probes.image import ImageSpec
from quantkit.probes.mtp import MtpSpec
from quantkit.probes.structured import StructuredSpec
from quantkit.resources import data_dir

__all__ = ["Probe", "Suite", "ProbeResult", "load_suite", "run_probes"]


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
    block_tokens: int = Field(64, ge=8)  # the bootstrap's unit: blocks of this many scored tokens
    max_perplexity: float = 120.0
    why_max_perplexity: str = ""
    max_ratio: float = 1.8
    why_max_ratio: str = ""


class KnowledgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bank: str
    distractors: int | None = Field(None, ge=1)  # score the first N distractors of each item (default: all)
    batch: int = Field(64, ge=1)
    min_retained: float = Field(0.5, gt=0, le=1)
    why_min_retained: str = ""
    min_above_chance: float = Field(0.1, ge=0, lt=1)
    why_min_above_chance: str = ""


class LongPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    prompt: str


class LongGenerationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(256, ge=16)
    prompts: list[LongPrompt] = Field(min_length=1)
    max_repetition_increase: float = 0.25
    why_max_repetition_increase: str = ""
    max_surprise_increase: float = 1.5
    why_max_surprise_increase: str = ""


class BootstrapSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resamples: int = Field(2000, ge=100)
    seed: int = 0


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    why_alpha: str = ""
    bootstrap: BootstrapSpec = BootstrapSpec()
    perplexity: PerplexitySpec | None = None
    knowledge: KnowledgeSpec | None = None
    long_generation: LongGenerationSpec | None = None
    structured: StructuredSpec | None = None  # instruction / tool-call probes, judged against the baseline
    images: ImageSpec | None = None  # the image probe, sent to vision-language checkpoints only
    mtp: MtpSpec | None = None  # MTP drafter acceptance, for checkpoints with MTP weights (a second boot)
    probes: list[Probe]
    path: str | None = None

    def folder(self) -> Path:
        """The folder the suite's files (texts, banks, images) are relative to."""
        return Path(self.path).parent if self.path else data_dir("validate")

    def _file(self, rel: str) -> Path:
        return self.folder() / rel

    def reference_text(self) -> str | None:
        if self.perplexity is None:
            return None
        return self._file(self.perplexity.text).read_text(encoding="utf-8")

    def bank(self):
        from quantkit.probes.knowledge import load_bank

        return load_bank(self._file(self.knowledge.bank)) if self.knowledge else None

    def fingerprint(self) -> str:
        """Changes when anything that decides the measurements changes (prompts, texts, the bank, how
        they are scored), not when a threshold does: a baseline measured once serves every threshold."""
        p, k, lg, st = self.perplexity, self.knowledge, self.long_generation, self.structured
        decides = {"probes": [x.model_dump() for x in self.probes],
                   "perplexity": p and p.model_dump(include={"text", "max_tokens_per_request", "block_tokens"}),
                   "knowledge": k and k.model_dump(include={"bank", "distractors", "batch"}),
                   "long": lg and lg.model_dump(include={"prompts", "max_tokens"})}
        if st:  # added after baselines were cached: suites without it keep their fingerprint
            decides["structured"] = [x.model_dump(by_alias=True) for x in st.probes]
        if self.images:  # likewise: only suites with them change
            decides["images"] = [x.model_dump() for x in self.images.probes]
        if self.mtp:
            decides["mtp"] = self.mtp.model_dump(include={"prompts", "max_tokens", "num_speculative_tokens"})
        h = hashlib.sha256(json.dumps(decides, sort_keys=True).encode())
        for rel in filter(None, [p and p.text, k and k.bank, *(self.images.files() if self.images else [])]):
            h.update(self._file(rel).read_bytes())
        return h.hexdigest()[:16]


def load_suite(name_or_path: str) -> Suite:
    p = Path(name_or_path)
    if not p.is_file():
        p = data_dir("validate") / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in data_dir("validate").glob("*.yaml") if x.stem not in ("engines", "logscan"))
        raise UsageError(f"unknown probe suite {name_or_path!r}; known: {', '.join(known)}",
                         hint="pass a suite name or a .yaml file with --suite")
    return load_yaml_model(p, Suite, "probe suite", extra={"path": str(p)}, hint="see docs/validate.md for the schema")


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


def _result(probe: Probe, shown: str, text: str, seconds: float) -> ProbeResult:
    res = ProbeResult(probe.id, probe.kind, shown, text, run_detectors(text), seconds=round(seconds, 3))
    if probe.expect_any:
        reason = expected_answer(text, probe.expect_any)
        res.expected, res.expected_reason = reason is None, reason
    return res


def run_probes(client, probes: list[Probe], progress=None) -> list[ProbeResult]:
    """Greedy answers to every probe, in the suite's order. Completion probes of equal max_tokens go
    in one batched request, chats one per request, one request at a time."""
    groups: dict[int, list[Probe]] = {}
    for p in probes:
        if p.kind == "completion":
            groups.setdefault(p.max_tokens, []).append(p)
    work = list(groups.values()) + [[p] for p in probes if p.kind == "chat"]
    done: dict[str, ProbeResult] = {}

    def one(group: list[Probe]) -> list[ProbeResult]:
        t0 = time.perf_counter()
        try:
            if group[0].kind == "completion":
                resp = client.completion([p.prompt for p in group], max_tokens=group[0].max_tokens)
                texts = [c["text"] for c in sorted(resp["choices"], key=lambda c: c["index"])]
                shown = [p.prompt for p in group]
            else:
                resp = client.chat(group[0].messages, max_tokens=group[0].max_tokens)
                texts = [resp["choices"][0]["message"]["content"] or ""]
                shown = [group[0].messages[-1]["content"]]
        except EngineError as exc:
            return [ProbeResult(p.id, p.kind, p.prompt or "", "", {"request": exc.message},
                                seconds=round(time.perf_counter() - t0, 3)) for p in group]
        return [_result(p, sh, text, time.perf_counter() - t0) for p, sh, text in zip(group, shown, texts)]

    for res in map(one, work):
        done.update({r.id: r for r in res})
        if progress:
            progress(len(done), len(probes))
    return [done[p.id] for p in probes]
