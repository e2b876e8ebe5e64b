"""The image probe and the MTP drafter check without an engine: detection, the judge's rules, and
"not checked" never passing."""

from __future__ import annotations

import json

import pytest

from quantkit.judge import _image_checks, _mtp_checks
from quantkit.probes.image import ImageSpec, data_uri, is_vision_language, measure_images
from quantkit.probes.mtp import MtpSpec, acceptance, has_mtp
from quantkit.probes.suites import load_suite

IMG = ImageSpec(why="w", probes=[{"id": "red-square", "image": "images/red-square.png", "prompt": "color?"}])
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
    img = s.folder() / s.images.probes[0].image
    assert img.is_file() and img.stat().st_size < 4096
    assert data_uri(img).startswith("data:image/png;base64,iVBOR")


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
