"""The image probe and the MTP drafter check without an engine: detection, the judge's rules, and
"not checked" never passing."""

from __future__ import annotations

import json

import pytest

from quantkit.judge import _image_checks, _mtp_checks
from quantkit.errors import EngineError
from quantkit.probes.image import ImageSpec, data_uri, first_token_distribution, is_vision_language, measure_images, \
    run_images, total_variation
from quantkit.probes.mtp import MtpSpec, acceptance, has_mtp
from quantkit.probes.suites import load_suite

IMG = ImageSpec(why="w", probes=[{"id": "red-square", "image": "images/red-square.png", "prompt": "color?"}])
IMG2 = ImageSpec(why="w", probes=[{"id": "red-square", "image": "images/red-square.png", "prompt": "color?",
                                   "contrast": "images/blue-circle.png"}])
MTP = MtpSpec(prompts=["x"], min_retained=0.7, why_min_retained="w")


def _ckpt(tmp_path, names, cfg=None):
    import torch
    from safetensors.torch import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg or {"model_type": "llama"}))
    save_file({n: torch.zeros(2, 2) for n in names}, tmp_path / "model.safetensors")
    return tmp_path


def test_detection(tmp_path):
    assert is_vision_language(_ckpt(tmp_path / "a", ["model.vision_model.encoder.fc1.weight"])) is True
    assert is_vision_language(_ckpt(tmp_path / "b", ["x.weight"], {"vision_config": {"hidden_size": 8}})) is True
    assert is_vision_language(_ckpt(tmp_path / "c", ["model.layers.0.mlp.up_proj.weight"])) is False
    assert is_vision_language(None) is None
    assert has_mtp(_ckpt(tmp_path / "d", ["model.mtp_layers.0.input_proj.weight"])) is True
    assert has_mtp(_ckpt(tmp_path / "e", ["mtp.layers.0.mlp.up_proj.weight"])) is True
    assert has_mtp(_ckpt(tmp_path / "f", ["model.layers.0.mlp.up_proj.weight"])) is False


def test_the_shipped_suite_and_image():
    s = load_suite("smoke")
    assert s.images and s.mtp
    for rel in s.images.files():
        img = s.folder() / rel
        assert img.is_file() and img.stat().st_size < 4096
        assert data_uri(img).startswith("data:image/png;base64,iVBOR")
    assert s.images.probes[0].contrast and s.images.why_min_sensitivity_retained


def _r(text="red", tokens=1, error=None, crashed=False):
    return {"id": "red-square", "text": text, "tokens": tokens, "error": error, "crashed": crashed}


@pytest.mark.parametrize("cand,base,passed", [
    (_r(), _r(), True),
    (_r(crashed=True, error="HTTP 500"), _r(), False),
    (_r(error="HTTP 400: bad image"), _r(), False),
    (_r(text="", tokens=0), _r(), False),
    (_r(text="\n\n"), _r(text="red"), False),
    (_r(text="\n\n"), _r(text="\n\n"), True),  # a tiny random model answers blank both times
    (_r(text="", tokens=0), _r(text="", tokens=0), True),  # not informative: nothing to compare
    (_r(crashed=True, error="died"), None, False),  # no baseline: the absolute rules still apply
])
def test_image_rules(cand, base, passed):
    b = {"images": {"results": [base]}} if base else None
    (c,) = _image_checks(IMG, {"images": {"results": [cand]}}, b)
    assert c.passed is passed, c.detail


def test_image_not_checked_never_passes():
    (c,) = _image_checks(IMG, {"images": {"not_checked": "engine cannot"}}, None)
    assert c.passed is None and "not checked" in c.summary()
    base = {"images": {"results": [_r(error="HTTP 500", crashed=True)]}}
    (c,) = _image_checks(IMG, {"images": {"results": [_r(error="HTTP 500", crashed=True)]}}, base)
    assert c.passed is None  # the baseline crashes too: the engine, not the artefact
    assert _image_checks(IMG, {"images": None}, None) == []  # text-only: no check at all


def _s(tv, **kw):
    return {**_r(), "contrast": "images/blue-circle.png", "image": "images/red-square.png", "sensitivity": tv, **kw}


@pytest.mark.parametrize("cand,base,passed", [
    (_s(0.21), _s(0.33), True),     # measured: good FP4 LM, BF16 tower
    (_s(0.0), _s(0.33), False),     # measured: an uncalibrated FP4 tower drops the image
    (_s(0.05), _s(0.33), False),    # 0.15 of the baseline's movement
    (_s(0.0), _s(0.001), None),     # the baseline does not look at the image either: not informative
    (_s(0.3), None, True),          # no baseline: the absolute floor
    (_s(0.0), None, False),
    (_s(None), _s(0.33), None),     # the engine sent no logprobs
])
def test_image_sensitivity_rules(cand, base, passed):
    b = {"images": {"results": [base]}} if base else None
    checks = {c.name: c for c in _image_checks(IMG2, {"images": {"results": [cand]}}, b)}
    c = checks["image-sensitivity"]
    assert c.passed is passed, c.detail
    if passed is False:
        assert c.margin < 0
    if passed is None:
        assert "not checked" in c.summary()


def test_image_sensitivity_not_checked_when_the_request_failed():
    cand = {**_r(error="on the contrast image x: HTTP 500"), "contrast": "x"}
    checks = {c.name: c for c in _image_checks(IMG2, {"images": {"results": [cand]}}, {"images": {"results": [_s(0.3)]}})}
    assert checks["image-probe"].passed is False and checks["image-sensitivity"].passed is None
    first = _r(error="the engine computed non-finite (NaN/inf) log-probabilities")  # the contrast was never sent
    checks = {c.name: c for c in _image_checks(IMG2, {"images": {"results": [first]}}, {"images": {"results": [_s(0.3)]}})}
    assert checks["image-probe"].passed is False and checks["image-sensitivity"].passed is None
    assert _image_checks(IMG, {"images": {"results": [_r()]}}, None)[-1].name == "image-probe"  # no contrast: no check


def _resp(text, top):
    return {"choices": [{"message": {"content": text}, "logprobs": {"content": [
        {"token": text[:1], "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}}],
        "usage": {"completion_tokens": 3}}


def test_total_variation_and_the_distribution():
    import math

    d = first_token_distribution(_resp("r", [("r", math.log(0.5)), ("", math.log(0.2)), ("", math.log(0.1))]))
    assert d == pytest.approx({"r": 0.5, "": 0.3})  # two ids that decode alike count as one
    assert total_variation(d, d) == 0
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1
    assert total_variation({"a": 0.6, "b": 0.4}, {"a": 0.4, "b": 0.6}) == pytest.approx(0.2)
    assert first_token_distribution({"choices": [{"message": {"content": "x"}}]}) is None


class _Client:
    """Answers per image (by data URI) like an engine; `nan` raises vLLM's error for NaN logprobs."""
    def __init__(self, answers, nan=False):
        self.answers, self.nan, self.sent = answers, nan, []

    def chat(self, msgs, max_tokens, **extra):
        url = msgs[0]["content"][0]["image_url"]["url"]
        self.sent.append(extra)
        if self.nan:
            raise EngineError('POST /v1/chat/completions -> HTTP 400: {"error":{"message":"Out of range float values '
                              'are not JSON compliant"}}')
        return self.answers[url]


def test_run_images_measures_the_movement_between_two_images():
    import math

    folder = load_suite("smoke").folder()
    red, blue = (data_uri(folder / f"images/{n}.png") for n in ("red-square", "blue-circle"))
    c = _Client({red: _resp("red", [("red", math.log(0.7)), ("blue", math.log(0.1))]),
                 blue: _resp("blue", [("red", math.log(0.2)), ("blue", math.log(0.6))])})
    [r] = run_images(c, IMG2.probes, folder)
    assert r["text"] == "red" and r["contrast_text"] == "blue" and r["sensitivity"] == pytest.approx(0.5)
    assert c.sent[0]["logprobs"] is True and c.sent[0]["top_logprobs"] == 20
    same = _Client({red: _resp("x", [("x", math.log(0.4))]), blue: _resp("x", [("x", math.log(0.4))])})
    assert run_images(same, IMG2.probes, folder)[0]["sensitivity"] == 0
    [r] = run_images(_Client({}, nan=True), IMG2.probes, folder)
    assert "non-finite (NaN/inf) log-probabilities" in r["error"] and "sensitivity" not in r


class _Profile:
    def __init__(self, cannot):
        self.cannot = cannot


def test_measure_images_respects_the_profile(tmp_path):
    vl = _ckpt(tmp_path / "vl", ["model.vision_model.fc1.weight"])
    assert measure_images(None, IMG, vl, tmp_path, _Profile({"images": "no"})) == {"not_checked": "no"}
    assert measure_images(None, IMG, None, tmp_path, _Profile({}))["not_checked"]
    assert measure_images(None, IMG, _ckpt(tmp_path / "t", ["a.weight"]), tmp_path, _Profile({})) is None


def _m(rate=None, error=None, nc=None):
    if nc:
        return {"not_checked": nc}
    if error:
        return {"error": error}
    return {"acceptance_rate": rate, "accepted_tokens": int(rate * 100), "draft_tokens": 100}


@pytest.mark.parametrize("cand,base,passed", [
    (_m(0.45), _m(0.48), True),
    (_m(0.02), _m(0.80), False),
    (_m(error="KeyError: mtp"), _m(0.5), False),
    (None, _m(0.5), False),  # MTP weights lost in the candidate
    (_m(nc="engine cannot"), _m(nc="engine cannot"), None),
    (_m(0.5), None, None),
    (_m(0.5), _m(error="boot failed"), None),
])
def test_mtp_rules(cand, base, passed):
    checks = _mtp_checks(MTP, {"mtp": cand}, {"mtp": base} if base else None)
    assert len(checks) == 1 and checks[0].passed is passed, checks[0].detail
    if passed is None:
        assert checks[0].summary().startswith("mtp-acceptance: not checked")


def test_acceptance_counters():
    text = ('vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 85.0\n'
            'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 85.0\n'
            'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 41.0\n'
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 41.0\n')
    assert acceptance(text) == {"drafts": 85.0, "draft_tokens": 85.0, "accepted_tokens": 41.0}
