"""variants (both formats, validated against BF16, compared) and run (quantize -> validate ->
publish, stopping at the first failed gate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantkit.cli.main import main
from conftest import VLLM_PY
from tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.e2e


@pytest.fixture()
def tiny_recipe(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    save_tiny_checkpoint("llama", tmp_path / "src")
    r = tmp_path / "tiny.yaml"
    r.write_text(f"name: tiny\nmodel:\n  source: {tmp_path / 'src'}\nformats: [modelopt, compressed-tensors]\n"
                 "calibration:\n  samples: 4\n  seq_len: 64\npublish:\n  license: apache-2.0\n")
    return r


FAKE_ENGINE = Path(__file__).parent / "data" / "fake_engine_serve.sh"


def _run(tiny_recipe, tmp_path, monkeypatch, answer: str) -> int:
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_ENGINE_PY", sys.executable)
    monkeypatch.setenv("FAKE_ANSWER", answer)
    return main(["run", str(tiny_recipe), "--engine", "vllm", "--engine-python", str(FAKE_ENGINE),
                 "--to", f"dir:{tmp_path / 'pub' / 'tiny'}"])


def test_run_publishes_only_after_validation(tiny_recipe, tmp_path, monkeypatch):
    assert _run(tiny_recipe, tmp_path, monkeypatch, "good") == 0
    for sub in ("tiny-modelopt", "tiny-ct"):
        card = (tmp_path / "pub" / sub / "README.md").read_text()
        assert "Verdict **PASS**" in card


def test_run_stops_at_failed_validation(tiny_recipe, tmp_path, monkeypatch):
    assert _run(tiny_recipe, tmp_path, monkeypatch, "bang") == 1
    assert not (tmp_path / "pub").exists()


@pytest.mark.skipif(not VLLM_PY.exists(), reason="no vLLM environment")
def test_variants_smollm2_in_real_vllm(tmp_path, smollm2_dir, monkeypatch):
    out = tmp_path / "smollm2"
    code = main(["variants", "smollm2-135m", "--out", str(out), "--engine-python", str(VLLM_PY), "--samples", "32"])
    assert code == 0
    rows = {r["variant"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}
    assert set(rows) == {"bf16", "modelopt", "ct"}
    assert rows["bf16"]["verdict"] == "pass" and 10 < rows["bf16"]["perplexity"] < 25
    for v in ("modelopt", "ct"):
        assert rows[v]["verdict"] == "pass"
        assert 1.0 < rows[v]["ppl_ratio"] < 1.8
        assert rows[v]["size_bytes"] < 0.5 * rows["bf16"]["size_bytes"]
        assert rows[v]["checks"]["knowledge-retained"]["margin"] > 0
        assert 0.5 < rows[v]["knowledge_accuracy"] <= rows["bf16"]["knowledge_accuracy"] + 0.05
    html = (out / "comparison.html").read_text()
    assert html.count("<svg") == 4 and "Reference perplexity" in html and "Knowledge accuracy" in html
    md = (out / "comparison.md").read_text()
    assert "| capital-france |" in md and "| knowledge-retained | 0.6 |" in md and "## Long generations" in md
