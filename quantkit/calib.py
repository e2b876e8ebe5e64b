"""Calibration data from the named specs in `calib/`: deterministic samples, tokenized once,
shared by every backend (so ModelOpt and llm-compressor see exactly the same tokens)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantkit.datafile import load_yaml_model
from quantkit.errors import CalibrationError, first_line
from quantkit.resources import data_dir

__all__ = ["CalibSpec", "CalibSet", "known_specs", "load_spec", "build_calibration"]


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    format: Literal["paragraphs", "chat-jsonl", "lines"]


class CalibSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    kind: Literal["bundled", "hf", "random"]
    sources: list[_Source] = []
    dataset: str | None = None
    subset: str | None = None
    split: str = "train"
    field: str = "text"
    chat: bool = False


def known_specs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(data_dir("calib").glob("*.yaml"))}


def load_spec(name: str) -> CalibSpec:
    specs = known_specs()
    path = specs.get(name) or (Path(name) if name.endswith((".yaml", ".yml")) else None)
    if path is None or not path.is_file():
        raise CalibrationError(f"unknown calibration dataset {name!r}; known: {', '.join(specs)}",
                               hint="set calibration.dataset to one of those, or to a spec .yaml file")
    return load_yaml_model(path, CalibSpec, "calibration spec", error=CalibrationError,
                           hint="see calib/README or a shipped calib/*.yaml for the schema")


@dataclass
class CalibSet:
    """Tokenized calibration samples (lists of token ids, unpadded) and their fingerprint."""

    spec: str
    input_ids: list[list[int]]
    seq_len: int
    seed: int
    requested: int
    batch_size: int = 1  # samples per calibration forward (equal-length samples only)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for ids in self.input_ids:
            h.update(json.dumps(ids).encode())
        return "sha256:" + h.hexdigest()

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def describe(self) -> dict:
        return {"dataset": self.spec, "samples": len(self.input_ids), "requested": self.requested,
                "seq_len": self.seq_len, "seed": self.seed, "tokens": self.tokens, "fingerprint": self.fingerprint,
                "batch_size": self.batch_size}

    def batches(self, size: int, ordered: bool = False):
        """(B, L) input_ids tensors of up to `size` samples of equal length (no padding, so pad
        tokens never reach the activation statistics), in order of first appearance. With
        `ordered`, only consecutive samples are batched, so the batches concatenate back to the
        samples in their order (fewer, smaller batches when lengths alternate)."""
        import torch

        size = max(1, size)
        groups: list[list[list[int]]] = []
        if ordered:
            for ids in self.input_ids:
                if groups and len(groups[-1]) < size and len(groups[-1][0]) == len(ids):
                    groups[-1].append(ids)
                else:
                    groups.append([ids])
        else:
            by_len: dict[int, list[list[int]]] = {}
            for ids in self.input_ids:
                by_len.setdefault(len(ids), []).append(ids)
            groups = [g[k:k + size] for g in by_len.values() for k in range(0, len(g), size)]
        return [torch.tensor(g, dtype=torch.long) for g in groups]

    def tensors(self):
        """One (1, L) input_ids tensor per sample (no padding, so no mask games in backends)."""
        import torch

        return [torch.tensor([ids], dtype=torch.long) for ids in self.input_ids]


def _render_chat(tokenizer: Any, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _bundled_texts(spec: CalibSpec, tokenizer: Any) -> list[str]:
    root = data_dir("calib")
    texts: list[str] = []
    for src in spec.sources:
        raw = (root / src.file).read_text(encoding="utf-8")
        if src.format == "paragraphs":
            texts += [p.strip() for p in raw.split("\n\n") if p.strip()]
        elif src.format == "lines":
            texts += [ln.strip() for ln in raw.splitlines() if ln.strip()]
        else:
            texts += [_render_chat(tokenizer, json.loads(ln)["messages"]) for ln in raw.splitlines() if ln.strip()]
    return texts


def _hf_texts(spec: CalibSpec, tokenizer: Any, samples: int, seed: int) -> list[str]:
    try:
        from datasets import load_dataset

        ds = load_dataset(spec.dataset, spec.subset, split=spec.split)
    except Exception as exc:
        raise CalibrationError(f"cannot load dataset {spec.dataset}: {type(exc).__name__}: {first_line(exc)}",
                               hint="check the network/HF_TOKEN, or use calibration.dataset: bundled-en (offline)") from exc
    ds = ds.shuffle(seed=seed).select(range(min(samples, len(ds))))
    rows = ds[spec.field]
    return [_render_chat(tokenizer, r) if spec.chat else str(r) for r in rows]


def build_calibration(tokenizer: Any, dataset: str, samples: int, seq_len: int, seed: int) -> CalibSet:
    """Deterministic calibration samples: the same (dataset, samples, seq_len, seed, tokenizer)
    always gives the same tokens."""
    spec = load_spec(dataset)
    if spec.kind == "random":  # benchmarks only: uniform token ids, every sample exactly seq_len long
        rng = random.Random(seed)
        vocab = len(tokenizer)
        ids = [[rng.randrange(vocab) for _ in range(seq_len)] for _ in range(samples)]
        return CalibSet(spec=dataset, input_ids=ids, seq_len=seq_len, seed=seed, requested=samples)
    texts = _bundled_texts(spec, tokenizer) if spec.kind == "bundled" else _hf_texts(spec, tokenizer, samples, seed)
    if not texts:
        raise CalibrationError(f"calibration dataset {dataset} yielded no text")
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    chosen = [texts[i] for i in order[:samples]]
    ids = []
    for t in chosen:
        enc = tokenizer(t, add_special_tokens=not spec.chat, truncation=True, max_length=seq_len)["input_ids"]
        if len(enc) >= 2:
            ids.append(list(enc))
    return CalibSet(spec=dataset, input_ids=ids, seq_len=seq_len, seed=seed, requested=samples)
