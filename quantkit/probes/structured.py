"""Instruction and tool-call probes: chat requests whose answer must be JSON that validates against
a schema and carries the expected values, judged against the baseline (llm-compressor PR 3025:
W4A4 lost 10 IFEval points on a 7B while perplexity looked fine).

Two kinds, both sent through the engine's structured-output path (`response_format: json_schema`),
so the answer always has the right shape when the engine works and the probe measures whether the
model still fills it with the right content:
- `json`: a schema and a request to fill it (extract a person, name a capital);
- `tool`: tool definitions (OpenAI function specs) in the system message and a request; the
  answer is the tool call `{"name": ..., "arguments": {...}}`, constrained to one of the tools.
  (vLLM 0.32's own `tools=` / named `tool_choice` path needs a model-specific `--tool-call-parser`
  and, on the CPU build, returned bare strings as arguments for a model without a tool template;
  the envelope measures the model's tool use the same way on every engine.)

`expect` maps dotted paths of the answer to values: strings must appear in the answer's string
(case-insensitive), numbers must be equal, lists name alternatives.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantkit.errors import EngineError

__all__ = ["StructuredProbe", "StructuredSpec", "run_structured", "request_body", "check_answer"]


class StructuredProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    kind: str = Field(pattern="^(json|tool)$")
    messages: list[dict] = Field(min_length=1)
    json_schema: dict | None = Field(None, alias="schema")
    tools: list[dict] | None = None
    expect: dict[str, Any] = {}
    max_tokens: int = Field(96, ge=8)

    @model_validator(mode="after")
    def _shape(self):
        if self.kind == "json" and not self.json_schema:
            raise ValueError(f"probe {self.id}: kind json needs a schema")
        if self.kind == "tool" and not self.tools:
            raise ValueError(f"probe {self.id}: kind tool needs tools")
        return self


class StructuredSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_retained: float = Field(0.4, ge=0, le=1)  # of the probes the baseline answers right
    why_min_retained: str = ""
    probes: list[StructuredProbe] = Field(min_length=1)


def _envelope(tools: list[dict]) -> dict:
    return {"anyOf": [{"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
                       "required": ["name", "arguments"], "additionalProperties": False} for t in tools]}


def schema_of(p: StructuredProbe) -> dict:
    return p.json_schema if p.kind == "json" else _envelope(p.tools)


def request_body(p: StructuredProbe) -> dict:
    messages = list(p.messages)
    if p.kind == "tool":
        system = ("You can call these tools. Answer with one JSON object {\"name\": <tool name>, \"arguments\": "
                  "{...}}.\nTools:\n" + json.dumps(p.tools))
        messages = [{"role": "system", "content": system}] + messages
    return {"messages": messages, "max_tokens": p.max_tokens,
            "response_format": {"type": "json_schema", "json_schema": {"name": p.id.replace("-", "_"),
                                                                       "schema": schema_of(p)}}}


def _at(obj: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            raise KeyError(path)
        obj = obj[key]
    return obj


def _matches(got: Any, want: Any) -> bool:
    if isinstance(want, list):
        return any(_matches(got, w) for w in want)
    if isinstance(want, str):
        return isinstance(got, str) and want.lower() in got.lower()
    if isinstance(want, bool) or want is None:
        return got is want
    return isinstance(got, (int, float)) and not isinstance(got, bool) and float(got) == float(want)


def check_answer(p: StructuredProbe, text: str) -> tuple[bool, str | None]:
    """(passed, why not): parses as JSON, validates against the probe's schema, has the expected values."""
    import jsonschema

    try:
        data = json.loads(text)
    except (ValueError, TypeError) as exc:
        return False, f"not JSON ({exc.__class__.__name__}): {text[:80]!r}"
    try:
        jsonschema.validate(data, schema_of(p))
    except jsonschema.ValidationError as exc:
        return False, f"does not validate: {exc.message[:120]}"
    for path, want in p.expect.items():
        try:
            got = _at(data, path)
        except KeyError:
            return False, f"no {path}"
        if not _matches(got, want):
            return False, f"{path} = {got!r}, expected {want!r}"
    return True, None


def run_structured(client, probes: list[StructuredProbe], progress=None) -> list[dict]:
    """Each probe's greedy answer and whether it passed, one request at a time."""
    out = []
    for i, p in enumerate(probes):
        t0 = time.perf_counter()
        try:
            body = request_body(p)
            resp = client.chat(body.pop("messages"), max_tokens=body.pop("max_tokens"), **body)
            text = resp["choices"][0]["message"]["content"] or ""
            ok, why = check_answer(p, text)
        except EngineError as exc:
            text, ok, why = "", False, f"request failed: {exc.message[:160]}"
        out.append({"id": p.id, "kind": p.kind, "text": text, "passed": ok, "why": why,
                    "seconds": round(time.perf_counter() - t0, 3)})
        if progress:
            progress(i + 1, len(probes))
    return out
