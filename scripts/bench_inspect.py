"""Benchmark `quantkit inspect` on a synthetic 30-shard NVFP4 checkpoint of ~75 GB logical size
shaped like Qwen3.5-122B-A10B (48 layers, 3:1 GDN:attention, 256 experts, top-8; compressed-tensors
layout, per-expert tensors: ~150k tensors). The shards are sparse: each holds a real header, then
is truncated to its full size with no data written, so the benchmark needs a few MB of disk.

Measures the in-process inspect time (warm) and the whole CLI run (`quantkit inspect DIR --json`,
fresh interpreter), and counts tensor bytes read two ways: reads through Python file objects that
touch a shard's data section (by offset), and the process's read(2) bytes (/proc/self/io rchar)
during the call. Target: < 2 s, 0 tensor bytes.

    python scripts/bench_inspect.py            # writes bench/inspect.md
"""

from __future__ import annotations

import builtins
import io
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine

REPO = Path(__file__).resolve().parents[1]
SHARDS = 30
H, LAYERS, EXPERTS, TOPK, MOE_I, VOCAB = 3072, 48, 256, 8, 1024, 248320
HEADS, KV_HEADS, HEAD_DIM = 32, 2, 256
LK, LV, LDIM = 16, 64, 128  # GDN key heads, value heads, head dim
P = "model.language_model"
_DT = {"BF16": 2, "F32": 4, "U8": 1, "F8_E4M3": 1}


def _layer_types() -> list[str]:
    return ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(LAYERS)]


def _tensors() -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor, in model order."""
    out: list[tuple[str, str, tuple[int, ...]]] = []

    def fp4(name: str, o: int, i: int) -> None:
        out.extend([(f"{name}.weight_packed", "U8", (o, i // 2)), (f"{name}.weight_scale", "F8_E4M3", (o, i // 16)),
                    (f"{name}.weight_global_scale", "F32", (1,)), (f"{name}.input_global_scale", "F32", (1,))])

    def bf16(name: str, *shape: int) -> None:
        out.append((f"{name}.weight", "BF16", shape))

    bf16(f"{P}.embed_tokens", VOCAB, H)
    for i, kind in enumerate(_layer_types()):
        L = f"{P}.layers.{i}"
        bf16(f"{L}.input_layernorm", H)
        bf16(f"{L}.post_attention_layernorm", H)
        if kind == "linear_attention":
            qkv = 2 * LK * LDIM + LV * LDIM
            bf16(f"{L}.linear_attn.in_proj_qkv", qkv, H)
            bf16(f"{L}.linear_attn.in_proj_z", LV * LDIM, H)
            bf16(f"{L}.linear_attn.in_proj_b", LV, H)
            bf16(f"{L}.linear_attn.in_proj_a", LV, H)
            bf16(f"{L}.linear_attn.out_proj", H, LV * LDIM)
            bf16(f"{L}.linear_attn.conv1d", qkv, 1, 4)
            bf16(f"{L}.linear_attn.norm", LDIM)
            out.append((f"{L}.linear_attn.A_log", "F32", (LV,)))
            out.append((f"{L}.linear_attn.dt_bias", "BF16", (LV,)))
        else:
            fp4(f"{L}.self_attn.q_proj", 2 * HEADS * HEAD_DIM, H)
            fp4(f"{L}.self_attn.k_proj", KV_HEADS * HEAD_DIM, H)
            fp4(f"{L}.self_attn.v_proj", KV_HEADS * HEAD_DIM, H)
            fp4(f"{L}.self_attn.o_proj", H, HEADS * HEAD_DIM)
            bf16(f"{L}.self_attn.q_norm", HEAD_DIM)
            bf16(f"{L}.self_attn.k_norm", HEAD_DIM)
        bf16(f"{L}.mlp.gate", EXPERTS, H)
        bf16(f"{L}.mlp.shared_expert_gate", 1, H)
        for proj, o, i_ in (("gate_proj", MOE_I, H), ("up_proj", MOE_I, H), ("down_proj", H, MOE_I)):
            fp4(f"{L}.mlp.shared_expert.{proj}", o, i_)
        for e in range(EXPERTS):
            for proj, o, i_ in (("gate_proj", MOE_I, H), ("up_proj", MOE_I, H), ("down_proj", H, MOE_I)):
                fp4(f"{L}.mlp.experts.{e}.{proj}", o, i_)
    bf16(f"{P}.norm", H)
    bf16("lm_head", VOCAB, H)
    return out


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = _DT[dtype]
    for s in shape:
        n *= s
    return n


def build(root: Path) -> dict:
    """Write the sparse shards, the index, config.json; return sizes."""
    tensors = _tensors()
    total = sum(_nbytes(d, s) for _, d, s in tensors)
    per_shard = total / SHARDS
    shards: list[list[tuple[str, str, tuple[int, ...]]]] = [[] for _ in range(SHARDS)]
    acc = 0
    for t in tensors:
        shards[min(int(acc // per_shard), SHARDS - 1)].append(t)
        acc += _nbytes(t[1], t[2])
    weight_map, header_bytes, data_start = {}, 0, {}
    for k, items in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{SHARDS:05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape in items:
            n = _nbytes(dtype, shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(root / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + off)  # sparse: the data section is a hole
        header_bytes += 8 + len(raw)
        data_start[fname] = 8 + len(raw)
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    text = {"model_type": "qwen3_5_moe_text", "hidden_size": H, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
            "layer_types": _layer_types(), "num_experts": EXPERTS, "num_experts_per_tok": TOPK,
            "moe_intermediate_size": MOE_I, "shared_expert_intermediate_size": MOE_I, "vocab_size": VOCAB,
            "max_position_embeddings": 262144, "tie_word_embeddings": False}
    group = {"targets": ["Linear"], "format": "nvfp4-pack-quantized",
             "weights": {"num_bits": 4, "type": "float", "group_size": 16, "strategy": "tensor_group"},
             "input_activations": {"num_bits": 4, "type": "float", "group_size": 16, "dynamic": "local"}}
    qc = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "config_groups": {"group_0": group},
          "ignore": ["lm_head", "re:.*linear_attn.*", "re:.*mlp\\.gate$", "re:.*shared_expert_gate$"],
          "kv_cache_scheme": None, "quantization_status": "compressed", "version": "0.19.0"}
    (root / "config.json").write_text(json.dumps({"model_type": "qwen3_5_moe", "architectures":
                                                  ["Qwen3_5MoeForConditionalGeneration"], "text_config": text,
                                                  "quantization_config": qc}))
    return {"tensors": len(tensors), "logical_bytes": total, "header_bytes": header_bytes, "data_start": data_start}


class _Counted:
    """A file object whose reads are counted as header or data bytes."""

    def __init__(self, f, start: int, tracker: "_ReadTracker"):
        self._f, self._start, self._t = f, start, tracker

    def read(self, n: int = -1) -> bytes:
        pos = self._f.tell()
        b = self._f.read(n)
        end = pos + len(b)
        self._t.data += max(0, end - max(pos, self._start))
        self._t.header += max(0, min(end, self._start) - pos)
        return b

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


class _ReadTracker:
    """Counts bytes read through Python file objects from shard data sections (offset >= data start)."""

    def __init__(self, data_start: dict[str, int], root: Path):
        self.starts = {str(root / k): v for k, v in data_start.items()}
        self.header = self.data = 0

    def __enter__(self):
        self._open = builtins.open
        original = self._open

        def tracked(file, *a, **kw):
            f = original(file, *a, **kw)
            start = self.starts.get(str(file))
            return f if start is None else _Counted(f, start, self)

        builtins.open = io.open = tracked
        return self

    def __exit__(self, *exc):
        builtins.open = io.open = self._open


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def main() -> int:
    sys.path.insert(0, str(REPO))
    from quantkit.inspect import inspect_checkpoint

    root = Path(tempfile.mkdtemp(prefix="qk-bench-inspect-"))
    try:
        t0 = time.perf_counter()
        built = build(root)
        build_s = time.perf_counter() - t0
        disk = sum(f.stat().st_blocks * 512 for f in root.iterdir())
        apparent = sum(f.stat().st_size for f in root.iterdir())
        inspect_checkpoint(root)  # warm imports and page cache once
        times, cpu = [], []
        for _ in range(3):
            r0, c0, t0 = _rchar(), time.process_time(), time.perf_counter()
            with _ReadTracker(built["data_start"], root) as tracker:
                report = inspect_checkpoint(root)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            rchar = _rchar() - r0
        t0 = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "quantkit.cli.main", "inspect", str(root), "--json"],
                             capture_output=True, text=True, cwd=REPO)
        cli_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    hw = report.hardware
    spark = next(m for m in hw["machines"] if m["name"] == "DGX Spark")
    result = {
        "checkpoint": {"shards": SHARDS, "tensors": built["tensors"], "logical_bytes": built["logical_bytes"],
                       "apparent_bytes": apparent, "disk_bytes": disk, "header_bytes": built["header_bytes"],
                       "format": report.format["kind"], "modules": report.precision["summary"]["modules"]},
        "inspect_seconds": {"median": round(statistics.median(times), 3), "min": round(min(times), 3),
                            "runs": [round(t, 3) for t in times],
                            "cpu_median": round(statistics.median(cpu), 3)},
        "cli_seconds": round(cli_s, 3), "cli_exit_code": cli.returncode,
        "tensor_bytes_read": tracker.data, "header_bytes_read": tracker.header, "rchar_bytes": rchar,
        "reported_tensor_bytes_read": report.stats["tensor_bytes_read"],
        "findings": {s: len(report.by_severity(s)) for s in ("error", "warning", "info")},
        "hardware": {"weights_gb": round(hw["weights_bytes"] / 1e9, 2),
                     "active_gb_per_token": round(hw["active_bytes_per_token"] / 1e9, 2),
                     "spark_decode_ceiling_tok_s": spark["decode_ceiling_tok_s"], "spark_fits": spark["fits"]},
        "build_seconds": round(build_s, 2), "target_seconds": 2.0,
        "machine": machine(),
    }
    ok = max(result["inspect_seconds"]["median"], result["cli_seconds"]) < 2.0 and result["tensor_bytes_read"] == 0
    result["verdict"] = "pass" if ok else "fail"
    print(json.dumps(result, indent=2))
    _write_md(result)
    return 0 if ok else 1


def _write_md(r: dict) -> None:
    c, m = r["checkpoint"], r["machine"]
    md = f"""# `quantkit inspect` benchmark

Synthetic Qwen3.5-122B-A10B-shaped NVFP4 checkpoint (compressed-tensors layout, per-expert
tensors), {c['shards']} sparse shards: real headers, data sections left as holes. Produced by
`python scripts/bench_inspect.py`; target < {r['target_seconds']:.0f} s and 0 tensor bytes read.

| | |
|---|---|
| logical size | {c['logical_bytes'] / 1e9:.1f} GB in {c['shards']} shards ({c['disk_bytes'] / 1e6:.1f} MB on disk) |
| tensors / modules | {c['tensors']:,} / {c['modules']:,} |
| header bytes | {c['header_bytes'] / 1e6:.1f} MB |
| `inspect_checkpoint` (warm, 3 runs) | median {r['inspect_seconds']['median']:.2f} s wall, min {r['inspect_seconds']['min']:.2f} s; {r['inspect_seconds']['cpu_median']:.2f} s CPU |
| `quantkit inspect DIR --json` (fresh process) | {r['cli_seconds']:.2f} s (exit {r['cli_exit_code']}) |
| tensor bytes read (Python reads past each header) | {r['tensor_bytes_read']} |
| header bytes read | {r['header_bytes_read']:,} |
| read(2) bytes during one call (/proc/self/io rchar) | {r['rchar_bytes']:,} |
| findings | {r['findings']['error']} errors, {r['findings']['warning']} warnings, {r['findings']['info']} info |
| decode ceiling, DGX Spark | {r['hardware']['spark_decode_ceiling_tok_s']} tok/s ({r['hardware']['active_gb_per_token']} GB active of {r['hardware']['weights_gb']} GB; fits: {r['hardware']['spark_fits']}) |
| verdict | **{r['verdict']}** |

Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, Python {m['python']}, {m['os']};
1-minute load average {m['load_avg_1m']} at the start. The machine is shared with other jobs, so
wall times are upper bounds; the verdict needs both the in-process median and the CLI run under 2 s.

```json
{json.dumps(r, indent=2)}
```
"""
    out = REPO / "bench" / "inspect.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(md)


if __name__ == "__main__":
    sys.exit(main())
