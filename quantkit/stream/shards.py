"""Reading a checkpoint one decoder layer at a time, and writing output shards one at a time.

`SourceShards` knows, from the safetensors headers only, which tensors belong to which decoder
layer (`<prefix>.layers.<i>.`) and how many bytes each layer is; it reads a layer's tensors
through safetensors' memory map and nothing else. `ShardWriter` writes each shard under a
temporary name and renames it, so a shard that exists is complete (what resume relies on)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from quantkit.checkpoint.headers import read_header, weight_files
from quantkit.errors import ModelSourceError

__all__ = ["SourceShards", "ShardWriter", "layer_key"]

_LAYER = re.compile(r"^(?P<prefix>(?:[\w]+\.)*layers)\.(?P<idx>\d+)\.")


def layer_key(name: str) -> tuple[str, int] | None:
    m = _LAYER.match(name)
    return (m["prefix"], int(m["idx"])) if m else None


class SourceShards:
    """The tensors of a local safetensors checkpoint, grouped by decoder layer."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        files = weight_files(self.root)
        if not files:
            raise ModelSourceError(f"{self.root} has no .safetensors files",
                                   hint="memory-bounded mode streams safetensors shards; convert .bin checkpoints first")
        self.info = {}
        for f in files:
            tensors, _ = read_header(f)
            self.info.update(tensors)
        prefixes = Counter(k[0] for k in map(layer_key, self.info) if k)
        if not prefixes:
            raise ModelSourceError(f"{self.root}: no '<...>.layers.<i>.' tensors found",
                                   hint="memory-bounded mode needs a decoder-only checkpoint with numbered layers")
        self.prefix = prefixes.most_common(1)[0][0]
        self.layers: dict[int, list[str]] = {}
        self.other: list[str] = []
        for name in self.info:
            k = layer_key(name)
            if k and k[0] == self.prefix:
                self.layers.setdefault(k[1], []).append(name)
            else:
                self.other.append(name)

    # --------------------------------------------------------------- sizes
    def nbytes(self, names: Iterable[str]) -> int:
        return sum(self.info[n].nbytes for n in names)

    @property
    def total_bytes(self) -> int:
        return self.nbytes(self.info)

    def layer_bytes(self, i: int) -> int:
        return self.nbytes(self.layers.get(i, []))

    # --------------------------------------------------------------- reading
    def read(self, names: Iterable[str]) -> dict:
        """Tensors by name, read through safetensors' memory map (copies of just these)."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self.info[n].file, []).append(n)
        out = {}
        for fname, ns in by_file.items():
            with safe_open(str(self.root / fname), framework="pt") as f:
                for n in ns:
                    # a copy: a tensor that still points into the mapping keeps the whole file
                    # mapped, and every page ever touched through it counts in RSS until the end
                    out[n] = f.get_tensor(n).clone()
        return out

    def read_layer(self, i: int, as_index: int | None = None) -> dict:
        """Layer i's tensors, renamed to layer `as_index` (e.g. 0 for a one-layer model)."""
        return self.rename_layer(self.read(self.layers[i]), i, i if as_index is None else as_index)

    def rename_layer(self, tensors: dict, i: int, j: int) -> dict:
        """Tensors named `<prefix>.<i>.*` -> `<prefix>.<j>.*`."""
        src, dst = f"{self.prefix}.{i}.", f"{self.prefix}.{j}."
        return {dst + n[len(src):]: t for n, t in tensors.items()}

    def read_rows(self, name: str, rows: list[int]):
        """Rows of a 2-D tensor (embedding lookups) without reading the rest of it."""
        import torch
        from safetensors import safe_open

        with safe_open(str(self.root / self.info[name].file), framework="pt") as f:
            sl = f.get_slice(name)
            return torch.stack([sl[r:r + 1][0] for r in rows]) if rows else None


class ShardWriter:
    """Numbered output shards `model-XXXXX-of-YYYYY.safetensors` and their index."""

    def __init__(self, out_dir: str | Path, total: int):
        self.out = Path(out_dir)
        self.total = total
        self.out.mkdir(parents=True, exist_ok=True)

    def name(self, k: int) -> str:
        return f"model-{k + 1:05d}-of-{self.total:05d}.safetensors"

    def exists(self, k: int) -> bool:
        return (self.out / self.name(k)).is_file()

    def write(self, k: int, tensors: dict) -> None:
        from safetensors.torch import save_file

        final = self.out / self.name(k)
        tmp = final.with_suffix(".tmp")
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, final)

    def write_index(self) -> int:
        weight_map, total = {}, 0
        for k in range(self.total):
            tensors, _ = read_header(self.out / self.name(k))
            for n, t in tensors.items():
                weight_map[n] = self.name(k)
                total += t.nbytes
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return total
