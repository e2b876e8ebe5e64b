"""Calibration health (quantkit.calib_health): tokens routed to each expert during calibration and
each FP4 module's activation amax, written to quantkit.json; starved experts flagged, warned by
quantize, reported by inspect, stated by the card; the all-experts remedy where the backend has it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantkit.calib_health import RouterTap, card_lines, inspect_findings, summarise, warning_line
from tiny_models import save_tiny_checkpoint, tiny_model

STARVED = 3  # the expert the biased router never picks


def starve(ckpt: Path, expert: int = STARVED) -> Path:
    """Bias a saved tiny MoE so that `expert` gets no calibration token: embedding channel 0 is a
    large constant (it dominates every normalized hidden state), the other routers ignore that
    channel, and `expert`'s router row is -50 on it alone (its logit is always the lowest)."""
    f = ckpt / "model.safetensors"
    t = load_file(str(f))
    t["model.embed_tokens.weight"][:, 0] = 10.0
    for n in [n for n in t if n.endswith("mlp.gate.weight")]:
        w = t[n]
        w[:, 0] = 0
        w[expert] = 0
        w[expert, 0] = -50.0
    save_file(t, str(f), metadata={"format": "pt"})
    return ckpt


class _Rep:
    def __init__(self):
        self.lines: list[str] = []

    def stage(self, *a):
        pass

    def info(self, m):
        self.lines.append(m)

    def advance(self, *a):
        pass


_SETTING = {"moe": "routed", "asked": "auto", "why": "w", "min_expert_tokens": 16, "threshold_reason": "r"}


# ------------------------------------------------------------------ fast: no quantization
def test_summarise_flags_exactly_the_experts_under_the_threshold():
    counts = {"model.layers.0.mlp": [100, 0, 50, 15], "model.layers.1.mlp": [40, 40, 40, 40]}
    s = summarise(counts, set(), _SETTING)
    assert s["layers"]["model.layers.0.mlp"]["starved"] == {"1": 0, "3": 15}
    assert "starved" not in s["layers"]["model.layers.1.mlp"]
    assert (s["starved_experts"], s["starved_layers"]) == (2, 1)
    assert s["layers"]["model.layers.0.mlp"]["min"] == 0 and s["layers"]["model.layers.0.mlp"]["max"] == 100
    # all-experts applied (ModelOpt's widened forward seen on the layer): under the threshold, not flagged
    s = summarise(counts, {"model.layers.0.mlp"}, {**_SETTING, "moe": "all-experts"})
    assert s["layers"]["model.layers.0.mlp"]["remedied"] == {"1": 0, "3": 15} and s["starved_experts"] == 0
    # asked but not applied: still flagged, with the reason
    s = summarise(counts, set(), {**_SETTING, "moe": "all-experts"})
    assert s["starved_experts"] == 2 and "did not apply" in s["layers"]["model.layers.0.mlp"]["note"]


def test_router_tap_counts_top_k_once_and_skips_widened_and_paused_passes():
    model = tiny_model("qwen3_moe")
    ids = torch.randint(3, 250, (2, 16))
    paused = [False]
    with RouterTap(model, 2, paused=lambda: paused[0]) as tap:
        model(ids)
        gate = model.model.layers[0].mlp.gate
        gate.top_k = 4  # what ModelOpt's moe_calib_experts_ratio=1.0 does for one calibration forward
        model(ids)
        gate.top_k = 2
        paused[0] = True  # llm-compressor's propagation pass
        model(ids)
    assert list(tap.counts) == ["model.layers.0.mlp"]  # layer 1 is dense (mlp_only_layers)
    assert sum(tap.counts["model.layers.0.mlp"]) == 2 * 16 * 2  # tokens x top-k, counted once
    assert tap.widened == {"model.layers.0.mlp"}
    model(ids)  # hooks removed on exit
    assert sum(tap.counts["model.layers.0.mlp"]) == 64


def _manifest(starved: dict | None, amax_bad: dict | None = None) -> dict:
    layer = {"experts": 4, "min": 0, "median": 100, "max": 200, "calibrated_on": "routed tokens"}
    if starved:
        layer["starved"] = starved
    amax = {"modules": 12, "with_amax": 12, "zero": [], "not_finite": [], "implausible": [], "missing": [],
            **(amax_bad or {})}
    return {"calibration_health": {**_SETTING, "routing": {"layers": {"model.layers.0.mlp": layer},
                                                           "starved_experts": len(starved or {})},
                                   "activation_amax": amax}}


def test_inspect_card_and_warning_from_a_manifest():
    m = _manifest({"3": 0})
    line = warning_line(m)
    assert "1 expert(s)" in line and "expert 3: 0" in line and "-> set calibration.moe: all-experts" in line
    (f,) = inspect_findings(m)
    assert (f.code, f.severity, f.modules) == ("starved-experts", "warning", ["model.layers.0.mlp.experts.3"])
    card = "\n".join(card_lines(m))
    assert "1 expert(s) flagged" in card and "`model.layers.0.mlp` | 3: 0" in card
    healthy = _manifest(None)
    assert warning_line(healthy) is None and inspect_findings(healthy) == []
    assert "None flagged" in "\n".join(card_lines(healthy))
    bad = inspect_findings(_manifest(None, {"implausible": ["model.layers.0.mlp.experts.3.gate_proj"]}))
    assert [(f.code, f.severity) for f in bad] == [("calibration-amax", "error")]
    assert inspect_findings({}) == [] and card_lines({}) == []


def test_recipe_fields_and_plan_show_the_setting(tmp_path):
    from quantkit.errors import RecipeError
    from quantkit.plan import plan_recipe
    from quantkit.recipe import Calibration, load_recipe, resolve_recipe

    assert (Calibration().moe, Calibration().min_expert_tokens) == ("auto", 16)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nmodel:\n  source: x/y\ncalibration:\n  moe: everything\n")
    with pytest.raises(RecipeError):
        load_recipe(bad)
    src = save_tiny_checkpoint("qwen3_moe", tmp_path / "moe")
    r = tmp_path / "r.yaml"
    r.write_text(f"name: t\nmodel:\n  source: {src}\ncalibration:\n  min_expert_tokens: 32\n")
    mo = plan_recipe(load_recipe(r)).to_dict()["moe_calibration"]
    lc = plan_recipe(load_recipe(r), backend="llmcompressor").to_dict()["moe_calibration"]
    assert (mo["moe"], mo["asked"], mo["min_expert_tokens"]) == ("routed", "auto", 32)
    assert lc["moe"] == "all-experts" and "NVFP4 block" in lc["threshold_reason"]
    dense = save_tiny_checkpoint("llama", tmp_path / "dense")
    assert "moe_calibration" not in plan_recipe(resolve_recipe(str(dense))).to_dict()


def test_every_new_code_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "inspect.md").read_text()
    assert "`starved-experts`" in doc and "`calibration-amax`" in doc


# ------------------------------------------------------------------ e2e: real calibrations
@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("health")
    return {"starved": starve(save_tiny_checkpoint("qwen3_moe", root / "starved")),
            "healthy": save_tiny_checkpoint("qwen3_moe", root / "healthy")}


def _quantize(src: Path, out: Path, backend: str, moe: str = "auto", mode: str = "auto") -> tuple[dict, list[str]]:
    from quantkit.quantize import QuantizeOptions, quantize
    from quantkit.recipe import resolve_recipe

    r = out.parent / f"{out.name}.yaml"
    r.write_text(f"name: t\nmodel:\n  source: {src}\ncalibration:\n  samples: 4\n  seq_len: 64\n  moe: {moe}\n")
    rep = _Rep()
    (res,) = quantize(resolve_recipe(str(r)), QuantizeOptions(backend=backend, out=out, mode=mode), rep)
    return json.loads((res.path / "quantkit.json").read_text())["calibration_health"], rep.lines


def _layer(health: dict) -> dict:
    return health["routing"]["layers"]["model.layers.0.mlp"]


@pytest.mark.e2e
@pytest.mark.parametrize("backend,moe", [("modelopt", "auto"), ("llmcompressor", "routed")])
def test_starved_expert_flagged_warned_and_inspected(sources, tmp_path, backend, moe):
    from quantkit.inspect import inspect_checkpoint

    health, lines = _quantize(sources["starved"], tmp_path / "q", backend, moe)
    layer = _layer(health)
    assert health["moe"] == "routed" and layer["starved"] == {str(STARVED): 0}, layer
    assert layer["min"] == 0 and layer["median"] > 16
    assert health["routing"]["starved_experts"] == 1
    (warn,) = [x for x in lines if "calibration:" in x]
    assert warn.startswith("warning: calibration: 1 expert(s)") and "-> set calibration.moe: all-experts" in warn
    codes = {f.code: f for f in inspect_checkpoint(str(tmp_path / "q")).findings}
    assert codes["starved-experts"].modules == [f"model.layers.0.mlp.experts.{STARVED}"]
    if backend == "llmcompressor":  # no statistics: its input_global_scale is torch.empty memory
        bad = codes["calibration-amax"].modules
        assert bad and all(f".experts.{STARVED}." in n for n in bad)


@pytest.mark.e2e
def test_all_experts_remedy_calibrates_the_starved_expert(sources, tmp_path):
    """llm-compressor's all-experts calibration (its 0.14 default): the starved expert saw every
    token, has its own finite, plausible amax, and is not flagged; the routed count still shows 0."""
    health, lines = _quantize(sources["starved"], tmp_path / "q", "llmcompressor", "all-experts")
    layer = _layer(health)
    assert layer["calibrated_on"] == "all tokens" and layer["remedied"] == {str(STARVED): 0}
    assert "starved" not in layer and health["routing"]["starved_experts"] == 0
    assert not any("calibration:" in x for x in lines)
    a = health["activation_amax"]
    assert a["zero"] == a["not_finite"] == a["implausible"] == a["missing"] == []
    from quantkit.calib_health import exported_amax

    values = exported_amax(tmp_path / "q")["values"]
    mine = {k: v for k, v in values.items() if f".experts.{STARVED}." in k}
    assert len(mine) == 3 and all(math.isfinite(v) and 1e-6 < v < 1e6 for v in mine.values())


@pytest.mark.e2e
def test_modelopt_all_experts_is_not_applied_to_fused_experts_and_says_so(sources, tmp_path):
    """ModelOpt 0.47's moe_calib_experts_ratio only widens MoE blocks with a module list of experts:
    transformers 5's fused experts stay routed, so the expert stays flagged, with the reason and the
    backend that can do it as the next step."""
    health, lines = _quantize(sources["starved"], tmp_path / "q", "modelopt", "all-experts")
    layer = _layer(health)
    assert layer["starved"] == {str(STARVED): 0} and "fused experts" in layer["note"]
    (warn,) = [x for x in lines if "calibration:" in x]
    assert "--backend llmcompressor" in warn


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["modelopt", "llmcompressor"])
def test_healthy_moe_is_not_flagged(sources, tmp_path, backend):
    from quantkit.inspect import inspect_checkpoint

    health, lines = _quantize(sources["healthy"], tmp_path / "q", backend, "routed")
    layer = _layer(health)
    assert "starved" not in layer and layer["min"] >= 16, layer
    assert not any("calibration:" in x for x in lines)
    codes = {f.code for f in inspect_checkpoint(str(tmp_path / "q")).findings}
    assert not {"starved-experts", "calibration-amax"} & codes


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["modelopt", "llmcompressor"])
def test_layerwise_records_the_routing_a_full_run_records(sources, tmp_path, backend):
    """--mode layerwise (memory-bounded) counts each layer's routing while the backend calibrates that
    layer's stand-in, under the source's layer names, and writes the same calibration_health: every
    MoE layer's counts equal the full-model run's (both feed each layer BF16 inputs), the starved
    expert is flagged, warned and inspected."""
    from quantkit.inspect import inspect_checkpoint

    src = starve(save_tiny_checkpoint("qwen3_moe", tmp_path / "src", num_hidden_layers=3))  # MoE, dense, MoE
    full, _ = _quantize(src, tmp_path / "full", backend, "routed")
    lw, lines = _quantize(src, tmp_path / "lw", backend, "routed", mode="layerwise")
    assert sorted(lw["routing"]["layers"]) == ["model.layers.0.mlp", "model.layers.2.mlp"]  # under the source's names
    def counts(h):  # the starved expert's exported amax is torch.empty memory (llm-compressor): not compared
        return {k: {f: v for f, v in row.items() if f != "starved_amax"} for k, row in h["routing"]["layers"].items()}

    assert counts(lw) == counts(full) and lw["routing"]["starved_experts"] == full["routing"]["starved_experts"] == 2
    assert _layer(lw)["starved"] == {str(STARVED): 0}
    assert lw["activation_amax"]["modules"] == full["activation_amax"]["modules"]
    (warn,) = [x for x in lines if "calibration:" in x]
    assert warn.startswith("warning: calibration:")
    codes = {f.code: f for f in inspect_checkpoint(str(tmp_path / "lw")).findings}
    assert f"model.layers.0.mlp.experts.{STARVED}" in codes["starved-experts"].modules


@pytest.mark.e2e
def test_inspect_deep_reads_uncalibrated_activation_scales_from_the_tensors(tmp_path):
    """A checkpoint quantkit did not write has no calibration_health: `inspect --deep` reads the stored
    input scales instead. llm-compressor's NVFP4 of a tiny VL model with text-only calibration and the
    vision tower not ignored leaves the tower's and connector's input_global_scale uncalibrated: all 13
    flagged (pinned to values seen: 3.6e-38, 0); the same with the tower ignored: none."""
    from quantkit.inspect import inspect_checkpoint
    from tiny_vl import save_idefics3, save_text_calibrated_fp4

    vl = save_idefics3(tmp_path / "vl")
    good = save_text_calibrated_fp4(vl, tmp_path / "good", vision=False)
    assert "calibration-amax" not in {f.code for f in inspect_checkpoint(str(good), deep=True).findings}
    for value in (3.6e-38, 0.0):
        bad = save_text_calibrated_fp4(vl, tmp_path / "bad", uncalibrated=value)
        codes = {f.code: f for f in inspect_checkpoint(str(bad), deep=True).findings}
        mods = codes["calibration-amax"].modules
        assert len(mods) == 13 and all("vision_model" in m or "connector" in m for m in mods), mods
        assert "stored input scales" in codes["calibration-amax"].message
        assert "calibration-amax" not in {f.code for f in inspect_checkpoint(str(bad)).findings}  # headers only
