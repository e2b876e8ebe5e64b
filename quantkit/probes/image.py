"""The image probe for vision-language checkpoints: a small image shipped in `validate/images/` sent
through /v1/chat/completions as an image_url (data: URI). Measures, per probe, whether the engine
answered, its answer, and whether the engine survived the request; judging (no crash, a non-empty
answer, against the baseline) is `quantkit.judge`'s. The failure it is for: a vision tower stored or
declared in a way the engine cannot run - a crash on the first image request, or images silently
dropped (an empty answer) - while every text probe passes (sglang issue 24927)."""

from __future__ import annotations

import base64
import json
import mimetypes
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from quantkit.errors import EngineError

__all__ = ["ImageProbe", "ImageSpec", "is_vision_language", "data_uri", "run_images"]

# Weight-name parts of vision towers (as quantkit.families.vision keeps them BF16).
_TOWER_PARTS = ("visual.", "vision_tower.", "vision_model.", "vision_encoder.")


class ImageProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    image: str  # relative to the suite file's folder, e.g. images/red-square.png
    prompt: str
    max_tokens: int = Field(16, ge=1)
    expect_any: list[str] = []  # informational, as for text probes: a tiny or small model may not see it


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    why: str = ""
    probes: list[ImageProbe] = Field(min_length=1)


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


def _one(client, probe: ImageProbe, image: Path) -> dict:
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(image)}},
                                         {"type": "text", "text": probe.prompt}]}]
    t0 = time.perf_counter()
    out = {"id": probe.id, "image": probe.image, "prompt": probe.prompt, "text": "", "tokens": 0, "error": None}
    try:
        resp = client.chat(msgs, max_tokens=probe.max_tokens)
        out["text"] = resp["choices"][0]["message"]["content"] or ""
        out["tokens"] = (resp.get("usage") or {}).get("completion_tokens", 0)
    except EngineError as exc:
        out["error"] = exc.message[:300]
    if probe.expect_any:
        out["expected"] = any(w.lower() in out["text"].lower() for w in probe.expect_any)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def run_images(client, probes: list[ImageProbe], folder: Path, alive=lambda: True) -> list[dict]:
    """One greedy answer per image probe, one request at a time; stops at the first request after which
    the engine is gone (that probe is marked `crashed`; the rest are not sent)."""
    results = []
    for p in probes:
        r = _one(client, p, folder / p.image)
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
