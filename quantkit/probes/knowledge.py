"""Teacher-forced knowledge checks: each item of a bank (`validate/knowledge/*.yaml`) is a context,
its right continuation and distractors. Every (context + option) is scored through the engine's
/v1/completions with `echo` + `logprobs` and `max_tokens: 0` (prompt log-probabilities only),
batched; an item is right when the answer's log-probability beats every distractor's. Nothing is
sampled, so the result is a deterministic, continuous function of the checkpoint and the engine:
unlike greedy string matches, a small numerical difference moves the margins a little instead of
flipping a verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quantkit.datafile import load_yaml_model
from quantkit.probes.echo import score_continuations

__all__ = ["Item", "Bank", "load_bank", "score_bank", "chance", "ItemScore"]


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    context: str
    answer: str
    distractors: list[str] = Field(min_length=1)

    @field_validator("answer", "distractors")
    @classmethod
    def _not_blank(cls, v):
        for s in [v] if isinstance(v, str) else v:
            if not s.strip():
                raise ValueError("options must not be blank")
        return v


class Bank(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    items: list[Item] = Field(min_length=10)

    @field_validator("items")
    @classmethod
    def _unique(cls, items):
        seen: set[str] = set()
        dup = [i.id for i in items if i.id in seen or seen.add(i.id)]
        if dup:
            raise ValueError(f"duplicate item ids: {', '.join(dup[:5])}")
        return items


def load_bank(path: Path) -> Bank:
    return load_yaml_model(Path(path), Bank, "knowledge bank")


@dataclass
class ItemScore:
    id: str
    answer_logprob: float
    best_distractor_logprob: float

    @property
    def margin(self) -> float:
        """log P(answer) - max log P(distractor): > 0 when the item is right."""
        return self.answer_logprob - self.best_distractor_logprob

    @property
    def correct(self) -> bool:
        return self.margin > 0


def chance(bank: Bank, distractors: int | None = None) -> float:
    """Accuracy of a model that guesses: 1 / number of options scored per item."""
    n = min(len(i.distractors) for i in bank.items)
    return 1 / (1 + min(n, distractors or n))


def score_bank(client, bank: Bank, batch: int = 64, progress=None, distractors: int | None = None) -> list[ItemScore]:
    """Score the answer and the first `distractors` distractors (default: all) of every item:
    log P(option | context), summed over the option's tokens."""
    opts = [[item.answer, *item.distractors[:distractors]] for item in bank.items]
    pairs = [(item.context, o) for item, os_ in zip(bank.items, opts) for o in os_]
    lp = [sum(x) for x in score_continuations(client, pairs, batch, progress)]
    out, k = [], 0
    for item, os_ in zip(bank.items, opts):
        n = len(os_)
        vals = lp[k:k + n]
        k += n
        out.append(ItemScore(item.id, round(vals[0], 5), round(max(vals[1:]), 5)))
    return out
