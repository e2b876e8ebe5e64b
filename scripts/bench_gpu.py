#!/usr/bin/env python
"""GPU benchmark: `quantkit quantize --format modelopt` vs the raw ModelOpt calls on a random-weight
Llama of a few B parameters (weights need not be meaningful for speed), same calibration tokens,
one process each. Prints JSON (and writes it to $OUT/bench_gpu.json when $OUT is set).

  python scripts/bench_gpu.py [--hidden 3072 --layers 28 --inter 8192 --samples 64 --seq-len 512]
  python scripts/bench_gpu.py --hidden 4096 --layers 32 --inter 14336 --samples 256 --seq-len 1024 \
      --dataset random-tokens --raw-batch 8 --algorithms minmax --modes full,layerwise,nproc2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RAW = r'''
import copy, json, sys, time, torch
from transformers import AutoModelForCausalLM
import modelopt.torch.quantization as mtq
from modelopt.torch.export import export_hf_checkpoint
src, out, ids_file, algo, bs = sys.argv[1:6]
bs = int(bs)
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).cuda().eval()
t1 = time.perf_counter()
ids = json.load(open(ids_file))
samples = [torch.tensor(ids[k:k + bs]) for k in range(0, len(ids), bs)]  # equal lengths (random-tokens)
cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
cfg["algorithm"] = {"minmax": "max", "awq_lite": "awq_lite"}[algo]
cfg["quant_cfg"].append({"quantizer_name": "lm_head.*", "enable": False})
def loop(m):
    with torch.no_grad():
        for x in samples:
            m(x.cuda())
mtq.quantize(model, cfg, loop)
torch.cuda.synchronize(); t2 = time.perf_counter()
export_hf_checkpoint(model, export_dir=out)
t3 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "calibrate": t2 - t1, "export": t3 - t2, "peak_gpu_bytes": torch.cuda.max_memory_allocated()}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--inter", type=int, default=8192)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--algorithms", default="minmax,awq_lite")
    ap.add_argument("--dataset", default="bundled-en", help="calibration spec (random-tokens: equal lengths)")
    ap.add_argument("--raw-batch", type=int, default=1, help="samples per forward in the raw ModelOpt loop")
    ap.add_argument("--qk-batches", default="auto", help="calibration.batch_size values for quantkit (comma-separated)")
    ap.add_argument("--modes", default="full", help="quantkit runs: full, layerwise, nproc2 (comma-separated)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantkit.calib import build_calibration
    from tiny_models import tiny_tokenizer

    tmp = Path(tempfile.mkdtemp())
    src = tmp / "src"
    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.inter, num_hidden_layers=args.layers,
                      num_attention_heads=args.hidden // 128, num_key_value_heads=8, vocab_size=32000,
                      architectures=["LlamaForCausalLM"], max_position_embeddings=4096)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(src)
    del model
    torch.cuda.empty_cache()
    tok = tiny_tokenizer()
    tok.save_pretrained(src)
    calib = build_calibration(tok, args.dataset, args.samples, args.seq_len, 0)
    ids = tmp / "ids.json"
    ids.write_text(json.dumps(calib.input_ids))
    rows = []
    for algo in args.algorithms.split(","):
        t = time.perf_counter()
        raw = subprocess.run([sys.executable, "-c", RAW, str(src), str(tmp / f"raw-{algo}"), str(ids), algo,
                              str(args.raw_batch)], capture_output=True, text=True)
        raw_wall = time.perf_counter() - t
        if raw.returncode:
            print(raw.stderr[-3000:], file=sys.stderr)
        raw_stats = json.loads(raw.stdout.strip().splitlines()[-1]) if raw.returncode == 0 else {"error": raw.stderr[-500:]}
        shutil.rmtree(tmp / f"raw-{algo}", ignore_errors=True)
        recipe = tmp / f"r-{algo}.yaml"
        recipe.write_text(f"name: bench\nmodel:\n  source: {src}\ncalibration:\n  algorithm: {algo}\n"
                          f"  dataset: {args.dataset}\n  samples: {args.samples}\n  seq_len: {args.seq_len}\n")
        for mode, qb in [(m, b) for m in args.modes.split(",") for b in args.qk_batches.split(",")]:
            recipe.write_text(f"name: bench\nmodel:\n  source: {src}\ncalibration:\n  algorithm: {algo}\n"
                              f"  dataset: {args.dataset}\n  samples: {args.samples}\n  seq_len: {args.seq_len}\n"
                              f"  batch_size: {qb}\n")
            extra = {"full": [], "layerwise": ["--mode", "layerwise"], "nproc2": ["--nproc", "2"]}[mode]
            if mode == "nproc2" and torch.cuda.device_count() < 2:
                continue
            out = tmp / f"qk-{algo}-{mode}"
            t = time.perf_counter()
            q = subprocess.run([sys.executable, "-m", "quantkit", "quantize", str(recipe), "--format", "modelopt",
                                "--out", str(out), *extra], capture_output=True, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                   [str(REPO)] + [x for x in [os.environ.get("PYTHONPATH")] if x])})
            qk_wall = time.perf_counter() - t
            if q.returncode:
                print(q.stderr[-3000:], file=sys.stderr)
            man = json.loads((out / "quantkit.json").read_text()) if q.returncode == 0 else {}
            rows.append({"algorithm": algo, "mode": mode, "raw_wall_s": round(raw_wall, 2), "raw": raw_stats,
                         "raw_batch": args.raw_batch, "quantkit_wall_s": round(qk_wall, 2), "quantkit": man.get("run"),
                         "quantkit_batch": (man.get("calibration") or {}).get("batch_size"),
                         "wall_ratio": round(qk_wall / raw_wall, 3), "quantkit_exit": q.returncode})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    flops = 2 * params * calib.tokens
    result = {"gpu": torch.cuda.get_device_name(0), "params": params, "samples": len(calib.input_ids),
              "tokens": calib.tokens, "calibration_compute_floor_s_at_790TFLOPs": round(flops / 790e12, 3),
              "rows": rows}
    print(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
