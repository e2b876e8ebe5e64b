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


def engine_perplexity(client, text: str, max_tokens_per_request: int = 512, block_tokens: int = 64) -> dict:
    """exp(mean negative log-likelihood) over every scored prompt token of every chunk, plus the
    per-block sums [nll, tokens] (blocks of `block_tokens` within each chunk) that the judge pairs
    with the baseline's for its bootstrap."""
    nll, count, blocks = 0.0, 0, []

    def one(chunk):
        resp = client.completion(chunk, max_tokens=0, echo=True, logprobs=0)
        return [lp for lp in resp["choices"][0]["logprobs"]["token_logprobs"][1:] if lp is not None]

    # ~1.3 tokens per English word for common BPE vocabularies; keep headroom under the limit
    parts = chunks(text, max(32, int(max_tokens_per_request / 1.6)))
    for scored in map(one, parts):
        for start in range(0, len(scored), block_tokens):
            block = scored[start:start + block_tokens]
            blocks.append([round(-sum(block), 5), len(block)])
        nll -= sum(scored)
        count += len(scored)
    ppl = math.exp(nll / count) if count else float("inf")
    return {"perplexity": round(ppl, 4), "tokens": count, "blocks": blocks}
