"""Long greedy generations: NVFP4 checkpoints can answer short prompts well and degenerate after
30-100 tokens (vLLM issues 47241, 31856). A few 256-512-token greedy continuations are measured by
how much they repeat themselves (word n-gram repetition) and by how surprising they are to the
baseline model (its mean per-token negative log-likelihood of the text, through echo). Both are
judged relative to the baseline's own generations of the same prompts: a small model's greedy
text loops a little by itself, so only the *increase* says something about the quantization."""

from __future__ import annotations

from quantkit.errors import EngineError
from quantkit.probes.echo import score_continuations

__all__ = ["generate", "repetition_rate", "surprise"]


def generate(client, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy continuations of every prompt, in one batched request."""
    resp = client.completion(prompts, max_tokens=max_tokens)
    choices = sorted(resp["choices"], key=lambda c: c["index"])
    if len(choices) != len(prompts):
        raise EngineError(f"asked for {len(prompts)} generations, the engine answered {len(choices)}")
    return [c["text"] for c in choices]


def repetition_rate(text: str, n: int = 4) -> float:
    """Fraction of the word n-grams that repeat an earlier one: 0 for fresh text, -> 1 for a loop."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return round(1 - len(set(grams)) / len(grams), 4)


def surprise(client, pairs: list[tuple[str, str]]) -> list[dict]:
    """For each (prompt, text): the scoring model's mean negative log-likelihood per token of
    `text` after `prompt` (None for a blank text), in one batched echo request."""
    todo = [(p, t) for p, t in pairs if t.strip()]
    scored = iter(score_continuations(client, todo, batch=max(1, len(todo)))) if todo else iter(())
    out = []
    for _, t in pairs:
        lps = next(scored) if t.strip() else []
        out.append({"nll_per_token": round(-sum(lps) / len(lps), 4) if lps else None, "tokens": len(lps)})
    return out
