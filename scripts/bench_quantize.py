#!/usr/bin/env python
"""Benchmark: `quantkit quantize` against the raw library calls on the same model and the same
calibration tokens, one process each (wall time and peak RSS from wait4), side by side.

  .venv/bin/python scripts/bench_quantize.py [--model smollm2-135m] [--samples 32] [--seq-len 256] [--repeat 1]

Writes bench/quantize-<model>.{json,md} with the machine described. Ratios, not absolute times, are the
point: quantkit's goal is <= 1.05x the raw library on the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine

REPO = Path(__file__).resolve().parents[1]

RAW_MODELOPT = r'''
import copy, sys, json, torch
from transformers import AutoModelForCausalLM
import modelopt.torch.quantization as mtq
from modelopt.torch.export import export_hf_checkpoint
src, out, ids_file = sys.argv[1:4]
samples = [torch.tensor([x]) for x in json.load(open(ids_file))]
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
cfg["quant_cfg"].append({"quantizer_name": "lm_head.*", "enable": False})
def loop(m):
    with torch.no_grad():
        for x in samples:
            m(x)
mtq.quantize(model, cfg, loop)
export_hf_checkpoint(model, export_dir=out)
'''

RAW_LLMCOMPRESSOR = r'''
import sys, json, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
src, out, ids_file, seq_len = sys.argv[1:5]
ids = json.load(open(ids_file))
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
tok = AutoTokenizer.from_pretrained(src)
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
oneshot(model=model, processor=tok, dataset=ds, recipe=QuantizationModifier(targets="Linear", scheme="NVFP4", ignore=["lm_head"]),
        num_calibration_samples=len(ids), max_seq_length=int(seq_len))
model.save_pretrained(out, save_compressed=True)
'''


def run(argv: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv[:4])}...\n{err.decode(errors='replace')[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="embedded model name")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench"))
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from quantkit.calib import build_calibration
    from quantkit.embedded import materialize

    src = materialize(args.model)
    calib = build_calibration(AutoTokenizer.from_pretrained(src), "bundled-en", args.samples, args.seq_len, 0)
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.json"
        ids.write_text(json.dumps(calib.input_ids))
        recipe = Path(tmp) / "r.yaml"
        recipe.write_text(f"name: bench\nmodel:\n  source: {src}\ncalibration:\n  samples: {args.samples}\n"
                          f"  seq_len: {args.seq_len}\n")
        jobs = {
            ("modelopt", "raw"): lambda o: [py, "-c", RAW_MODELOPT, str(src), o, str(ids)],
            ("modelopt", "quantkit"): lambda o: [py, "-m", "quantkit.cli.main", "quantize", str(recipe), "--format",
                                                  "modelopt", "--out", o],
            ("compressed-tensors", "raw"): lambda o: [py, "-c", RAW_LLMCOMPRESSOR, str(src), o, str(ids), str(args.seq_len)],
            ("compressed-tensors", "quantkit"): lambda o: [py, "-m", "quantkit.cli.main", "quantize", str(recipe),
                                                            "--format", "ct", "--out", o],
            ("both", "quantkit"): lambda o: [py, "-m", "quantkit.cli.main", "quantize", str(recipe), "--format",
                                              "both", "--out", o],
        }
        results: dict = {}
        for rep in range(args.repeat):
            for (fmt, who), argv in jobs.items():  # interleaved, so drift hits every row alike
                out = Path(tmp) / f"{fmt}-{who}-{rep}"
                r = run(argv(str(out)))
                results.setdefault((fmt, who), []).append(r)
                print(f"{fmt:<19} {who:<9} {r['wall_s']:7.1f} s  {r['peak_rss_mb']:8.1f} MB", flush=True)
    for (fmt, who), rs in results.items():
        best = min(rs, key=lambda r: r["wall_s"])
        rows.append({"format": fmt, "who": who, **best})
    table = {(r["format"], r["who"]): r for r in rows}
    for fmt in ("modelopt", "compressed-tensors"):
        q, raw = table[(fmt, "quantkit")], table[(fmt, "raw")]
        q["time_ratio"] = round(q["wall_s"] / raw["wall_s"], 3)
        q["rss_ratio"] = round(q["peak_rss_mb"] / raw["peak_rss_mb"], 3)
    both = table[("both", "quantkit")]
    one = max(table[("modelopt", "quantkit")]["wall_s"], table[("compressed-tensors", "quantkit")]["wall_s"])
    both["time_ratio_vs_slower_one_format_run"] = round(both["wall_s"] / one, 3)
    both["time_ratio_vs_sum_of_one_format_runs"] = round(
        both["wall_s"] / (table[("modelopt", "quantkit")]["wall_s"] + table[("compressed-tensors", "quantkit")]["wall_s"]), 3)
    result = {"model": args.model, "samples": len(calib.input_ids), "seq_len": args.seq_len, "tokens": calib.tokens,
              "repeat": args.repeat, "machine": machine(torch_info=True), "rows": rows,
              "note": "wall time of the whole process (imports, load, calibrate, export; quantkit adds plan, verify, "
                      "manifest); best of --repeat runs"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"quantize-{args.model}.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    md = [f"# quantize benchmark: quantkit vs raw library calls", "",
          f"{args.model}, {result['samples']} samples x <= {args.seq_len} tokens ({calib.tokens} tokens), best of "
          f"{args.repeat}; machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, torch {m['torch']}, "
          f"GPU: {m['gpu'] or 'none'}", "",
          "| format | run | wall (s) | peak RSS (MB) | quantkit / raw time | quantkit / raw RSS |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['format']} | {r['who']} | {r['wall_s']} | {r['peak_rss_mb']} | {r.get('time_ratio', '')} | "
                  f"{r.get('rss_ratio', '')} |")
    md += ["", f"`--format both` in one process: {both['wall_s']} s = "
               f"{both['time_ratio_vs_sum_of_one_format_runs']}x the two single-format runs together, "
               f"{both['time_ratio_vs_slower_one_format_run']}x the slower single-format run.", "",
           result["note"]]
    (out / f"quantize-{args.model}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
