"""Variants: ModelOpt and compressed-tensors NVFP4 of one recipe, side by side.

One load, one calibration and one plan are shared by both formats (quantize: one library
calibrates, the other format is converted from it, so the variants differ only in layout and in
the engine's loader for it); each variant is validated against the BF16 source, served once; the comparison (size, bits/param, kept layers, verdicts, perplexity,
probe outputs, time and peak memory per step) is written as JSON, Markdown and a
self-contained HTML page with bar charts."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from quantkit.checkpoint.formats import FORMATS
from quantkit.progress import SILENT, Reporter
from quantkit.quantize import QuantizeOptions, VariantResult, quantize
from quantkit.recipe import Recipe
from quantkit.report import EXIT, ValidationReport, write_reports
from quantkit.judge import signed
from quantkit.validate import ValidateOptions, validate

__all__ = ["Comparison", "variants", "comparison_rows"]


@dataclass
class Comparison:
    recipe: str
    out: Path
    quantized: list[VariantResult]
    validation: ValidationReport  # the variants, judged against the BF16 baseline in .baselines

    @property
    def bf16(self):
        return self.validation.baselines[0] if self.validation.baselines else None

    @property
    def exit_code(self) -> int:
        worst = self.validation.exit_code
        return max(worst, EXIT[self.bf16.verdict]) if self.bf16 else worst


def _measured(v) -> dict:
    """The headline measurements and every check's value and margin, for one verdict."""
    if v is None:
        return {"verdict": "not validated", "perplexity": None, "knowledge_accuracy": None, "checks": {},
                "probes": [], "long": []}
    return {"verdict": v.verdict, "perplexity": (v.perplexity or {}).get("perplexity"),
            "knowledge_accuracy": (v.knowledge or {}).get("accuracy"),
            "knowledge_margin": (v.knowledge or {}).get("mean_margin"),
            "checks": {c["name"]: {k: c[k] for k in ("value", "bound", "threshold", "margin", "passed")}
                       for c in v.checks},
            "probes": v.probes, "long": v.long or [], "reasons": v.reasons}


def comparison_rows(cmp: Comparison) -> list[dict]:
    b = cmp.bf16
    base_ppl = (b.perplexity or {}).get("perplexity") if b else None
    src = cmp.quantized[0]
    total_params = src.manifest["plan"]["total_params"]
    rows = [{"variant": "bf16", "format": "bf16", "path": b.path if b else None, "size_bytes": src.source_bytes,
             "bits_per_param": round(8 * src.source_bytes / total_params, 2), "fp4": 0, "kept": None,
             **_measured(b), "ppl_ratio": 1.0 if base_ppl else None, "timings": b.timings if b else {},
             "peak_rss_bytes": None}]
    by_path = {v.path: v for v in cmp.validation.verdicts}
    for r in cmp.quantized:
        v = by_path.get(str(r.path))
        m = _measured(v)
        rows.append({"variant": r.path.name, "format": r.format, "path": str(r.path), "size_bytes": r.size_bytes,
                     "bits_per_param": round(8 * r.size_bytes / total_params, 2), "fp4": r.fp4_modules,
                     "kept": r.kept_modules, **m,
                     "ppl_ratio": round(m["perplexity"] / base_ppl, 3) if m["perplexity"] and base_ppl else None,
                     "timings": {**r.timings, **{f"validate_{k}": t for k, t in (v.timings if v else {}).items()}},
                     "peak_rss_bytes": r.peak_rss_bytes})
    return rows


def _md(cmp: Comparison, rows: list[dict]) -> str:
    def mb(n):
        return f"{n / 1e6:.1f} MB" if n else "—"

    lines = [f"# {cmp.recipe}: NVFP4 variants compared", "",
             "| variant | size | bits/param | FP4 / kept | verdict | perplexity | vs BF16 | calibrate | export | validate | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["timings"]
        lines.append(f"| {r['variant']} | {mb(r['size_bytes'])} | {r['bits_per_param']} | "
                     f"{r['fp4']} / {r['kept'] if r['kept'] is not None else '—'} | {r['verdict']} | "
                     f"{r['perplexity'] if r['perplexity'] is not None else '—'} | "
                     f"{'x' + str(r['ppl_ratio']) if r['ppl_ratio'] else '—'} | {t.get('calibrate', '—')} | "
                     f"{t.get('export', ('convert ' + str(t['convert'])) if 'convert' in t else '—')} | {t.get('validate_total', t.get('total', '—'))} | {mb(r['peak_rss_bytes'])} |")
    names = [n for r in rows[1:] for n in r["checks"]]
    checks = list(dict.fromkeys(names))
    if checks:
        lines += ["", "## Checks against the BF16 baseline (value / margin to the threshold; + is the passing side)", "",
                  "| check | threshold | " + " | ".join(r["variant"] for r in rows) + " |",
                  "|---|---|" + "---|" * len(rows)]
        for name in checks:
            c0 = next(r["checks"][name] for r in rows[1:] if name in r["checks"])
            cells = []
            for r in rows:
                c = r["checks"].get(name)
                if c is None or c["passed"] is None:
                    cells.append("—")
                else:
                    cells.append(f"{c['value']} / {signed(c['margin'])}" + ("" if c["passed"] else " **FAIL**"))
            lines.append(f"| {name} | {c0['threshold']} | " + " | ".join(cells) + " |")
        lines.append("| knowledge accuracy | | " + " | ".join(str(r.get("knowledge_accuracy") or "—") for r in rows) + " |")
    probes = [p["id"] for p in rows[0]["probes"]] or [p["id"] for p in rows[-1]["probes"]]
    lines += ["", "## Probe outputs side by side", "", "| probe | " + " | ".join(r["variant"] for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for pid in probes:
        cells = []
        for r in rows:
            p = next((p for p in r["probes"] if p["id"] == pid), None)
            text = (p["text"].strip().replace("\n", " ").replace("|", "\\|")[:60] or "(blank)") if p else "—"
            cells.append(text if not p or p["passed"] else f"**FAIL** {text}")
        lines.append(f"| {pid} | " + " | ".join(cells) + " |")
    longs = [g["id"] for g in rows[0]["long"]] or [g["id"] for g in rows[-1]["long"]]
    if longs:
        lines += ["", "## Long generations (repetition of word 4-grams; baseline nll/token)", "",
                  "| prompt | " + " | ".join(r["variant"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
        for gid in longs:
            cells = []
            for r in rows:
                g = next((g for g in r["long"] if g["id"] == gid), None)
                cells.append(f"{g['repetition']} / {g.get('baseline_nll')}: "
                             + (g["text"].strip().replace("\n", " ").replace("|", "\\|")[:50] or "(blank)") if g else "—")
            lines.append(f"| {gid} | " + " | ".join(cells) + " |")
    lines += ["", "Perplexity: `validate/reference/en-heldout.txt` scored through the engine "
              "(/v1/completions echo + logprobs); knowledge: `validate/knowledge/en-basic.yaml`, teacher-forced. "
              "Times in seconds."]
    return "\n".join(lines) + "\n"


def _bars(title: str, items: list[tuple[str, float]], unit: str) -> str:
    width, bar_h, left = 640, 26, 170
    top = max((v for _, v in items), default=1) or 1
    h = 40 + bar_h * len(items)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="18" font-size="15" font-weight="bold">{html.escape(title)}</text>']
    colors = {"bf16": "#777", **{n: f.color for f in FORMATS.values() for n in (f.name, f.dir_name)}}
    for i, (name, val) in enumerate(items):
        y = 30 + i * bar_h
        w = (width - left - 90) * val / top
        parts.append(f'<text x="0" y="{y + 17}" font-size="13">{html.escape(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{bar_h - 8}" fill="{colors.get(name, "#999")}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 17}" font-size="13">{val:.2f} {unit}</text>')
    return "".join(parts) + "</svg>"


def _html(cmp: Comparison, rows: list[dict], md: str) -> str:
    ppl = [(r["variant"], r["perplexity"]) for r in rows if r["perplexity"]]
    size = [(r["variant"], r["size_bytes"] / 1e6) for r in rows]
    acc = [(r["variant"], r["knowledge_accuracy"]) for r in rows if r.get("knowledge_accuracy") is not None]
    bits = [(r["variant"], r["bits_per_param"]) for r in rows]
    return ("<!doctype html><meta charset=utf-8><title>" + html.escape(cmp.recipe) + " NVFP4 variants</title>"
            "<body style='font-family:sans-serif;max-width:980px;margin:2em auto'>"
            f"<h1>{html.escape(cmp.recipe)}: NVFP4 variants</h1>"
            + _bars("Reference perplexity (lower is better)", ppl, "") + "<br>"
            + (_bars("Knowledge accuracy, teacher-forced (higher is better)", acc, "") + "<br>" if acc else "")
            + _bars("Checkpoint size", size, "MB") + "<br>" + _bars("Bits per parameter", bits, "")
            + "<h2>Details</h2><pre style='white-space:pre-wrap'>" + html.escape(md) + "</pre></body>")


def variants(recipe: Recipe, qopts: QuantizeOptions, vopts: ValidateOptions,
             reporter: Reporter = SILENT) -> Comparison:
    qopts.formats = list(FORMATS)
    out = Path(qopts.out or Path("out") / recipe.name)
    qopts.out = out
    results = quantize(recipe, qopts, reporter)
    source = Path(results[0].manifest["source"]["local_path"])
    vopts.log_dir = out / "validation"
    vopts.baseline, vopts.no_baseline = str(source), False  # served once, after the variants
    report = validate([str(r.path) for r in results], vopts, reporter)
    write_reports(report, out / "validation" / "validation.json", out / "validation" / "validation.md", None)
    cmp = Comparison(recipe.name, out, results, report)
    rows = comparison_rows(cmp)
    md = _md(cmp, rows)
    (out / "comparison.json").write_text(json.dumps({"recipe": recipe.name, "rows": rows}, indent=2, default=str))
    (out / "comparison.md").write_text(md)
    (out / "comparison.html").write_text(_html(cmp, rows, md))
    return cmp
