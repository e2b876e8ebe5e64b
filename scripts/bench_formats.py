#!/usr/bin/env python
"""Both formats from one calibration (issue 13): wall time of `quantkit quantize` for
--format modelopt, --format compressed-tensors (ModelOpt calibrates, converted), --format both
(one calibration + conversion), --format both --calibrate-each (both libraries), and the raw
llm-compressor `oneshot` on the same model and tokens; one process each. Prints ratios; writes JSON
to $OUT/bench_formats-<model>.json (device) or bench/formats-<model>.json (here).

  python scripts/bench_formats.py --model smollm2 --samples 32 --seq-len 256      # CPU, embedded SmolLM2-135M
  python scripts/bench_formats.py --model dense --samples 256 --seq-len 1024      # GPU: random 7.2B Llama
  python scripts/bench_formats.py --model moe --samples 64 --seq-len 1024         # GPU: Qwen3-Next shape, 4 of 48 layers
  python scripts/bench_formats.py --model dense --runs ct@base,ct,raw --base /tmp/base  # before/after, same bytes?
  python scripts/bench_formats.py --model dense --runs ct,ct:1GiB   # a run with --max-shard-size 1GiB
  python scripts/bench_formats.py --model dense --runs ct,raw,ct,raw --bytecode /tmp/pyc  # with bytecode
  (same_files_as_base: every file's sha256; same_converted_from_as_base: the converted-from checkpoint's hash)

--bytecode DIR: every run reads bytecode compiled beforehand (untimed) into DIR for all of sys.path, as
pip's install-time compile gives a user's machine; without it, a machine whose image ships no
bytecode and sets PYTHONDONTWRITEBYTECODE (the lent H200 machines) compiles every imported module in
every process, several seconds for each of quantkit and raw llm-compressor alike.
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
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "tests")]

RAW_LLMC = r'''
import json, sys, time, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
src, out, ids_file, ignore = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
t0 = time.perf_counter()
dev = "cuda" if torch.cuda.is_available() else "cpu"
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).to(dev)
tok = AutoTokenizer.from_pretrained(src)
ids = json.load(open(ids_file))
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
t1 = time.perf_counter()
oneshot(model=model, processor=tok, dataset=ds, num_calibration_samples=len(ids), max_seq_length=max(map(len, ids)),
        recipe=[QuantizationModifier(targets="Linear", scheme="NVFP4", ignore=ignore)])
t2 = time.perf_counter()
model.save_pretrained(out, save_compressed=True)
print(json.dumps({"load": t1 - t0, "calibrate": t2 - t1, "export": time.perf_counter() - t2}))
'''
IGNORE = {"smollm2": ["lm_head"], "dense": ["lm_head"], "tiny": ["lm_head"],
          "moe": ["lm_head", "re:.*linear_attn.*", "re:.*mlp\\.gate$", "re:.*shared_expert_gate$"]}


def _source(kind: str, tmp: Path) -> Path:
    if kind == "smollm2":
        from quantkit.embedded import materialize

        return materialize("smollm2-135m")
    if kind == "tiny":  # a smoke test of this script
        from tiny_models import save_tiny_checkpoint

        return save_tiny_checkpoint("llama", tmp / "src-tiny")
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3NextConfig

    from tiny_models import tiny_tokenizer

    if kind == "dense":
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096,
                          architectures=["LlamaForCausalLM"])
    else:  # Qwen3-Next-80B-A3B's layer shape, 4 of its 48 layers (3 Gated DeltaNet + 1 attention)
        cfg = Qwen3NextConfig(hidden_size=2048, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=2,
                              head_dim=256, num_experts=512, num_experts_per_tok=10, moe_intermediate_size=512,
                              shared_expert_intermediate_size=512, intermediate_size=5120, vocab_size=151936,
                              linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
                              linear_value_head_dim=128, decoder_sparse_step=1, mlp_only_layers=[],
                              layer_types=["linear_attention"] * 3 + ["full_attention"],
                              architectures=["Qwen3NextForCausalLM"], max_position_embeddings=4096)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    src = tmp / f"src-{kind}"
    from quantkit.backends.modelopt import _streamed_shard_writes

    with _streamed_shard_writes():  # safetensors' own writer took 20.7 s for the dense model's 14.5 GB
        model.save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    return src


def _quantkit(recipe: Path, out: Path, args: list[str], code: Path = REPO) -> dict:
    """One `quantkit quantize` process (the quantkit in `code`: this checkout, or --base): wall
    time, each variant's manifest timings and content hash, and when each stage line appeared
    (seconds from the process start: the first one is the imports, wall minus `wrote` the exit)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code)] + [x for x in [os.environ.get("PYTHONPATH")] if x])}
    t = time.perf_counter()
    q = subprocess.Popen([sys.executable, "-m", "quantkit", "quantize", str(recipe), "--out", str(out), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=code, env=env)
    stages, tail = [], []
    for line in q.stdout:
        tail = (tail + [line])[-40:]
        if line.startswith(("> ", "wrote ")):
            stages.append([round(time.perf_counter() - t, 2), line.strip()[:90]])
        elif "Writing model shards: 100%" in line:  # transformers' progress bar: the export's shard writes
            stages.append([round(time.perf_counter() - t, 2), line.strip().split("\r")[-1][:90]])
    q.wait()
    wall = time.perf_counter() - t
    if q.returncode:
        print("".join(tail), file=sys.stderr)
    runs = {}
    for m in [out / "quantkit.json", *out.glob("*/quantkit.json")]:
        if m.is_file():
            man = json.loads(m.read_text())
            runs[man["format"]] = {"backend": man.get("backend"), "timings": man["run"]["timings_s"],
                                   "calibration_timings": man["run"].get("calibration_timings_s"),
                                   "converted": bool(man.get("converted_from")), "content_hash": man.get("content_hash"),
                                   "converted_from": (man.get("converted_from") or {}).get("content_hash"),
                                   "files": man.get("files"), "tensors": _tensors_digest(m.parent)}
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 2), "exit": q.returncode, "variants": runs, "stages": stages}


def _tensors_digest(ckpt: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes in name order, whatever the shard
    layout (after the timed run): equal for two checkpoints that store the same tensors."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from quantkit.checkpoint.headers import checkpoint_tensors, tensor_bytes

    tensors = checkpoint_tensors(ckpt)

    def one(name: str) -> str:
        return hashlib.sha256(tensor_bytes(ckpt, tensors[name])).hexdigest()

    names = sorted(tensors)
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(one, names))
    h = hashlib.sha256()
    for name, d in zip(names, digests):
        h.update(f"{name}\t{tensors[name].dtype}\t{list(tensors[name].shape)}\t{d}\n".encode())
    return h.hexdigest()


def _raw(src: Path, out: Path, ids: Path, kind: str) -> dict:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RAW_LLMC, str(src), str(out), str(ids), json.dumps(IGNORE[kind])],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        print(r.stderr[-3000:], file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    stats = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-500:]}
    return {"wall_s": round(wall, 2), "exit": r.returncode, **stats}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["smollm2", "dense", "moe", "tiny"], default="smollm2")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--dataset", default=None, help="calibration spec (default: bundled-en on CPU, random-tokens on GPU)")
    ap.add_argument("--runs", default="raw,modelopt,ct,both,each",
                    help="comma-separated; a quantkit run with @base runs the quantkit in --base")
    ap.add_argument("--base", type=Path, default=None, help="another quantkit checkout (say `git worktree add "
                    "/tmp/base HEAD~3`) for before/after runs such as ct@base, same source and tokens")
    ap.add_argument("--source", type=Path, default=None, help="use this checkpoint (written by an earlier run) "
                    "instead of writing --model's")
    ap.add_argument("--bytecode", type=Path, default=None, help="compile all of sys.path into this directory "
                    "first (untimed) and have every run read its bytecode from there (PYTHONPYCACHEPREFIX)")
    a = ap.parse_args()
    if a.bytecode:
        _compile_bytecode(a.bytecode)
    import torch

    from _machine import describe, machine
    from quantkit.calib import build_calibration
    from transformers import AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    src = a.source.resolve() if a.source else _source(a.model, tmp)
    dataset = a.dataset or ("random-tokens" if torch.cuda.is_available() else "bundled-en")
    calib = build_calibration(AutoTokenizer.from_pretrained(src), dataset, a.samples, a.seq_len, 0)
    ids = tmp / "ids.json"
    ids.write_text(json.dumps(calib.input_ids))
    recipe = tmp / "r.yaml"
    recipe.write_text(f"name: bench\nmodel:\n  source: {src}\ncalibration:\n  dataset: {dataset}\n"
                      f"  samples: {a.samples}\n  seq_len: {a.seq_len}\n")
    args = {"modelopt": ["--format", "modelopt"], "ct": ["--format", "compressed-tensors"],
            "both": ["--format", "both"], "each": ["--format", "both", "--calibrate-each"]}
    rows = {}
    for n, run in enumerate(a.runs.split(",")):
        key = run if run not in rows else f"{run}#{n}"  # a repeated run keeps every wall time
        spec, _, shard = run.partition(":")  # ct:1GiB = --format compressed-tensors --max-shard-size 1GiB
        kind, _, base = spec.partition("@")
        code = a.base.resolve() if base else REPO
        extra = ["--max-shard-size", shard] if shard else []
        rows[key] = (_raw(src, tmp / "raw", ids, a.model) if run == "raw"
                     else _quantkit(recipe, tmp / key.replace(":", "-").replace("#", "-"), args[kind] + extra, code))
        print(key, json.dumps(rows[key]), flush=True)
    wall = {k: v["wall_s"] for k, v in rows.items() if not v["exit"]}
    ratios = {"both / modelopt": _ratio(wall, "both", "modelopt"), "ct / raw llm-compressor": _ratio(wall, "ct", "raw"),
              "each / modelopt": _ratio(wall, "each", "modelopt"), "both / each": _ratio(wall, "both", "each"),
              "ct / ct@base": _ratio(wall, "ct", "ct@base"),
              "every ct run / raw": _paired_ratios(wall, "ct", "raw"),
              "median ct / median raw": _median_ratio(wall, "ct", "raw")}
    pairs = [r for r in rows if "@" in r and r.partition("@")[0] in rows]
    same = {r: _same_bytes(rows[r], rows[r.partition("@")[0]]) for r in pairs}
    same_tensors = {r: _same_bytes(rows[r], rows[r.partition("@")[0]], "tensors") for r in pairs}
    same_source = {r: _same_bytes(rows[r], rows[r.partition("@")[0]], "converted_from") for r in pairs}
    result = {"machine": describe(machine(torch_info=True)), "bytecode": _bytecode_state(), "model": a.model, "dataset": dataset, "samples": len(calib.input_ids),
              "tokens": calib.tokens, "runs": rows, "ratios": ratios, "same_files_as_base": same,
              "same_tensors_as_base": same_tensors,
              "same_converted_from_as_base": same_source}
    print(json.dumps(ratios, indent=1))
    dest = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench"
    dest.mkdir(exist_ok=True)
    (dest / f"formats-{a.model}.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(not v["exit"] for v in rows.values()) else 1


def _compile_bytecode(prefix: Path) -> None:
    """Bytecode for every module on sys.path (and this checkout, and --base's) under `prefix`,
    which every later process reads and writes (PYTHONPYCACHEPREFIX)."""
    prefix.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix.resolve())
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    dirs = [p for p in dict.fromkeys(sys.path) if p and os.path.isdir(p)]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *dirs], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"bytecode for {len(dirs)} sys.path entries compiled into {prefix} in {time.perf_counter() - t:.1f} s",
          flush=True)


def _bytecode_state() -> dict:
    return {"pycache_prefix": os.environ.get("PYTHONPYCACHEPREFIX"),
            "dont_write_bytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))}


def _walls(wall: dict, kind: str) -> list[float]:
    """Wall times of every run of `kind` (ct, ct#3, ...) in run order."""
    return [v for k, v in wall.items() if k.partition("#")[0] == kind]


def _paired_ratios(wall: dict, a: str, b: str) -> list[float]:
    """The i-th `a` run over the i-th `b` run in run order (the last `b` for any further `a`)."""
    xs, ys = _walls(wall, a), _walls(wall, b)
    return [round(x / ys[min(i, len(ys) - 1)], 3) for i, x in enumerate(xs)] if ys else []


def _median_ratio(wall: dict, a: str, b: str) -> float | None:
    import statistics

    xs, ys = _walls(wall, a), _walls(wall, b)
    return round(statistics.median(xs) / statistics.median(ys), 3) if xs and ys else None


def _same_bytes(x: dict, y: dict, key: str = "files") -> dict:
    """Per format: whether the two runs wrote files with the same sha256 (the manifest itself
    aside); key "converted_from": whether a converted variant's source (for --format
    compressed-tensors alone the hidden ModelOpt checkpoint, deleted after the conversion) had the
    same content hash."""
    return {f: v.get(key) == y["variants"].get(f, {}).get(key) for f, v in x.get("variants", {}).items()}


def _ratio(wall: dict, a: str, b: str) -> float | None:
    return round(wall[a] / wall[b], 3) if a in wall and b in wall else None


if __name__ == "__main__":
    sys.exit(main())
