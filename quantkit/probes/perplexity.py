"""Reference perplexity through the engine: score a bundled text with /v1/completions `echo`
+ `logprobs` (prompt logprobs). Catches fluent garbage that passes every string detector."""

from __future__ import annotations

import math

__all__ = ["chunks", "engine_perplexity"]


def chunks(text: str, max_words: int) -> list[str]:
    """Paragraph-aligned chunks of at most ~max_words words."""
    out, cur, n = [], [], 0
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        w = len(para.split())
        if cur and n + w > max_words:
            out.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(para)
        n += w
    if cur:
        out.append("\n\n".join(cur))
    return out


def engine_perplexity(client, text: str, max_tokens_per_request: int = 512) -> dict:
    """exp(mean negative log-likelihood) over every scored prompt token of every chunk."""
    nll, count = 0.0, 0
    # ~1.3 tokens per English word for common BPE vocabularies; keep headroom under the limit
    for chunk in chunks(text, max(32, int(max_tokens_per_request / 1.6))):
        resp = client.completion(chunk, max_tokens=1, echo=True, logprobs=0)
        choice = resp["choices"][0]
        n_prompt = resp.get("usage", {}).get("prompt_tokens")
        lps = choice["logprobs"]["token_logprobs"]
        scored = lps[1:n_prompt] if n_prompt else lps[1:-1]
        for lp in scored:
            if lp is None:
                continue
            nll -= lp
            count += 1
    ppl = math.exp(nll / count) if count else float("inf")
    return {"perplexity": round(ppl, 4), "tokens": count}
