"""safetensors headers without tensor bytes: the 8-byte length, then the JSON header."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TensorInfo", "read_header", "checkpoint_tensors", "weight_files"]

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype: BF16, F16, F32, U8, F8_E4M3, I32...
    shape: tuple[int, ...]
    file: str
    offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors, __metadata__) of one .safetensors file, reading only its header."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise ValueError(f"{path}: header length {n} is implausible")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    tensors = {k: TensorInfo(k, v["dtype"], tuple(v["shape"]), path.name, tuple(v["data_offsets"]))
               for k, v in header.items()}
    return tensors, meta


def weight_files(ckpt: str | Path) -> list[Path]:
    """The .safetensors files of a checkpoint: those named in the index, else all in the dir."""
    ckpt = Path(ckpt)
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [ckpt / n for n in names]
    return sorted(ckpt.glob("*.safetensors"))


def checkpoint_tensors(ckpt: str | Path) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for f in weight_files(ckpt):
        tensors, _ = read_header(f)
        out.update(tensors)
    return out
