"""Reading any checkpoint through the formats: which format its metadata is (NVFP4 of a format,
FP8, mixed, unquantized), the precision of every stored module from its tensors, and which
modules the metadata declares unquantized, each format matching its own list its own way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantkit.checkpoint.formats.base import Format, FormatInfo, read_json
from quantkit.checkpoint.formats.registry import DEFAULT_MATCHING, FORMATS
from quantkit.checkpoint.headers import TensorInfo

__all__ = ["StoredModule", "FormatInfo", "stored_modules", "detect_format", "declared_unquantized",
           "declared_precision", "unquantized_matcher", "is_embedding", "format_for", "format_of", "module_format"]

_SUFFIXES = frozenset({"weight", "bias", "weight_zero_point", "k_scale", "v_scale"}
                      | {s for f in FORMATS.values() for s in f.tensors.all()})
_FLOAT = {"BF16": "bf16", "F16": "f16", "F32": "f32"}
# detect_format kinds -> quantkit's format names (the producer family), and each format's NVFP4 kind
FORMAT_OF_KIND = {**{k: f.name for f in FORMATS.values() for k in f.kinds}, "unquantized": "unquantized"}
NVFP4_KIND = {f.name: f.nvfp4_kind for f in FORMATS.values()}


@dataclass(frozen=True)
class StoredModule:
    name: str
    precision: str  # fp4 | fp8 | bf16 | f16 | f32
    params: int  # logical parameter count (packed FP4 counts 2 per byte)
    nbytes: int
    tensors: tuple[str, ...]
    ndim: int


def is_embedding(name: str) -> bool:
    return "embed" in name.rsplit(".", 1)[-1] or name.endswith(("embed_tokens", "embeddings", "wte"))


def stored_modules(tensors: dict[str, TensorInfo]) -> dict[str, StoredModule]:
    """Group tensors by module and classify each module holding a >=2-D weight."""
    by_mod: dict[str, dict[str, TensorInfo]] = {}
    for name, t in tensors.items():
        mod, _, leaf = name.rpartition(".")
        if leaf in _SUFFIXES and mod:
            by_mod.setdefault(mod, {})[leaf] = t
    out: dict[str, StoredModule] = {}
    for mod, parts in by_mod.items():
        names = tuple(sorted(t.name for t in parts.values()))
        nbytes = sum(t.nbytes for t in parts.values())
        codes = _fp4_codes(parts)
        w = parts.get("weight")
        if codes is not None:
            out[mod] = StoredModule(mod, "fp4", codes.numel * 2, nbytes, names, len(codes.shape))
        elif w is not None and w.dtype.startswith("F8"):
            out[mod] = StoredModule(mod, "fp8", w.numel, nbytes, names, len(w.shape))
        elif w is not None and w.dtype in _FLOAT and len(w.shape) >= 2:
            out[mod] = StoredModule(mod, _FLOAT[w.dtype], w.numel, nbytes, names, len(w.shape))
    return out


def _fp4_codes(parts: dict[str, TensorInfo]) -> TensorInfo | None:
    """The packed E2M1 tensor of a module in any format's naming: uint8 codes beside an FP8
    block scale (compressed-tensors' `weight_packed` is unambiguous by name)."""
    for f in FORMATS.values():
        codes, scale = parts.get(f.tensors.codes), parts.get(f.tensors.block_scale)
        if codes is None or codes.dtype != "U8":
            continue
        if f.tensors.codes != "weight" or (scale is not None and scale.dtype.startswith("F8")):
            return codes
    return None


def module_format(tensor_names: tuple[str, ...]) -> str | None:
    """The format whose NVFP4 tensor naming an FP4 module's tensors use (a suffix that no other
    format uses), or None."""
    leaves = {t.rpartition(".")[2] for t in tensor_names}
    for f in FORMATS.values():
        others = {s for g in FORMATS.values() if g is not f for s in g.tensors.all()}
        if leaves & (set(f.tensors.all()) - others):
            return f.name
    return None


def detect_format(ckpt: str | Path) -> FormatInfo:
    """What the checkpoint's metadata says, read by the format that recognises it."""
    ckpt = Path(ckpt)
    cfg = read_json(ckpt / "config.json") or {}
    hfq = read_json(ckpt / "hf_quant_config.json")
    for f in FORMATS.values():
        info = f.detect(cfg, hfq)
        if info is not None:
            return info
    qc = cfg.get("quantization_config") or {}
    method = qc.get("quant_method")
    if method == "fp8":  # transformers' FineGrainedFP8 / DeepSeek-style block FP8
        return FormatInfo("fp8", method, config_quant=qc,
                          unquantized_entries=list(qc.get("modules_to_not_convert") or []))
    if method:
        return FormatInfo("unknown", method, config_quant=qc)
    return FormatInfo("unquantized", None)


def format_for(info: FormatInfo) -> Format:
    """The format whose matching rules apply to `info`'s unquantized list (mixed-precision and
    FP8 checkpoints of a producer match like its format)."""
    by_kind = next((f for f in FORMATS.values() if info.kind in f.kinds), None)
    if by_kind is not None:
        return by_kind
    by_method = next((f for f in FORMATS.values() if info.quant_method == f.name), None)
    return by_method or DEFAULT_MATCHING


def declared_unquantized(info: FormatInfo, module: str) -> str | None:
    """The metadata entry that declares `module` unquantized, or None. In a ModelOpt
    MIXED_PRECISION checkpoint every module absent from `quantized_layers` is unquantized."""
    return unquantized_matcher(info)(module)


def declared_precision(info: FormatInfo, module: str) -> str | None:
    """What the metadata declares a (linear) module to be: 'fp4', 'fp8', or None (unquantized
    or unknown), read by the checkpoint's format."""
    if declared_unquantized(info, module):
        return None
    return format_for(info).declared_precision(info, module)


def unquantized_matcher(info: FormatInfo) -> Callable[[str], str | None]:
    """module name -> the entry of the unquantized list that covers it (or None). Literal entries
    by dict lookup, pattern entries (the format's: fnmatch wildcards, `re:` regexes) compiled once
    and tried in order. Exclude lists of large checkpoints hold hundreds of entries, their MoE
    tens of thousands of modules."""
    fmt = format_for(info)
    entries = info.unquantized_entries
    literal: dict[str, int] = {}
    patterns: list[tuple[int, Callable]] = []
    for i, e in enumerate(entries):
        test = fmt.entry_pattern(e)
        if test is not None:
            patterns.append((i, test))
        else:
            literal.setdefault(e, i)

    def match(module: str) -> str | None:
        hit = literal.get(module)
        for i, test in patterns:
            if hit is not None and i > hit:
                break
            if test(module):
                return entries[i]
        return entries[hit] if hit is not None else fmt.unlisted(info, module)

    return match


def format_of(ckpt: str | Path) -> str:
    """quantkit's name for a checkpoint's format (modelopt, compressed-tensors, unquantized, or the kind)."""
    kind = detect_format(ckpt).kind
    return FORMAT_OF_KIND.get(kind, kind)
