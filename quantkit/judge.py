"""The decision rule: measurements of a candidate (and of its baseline, the BF16 source served by the
same engine) -> checks, each with its value, threshold, margin and reason -> a verdict.

Statistical checks are one-sided paired bootstrap tests over units that both models scored (items of
the knowledge bank, token blocks of the reference text). A check fails only when the bound at
confidence 1 - alpha is beyond its threshold, so an artefact whose true value sits exactly at a
threshold fails that check with probability at most alpha (the suite's stated error rate); every
check reports how far its decision statistic is from the threshold. Without a baseline only the
hard detectors and absolute ceilings apply, and the report says so."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Check", "judge_checks", "paired_bootstrap", "signed"]


def signed(x: float | None) -> str:
    """A margin for people: +0.31, -1.2, or "n/a" where the value could not be computed (NaN)."""
    return "n/a" if x is None else f"{x:+g}"


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:g}"


@dataclass
class Check:
    name: str
    passed: bool | None          # None: not checked (and why)
    value: float | None = None   # point estimate
    bound: float | None = None   # the statistic the decision uses (a confidence bound, or the value)
    threshold: float | None = None
    direction: str = "max"       # "max": value must stay <= threshold; "min": >= threshold
    interval: list[float] | None = None  # two-sided 1 - 2*alpha interval of the value
    baseline_value: float | None = None
    why: str = ""
    detail: str = ""

    @property
    def margin(self) -> float | None:
        """Signed distance of the decision statistic from the threshold, positive on the passing side."""
        if self.bound is None or self.threshold is None:
            return None
        d = self.threshold - self.bound if self.direction == "max" else self.bound - self.threshold
        return round(d, 4)

    def to_dict(self) -> dict:
        return {**asdict(self), "margin": self.margin}

    def summary(self) -> str:
        if self.passed is None:
            return f"{self.name}: not checked ({self.detail or self.why})"
        op = "<=" if self.direction == "max" else ">="
        stat = _g(self.value) if self.bound == self.value or self.bound is None else \
            f"{_g(self.value)} (bound {_g(self.bound)})"
        return f"{self.name}: {stat} must be {op} {_g(self.threshold)}; margin {signed(self.margin)}" + \
            (f" — {self.detail}" if self.detail else "")


def paired_bootstrap(stat, arrays: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """`stat(*resampled arrays)` over `resamples` resamples of the shared unit index (the same
    units for every array: the pairing)."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    return np.asarray(stat(*[a[idx] for a in arrays]))


def _q(x: np.ndarray, p: float) -> float:
    return float(np.quantile(x[np.isfinite(x)], p)) if np.isfinite(x).any() else float("nan")


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def _ppl_checks(spec, alpha, boot, cand, base) -> list[Check]:
    out = []
    ppl = cand.get("perplexity")
    if ppl is None:
        return out
    out.append(Check("perplexity-ceiling", ppl["perplexity"] <= spec.max_perplexity, _r(ppl["perplexity"]),
                     _r(ppl["perplexity"]), spec.max_perplexity, "max", why=spec.why_max_perplexity))
    bp = (base or {}).get("perplexity")
    if bp is None:
        out.append(Check("perplexity-ratio", None, why=spec.why_max_ratio, detail="no baseline"))
        return out
    ratio = ppl["perplexity"] / bp["perplexity"]
    lo = hi = bound = ratio
    cb, bb = ppl.get("blocks"), bp.get("blocks")
    paired = cb and bb and [n for _, n in cb] == [n for _, n in bb]
    if paired:
        c, b = np.array([s for s, _ in cb]), np.array([s for s, _ in bb])
        n = np.array([k for _, k in cb], dtype=float)
        dist = paired_bootstrap(lambda c_, b_, n_: np.exp((c_ - b_).sum(1) / n_.sum(1)), [c, b, n], *boot)
        lo, hi, bound = _q(dist, alpha), _q(dist, 1 - alpha), _q(dist, alpha)
    out.append(Check("perplexity-ratio", bound <= spec.max_ratio, _r(ratio), _r(bound), spec.max_ratio, "max",
                     [_r(lo), _r(hi)], _r(bp["perplexity"]), spec.why_max_ratio,
                     f"{ppl['perplexity']:.2f} vs baseline {bp['perplexity']:.2f}"
                     + ("" if paired else "; token blocks differ from the baseline's, no interval")))
    return out


def _knowledge_checks(spec, alpha, boot, cand, base) -> list[Check]:
    k = cand.get("knowledge")
    if k is None:
        return []
    chance = k["chance"]
    m = np.array([i["answer_logprob"] - i["best_distractor_logprob"] for i in k["items"]])
    right = (m > 0).astype(float)
    acc = float(right.mean())
    dist = paired_bootstrap(lambda r: r.mean(1), [right], *boot)
    out = [Check("knowledge-above-chance", _q(dist, 1 - alpha) - chance >= spec.min_above_chance,
                 _r(acc - chance), _r(_q(dist, 1 - alpha) - chance), spec.min_above_chance, "min",
                 [_r(_q(dist, alpha) - chance), _r(_q(dist, 1 - alpha) - chance)], why=spec.why_min_above_chance,
                 detail=f"accuracy {acc:.3f} on {len(m)} items, chance {chance:g}")]
    bk = (base or {}).get("knowledge")
    if bk is None:
        out.append(Check("knowledge-retained", None, why=spec.why_min_retained, detail="no baseline"))
        return out
    by_id = {i["id"]: i for i in bk["items"]}
    if [i["id"] for i in k["items"]] != list(by_id):
        out.append(Check("knowledge-retained", None, why=spec.why_min_retained, detail="baseline scored another bank"))
        return out
    mb = np.array([i["answer_logprob"] - i["best_distractor_logprob"] for i in bk["items"]])
    rb = (mb > 0).astype(float)
    acc_b = float(rb.mean())
    if acc_b - chance < 0.1:
        out.append(Check("knowledge-retained", None, why=spec.why_min_retained,
                         detail=f"the baseline itself is near chance ({acc_b:.3f}): the bank is too hard for it"))
        return out

    def retained(rc, rb_):
        return (rc.mean(1) - chance) / np.maximum(rb_.mean(1) - chance, 1e-9)

    dist = paired_bootstrap(retained, [right, rb], *boot)
    value = (acc - chance) / (acc_b - chance)
    bound = _q(dist, 1 - alpha)
    dm = paired_bootstrap(lambda a, b: (a - b).mean(1), [m, mb], *boot)
    out.append(Check("knowledge-retained", bound >= spec.min_retained, _r(value), _r(bound), spec.min_retained,
                     "min", [_r(_q(dist, alpha)), _r(bound)], _r(acc_b), spec.why_min_retained,
                     f"accuracy {acc:.3f} vs baseline {acc_b:.3f}; mean log-prob margin {m.mean():+.3f} vs "
                     f"{mb.mean():+.3f} nats (change {float((m - mb).mean()):+.3f}, interval "
                     f"{_q(dm, alpha):+.3f}..{_q(dm, 1 - alpha):+.3f}); {int(((m > 0) & (mb <= 0)).sum())} items "
                     f"gained, {int(((m <= 0) & (mb > 0)).sum())} lost"))
    return out


def _long_checks(spec, cand, base) -> list[Check]:
    long = cand.get("long")
    if not long:
        return []
    bl = {g["id"]: g for g in (base or {}).get("long", [])}
    if not bl:
        return [Check("long-repetition", None, why=spec.why_max_repetition_increase, detail="no baseline"),
                Check("long-surprise", None, why=spec.why_max_surprise_increase, detail="no baseline")]
    rises = [g["repetition"] - bl[g["id"]]["repetition"] for g in long if g["id"] in bl]
    mean = sum(rises) / len(rises)
    out = [Check("long-repetition", mean <= spec.max_repetition_increase, _r(mean), _r(mean),
                 spec.max_repetition_increase, "max", why=spec.why_max_repetition_increase,
                 detail="rise in repeated word 4-grams over the baseline's, per prompt: "
                        + ", ".join(f"{x:+.2f}" for x in rises))]
    diffs = []
    for g in long:
        b = bl.get(g["id"])
        s_c, s_b = g.get("baseline_nll"), (b or {}).get("baseline_nll")
        if s_b is None:
            continue
        diffs.append(math.inf if s_c is None else s_c - s_b)
    if diffs:
        v = sum(diffs) / len(diffs)
        out.append(Check("long-surprise", v <= spec.max_surprise_increase, _r(v) if math.isfinite(v) else None,
                         _r(v) if math.isfinite(v) else math.inf, spec.max_surprise_increase, "max",
                         why=spec.why_max_surprise_increase,
                         detail="baseline's nll/token of the candidate's text minus of its own: "
                                + ", ".join(f"{x:+.2f}" for x in diffs)))
    return out


def _structured_checks(spec, cand, base) -> list[Check]:
    """Of the instruction / tool-call probes the baseline answers right, the fraction the candidate
    still answers right."""
    got = cand.get("structured")
    if not got:
        return []
    mine = {r["id"]: r for r in got}
    theirs = {r["id"]: r for r in (base or {}).get("structured") or []}
    if not theirs:
        return [Check("structured-retained", None, why=spec.why_min_retained,
                      detail=f"no baseline; {sum(r['passed'] for r in got)} of {len(got)} probes answered right")]
    informative = [i for i, r in theirs.items() if r["passed"] and i in mine]
    if not informative:
        return [Check("structured-retained", None, why=spec.why_min_retained,
                      detail="the baseline answers none of these probes right: not informative for this model")]
    lost = [i for i in informative if not mine[i]["passed"]]
    gained = [i for i, r in mine.items() if r["passed"] and not theirs.get(i, {}).get("passed")]
    value = round(1 - len(lost) / len(informative), 4)
    why_lost = "; ".join(f"{i}: {mine[i]['why']}" for i in lost[:3])
    return [Check("structured-retained", value >= spec.min_retained, value, value, spec.min_retained, "min",
                  baseline_value=len(informative), why=spec.why_min_retained,
                  detail=f"the baseline answers {len(informative)} of {len(theirs)} right; lost {len(lost)}"
                         + (f" ({why_lost[:300]})" if lost else "") + (f"; gained {len(gained)}" if gained else ""))]


def _image_problem(r: dict, b: dict | None) -> str | None:
    """Why one image answer fails (None: it does not), given the baseline's answer to it if any."""
    if r.get("crashed"):
        return f"{r['id']}: the engine died on the image request ({r.get('error') or 'no answer'})"
    if r.get("error"):
        return f"{r['id']}: the request failed: {r['error']}"
    if b is not None and (b.get("error") or not b.get("text")):
        return None  # the baseline gives nothing either: not informative for this probe
    if not r.get("text") or not r.get("tokens"):
        return f"{r['id']}: empty answer"
    if not r["text"].strip() and b is not None and b["text"].strip():
        return f"{r['id']}: blank answer where the baseline answers {b['text'].strip()[:40]!r}"
    return None


def _image_checks(spec, cand, base) -> list[Check]:
    """The image probe of a vision-language checkpoint: no crash, a non-empty answer, against the baseline."""
    got = cand.get("images")
    if not got:
        return []
    if got.get("not_checked"):
        return [Check("image-probe", None, why=spec.why, detail=f"not checked: {got['not_checked']}")]
    theirs = {r["id"]: r for r in ((base or {}).get("images") or {}).get("results") or []}
    if theirs and all(r.get("error") or r.get("crashed") for r in theirs.values()):
        return [Check("image-probe", None, why=spec.why,
                      detail="not checked: the baseline fails the image request too (the engine cannot run this "
                             f"model's images): {next(iter(theirs.values())).get('error')}")]
    problems = [p for r in got["results"] if (p := _image_problem(r, theirs.get(r["id"]) if theirs else None))]
    sent = len(got["results"])
    detail = "; ".join(problems) or f"{sent} image request(s) answered: " + ", ".join(
        repr(r["text"].strip()[:30]) for r in got["results"])
    if not theirs:
        detail += "; no baseline: absolute rules only (no crash, not empty)"
    return [Check("image-probe", not problems, len(problems), len(problems), 0, "max", why=spec.why, detail=detail),
            *_image_sensitivity(spec, got["results"], theirs)]


def _image_sensitivity(spec, results: list[dict], theirs: dict) -> list[Check]:
    """Does the answer still depend on the image? Per probe with a contrast image, the movement of the
    first answer token's distribution between the two images (total variation of the top
    log-probabilities); the check takes the candidate's mean movement over those probes as a fraction
    of the baseline's mean on the same probes (one probe alone is a single draw: a random tiny model's
    answer can ignore one image pair by chance). Without a baseline: the mean itself, against
    `min_sensitivity`."""
    paired = {p.id for p in spec.probes if p.contrast}
    if not paired:
        return []
    probes = [r for r in results if r["id"] in paired]
    why = spec.why_min_sensitivity_retained
    if len(probes) < len(paired) or any(r.get("error") or r.get("crashed") for r in probes):
        return [Check("image-sensitivity", None, why=why, detail="not checked: an image request failed (image-probe)")]
    if any(r.get("sensitivity") is None for r in probes):
        return [Check("image-sensitivity", None, why=why,
                      detail="not checked: the engine returned no top log-probabilities for the answer")]
    each = ", ".join(f"{r['id']} {r['sensitivity']:.4f}" for r in probes)
    mine = round(statistics.fmean(r["sensitivity"] for r in probes), 6)
    if not theirs:
        return [Check("image-sensitivity", mine >= spec.min_sensitivity, mine, mine, spec.min_sensitivity, "min",
                      why=why, detail=f"the answer moves {mine:.4f} between each image and its contrast ({each}); "
                                      "no baseline: against the absolute floor")]
    base = [theirs.get(r["id"], {}).get("sensitivity") for r in probes]
    if any(b is None for b in base):
        return [Check("image-sensitivity", None, why=why,
                      detail="not checked: the baseline has no movement to compare")]
    ref = round(statistics.fmean(base), 6)
    if ref < spec.min_sensitivity:
        return [Check("image-sensitivity", None, why=why,
                      detail=f"not checked: the baseline's answer moves {ref:.4f} (< {spec.min_sensitivity}) between "
                             "the images: it does not depend on the image")]
    v = round(mine / ref, 4)
    detail = f"the answer moves {mine:.4f} between each image and its contrast ({each}), the baseline's {ref:.4f}: " \
             f"{v:.2f} of it kept"
    if mine == 0:
        detail += " (the answer does not depend on the image: images are dropped on the way to the model)"
    return [Check("image-sensitivity", v >= spec.min_sensitivity_retained, v, v, spec.min_sensitivity_retained, "min",
                  baseline_value=ref, why=why, detail=detail)]


def judge_checks(suite, cand: dict, base: dict | None) -> list[Check]:
    """Every check of `suite` for the measurements `cand` (against `base`, or alone)."""
    boot = (suite.bootstrap.resamples, suite.bootstrap.seed)
    checks: list[Check] = []
    if suite.perplexity:
        checks += _ppl_checks(suite.perplexity, suite.alpha, boot, cand, base)
    if suite.knowledge:
        checks += _knowledge_checks(suite.knowledge, suite.alpha, boot, cand, base)
    if suite.long_generation:
        checks += _long_checks(suite.long_generation, cand, base)
    if suite.structured:
        checks += _structured_checks(suite.structured, cand, base)
    if suite.images:
        checks += _image_checks(suite.images, cand, base)
    if suite.mtp:
        checks += _mtp_checks(suite.mtp, cand, base)
    return checks


def _mtp_checks(spec, cand, base) -> list[Check]:
    """The MTP drafter's acceptance rate in the engine's speculative decoding, against the baseline's."""
    got = cand.get("mtp")
    b = (base or {}).get("mtp")
    if not got:  # the candidate has no MTP weights: a loss only if the baseline had them
        if b and b.get("acceptance_rate") is not None:
            return [Check("mtp-acceptance", False, 0.0, 0.0, spec.min_retained, "min", why=spec.why_min_retained,
                          detail="the baseline carries MTP weights, this checkpoint none: the drafter was lost")]
        return []
    if got.get("not_checked"):
        return [Check("mtp-acceptance", None, why=spec.why_min_retained, detail=f"not checked: {got['not_checked']}")]
    if b is None:
        rate = got.get("acceptance_rate")
        return [Check("mtp-acceptance", None, rate, why=spec.why_min_retained,
                      detail=f"not checked: no baseline (acceptance {rate}; {got.get('error') or 'served'})")]
    if b.get("error") or not b.get("acceptance_rate"):
        return [Check("mtp-acceptance", None, got.get("acceptance_rate"), why=spec.why_min_retained,
                      detail="not checked: the baseline's drafter gives nothing to compare: "
                             f"{b.get('error') or 'acceptance 0'}")]
    if got.get("error"):
        return [Check("mtp-acceptance", False, 0.0, 0.0, spec.min_retained, "min", baseline_value=b["acceptance_rate"],
                      why=spec.why_min_retained,
                      detail=f"the baseline serves its drafter, this checkpoint's fails: {got['error']}")]
    ratio = got["acceptance_rate"] / b["acceptance_rate"]
    return [Check("mtp-acceptance", ratio >= spec.min_retained, round(ratio, 4), round(ratio, 4), spec.min_retained,
                  "min", baseline_value=b["acceptance_rate"], why=spec.why_min_retained,
                  detail=f"acceptance {got['acceptance_rate']:.3f} ({got['accepted_tokens']}/{got['draft_tokens']} draft "
                         f"tokens) vs baseline {b['acceptance_rate']:.3f}: retained {ratio:.2f}")]
