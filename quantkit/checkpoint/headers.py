"""safetensors headers without tensor bytes: the 8-byte length, then the JSON header."""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TensorInfo", "read_header", "checkpoint_tensors", "weight_files", "patch_values", "rewrite_file"]

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


def _data_start(path: Path) -> int:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def patch_values(path: str | Path, values: dict[str, bytes]) -> None:
    """Overwrite the bytes of some tensors of a .safetensors file in place (each new value has
    the old one's byte length): per-tensor scales change without rewriting gigabytes."""
    path = Path(path)
    tensors, _ = read_header(path)
    start = _data_start(path)
    with path.open("r+b") as f:
        for name, raw in values.items():
            t = tensors[name]
            if len(raw) != t.nbytes:
                raise ValueError(f"{path}: {name} holds {t.nbytes} bytes, not {len(raw)}")
            f.seek(start + t.offsets[0])
            f.write(raw)


def rewrite_file(src: str | Path, dst: str | Path, names: dict[str, str], shapes: dict[str, tuple[int, ...]],
                 values: dict[str, bytes], metadata: dict[str, str] | None = None) -> None:
    """Write `dst` as `src` with tensors renamed (`names`: old -> new), shapes restated (`shapes`,
    by new name: same element count) and some tensors' bytes replaced (`values`, by new name: same
    length). Tensor data is copied in one kernel-side range copy, never through Python objects, so
    a multi-gigabyte shard costs one sequential copy. `dst` is written whole, then renamed."""
    import os

    src, dst = Path(src), Path(dst)
    tensors, meta = read_header(src)
    header: dict = {"__metadata__": {**meta, **(metadata or {})}} if (meta or metadata) else {}
    for old, t in sorted(tensors.items(), key=lambda kv: kv[1].offsets[0]):
        new = names.get(old, old)
        header[new] = {"dtype": t.dtype, "shape": list(shapes.get(new, t.shape)), "data_offsets": list(t.offsets)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    start, size = _data_start(src), src.stat().st_size
    tmp = dst.with_name(f".{dst.name}.tmp")
    with src.open("rb") as fin, tmp.open("wb") as fout:
        fout.write(struct.pack("<Q", len(raw)) + raw)
        fout.flush()
        left, off = size - start, start
        while left > 0:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), left, off) if hasattr(os, "copy_file_range") else 0
            if n <= 0:  # no kernel copy here: a buffered one
                fin.seek(off)
                shutil.copyfileobj(fin, fout, 1 << 24)
                break
            left, off = left - n, off + n
    patch_values(tmp, values)
    os.replace(tmp, dst)
