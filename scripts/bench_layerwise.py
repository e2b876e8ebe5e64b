"""Memory-bounded quantization benchmark: a random-weight Llama-shaped model whose BF16 shards are
larger than this machine's RAM, quantized by `quantkit quantize` (pre-flight picks layerwise),
with peak RSS of the whole process tree over the BF16 size; optionally a killed-and-resumed run.

  python scripts/bench_layerwise.py make /data/llama-14b            # ~28.5 GB of shards (50 layers)
  python scripts/bench_layerwise.py run /data/llama-14b --out /data/q --kill-at 25  # bench/layerwise.json

Weights are random (seeded normal, std 0.02): the numbers are about memory and time, not
quality. The tokenizer is SmolLM2's (embedded), so the vocabulary is 49,152."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _machine import describe, machine

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(hidden_size=5120, intermediate_size=13824, num_attention_heads=40, num_key_value_heads=8,
             head_dim=128, vocab_size=49152, num_hidden_layers=50, max_position_embeddings=4096,
             rms_norm_eps=1e-5, tie_word_embeddings=False)


def make(dest: Path, layers: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    from quantkit.embedded import materialize

    dest.mkdir(parents=True, exist_ok=True)
    shape = {**SHAPE, "num_hidden_layers": layers}
    tok_src = materialize("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(tok_src))
    cfg = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, dtype="bfloat16")
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(dest)
    tok.save_pretrained(dest)
    h, f, kv = shape["hidden_size"], shape["intermediate_size"], shape["num_key_value_heads"] * shape["head_dim"]
    g = torch.Generator().manual_seed(0)
    total = layers + 1
    weight_map, size = {}, 0

    def rnd(*s):
        return (torch.randn(*s, generator=g, dtype=torch.float32) * 0.02).to(torch.bfloat16)

    for i in range(total):
        name = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        if i < layers:
            p = f"model.layers.{i}."
            t = {p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
                 p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
                 p + "mlp.gate_proj.weight": rnd(f, h), p + "mlp.up_proj.weight": rnd(f, h),
                 p + "mlp.down_proj.weight": rnd(h, f),
                 p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                 p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)}
        else:
            v = shape["vocab_size"]
            t = {"model.embed_tokens.weight": rnd(v, h), "lm_head.weight": rnd(v, h),
                 "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
        save_file(t, str(dest / name), metadata={"format": "pt"})
        for k, x in t.items():
            weight_map[k] = name
            size += x.numel() * x.element_size()
        del t
        print(f"\rwrote {i + 1}/{total} shards ({size / 1e9:.1f} GB)", end="", flush=True)
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size},
                                                                   "weight_map": weight_map}, indent=1))
    print()


class TreeRSS:
    """Peak summed RSS of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def quantize(src: Path, out: Path, extra: list[str], kill_after_layers: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "quantkit", "quantize", str(src), "--format", "modelopt", "--out", str(out),
           "--samples", "4", "--seq-len", "64", *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    rss = TreeRSS(p.pid)
    state = out.parent / f".{out.name}.layerwise" / "state.json"
    killed = False
    if kill_after_layers is not None:
        while p.poll() is None:
            try:
                if json.loads(state.read_text())["layers_done"] >= kill_after_layers:
                    os.killpg(p.pid, 9)
                    killed = True
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
    log, _ = p.communicate()
    wall = time.perf_counter() - t0
    res = {"cmd": " ".join(cmd[1:]), "rc": p.returncode, "wall_s": round(wall, 1), "peak_tree_rss": rss.stop(),
           "killed": killed, "log_tail": log.splitlines()[-12:]}
    manifest = out / "quantkit.json"
    if manifest.is_file() and not killed:
        res["manifest_run"] = json.loads(manifest.read_text())["run"]
    return res


def run(src: Path, out: Path, kill_at: int | None) -> None:
    idx = json.loads((src / "model.safetensors.index.json").read_text())
    bf16 = idx["metadata"]["total_size"]
    results = {"machine": describe(machine()), "model": str(src), "bf16_bytes": bf16,
               "layers": json.loads((src / "config.json").read_text())["num_hidden_layers"]}
    print(f"model: {bf16 / 2**30:.1f} GiB BF16; machine: {results['machine']}")
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # no stale output, manifest or resume state from an earlier run
    shutil.rmtree(out.parent / f".{out.name}.layerwise", ignore_errors=True)
    if kill_at:
        # one pass over the model, killed (SIGKILL) after `kill_at` layers, then the same command + --resume
        results["killed_run"] = quantize(src, out, ["--overwrite"], kill_after_layers=kill_at)
        results["resumed_run"] = quantize(src, out, ["--overwrite", "--resume"])  # the same command + --resume
        runs = [results["killed_run"], results["resumed_run"]]
    else:
        results["run"] = quantize(src, out, ["--overwrite"])
        runs = [results["run"]]
    peak = max(r["peak_tree_rss"] for r in runs)
    results["peak_tree_rss"] = peak
    results["peak_rss_over_bf16"] = round(peak / bf16, 4)
    results["total_wall_s"] = round(sum(r["wall_s"] for r in runs), 1)
    for r in runs:
        print(json.dumps({k: v for k, v in r.items() if k != "log_tail"}, indent=1))
    (ROOT / "bench").mkdir(exist_ok=True)
    (ROOT / "bench" / "layerwise.json").write_text(json.dumps(results, indent=1))
    (ROOT / "bench" / "layerwise.md").write_text(markdown(results))
    print(json.dumps(results, indent=1)[:3000])


def markdown(r: dict) -> str:
    gib = 2 ** 30
    lines = ["# Memory-bounded quantization: a model larger than RAM", "",
             f"Machine: {r['machine']}.", "",
             f"Model: `{r['model']}`, random-weight Llama ({r['layers']} layers, hidden {SHAPE['hidden_size']}, MLP "
             f"{SHAPE['intermediate_size']}, vocab {SHAPE['vocab_size']}), "
             f"{r['bf16_bytes'] / gib:.1f} GiB of BF16 shards; `scripts/bench_layerwise.py`. "
             "`quantkit quantize --format modelopt --samples 4 --seq-len 64` (pre-flight: auto -> layerwise). "
             "Peak RSS = the largest sum of RSS over the quantkit process tree, sampled every 0.2 s.", "",
             "| run | exit | wall | peak RSS | peak RSS / BF16 |", "|---|---|---|---|---|"]
    for key in ("run", "killed_run", "resumed_run"):
        if key in r:
            x = r[key]
            lines.append(f"| {key.replace('_', ' ')} | {x['rc']} | {x['wall_s']} s | {x['peak_tree_rss'] / gib:.2f} GiB | "
                         f"{x['peak_tree_rss'] / r['bf16_bytes']:.3f} |")
    lines += ["", f"Peak over the whole job: **{r['peak_tree_rss'] / gib:.2f} GiB = {r['peak_rss_over_bf16']}x the "
                  f"BF16 size** (goal <= 0.5x), {r['total_wall_s']} s in all."]
    res = r.get("resumed_run", {}).get("manifest_run") or r.get("run", {}).get("manifest_run") or {}
    if res:
        lines += ["", f"Manifest of the final run: timings {res.get('timings_s')}, resumed from layer "
                      f"{res.get('resumed_from_layer', 0)}, pre-flight {json.dumps(res.get('preflight', {}).get('estimates'))}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dest", type=Path)
    m.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    r = sub.add_parser("run")
    r.add_argument("src", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--kill-at", type=int, default=None, help="SIGKILL the run after this many layers, then --resume")
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.dest, a.layers)
    else:
        run(a.src, a.out, a.kill_at)


if __name__ == "__main__":
    main()
