"""The decision rule as pure functions over measurements: each check's value, bound and margin, the
error rate the suite states (an artefact exactly at a threshold fails at most alpha of the time), and
the pieces of measurement that feed it (option log-probabilities from echo offsets, repetition)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantkit.judge import judge_checks, paired_bootstrap
from quantkit.probes.echo import continuation_logprobs
from quantkit.probes.longgen import repetition_rate
from quantkit.probes.suites import load_suite

SUITE = load_suite("smoke")


def _knowledge(right: np.ndarray, margin: float = 2.0, chance: float = 1 / 3) -> dict:
    items = [{"id": f"i{k}", "answer_logprob": (margin if r else -margin), "best_distractor_logprob": 0.0}
             for k, r in enumerate(right)]
    return {"chance": chance, "items": items, "accuracy": float(np.mean(right))}


def _ppl(nll_per_token: np.ndarray, n: int = 64) -> dict:
    blocks = [[float(x * n), n] for x in nll_per_token]
    return {"perplexity": math.exp(float(np.mean(nll_per_token))), "blocks": blocks}


def _checks(cand: dict, base: dict | None) -> dict:
    return {c.name: c for c in judge_checks(SUITE, cand, base)}


def test_bootstrap_is_deterministic_and_paired():
    a = np.arange(50, dtype=float)
    d1 = paired_bootstrap(lambda x, y: (x - y).mean(1), [a, a], 500, 0)
    assert np.array_equal(d1, paired_bootstrap(lambda x, y: (x - y).mean(1), [a, a], 500, 0))
    assert np.all(d1 == 0)  # the same unit index for both arrays: identical arrays never differ


def test_perplexity_ratio_value_bound_and_margin():
    rng = np.random.default_rng(1)
    base = rng.normal(2.7, 0.3, 70)
    good, bad = _ppl(base + math.log(1.5)), _ppl(base + math.log(2.2))
    c = _checks({"perplexity": good}, {"perplexity": _ppl(base)})["perplexity-ratio"]
    assert c.value == pytest.approx(1.5, abs=1e-3) and c.passed and c.margin == pytest.approx(1.8 - c.bound)
    c = _checks({"perplexity": bad}, {"perplexity": _ppl(base)})["perplexity-ratio"]
    assert c.value == pytest.approx(2.2, abs=1e-3) and not c.passed and c.margin < 0
    # without a baseline: not checked, said so; the absolute ceiling still applies
    cs = _checks({"perplexity": _ppl(np.full(10, math.log(300.0)))}, None)
    assert cs["perplexity-ratio"].passed is None and cs["perplexity-ratio"].detail == "no baseline"
    assert cs["perplexity-ceiling"].passed is False


def test_knowledge_retained_good_broken_and_too_hard():
    rng = np.random.default_rng(2)
    base = rng.random(310) < 0.78
    good = base & (rng.random(310) < 0.93)          # loses ~7% of what it knew
    broken = rng.random(310) < 1 / 3                # at chance
    cs = _checks({"knowledge": _knowledge(good)}, {"knowledge": _knowledge(base)})
    assert cs["knowledge-retained"].passed and cs["knowledge-retained"].margin > 0.2
    cs = _checks({"knowledge": _knowledge(broken)}, {"knowledge": _knowledge(base)})
    assert cs["knowledge-retained"].passed is False and cs["knowledge-above-chance"].passed is False
    hard = rng.random(310) < 0.36  # the baseline itself is near chance: no claim either way
    cs = _checks({"knowledge": _knowledge(broken)}, {"knowledge": _knowledge(hard)})
    assert cs["knowledge-retained"].passed is None and "near chance" in cs["knowledge-retained"].detail


def test_stated_error_rate_at_the_threshold():
    """An artefact whose true retained fraction sits exactly at min_retained fails the knowledge check
    in at most ~alpha of item samples (the one-sided bootstrap bound); one clearly above almost never."""
    rng = np.random.default_rng(3)
    chance, acc_b = 1 / 3, 0.8
    suite = SUITE.model_copy(update={"bootstrap": SUITE.bootstrap.model_copy(update={"resamples": 400})})

    def fail_rate(retained: float, trials: int = 150) -> float:
        keep = (chance + retained * (acc_b - chance) - chance * (1 - acc_b) / 1) / acc_b
        fails = 0
        for _ in range(trials):
            b = rng.random(310) < acc_b
            # known items kept with prob `keep`; unknown ones guessed right at chance
            c = np.where(b, rng.random(310) < keep, rng.random(310) < chance)
            cs = {x.name: x for x in judge_checks(suite, {"knowledge": _knowledge(c)}, {"knowledge": _knowledge(b)})}
            fails += cs["knowledge-retained"].passed is False
        return fails / trials

    at = fail_rate(SUITE.knowledge.min_retained)
    assert at <= SUITE.alpha + 0.05, at  # binomial slack for 150 trials
    assert fail_rate(0.95) == 0


def test_long_generation_checks_are_relative_to_the_baseline():
    base = {"long": [{"id": "a", "repetition": 0.5, "baseline_nll": 0.3}, {"id": "b", "repetition": 0.1, "baseline_nll": 0.4}]}
    same = {"long": [{"id": "a", "repetition": 0.6, "baseline_nll": 0.5}, {"id": "b", "repetition": 0.2, "baseline_nll": 0.9}]}
    loop = {"long": [{"id": "a", "repetition": 0.9, "baseline_nll": 0.3}, {"id": "b", "repetition": 0.8, "baseline_nll": 0.2}]}
    one_swing = {"long": [{"id": "a", "repetition": 0.2, "baseline_nll": 0.3}, {"id": "b", "repetition": 0.45, "baseline_nll": 0.4}]}
    drift = {"long": [{"id": "a", "repetition": 0.4, "baseline_nll": 4.0}, {"id": "b", "repetition": 0.1, "baseline_nll": 3.5}]}
    blank = {"long": [{"id": "a", "repetition": 0.0, "baseline_nll": None}, {"id": "b", "repetition": 0.1, "baseline_nll": 0.4}]}
    ok = _checks(same, base)
    assert ok["long-repetition"].passed and ok["long-surprise"].passed
    assert _checks(loop, base)["long-repetition"].passed is False  # a baseline that loops a bit is not held against it
    assert _checks(one_swing, base)["long-repetition"].passed  # one prompt swinging by 0.35 is not a loop
    assert _checks(drift, base)["long-surprise"].value == pytest.approx(3.4)
    assert _checks(drift, base)["long-surprise"].passed is False
    assert _checks(blank, base)["long-surprise"].passed is False  # a blank text is infinitely surprising
    assert _checks(same, None)["long-repetition"].passed is None


def test_option_tokens_found_by_echo_offsets():
    # "The capital of France is Paris": the option " Paris" starts at char 24
    lp = {"text_offset": [0, 3, 11, 14, 21, 24], "token_logprobs": [None, -3.0, -2.0, -1.0, -0.5, -0.25]}
    assert continuation_logprobs(lp, 24) == [-0.25]
    # a token straddling the boundary ("is P" merged) belongs to the option
    lp = {"text_offset": [0, 3, 11, 14, 21, 26], "token_logprobs": [None, -3.0, -2.0, -1.0, -0.5, -0.25]}
    assert continuation_logprobs(lp, 24) == [-0.5, -0.25]


def test_repetition_rate():
    assert repetition_rate("a b c d e f g h") == 0.0
    assert repetition_rate("the cat sat on the mat " * 20) > 0.9
    assert repetition_rate("") == 0.0


def test_every_shipped_data_file_loads():
    from quantkit.engines.profiles import load_profiles
    from quantkit.resources import data_dir

    suites = [p for p in data_dir("validate").glob("*.yaml") if p.stem not in ("engines", "logscan")]
    for p in suites:
        s = load_suite(str(p))
        if s.knowledge:
            bank = s.bank()
            assert len(bank.items) >= 200
            assert all(len(i.distractors) >= (s.knowledge.distractors or 1) for i in bank.items)
        for why in ("why_max_ratio", "why_max_perplexity"):
            assert getattr(s.perplexity, why), f"{p}: {why} must say why"
    assert load_profiles()["vllm-cpu"].environment()["VLLM_CPU_OMP_THREADS_BIND"]


def test_bad_suite_names_file_line_and_field(tmp_path):
    from quantkit.errors import UsageError

    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\nprobes: []\nknowledge:\n  bank: x.yaml\n  min_retained: 2\n")
    with pytest.raises(UsageError, match=r"s.yaml:5: knowledge.min_retained: "):
        load_suite(str(bad))


def test_nan_measurements_fail_and_render():
    """NaN log-probabilities (NaN block scales) give NaN perplexity: a failed check whose value is
    n/a, rendered everywhere without crashing."""
    from quantkit.report import ValidationReport, Verdict, markdown

    nan = {"perplexity": float("nan"), "blocks": [[float("nan"), 64]] * 3}
    cs = _checks({"perplexity": nan, "knowledge": _knowledge(np.zeros(30, bool))},
                 {"perplexity": _ppl(np.full(3, 2.7)), "knowledge": _knowledge(np.ones(30, bool))})
    assert cs["perplexity-ceiling"].passed is False and cs["perplexity-ceiling"].value is None
    assert cs["perplexity-ratio"].passed is False
    assert "n/a" in cs["perplexity-ceiling"].summary()
    v = Verdict("x", None, None, "compressed-tensors", "vllm-cpu", checks=[c.to_dict() for c in cs.values()])
    assert "| perplexity-ceiling | — |" in markdown(ValidationReport([v], "smoke", "now", "0"))


def test_suite_fingerprint_follows_measurements_not_thresholds():
    stricter = SUITE.model_copy(update={"perplexity": SUITE.perplexity.model_copy(update={"max_ratio": 1.2})})
    assert stricter.fingerprint() == SUITE.fingerprint()  # a cached baseline serves every threshold
    fewer = SUITE.model_copy(update={"knowledge": SUITE.knowledge.model_copy(update={"distractors": 1})})
    assert fewer.fingerprint() != SUITE.fingerprint()
