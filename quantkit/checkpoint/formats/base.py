"""What a checkpoint format is to quantkit: one object per format (`modelopt.py`,
`compressed_tensors.py`) holding all of that format's naming, in the spirit of
compressed-tensors' own converter classes. Everything else asks the object: the directory name,
the backend that writes it, its tensor names and scale convention, its metadata files, how it
declares modules unquantized and how such declarations are read back, how it is served and what
publishing requires."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["Format", "FormatInfo", "Tensors", "Nvfp4Linear", "read_json", "add_entries", "reciprocal"]


@dataclass(frozen=True)
class Tensors:
    """Tensor-name suffixes of one NVFP4 linear in a format (`<module>.<suffix>`)."""
    codes: str  # packed E2M1 values, uint8, two per byte
    block_scale: str  # FP8 E4M3, one per 16 values
    global_scale: str  # FP32 per-tensor weight scale
    input_scale: str  # FP32 per-tensor activation scale
    global_scale_divides: bool  # w = e2m1 * block_scale / global (True) or * global (False)
    scale_shape: tuple[int, ...] = ()  # shape of the per-tensor scales as the format's writer stores them

    def all(self) -> tuple[str, ...]:
        return (self.codes, self.block_scale, self.global_scale, self.input_scale)

    def roles(self) -> dict[str, str]:
        return {"codes": self.codes, "block_scale": self.block_scale, "global_scale": self.global_scale,
                "input_scale": self.input_scale}


@dataclass
class Nvfp4Linear:
    """One NVFP4 linear in the terms vLLM computes with after loading either format (0.32:
    `weight_global_scale` multiplied in, `input_global_scale_inv` divided by): packed E2M1 codes,
    FP8 block scales, `weight_scale` = amax_w / (6 * 448) and `input_scale_inv` = 6 * 448 / amax_x
    (None: weight-only). A format's stored tensors map to and from these; where the mapping takes
    a float32 reciprocal, `reciprocal_stable` values survive it exactly."""
    codes: Any
    block_scale: Any
    weight_scale: Any
    input_scale_inv: Any = None

    def reciprocal_stable(self) -> "Nvfp4Linear":
        """The same scales moved (by at most 1 ulp of float32) to values v with 1/(1/v) == v, so
        that every format stores them exactly: float32 reciprocal is not an involution (1/(1/v)
        differs from v for ~14% of values), but 1/(1/v) is a fixed point of it."""
        inv = self.input_scale_inv
        return Nvfp4Linear(self.codes, self.block_scale, reciprocal(reciprocal(self.weight_scale)),
                           None if inv is None else reciprocal(reciprocal(inv)))

    def same_scales(self, other: "Nvfp4Linear") -> bool:
        """The per-tensor scales bit-identical (what a conversion can change)."""
        import torch

        if (self.input_scale_inv is None) != (other.input_scale_inv is None):
            return False
        pairs = [(self.weight_scale, other.weight_scale)] + (
            [(self.input_scale_inv, other.input_scale_inv)] if self.input_scale_inv is not None else [])
        return all(torch.equal(a.reshape(-1), b.reshape(-1)) for a, b in pairs)

    def same(self, other: "Nvfp4Linear") -> bool:
        """Bit-identical in every value the engine computes with (a scale stored as [] or [1] alike)."""
        import torch

        pairs = [(self.codes, other.codes), (self.block_scale.view(torch.uint8), other.block_scale.view(torch.uint8))]
        return all(a.shape == b.shape and torch.equal(a, b) for a, b in pairs) and self.same_scales(other)


def reciprocal(t):
    """1/t in float32, as vLLM computes it at load (`1.0 / scale`)."""
    import torch

    return (1.0 / t.to(torch.float32)).to(torch.float32)


@dataclass
class FormatInfo:
    """What a checkpoint's metadata says (read by `detect_format`)."""
    kind: str  # modelopt-nvfp4 | compressed-tensors-nvfp4 | modelopt-fp8 | compressed-tensors-fp8 | mixed | fp8 | unquantized | unknown
    quant_method: str | None
    producer: str | None = None
    producer_version: str | None = None
    quant_algo: str | None = None
    ct_format: str | None = None
    group_size: int | None = None
    kv_cache: str | None = None
    unquantized_entries: list[str] = field(default_factory=list)  # exclude_modules / ignore as written
    config_quant: dict = field(default_factory=dict)
    hf_quant_config: dict | None = None
    # ModelOpt MIXED_PRECISION: module -> {"quant_algo": ...}; modules absent from it are unquantized
    quantized_layers: dict | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("config_quant", "hf_quant_config", "quantized_layers")}


class Format:
    """One checkpoint format. Subclasses fill the attributes and the methods below."""
    name: str  # quantkit's name (--format, manifests, engine profiles' quant_flags)
    dir_name: str  # subdirectory of --out when several formats are written
    aliases: tuple[str, ...] = ()  # more names --format accepts
    backend: str  # the backend that writes it (quantkit/backends/)
    title: str  # for people: model cards, reports
    hub_tag: str  # model-card tag
    color: str = "#999"  # in the variants comparison's charts
    nvfp4_kind: str  # detect_format's kind for its NVFP4 checkpoints
    kinds: tuple[str, ...]  # every detect_format kind that belongs to this format
    metadata_files: tuple[str, ...] = ()  # required besides config.json
    tensors: Tensors

    def detect(self, config: dict, hf_quant_config: dict | None) -> FormatInfo | None:
        """FormatInfo when this checkpoint's metadata is this format's, else None."""
        raise NotImplementedError

    def entry_pattern(self, entry: str) -> Callable[[str], bool] | None:
        """A matcher for a pattern entry of an unquantized-module list, None for a literal name."""
        raise NotImplementedError

    def subtree_entry(self, prefix: str, anywhere: bool = False) -> str:
        """The list entry that declares every module under `prefix` unquantized (`anywhere`: under
        a `prefix` component at any depth)."""
        raise NotImplementedError

    def add_unquantized(self, ckpt: Path, entries: list[str]) -> None:
        """Append `entries` to every metadata list that declares modules unquantized."""
        raise NotImplementedError

    def unlisted(self, info: FormatInfo, module: str) -> str | None:
        """Why a module no list entry names is still declared unquantized (by omission), or None."""
        return None

    def declared_precision(self, info: FormatInfo, module: str) -> str | None:
        """'fp4', 'fp8' or None for a module the unquantized list does not cover."""
        raise NotImplementedError

    def serve_commands(self, repo: str) -> dict[str, str]:
        raise NotImplementedError

    def read_linear(self, parts: dict[str, Any]) -> Nvfp4Linear:
        """A stored NVFP4 linear (leaf name -> tensor) in the engine's terms."""
        raise NotImplementedError

    def write_linear(self, lin: Nvfp4Linear) -> dict[str, Any]:
        """The tensors (leaf name -> tensor) this format stores for `lin`."""
        raise NotImplementedError

    def quant_config(self, unquantized: list[str], patterns: list[Any], versions: dict[str, str]) -> tuple[dict, dict]:
        """NVFP4 metadata declaring `unquantized` (exact module names) and `patterns` (quantkit
        Patterns, translated to this format's syntax where it has one) unquantized:
        (config.json's quantization_config, {file name: JSON body} of the other metadata files)."""
        raise NotImplementedError

    def publish_problem(self, ckpt: Path, info: FormatInfo) -> tuple[str, str] | None:
        """(message, hint) when the metadata is not what engines need to serve it, else None."""
        raise NotImplementedError

    def repair(self, ckpt: Path) -> list[str]:
        """Fix known defects of this format's writers in place; the fixes, one line each."""
        return []

    def write_metadata(self, out: Path, meta: dict[str, Any]) -> None:
        """Write the metadata files besides config.json from a backend's `meta` (layerwise mode)."""

    def entry_matches(self, entry: str, module: str) -> bool:
        test = self.entry_pattern(entry)
        return test(module) if test is not None else module == entry

    def dequantize(self, packed, block_scale, global_scale):
        """One NVFP4 weight (group size 16) to float32, in this format's scale convention."""
        from quantkit.checkpoint.nvfp4 import dequantize

        return dequantize(packed, block_scale, global_scale, self.tensors.global_scale_divides)

    def __repr__(self) -> str:
        return f"<format {self.name}>"


def read_json(p: Path) -> dict | None:
    return json.loads(p.read_text()) if p.is_file() else None


def add_entries(p: Path, path: tuple[str, str], entries: list[str]) -> None:
    """Append the entries missing from the list at data[path[0]][path[1]] of the JSON file `p`."""
    if not p.is_file():
        return
    data = json.loads(p.read_text())
    node = data.setdefault(path[0], {})
    have = list(node.get(path[1]) or [])
    node[path[1]] = have + [e for e in entries if e not in have]
    p.write_text(json.dumps(data, indent=2) + "\n")
