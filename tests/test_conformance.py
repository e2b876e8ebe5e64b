"""inspect agrees with vLLM's own matching (issue 12): for a generated corpus of checkpoints
(tests/conformance/corpus.py: 13 architectures x the ignore-list styles people and tools write x
both formats), vLLM 0.32 builds each model on the meta device in its own environment and reports,
per module it builds, whether it is quantized (tests/conformance/vllm_oracle.py); quantkit's model
of vLLM (`quantkit.inspect.vllm`) must give the same answer for every module of every case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import VLLM_PY
from quantkit.engines.vllm_layers import ARCHS
from quantkit.inspect import inspect_checkpoint
from quantkit.inspect.vllm import vllm_view_of_dir

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("vllm_env")]
HERE = Path(__file__).resolve().parent / "conformance"
sys.path.insert(0, str(HERE))



def _oracle(*args: str) -> None:
    r = subprocess.run([str(VLLM_PY), str(HERE / "vllm_oracle.py"), *args], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from corpus import build_corpus

    root = tmp_path_factory.mktemp("conformance")
    cases = build_corpus(root)
    _oracle(str(root / "oracle.json"), *map(str, cases))
    return root, json.loads((root / "oracle.json").read_text())


def _decisions(view_or_oracle: dict) -> dict[str, str]:
    """Decisions with vLLM's error messages reduced to 'error'; conv1d (a 3-D weight in every
    checkpoint, never an NVFP4 linear) left out."""
    return {n: ("error" if d.startswith("error") else d) for n, d in view_or_oracle.items()
            if not n.endswith(".conv1d")}


def test_corpus_is_large_and_broad(corpus):
    root, oracle = corpus
    archs = {v.get("architecture") for v in oracle.values()}
    assert len(oracle) >= 60 and len(archs) >= 7, (len(oracle), archs)
    assert not [c for c, v in oracle.items() if "build_error" in v or "config_error" in v]
    kinds = {d.split(":")[0] for v in oracle.values() for d in v["modules"].values()}
    assert kinds == {"fp4", "bf16", "error"}  # the corpus reaches every outcome


def test_inspect_agrees_with_vllm_on_every_module_of_every_case(corpus):
    root, oracle = corpus
    disagree = {}
    modules = 0
    for case, o in sorted(oracle.items()):
        view = vllm_view_of_dir(root / case)
        assert view.modelled, case
        mine, theirs = _decisions(view.decisions), _decisions(o["modules"])
        modules += len(theirs)
        diff = {n: (mine.get(n), theirs.get(n)) for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n)}
        if diff:
            disagree[case] = dict(sorted(diff.items())[:3])
    print(f"\nconformance: {len(oracle) - len(disagree)}/{len(oracle)} cases agree, {modules} module decisions")
    assert not disagree, disagree


def test_quantkits_tables_are_vllms(tmp_path):
    out = tmp_path / "tables.json"
    _oracle("--tables", str(out), *ARCHS)
    for arch, t in json.loads(out.read_text()).items():
        mine = ARCHS[arch]
        assert t["rename_prefix"] == mine.rename_prefix, arch
        assert t["rename_substr"] == mine.rename_substr, arch
        assert not t["rename_other"], arch
        assert {k: tuple(v) for k, v in t["packed"].items()} == mine.packed, arch


CASES_OF_THE_ISSUE = {
    # 1: compressed-tensors regexes anchored at the checkpoint prefix are not renamed: vLLM's
    #    language_model.model.* / model.* names escape them
    ("qwen3_5_moe_vl--ct--regex-ckpt-prefix", "language_model.model.layers.0.linear_attn.in_proj_qkvz"): "fp4",
    ("nemotron_h--ct--regex-ckpt-prefix", "model.layers.0.mixer.in_proj"): "fp4",
    # 2: a ModelOpt wildcard with an interior checkpoint path is not renamed
    ("nemotron_h--modelopt--wildcard-interior", "model.layers.0.mixer.in_proj"): "fp4",
    # 3: per-shard wildcards are matched against the fused name only
    ("llama--modelopt--shard-wildcards", "model.layers.0.mlp.gate_up_proj"): "fp4",
    # 4: a k_eq_v layer (no v_proj stored) still has a v shard: an exact q/k list is refused
    ("gemma4--modelopt--last-attention-stored", "model.layers.1.self_attn.qkv_proj"): "error",
    # 5: Qwen3-MoE's dense-MLP gate_up_proj is not expanded to its parts
    ("qwen3_moe--modelopt--exact-fused", "model.layers.1.mlp.gate_up_proj"): "fp4",
    # 6: ModelOpt substring semantics: `model.layers.1` excludes the whole layer
    ("llama--modelopt--parent", "model.layers.1.mlp.down_proj"): "bf16",
    # 7: config.json's list wins over hf_quant_config.json's
    ("qwen3_next--modelopt--files-disagree", "model.layers.0.linear_attn.in_proj_qkvz"): "fp4",
    # 8: Qwen3.5 split GDN names are expanded to the fused modules
    ("qwen3_5--modelopt--exact-split", "model.layers.0.linear_attn.in_proj_qkvz"): "bf16",
    # 9: a list naming only fused modules matches them directly
    ("llama--ct--exact-fused", "model.layers.0.self_attn.qkv_proj"): "bf16",
    # 10: routers never take a quantization config
    ("qwen3_next--ct--empty", "model.layers.0.mlp.gate"): "bf16",
    ("gemma4_moe--ct--empty", "model.layers.0.router.proj"): "bf16",
    # 11: fused 3-D experts are decided from synthetic expert-0 names: their own names miss
    ("gemma4_moe--ct--experts-3d-names", "model.layers.0.experts"): "fp4",
}


def test_the_cases_of_issue_12_are_in_the_corpus(corpus):
    _, oracle = corpus
    got = {k: oracle[k[0]]["modules"].get(k[1], "absent").split(":")[0] for k in CASES_OF_THE_ISSUE}
    assert got == CASES_OF_THE_ISSUE


def test_inspect_errors_name_exactly_the_modules_vllm_misloads(corpus):
    """Every corpus checkpoint stores BF16 weights, so a module vLLM builds quantized (or refuses)
    is one that loads as garbage or fails: inspect must name each of them in an error finding
    (by vLLM's name or a checkpoint name) and name none that vLLM loads right."""
    root, oracle = corpus
    engine_codes = {"undeclared-bf16", "engine-name-uncovered", "fused-parts-disagree", "excluded-but-quantized",
                    "metadata-files-disagree"}
    silent, false = [], []
    for case, o in sorted(oracle.items()):
        view = vllm_view_of_dir(root / case)
        flagged = {m for f in inspect_checkpoint(str(root / case)).errors if f.code in engine_codes for m in f.modules}
        for name, d in _decisions(o["modules"]).items():
            m = view.modules[name]
            hit = bool({name, *m.parts} & flagged)
            if d != "bf16" and not hit:
                silent.append((case, name))
            elif d == "bf16" and hit:
                false.append((case, name))
    assert not silent and not false, (silent[:5], false[:5])


def test_fix_makes_every_case_load_as_stored_in_vllm(corpus, tmp_path):
    """`inspect --fix`'s lists, judged by vLLM itself: every corpus checkpoint stores BF16 weights,
    so after the fix vLLM must build every module unquantized, and refuse none (case.json, how the
    case is served, is carried over with the weights)."""
    from quantkit.inspect.fix import fix_checkpoint

    root, oracle = corpus
    fixed = []
    for case in sorted(oracle):
        res = fix_checkpoint(root / case, tmp_path / case)
        left = {f.code for f in res.report.errors} - {"no-fp4-tensors"}  # the corpus stores no FP4 at all
        assert not res.unfixable and not left, (case, res.unfixable, left)
        fixed.append(str(tmp_path / case))
    _oracle(str(tmp_path / "fixed.json"), *fixed)
    after = json.loads((tmp_path / "fixed.json").read_text())
    wrong = {c: {n: d for n, d in _decisions(o["modules"]).items() if d != "bf16"} for c, o in after.items()}
    assert not {c: w for c, w in wrong.items() if w}
    assert len(after) == len(oracle)
