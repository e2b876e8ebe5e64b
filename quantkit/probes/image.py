"""The image probe for vision-language checkpoints: a small image shipped in `validate/images/` sent
through /v1/chat/completions as an image_url (data: URI). Measures, per probe, whether the engine
answered, its answer, whether the engine survived the request, and - where the probe names a
`contrast` image - how far the first answer token's distribution moves between the two images (total
variation over the engine's top log-probabilities). Judging (no crash, a non-empty answer, an answer
that still depends on the image, against the baseline) is `quantkit.judge`'s.

The failures it is for, while every text probe passes (sglang issue 24927): a vision tower stored or
declared in a way the engine cannot run (a crash on the first image request, NaN on the image path),
and images silently dropped: the answer no longer depends on the image, e.g. a tower quantized to FP4
from text-only calibration, whose activation scales were never calibrated."""

from __future__ import annotations

import base64
import json
import math
import mimetypes
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from quantkit.errors import EngineError

__all__ = ["ImageProbe", "ImageSpec", "is_vision_language", "data_uri", "run_images", "first_token_distribution",
           "total_variation", "TOP_LOGPROBS"]

# Weight-name parts of vision towers (as quantkit.families.vision keeps them BF16).
_TOWER_PARTS = ("visual.", "vision_tower.", "vision_model.", "vision_encoder.")
# The OpenAI API's largest top_logprobs (and vLLM's default max_logprobs): the distribution compared
# between two images is the first answer token's top 20.
TOP_LOGPROBS = 20
# vLLM's answer when the log-probabilities it must return are NaN or infinite (json.dumps refuses them).
_NON_FINITE = "Out of range float values are not JSON compliant"


class ImageProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    image: str  # relative to the suite file's folder, e.g. images/red-square.png
    prompt: str
    max_tokens: int = Field(16, ge=1)
    expect_any: list[str] = []  # informational, as for text probes: a tiny or small model may not see it
    contrast: str | None = None  # a second image for the same prompt: the answer must move between the two


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    why: str = ""
    # image sensitivity: how far the candidate's answer moves between image and contrast, as a fraction
    # of how far the baseline's moves
    min_sensitivity_retained: float = Field(0.25, gt=0, le=1)
    why_min_sensitivity_retained: str = ""
    # below this movement (total variation) an answer does not depend on the image: a baseline below it
    # is not informative; without a baseline, the candidate must reach it
    min_sensitivity: float = Field(0.02, gt=0, lt=1)
    probes: list[ImageProbe] = Field(min_length=1)

    def files(self) -> list[str]:
        return [f for p in self.probes for f in (p.image, p.contrast) if f]


def _weight_names(path: Path) -> list[str]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    names: list[str] = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "np") as h:
            names += list(h.keys())
    return names


def is_vision_language(path: Path | None) -> bool | None:
    """Whether a checkpoint takes images: config.json has a vision_config, or its weights hold a vision
    tower. None where unknown (no local checkpoint: an endpoint)."""
    if path is None or not (path / "config.json").is_file():
        return None
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("vision_config") or (cfg.get("thinker_config") or {}).get("vision_config"):
        return True
    return any(any(p in n for p in _TOWER_PARTS) for n in _weight_names(path))


def data_uri(image: Path) -> str:
    mime = mimetypes.guess_type(image.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(image.read_bytes()).decode()


def first_token_distribution(resp: dict) -> dict[str, float] | None:
    """The first answer token's top log-probabilities as probabilities, summed per token text (two ids
    that decode alike count as one: the same coarsening for both images). None: the engine sent none."""
    content = (resp["choices"][0].get("logprobs") or {}).get("content") or []
    if not content or not content[0].get("top_logprobs"):
        return None
    dist: dict[str, float] = {}
    for d in content[0]["top_logprobs"]:
        dist[d["token"]] = dist.get(d["token"], 0.0) + math.exp(d["logprob"])
    return dist


def total_variation(a: dict[str, float], b: dict[str, float]) -> float:
    """Total variation between two top-k distributions (a token missing from one counts 0 there):
    0 when the answer does not move at all, 1 when the two share nothing."""
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def _ask(client, image: Path, prompt: str, max_tokens: int) -> tuple[str, int, dict[str, float] | None]:
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(image)}},
                                         {"type": "text", "text": prompt}]}]
    resp = client.chat(msgs, max_tokens=max_tokens, logprobs=True, top_logprobs=TOP_LOGPROBS)
    text = resp["choices"][0]["message"]["content"] or ""
    return text, (resp.get("usage") or {}).get("completion_tokens", 0), first_token_distribution(resp)


def _error(exc: EngineError) -> str:
    if _NON_FINITE in exc.message:
        return ("the engine computed non-finite (NaN/inf) log-probabilities for the answer: NaN on the "
                f"image path ({exc.message[:160]})")
    return exc.message[:300]


def _one(client, probe: ImageProbe, folder: Path) -> dict:
    t0 = time.perf_counter()
    out = {"id": probe.id, "image": probe.image, "prompt": probe.prompt, "text": "", "tokens": 0, "error": None}
    dist = None
    try:
        out["text"], out["tokens"], dist = _ask(client, folder / probe.image, probe.prompt, probe.max_tokens)
    except EngineError as exc:
        out["error"] = _error(exc)
    if probe.expect_any:
        out["expected"] = any(w.lower() in out["text"].lower() for w in probe.expect_any)
    if probe.contrast and out["error"] is None:
        out["contrast"] = probe.contrast
        try:
            out["contrast_text"], _, other = _ask(client, folder / probe.contrast, probe.prompt, probe.max_tokens)
            if dist is not None and other is not None:
                out["sensitivity"] = round(total_variation(dist, other), 6)
        except EngineError as exc:
            out["error"] = f"on the contrast image {probe.contrast}: {_error(exc)}"
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def run_images(client, probes: list[ImageProbe], folder: Path, alive=lambda: True) -> list[dict]:
    """One greedy answer per image probe (and one for its contrast image), one request at a time; stops
    at the first probe after which the engine is gone (marked `crashed`; the rest are not sent)."""
    results = []
    for p in probes:
        r = _one(client, p, folder)
        r["crashed"] = not alive()
        results.append(r)
        if r["crashed"]:
            break
    return results


def measure_images(client, spec: ImageSpec, path: Path | None, folder: Path, profile, alive=lambda: True) -> dict | None:
    """{"results": [...]} for a vision-language checkpoint, {"not_checked": why} where it cannot be
    sent (the engine profile's `cannot.images`, or no local checkpoint to tell), None: text-only."""
    vl = is_vision_language(path)
    if vl is False:
        return None
    if vl is None:
        return {"not_checked": "no local checkpoint: whether it takes images is unknown"}
    if reason := profile.cannot.get("images"):
        return {"not_checked": reason}
    return {"results": run_images(client, spec.probes, folder, alive)}
