"""A minimal OpenAI-compatible HTTP client (stdlib only): health, models, completions, chat."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from quantkit.errors import EngineError

__all__ = ["Client"]


class Client:
    def __init__(self, base_url: str, model: str | None = None, timeout: float = 300.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise EngineError(f"{method} {path} -> HTTP {exc.code}: {detail}",
                              hint="see the engine log in the report") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise EngineError(f"{method} {path} failed: {exc}", hint="is the engine still running? see its log") from exc
        return json.loads(raw) if raw else None

    def healthy(self) -> bool:
        try:
            req = urllib.request.Request(self.base_url + "/health")
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200
        except Exception:
            return False

    def served_model(self) -> str:
        if self.model:
            return self.model
        data = self._request("GET", "/v1/models")
        self.model = data["data"][0]["id"]
        return self.model

    def completion(self, prompt: str, max_tokens: int = 32, **extra) -> dict:
        body = {"model": self.served_model(), "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
        return self._request("POST", "/v1/completions", body)

    def chat(self, messages: list[dict], max_tokens: int = 64, **extra) -> dict:
        body = {"model": self.served_model(), "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}
        return self._request("POST", "/v1/chat/completions", body)
