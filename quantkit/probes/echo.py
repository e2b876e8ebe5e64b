"""Teacher forcing through an OpenAI-compatible engine: the log-probability of a continuation
given a context, read from /v1/completions with `echo: true`, `logprobs: 0`, `max_tokens: 0` (the
prompt's own token log-probabilities, nothing generated), many prompts per request."""

from __future__ import annotations

from quantkit.errors import EngineError

__all__ = ["continuation_logprobs", "score_continuations"]


def continuation_logprobs(logprobs: dict, context_chars: int) -> list[float]:
    """Log-probabilities of the echoed tokens that start at or after `context_chars` (a token that
    straddles the boundary belongs to the continuation)."""
    offsets, lps = logprobs["text_offset"], logprobs["token_logprobs"]
    out = []
    for i, lp in enumerate(lps):
        nxt = offsets[i + 1] if i + 1 < len(offsets) else None
        if nxt is not None and nxt <= context_chars:
            continue  # wholly inside the context
        if lp is None:
            raise EngineError("the engine returned no log-probability for a scored token",
                              hint="the engine must support echo + logprobs on /v1/completions")
        out.append(lp)
    return out


def score_continuations(client, pairs: list[tuple[str, str]], batch: int = 64, progress=None) -> list[list[float]]:
    """Per (context, continuation): the continuation's token log-probabilities. `batch` prompts per
    request (the engine batches them), one request at a time; `progress(done, total)` after each."""
    chunks = [pairs[i:i + batch] for i in range(0, len(pairs), batch)]
    done = [0]

    def one(chunk):
        resp = client.completion([c + t for c, t in chunk], max_tokens=0, echo=True, logprobs=0)
        choices = sorted(resp["choices"], key=lambda c: c["index"])
        if len(choices) != len(chunk):
            raise EngineError(f"asked for {len(chunk)} scores, the engine answered {len(choices)}")
        res = [continuation_logprobs(ch["logprobs"], len(ctx)) for (ctx, _), ch in zip(chunk, choices)]
        done[0] += len(chunk)
        if progress:
            progress(done[0], len(pairs))
        return res

    return [lp for res in map(one, chunks) for lp in res]
