"""The validation gate and engine lifecycle without a real engine: a fake OpenAI server for the
endpoint profile, fake engine processes that hang or crash (exit 2, log tail, no orphans), and fake
engines that serve a baseline and a candidate differently (judging against the baseline)."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from quantkit.cli.main import main
from quantkit.report import find_passing_report

DATA = Path(__file__).parent / "data"
GOOD = {"France": " Paris.", "17": "391", "hot": "cold", "sky": "Blue.", "three": " five, six",
        "Tuesday": " Thursday, Friday"}


def good_answer(prompt: str) -> str:
    for key, ans in GOOD.items():
        if key in prompt:
            return ans
    return " a fisherman who loved the sea and the boats that sailed on it every morning."


def _run(tmp_path, *args) -> tuple[int, dict]:
    code = main(["validate", *args, "--report-dir", str(tmp_path / "rep"), "--junit", str(tmp_path / "j.xml")])
    return code, json.loads((tmp_path / "rep" / "validation.json").read_text())


def test_endpoint_healthy_model_passes(tmp_path):
    with FakeOpenAI(good_answer, logprob=-2.0) as srv:
        code, rep = _run(tmp_path, "some-org/Model-NVFP4", "--engine", "endpoint", "--url", srv.url)
    assert code == 0, rep
    v = rep["verdicts"][0]
    assert v["verdict"] == "pass" and abs(v["perplexity"]["perplexity"] - 7.389) < 0.01
    # a Hub id on an endpoint has no local source: judged without a baseline, and the report says so
    assert any("judged without a baseline" in w for w in v["warnings"])
    checks = {c["name"]: c for c in v["checks"]}
    assert checks["perplexity-ceiling"]["passed"] and checks["perplexity-ratio"]["passed"] is None
    assert checks["knowledge-above-chance"]["passed"] and abs(v["knowledge"]["accuracy"] - 0.8) < 0.02
    assert len(v["long"]) == 3 and all(g["failures"] == {} for g in v["long"])
    md = (tmp_path / "rep" / "validation.md").read_text()
    assert "PASS" in md and "| capital-france | yes | yes |" in md and "| knowledge-above-chance |" in md
    suites = ET.parse(tmp_path / "j.xml").getroot()
    assert suites.find("testsuite").get("failures") == "0"
    # the five baseline-relative checks (structured too) and the image probe (an endpoint: VL or not is unknown)
    assert suites.find("testsuite").get("skipped") == "6"


@pytest.mark.parametrize("answer,reason", [
    (lambda p: "!!!!!!!!!!!!!!!!", "punctuation_run"),
    (lambda p: "   ", "blank"),
    (lambda p: " the the the the the the the the the the the the the the", "repetition_loop"),
])
def test_endpoint_broken_outputs_fail(tmp_path, answer, reason):
    with FakeOpenAI(answer) as srv:
        code, rep = _run(tmp_path, "x/y", "--engine", "endpoint", "--url", srv.url)
    assert code == 1
    assert any(reason in r for r in rep["verdicts"][0]["reasons"])
    suites = ET.parse(tmp_path / "j.xml").getroot()
    assert int(suites.find("testsuite").get("failures")) >= 1


def test_fluent_garbage_caught_by_perplexity(tmp_path):
    with FakeOpenAI(good_answer, logprob=-9.0) as srv:  # right answers, but ppl e^9 = 8103
        code, rep = _run(tmp_path, "x/y", "--engine", "endpoint", "--url", srv.url)
    assert code == 1
    assert any(r.startswith("perplexity-ceiling: 8103") for r in rep["verdicts"][0]["reasons"])


def test_endpoint_without_url_is_usage_error(tmp_path, capsys):
    assert main(["validate", "x/y", "--engine", "endpoint", "--report-dir", str(tmp_path)]) == 3
    assert "--url" in capsys.readouterr().err


def _tiny_ckpt(tmp_path) -> Path:
    from tiny_models import save_tiny_checkpoint

    p = tmp_path / "ckpt"
    save_tiny_checkpoint("llama", p)
    return p


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_engine_never_healthy_exit_2_within_timeout_no_orphans(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_ENGINE_PIDS", str(pids))
    t0 = time.time()
    code, rep = _run(tmp_path, str(_tiny_ckpt(tmp_path)), "--engine", "vllm", "--engine-python",
                     str(DATA / "fake_engine_hang.sh"), "--timeout", "4", "--skip-inspect")
    assert code == 2 and time.time() - t0 < 30
    v = rep["verdicts"][0]
    assert v["verdict"] == "engine-error" and "not healthy within 4s" in v["reasons"][0]
    assert "loading weights forever" in v["log_tail"]
    child, leader = map(int, pids.read_text().split())
    deadline = time.time() + 5
    while time.time() < deadline and (_alive(child) or _alive(leader)):
        time.sleep(0.1)
    assert not _alive(child) and not _alive(leader), "engine processes left behind"


def test_engine_crash_detected_at_once_with_cause(tmp_path):
    t0 = time.time()
    code, rep = _run(tmp_path, str(_tiny_ckpt(tmp_path)), "--engine", "vllm", "--engine-python",
                     str(DATA / "fake_engine_crash.sh"), "--timeout", "120", "--skip-inspect")
    assert code == 2 and time.time() - t0 < 20
    reason = rep["verdicts"][0]["reasons"][0]
    assert "exited with code 1" in reason and "Failed to find a kernel" in reason


def test_passing_report_is_bound_to_content_hash(tmp_path):
    ckpt = _tiny_ckpt(tmp_path)
    with FakeOpenAI(good_answer) as srv:
        code, rep = _run(tmp_path, str(ckpt), "--engine", "endpoint", "--url", srv.url, "--skip-inspect")
    assert code == 0
    h = rep["verdicts"][0]["content_hash"]
    assert h.startswith("sha256:") and find_passing_report(h)
    from quantkit.validate import checkpoint_hash

    (ckpt / "config.json").write_text((ckpt / "config.json").read_text() + " ")
    assert checkpoint_hash(ckpt) != h and not find_passing_report(checkpoint_hash(ckpt))


def test_chat_probes_skipped_without_chat_template(tmp_path):
    ckpt = _tiny_ckpt(tmp_path)
    (ckpt / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    with FakeOpenAI(good_answer) as srv:
        code, rep = _run(tmp_path, str(ckpt), "--engine", "endpoint", "--url", srv.url, "--skip-inspect")
    v = rep["verdicts"][0]
    assert code == 0 and all(p["kind"] == "completion" for p in v["probes"])
    assert any("chat probes skipped" in w for w in v["warnings"])


def _fake_model(tmp_path, name: str, **behaviour) -> Path:
    """A tiny checkpoint whose fake engine answers as `behaviour` says (tests/fake_openai.py)."""
    from tiny_models import save_tiny_checkpoint

    p = tmp_path / name
    save_tiny_checkpoint("llama", p)
    (p / "fake.json").write_text(json.dumps(behaviour))
    return p


def _fake_engine_run(tmp_path, monkeypatch, *args) -> tuple[int, dict]:
    import sys

    monkeypatch.setenv("FAKE_ENGINE_PY", sys.executable)
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    return _run(tmp_path, *args, "--engine", "vllm", "--engine-python", str(DATA / "fake_engine_serve.sh"),
                "--skip-inspect")


def test_candidates_are_judged_against_the_baseline(tmp_path, monkeypatch):
    base = _fake_model(tmp_path, "bf16", logprob=-2.0, knows=0.9)
    good = _fake_model(tmp_path, "good", logprob=-2.3, knows=0.85)          # ppl x1.35, keeps 92% above chance
    forgetful = _fake_model(tmp_path, "forgetful", logprob=-2.1, knows=0.4)  # fluent, but knows far less
    confused = _fake_model(tmp_path, "confused", logprob=-2.8, knows=0.9)   # ppl x2.2
    code, rep = _fake_engine_run(tmp_path, monkeypatch, str(good), str(forgetful), str(confused), "--baseline", str(base))
    by = {Path(v["target"]).name: v for v in rep["verdicts"]}
    assert code == 1
    assert [Path(b["target"]).name for b in rep["baselines"]] == ["bf16"]  # served once for all three
    checks = {n: {c["name"]: c for c in v["checks"]} for n, v in by.items()}
    assert by["good"]["verdict"] == "pass", by["good"]["reasons"]
    assert checks["good"]["perplexity-ratio"]["value"] == pytest.approx(1.35, abs=0.01)
    assert checks["good"]["knowledge-retained"]["margin"] > 0.2
    assert by["forgetful"]["verdict"] == "fail" and checks["forgetful"]["knowledge-retained"]["passed"] is False
    assert checks["forgetful"]["perplexity-ratio"]["passed"]  # only the knowledge check catches it
    assert by["confused"]["verdict"] == "fail" and checks["confused"]["perplexity-ratio"]["passed"] is False
    assert checks["confused"]["perplexity-ratio"]["margin"] < 0
    assert by["good"]["baseline"]["target"] == str(base)


def test_baseline_found_from_the_manifest_and_cached(tmp_path, monkeypatch):
    base = _fake_model(tmp_path, "bf16", logprob=-2.0, knows=0.9)
    cand = _fake_model(tmp_path, "cand", logprob=-2.2, knows=0.85)
    (cand / "quantkit.json").write_text(json.dumps({"source": {"local_path": str(base)}}))
    code, rep = _fake_engine_run(tmp_path, monkeypatch, str(cand))
    assert code == 0 and rep["verdicts"][0]["baseline"]["target"] == str(base)
    # the second run finds the baseline's measurements (and its scores of these texts) in the cache
    code, rep2 = _fake_engine_run(tmp_path, monkeypatch, str(cand))
    assert code == 0 and any("from the cache" in w for w in rep2["baselines"][0]["warnings"])
    same = ("perplexity", "knowledge", "long", "checks")
    assert all(rep["verdicts"][0][k] == rep2["verdicts"][0][k] for k in same)
    # --no-baseline: hard detectors and ceilings only, said in the report
    code, rep3 = _fake_engine_run(tmp_path, monkeypatch, str(cand), "--no-baseline")
    assert code == 0 and rep3["baselines"] == [] and any("without a baseline" in w for w in rep3["verdicts"][0]["warnings"])


def test_recipe_perplexity_ratio_limit_overrides_the_suite(tmp_path, monkeypatch):
    from quantkit.validate import ValidateOptions, validate

    monkeypatch.setenv("FAKE_ENGINE_PY", __import__("sys").executable)
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    base = _fake_model(tmp_path, "bf16", logprob=-2.0, knows=0.9)
    cand = _fake_model(tmp_path, "cand", logprob=-2.4, knows=0.9)  # x1.49 of the baseline's perplexity
    common = dict(engine="vllm", engine_python=str(DATA / "fake_engine_serve.sh"), baseline=str(base),
                  skip_inspect=True, log_dir=tmp_path)
    default = validate([str(cand)], ValidateOptions(**common))
    strict = validate([str(cand)], ValidateOptions(**common, max_ppl_ratio=1.25))
    assert default.exit_code == 0  # the smoke suite allows x1.8
    assert strict.exit_code == 1 and strict.verdicts[0].reasons[0].startswith("perplexity-ratio: 1.49")
    assert "max_ppl_ratio (1.25)" in next(c for c in strict.verdicts[0].checks if c["name"] == "perplexity-ratio")["why"]


def test_context_len_is_capped_at_the_checkpoints_own(tmp_path):
    """vLLM refuses --max-model-len above config.json's max_position_embeddings at startup: a tiny
    model with 1024 positions failed `quantkit validate` with an engine error before this."""
    import json

    from quantkit.measure import context_len

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    assert context_len(tmp_path, 2048) == 1024 and context_len(tmp_path, 512) == 512
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 768}}))
    assert context_len(tmp_path, 2048) == 768  # a VL model: its language model's
    assert context_len(None, 2048) == 2048 and context_len(tmp_path / "missing", 2048) == 2048
    from quantkit.engines.profiles import get_profile
    from quantkit.measure import ServeSpec

    server = ServeSpec(profile=get_profile("vllm-cpu")).server(tmp_path, "compressed-tensors", tmp_path / "log")
    argv = server.argv  # built, not started
    assert argv[argv.index("--max-model-len") + 1] == "768"
