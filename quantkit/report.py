"""Validation verdicts -> JSON (machines), Markdown (people), JUnit XML (CI). Every verdict
names the checkpoint by its content hash, so publish can refuse one that changed since."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantkit.resources import cache_root

__all__ = ["Verdict", "ValidationReport", "write_reports", "registry_path", "find_passing_report"]

EXIT = {"pass": 0, "fail": 1, "refused": 1, "engine-error": 2}


@dataclass
class Verdict:
    target: str
    path: str | None
    content_hash: str | None
    format: str
    engine: str
    role: str = "candidate"  # candidate | baseline
    config: str | None = None  # the engine profile's deployment configuration it was served with (None: the default)
    verdict: str = "pass"  # pass | fail | refused | engine-error
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)  # the engine answered, but not with numbers
    checks: list[dict] = field(default_factory=list)  # quantkit.judge.Check.to_dict() each
    probes: list[dict] = field(default_factory=list)
    perplexity: dict | None = None
    knowledge: dict | None = None
    long: list[dict] | None = None
    structured: list[dict] | None = None  # instruction / tool-call probes: answer, passed, why not
    images: dict | None = None  # the image probe (VL checkpoints): {results: [...]} or {not_checked: why}
    mtp: dict | None = None  # MTP drafter served by speculative decoding: acceptance_rate, or error / not_checked
    baseline: dict | None = None  # what this verdict was judged against: target, hash, headline numbers
    logscan: dict | None = None
    engine_command: list[str] = field(default_factory=list)
    log_path: str | None = None
    log_tail: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    def fail(self, reason: str, kind: str = "fail") -> None:
        self.reasons.append(reason)
        if self.verdict == "pass" or kind == "engine-error":
            self.verdict = kind


@dataclass
class ValidationReport:
    verdicts: list[Verdict]
    suite: str
    created: str
    quantkit_version: str
    baselines: list[Verdict] = field(default_factory=list)  # each served once, judged on absolute checks only
    alpha: float | None = None

    @property
    def exit_code(self) -> int:
        return max((EXIT[v.verdict] for v in self.verdicts), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "quantkit.validation/2", "suite": self.suite, "created": self.created,
                "quantkit_version": self.quantkit_version, "exit_code": self.exit_code, "alpha": self.alpha,
                "verdicts": [asdict(v) for v in self.verdicts], "baselines": [asdict(v) for v in self.baselines]}


def _num(x) -> str:
    return "—" if x is None else f"{x:g}" if isinstance(x, (int, float)) else str(x)


def _checks_md(v: Verdict) -> list[str]:
    if not v.checks:
        return []
    lines = ["", "| check | value | decision statistic | threshold | margin | result |", "|---|---|---|---|---|---|"]
    for c in v.checks:
        op = "<=" if c["direction"] == "max" else ">="
        res = {True: "pass", False: "**FAIL**", None: f"not checked: {c['detail']}"}[c["passed"]]
        lines.append(f"| {c['name']} | {_num(c['value'])} | {_num(c['bound'])} | {op} {_num(c['threshold'])} | "
                     f"{_num(c['margin'])} | {res} |")
    return lines + [""] + [f"- {c['name']}: {c['detail']}" for c in v.checks if c["detail"] and c["passed"] is not None]


def _verdict_md(v: Verdict) -> list[str]:
    lines = ["", f"## `{v.target}` — {v.verdict.upper()}" + (" (baseline)" if v.role == "baseline" else ""), ""]
    if v.content_hash:
        lines.append(f"content hash: `{v.content_hash}`")
    if v.note:
        lines += ["", f"> {v.note}"]
    if v.baseline:
        lines += ["", f"Judged against the baseline `{v.baseline['target']}` ({v.baseline['content_hash']})."]
    if v.reasons:
        lines += ["", "Why:"] + [f"- {r}" for r in v.reasons]
    lines += _checks_md(v)
    if v.warnings:
        lines += ["", "Warnings:"] + [f"- {w}" for w in v.warnings]
    if v.info:
        lines += [""] + [f"- {i}" for i in v.info]
    if v.probes:
        lines += ["", "| probe | ok | expected | output |", "|---|---|---|---|"]
        for p in v.probes:
            ok = "yes" if p["passed"] else "NO: " + "; ".join(p["failures"].values())
            exp = {None: "—", True: "yes", False: "no"}[p["expected"]]
            out = p["text"].strip().replace("\n", " ").replace("|", "\\|")[:90] or "(blank)"
            lines.append(f"| {p['id']} | {ok} | {exp} | {out} |")
    if v.long:
        lines += ["", "| long generation | repetition | baseline nll/token | start of the text |", "|---|---|---|---|"]
        for g in v.long:
            out = g["text"].strip().replace("\n", " ").replace("|", "\\|")[:90] or "(blank)"
            lines.append(f"| {g['id']} | {g['repetition']} | {_num(g.get('baseline_nll'))} | {out} |")
    if v.logscan and v.logscan.get("facts"):
        lines += ["", "Engine says: " + "; ".join(f"{k}={', '.join(x)}" for k, x in v.logscan["facts"].items())]
    if v.log_tail and v.verdict == "engine-error":
        lines += ["", "Engine log (last lines):", "```", v.log_tail, "```"]
    if v.engine_command:
        lines += ["", "Command: `" + " ".join(v.engine_command) + "`"]
    return lines


def _md(report: ValidationReport) -> str:
    lines = [f"# quantkit validate — {report.suite} suite", "",
             f"{report.created} · quantkit {report.quantkit_version} · exit code {report.exit_code}"
             + (f" · each statistical check's one-sided error rate {report.alpha:g}" if report.alpha else ""), ""]
    lines += ["| artefact | role | format | engine | verdict | perplexity | knowledge accuracy | boot | total |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in [*report.verdicts, *report.baselines]:
        ppl = f"{v.perplexity['perplexity']:.2f}" if v.perplexity else "—"
        if v.baseline and v.perplexity and v.baseline.get("perplexity"):
            ppl += f" (x{v.perplexity['perplexity'] / v.baseline['perplexity']:.3f})"
        acc = f"{v.knowledge['accuracy']:.3f}" if v.knowledge else "—"
        lines.append(f"| `{v.target}` | {v.role} | {v.format} | {v.engine} | **{v.verdict.upper()}** | {ppl} | {acc} | "
                     f"{v.timings.get('boot') or 0:.0f}s | {v.timings.get('total') or 0:.0f}s |")
    for v in [*report.verdicts, *report.baselines]:
        lines += _verdict_md(v)
    return "\n".join(lines) + "\n"


def _junit(report: ValidationReport) -> str:
    suites = ET.Element("testsuites", name=f"quantkit validate {report.suite}")
    for v in report.verdicts:
        cases: list[tuple[str, str | None, str | None]] = []  # (name, failure message, kind)
        if v.verdict == "engine-error":
            cases.append(("engine-start", "; ".join(v.reasons), "error"))
        elif v.verdict == "refused":
            cases.append(("inspect", "; ".join(v.reasons), "failure"))
        else:
            for p in v.probes:
                msg = "; ".join(p["failures"].values()) or None
                cases.append((f"probe:{p['id']}", msg, "failure" if msg else None))
            for g in v.long or []:
                msg = "; ".join(g["failures"].values()) or None
                cases.append((f"long:{g['id']}", msg, "failure" if msg else None))
            for c in v.checks:
                msg = (f"value {c['value']}, decision statistic {c['bound']}, threshold {c['threshold']}, "
                       f"margin {c['margin']}; {c['detail']}") if c["passed"] is not None else c["detail"]
                cases.append((f"check:{c['name']}", msg, {True: None, False: "failure", None: "skipped"}[c["passed"]]))
            log_fail = [r for r in v.reasons if r.startswith("engine log")]
            cases.append(("engine-log", log_fail[0] if log_fail else None, "failure" if log_fail else None))
        ts = ET.SubElement(suites, "testsuite", name=v.target, tests=str(len(cases)),
                           failures=str(sum(1 for c in cases if c[2] == "failure")),
                           skipped=str(sum(1 for c in cases if c[2] == "skipped")),
                           errors=str(sum(1 for c in cases if c[2] == "error")),
                           time=f"{v.timings.get('total', 0):.2f}")
        ET.SubElement(ts, "properties")
        for key, val in (("content_hash", v.content_hash), ("format", v.format), ("engine", v.engine)):
            ET.SubElement(ts.find("properties"), "property", name=key, value=str(val))
        for name, msg, kind in cases:
            tc = ET.SubElement(ts, "testcase", classname=v.target, name=name)
            if kind:
                ET.SubElement(tc, kind, message=(msg or "")[:500]).text = msg if kind != "skipped" else None
    return ET.tostring(suites, encoding="unicode")


def registry_path(content_hash: str) -> Path:
    return cache_root() / "validations" / f"{content_hash.replace(':', '-')}.json"


def write_reports(report: ValidationReport, json_path: Path | None, md_path: Path | None,
                  junit_path: Path | None) -> None:
    data = json.dumps(report.to_dict(), indent=2, default=str)
    for path, text in ((json_path, data), (md_path, _md(report)), (junit_path, _junit(report))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    for v in report.verdicts:  # the registry publish consults, one file per content hash
        if v.content_hash:
            reg = registry_path(v.content_hash)
            reg.parent.mkdir(parents=True, exist_ok=True)
            reg.write_text(json.dumps({**report.to_dict(), "verdicts": [asdict(v)]}, indent=2, default=str))


def find_passing_report(content_hash: str, report: Path | None = None) -> dict | None:
    """A validation report with a passing verdict for exactly this content hash, or None."""
    candidates = [Path(report)] if report else [registry_path(content_hash)]
    for p in candidates:
        if not p.is_file():
            continue
        data = json.loads(p.read_text())
        for v in data.get("verdicts", []):
            if v.get("content_hash") == content_hash and v.get("verdict") == "pass":
                return data
    return None


def markdown(report: ValidationReport) -> str:
    return _md(report)
