"""Scan an engine log: what it says it used (quantization method, NVFP4 kernels/backends) and
known bad signs, from patterns kept as data in `validate/logscan.yaml`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from quantkit.datafile import load_yaml_model
from quantkit.resources import data_dir

__all__ = ["scan_log", "load_patterns", "LogPatterns"]


class _Pattern(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        """A broken regular expression is a mistake in the file, found when it is loaded, not when
        the first engine log is scanned after minutes of serving."""
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return v


class _Bad(_Pattern):
    severity: Literal["error", "warning"]
    why: str


class LogPatterns(BaseModel):
    """`validate/logscan.yaml`: `report` patterns become facts, `bad` patterns findings."""

    model_config = ConfigDict(extra="forbid")
    report: list[_Pattern] = []
    bad: list[_Bad] = []


def load_patterns(path: Path | None = None) -> LogPatterns:
    """The patterns of `path` (default: the shipped validate/logscan.yaml), through the one data-file loader."""
    path = Path(path) if path else data_dir("validate") / "logscan.yaml"
    return load_yaml_model(path, LogPatterns, "log patterns", hint="see validate/logscan.yaml for the schema")


def scan_log(log: str | Path) -> dict:
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    spec = load_patterns()
    facts: dict[str, list[str]] = {}
    for item in spec.report:
        found = sorted(set(re.findall(item.pattern, text)))
        if found:
            facts[item.name] = found
    findings = []
    for item in spec.bad:
        m = re.search(item.pattern, text)
        if m:
            findings.append({"name": item.name, "severity": item.severity, "why": item.why,
                             "line": m.group(0)[:200]})
    return {"facts": facts, "findings": findings}
