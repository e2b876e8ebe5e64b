"""Scan an engine log: what it says it used (quantization method, NVFP4 kernels/backends) and
known bad signs, from patterns kept as data in `validate/logscan.yaml`."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from quantkit.resources import data_dir

__all__ = ["scan_log"]


def scan_log(log: str | Path) -> dict:
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    spec = yaml.safe_load((data_dir("validate") / "logscan.yaml").read_text())
    facts: dict[str, list[str]] = {}
    for item in spec.get("report", []):
        found = sorted(set(re.findall(item["pattern"], text)))
        if found:
            facts[item["name"]] = found
    findings = []
    for item in spec.get("bad", []):
        m = re.search(item["pattern"], text)
        if m:
            findings.append({"name": item["name"], "severity": item["severity"], "why": item["why"],
                             "line": m.group(0)[:200]})
    return {"facts": facts, "findings": findings}
