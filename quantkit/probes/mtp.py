"""MTP as a drafter: a checkpoint that carries multi-token-prediction weights is served a second time
with vLLM's speculative decoding drafting from them (`--speculative-config {"method": "mtp"}`), a few
greedy generations run, and the drafter's acceptance rate is read from the engine's Prometheus
/metrics (accepted draft tokens / draft tokens). Judged against the BF16 baseline served the same
way (`quantkit.judge`): MTP weights lost or broken by quantization collapse acceptance (vLLM PR 35548:
1.8% instead of 80%) while every other measurement looks fine."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from quantkit.errors import EngineError

__all__ = ["MtpSpec", "has_mtp", "speculative_args", "acceptance", "measure_mtp"]

_COUNTER = re.compile(r"^vllm:spec_decode_num_(draft_tokens|accepted_tokens|drafts)_total\{[^}]*\}\s+([0-9.eE+-]+)",
                      re.M)


class MtpSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1)
    max_tokens: int = Field(64, ge=8)
    num_speculative_tokens: int = Field(1, ge=1)
    min_retained: float = Field(0.7, gt=0, le=1)  # candidate acceptance / baseline acceptance
    why_min_retained: str = ""


def has_mtp(path: Path | None) -> bool | None:
    """Whether the checkpoint stores MTP tensors (names `quantkit.families.is_mtp` covers: `mtp.*`,
    `model.mtp_layers.*`, `*nextn*`); None without a local checkpoint."""
    if path is None or not (path / "config.json").is_file():
        return None
    from quantkit.families.mtp import is_mtp
    from quantkit.probes.image import _weight_names

    return any(is_mtp(n) for n in _weight_names(path))


def speculative_args(spec: MtpSpec) -> tuple[str, ...]:
    return ("--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": spec.num_speculative_tokens}))


def acceptance(metrics: str) -> dict[str, float]:
    """The speculative-decoding counters of a /metrics text (summed over engines)."""
    out: dict[str, float] = {}
    for name, value in _COUNTER.findall(metrics):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def _metrics(client) -> dict[str, float]:
    with urllib.request.urlopen(client.base_url + "/metrics", timeout=30) as resp:
        return acceptance(resp.read().decode(errors="replace"))


def _generate(client, spec: MtpSpec) -> dict:
    before = _metrics(client)
    t0 = time.perf_counter()
    texts = [client.completion(p, max_tokens=spec.max_tokens)["choices"][0]["text"] for p in spec.prompts]
    after = _metrics(client)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("draft_tokens", "accepted_tokens", "drafts")}
    if not d["draft_tokens"]:
        raise EngineError("the engine reported no draft tokens: speculative decoding did not run",
                          hint="see the engine log")
    return {"acceptance_rate": round(d["accepted_tokens"] / d["draft_tokens"], 4), "draft_tokens": int(d["draft_tokens"]),
            "accepted_tokens": int(d["accepted_tokens"]), "texts": texts, "seconds": round(time.perf_counter() - t0, 2)}


def measure_mtp(path: Path | None, serve, spec: MtpSpec, log: Path) -> dict | None:
    """{"acceptance_rate", ...}, {"error": why} where the engine could not serve the drafter, {"not_checked":
    why} where this engine profile cannot (validate/engines.yaml `cannot.mtp_drafter`), None: no MTP weights."""
    from quantkit.measure import SERVED_NAME, _root_cause

    if not has_mtp(path):
        return None
    if reason := serve.profile.cannot.get("mtp_drafter"):
        return {"not_checked": reason}
    server = dataclasses.replace(serve, extra_args=serve.extra_args + speculative_args(spec)).server(
        path, _format(path), log)
    t0 = time.perf_counter()
    try:
        with server as client:
            client.model = SERVED_NAME
            out = _generate(client, spec)
    except EngineError as exc:
        return {"error": _root_cause(exc.message, log), "log_path": str(log)}
    return {**out, "boot_and_run_seconds": round(time.perf_counter() - t0, 2), "log_path": str(log),
            "num_speculative_tokens": spec.num_speculative_tokens}


def _format(path: Path) -> str:
    from quantkit.checkpoint.formats import format_of

    return format_of(path)
