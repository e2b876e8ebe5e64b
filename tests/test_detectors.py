"""Detectors: unit cases, and real outputs recorded from vLLM runs of good and broken artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantkit.probes import detectors as d

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded_outputs.json").read_text())["outputs"]


@pytest.mark.parametrize("text,fires", [
    ("", True), ("   \n\t ", True), (" Paris.", False)])
def test_blank(text, fires):
    assert bool(d.blank(text)) is fires


@pytest.mark.parametrize("text,fires", [
    ("!!!!!!!!!!!!", True), ("Hello!!!!!", True), ("Wait... what?", False), ("Title\n-----\n", False),
    ("??????", True), ("a ------------------ b", True), ("Great!", False)])
def test_punctuation_run(text, fires):
    assert bool(d.punctuation_run(text)) is fires


def test_repetition_loop():
    assert d.repetition_loop("the cat sat on the mat " * 6)
    assert d.repetition_loop("I am I am I am I am I am I am I am I am")
    assert not d.repetition_loop("Once upon a time, in a small village by the sea, there lived a young boy who loved boats.")
    assert not d.repetition_loop("short short short")  # too short to judge


def test_bad_characters_and_script():
    assert d.bad_characters("abc\ufffddef")
    assert d.bad_characters("abc\x01")
    assert not d.bad_characters("line one\nline two\ttab")
    assert d.wrong_script("Столица Франции это Париж, конечно")
    assert not d.wrong_script("The capital of France is Paris, naturally.")
    assert not d.wrong_script("Café déjà vu, naïve résumé")


def test_expected_answer_case_insensitive():
    assert d.expected_answer(" PARIS is the capital", ["paris"]) is None
    assert "none of" in d.expected_answer("Lyon", ["paris"])


def test_recorded_good_outputs_fire_no_hard_detector():
    good = [r for r in RECORDED if not r["broken"]]
    assert len(good) >= 20
    for r in good:
        assert d.run_detectors(r["text"]) == {}, (r["source"], r["probe"], r["text"])


def test_recorded_nan_outputs_are_blank():
    nan = [r for r in RECORDED if "NaN" in r["source"]]
    assert nan and all("blank" in d.run_detectors(r["text"]) for r in nan)


def test_recorded_scrambled_outputs_mostly_caught_by_string_detectors():
    scrambled = [r for r in RECORDED if "scrambled" in r["source"]]
    fired = [r for r in scrambled if d.run_detectors(r["text"])]
    # String detectors alone catch most, not all, fluent garbage (6 of 10 recorded); expected answers
    # and reference perplexity catch the rest (see test_validate_vllm).
    assert len(scrambled) / 2 < len(fired) < len(scrambled), (len(fired), len(scrambled))
