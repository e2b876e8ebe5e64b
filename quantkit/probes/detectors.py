"""Detectors: small pure functions over one generated text. Each returns None when the text
is fine, or a short reason string. They encode what broken NVFP4 artefacts look like when
served: blank output (GDN quantized), '!!!!!' (NaN logits decode to token 0), repetition
loops, replacement characters / control bytes, text in the wrong script, nothing at all."""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

__all__ = ["blank", "punctuation_run", "repetition_loop", "bad_characters", "wrong_script", "too_short",
           "expected_answer", "HARD_DETECTORS", "run_detectors"]

_PUNCT_RUN = re.compile(r"([!?.,;:#*=~_\-])\1{4,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def blank(text: str) -> str | None:
    return "blank or whitespace-only output" if not text.strip() else None


def punctuation_run(text: str) -> str | None:
    m = _PUNCT_RUN.search(text)
    if m is None:
        return None
    if m.group(1) in ".-_=*~#" and len(m.group(0)) < 8:  # '.....' or '-----' can be formatting
        return None
    return f"run of {len(m.group(0))} x {m.group(1)!r} (NaN logits decode to token 0, '!' in many tokenizers)"


def repetition_loop(text: str, n: int = 3, threshold: float = 0.5, min_words: int = 12) -> str | None:
    """Fraction of repeated word n-grams; a loop repeats the same few n-grams over and over."""
    words = text.split()
    if len(words) < min_words:
        return None
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    repeated = 1 - len(set(grams)) / len(grams)
    if repeated > threshold:
        return f"repetition loop ({repeated:.0%} of {n}-grams repeated)"
    return None


def bad_characters(text: str) -> str | None:
    bad = text.count("\ufffd") + len(_CONTROL.findall(text))
    return f"{bad} replacement/control characters" if bad else None


def wrong_script(text: str, threshold: float = 0.3) -> str | None:
    """Letters outside Latin script in answers to English prompts."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 8:
        return None
    foreign = sum(1 for c in letters if not unicodedata.name(c, "").startswith("LATIN"))
    frac = foreign / len(letters)
    return f"{frac:.0%} of letters are not Latin script" if frac > threshold else None


def too_short(text: str, min_chars: int = 2) -> str | None:
    n = len(text.strip())
    return f"only {n} non-space characters" if 0 < n < min_chars else None


def expected_answer(text: str, expect_any: list[str]) -> str | None:
    low = text.lower()
    if any(e.lower() in low for e in expect_any):
        return None
    return f"none of {expect_any} in the answer"


HARD_DETECTORS: dict[str, Callable[[str], str | None]] = {
    "blank": blank,
    "punctuation_run": punctuation_run,
    "repetition_loop": repetition_loop,
    "bad_characters": bad_characters,
    "wrong_script": wrong_script,
    "too_short": too_short,
}


def run_detectors(text: str) -> dict[str, str]:
    """{detector: reason} for every hard detector that fired."""
    out = {}
    for name, fn in HARD_DETECTORS.items():
        reason = fn(text)
        if reason:
            out[name] = reason
    return out
