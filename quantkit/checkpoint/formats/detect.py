"""Checkpoint formats from metadata and tensors: ModelOpt NVFP4 vs compressed-tensors NVFP4
(vs FP8, mixed, unquantized), the precision of every stored module, and which modules the
metadata declares unquantized (ModelOpt `exclude_modules` / compressed-tensors `ignore`)."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from quantkit.checkpoint.headers import TensorInfo

__all__ = ["StoredModule", "FormatInfo", "stored_modules", "detect_format", "declared_unquantized",
           "declared_precision", "unquantized_matcher", "is_embedding"]

_SUFFIXES = frozenset(("weight_packed", "weight_scale_2", "weight_global_scale", "weight_scale",
                       "input_global_scale", "input_scale", "weight_zero_point", "k_scale", "v_scale", "weight",
                       "bias"))
_FLOAT = {"BF16": "bf16", "F16": "f16", "F32": "f32"}


# ModelOpt quant_algo values (NVFP4_AWQ: AWQ-calibrated NVFP4 with pre_quant_scale tensors;
# W4A16_NVFP4: weight-only NVFP4) -> detect_format kinds
_MODELOPT_KIND = {"NVFP4": "modelopt-nvfp4", "NVFP4_AWQ": "modelopt-nvfp4", "W4A16_NVFP4": "modelopt-nvfp4",
                  "FP8": "modelopt-fp8", "MIXED_PRECISION": "mixed"}
# detect_format kinds -> quantkit's format names (the producer family), and each format's NVFP4 kind
FORMAT_OF_KIND = {"modelopt-nvfp4": "modelopt", "modelopt-fp8": "modelopt",
                  "compressed-tensors-nvfp4": "compressed-tensors", "compressed-tensors-fp8": "compressed-tensors",
                  "unquantized": "unquantized"}
NVFP4_KIND = {"modelopt": "modelopt-nvfp4", "compressed-tensors": "compressed-tensors-nvfp4"}


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
        packed = parts.get("weight_packed")
        w = parts.get("weight")
        scale = parts.get("weight_scale")
        if packed is not None and packed.dtype == "U8":
            out[mod] = StoredModule(mod, "fp4", packed.numel * 2, nbytes, names, len(packed.shape))
        elif w is not None and w.dtype == "U8" and scale is not None and scale.dtype.startswith("F8"):
            out[mod] = StoredModule(mod, "fp4", w.numel * 2, nbytes, names, len(w.shape))
        elif w is not None and w.dtype.startswith("F8"):
            out[mod] = StoredModule(mod, "fp8", w.numel, nbytes, names, len(w.shape))
        elif w is not None and w.dtype in _FLOAT and len(w.shape) >= 2:
            out[mod] = StoredModule(mod, _FLOAT[w.dtype], w.numel, nbytes, names, len(w.shape))
    return out


@dataclass
class FormatInfo:
    kind: str  # modelopt-nvfp4 | compressed-tensors-nvfp4 | modelopt-fp8 | compressed-tensors-fp8 | mixed | unquantized | unknown
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


def _read_json(p: Path) -> dict | None:
    return json.loads(p.read_text()) if p.is_file() else None


def detect_format(ckpt: str | Path) -> FormatInfo:
    ckpt = Path(ckpt)
    cfg = _read_json(ckpt / "config.json") or {}
    qc = cfg.get("quantization_config") or {}
    hfq = _read_json(ckpt / "hf_quant_config.json")
    method = qc.get("quant_method")
    if hfq is not None or method == "modelopt":
        q = (hfq or {}).get("quantization", {}) if hfq else qc
        algo = q.get("quant_algo") or qc.get("quant_algo")
        prod = (hfq or qc).get("producer", {}) or {}
        kind = _MODELOPT_KIND.get(algo, "unknown")
        entries = list(q.get("exclude_modules") or qc.get("ignore") or [])
        layers = q.get("quantized_layers") or qc.get("quantized_layers") if algo == "MIXED_PRECISION" else None
        return FormatInfo(kind, method, prod.get("name"), prod.get("version"), algo, None, q.get("group_size"),
                          q.get("kv_cache_quant_algo"), entries, qc, hfq, dict(layers or {}) if algo == "MIXED_PRECISION" else None)
    if method == "compressed-tensors":
        fmt = qc.get("format")
        groups = qc.get("config_groups") or {}
        fmts = {g.get("format", fmt) for g in groups.values()} or {fmt}
        if fmts == {"nvfp4-pack-quantized"}:
            kind = "compressed-tensors-nvfp4"
        elif fmts == {"float-quantized"}:
            kind = "compressed-tensors-fp8"
        elif len(fmts) > 1 or fmt == "mixed-precision":
            kind = "mixed"
        else:
            kind = "unknown"
        gs = next((g.get("weights", {}).get("group_size") for g in groups.values()), None)
        kv = qc.get("kv_cache_scheme")
        return FormatInfo(kind, method, "compressed-tensors", qc.get("version"), None, fmt, gs,
                          json.dumps(kv) if kv else None, list(qc.get("ignore") or []), qc, None)
    if method == "fp8":  # transformers' FineGrainedFP8 / DeepSeek-style block FP8
        return FormatInfo("fp8", method, config_quant=qc,
                          unquantized_entries=list(qc.get("modules_to_not_convert") or []))
    if method:
        return FormatInfo("unknown", method, config_quant=qc)
    return FormatInfo("unquantized", None)


def _style(info: FormatInfo) -> str:
    return "modelopt" if info.kind.startswith("modelopt") or info.quant_method == "modelopt" else "ct"


def _entry_matches(entry: str, module: str, style: str) -> bool:
    if style == "modelopt":  # fnmatch wildcards on module names, as ModelOpt's export writes them
        return fnmatch.fnmatchcase(module, entry)
    if entry.startswith("re:"):  # compressed-tensors / vLLM: re.match
        return re.match(entry[3:], module) is not None
    return module == entry


_NOT_LISTED = "(not in quantized_layers)"
_ALGO_PRECISION = {"NVFP4": "fp4", "NVFP4_AWQ": "fp4", "W4A16_NVFP4": "fp4", "FP8": "fp8"}


def _listed(layers: dict, module: str) -> dict | None:
    """The quantized_layers entry of `module` or of its nearest listed ancestor (fused experts)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        hit = layers.get(".".join(parts[:i]))
        if hit is not None:
            return hit
    return None


def declared_unquantized(info: FormatInfo, module: str) -> str | None:
    """The metadata entry that declares `module` unquantized, or None. In a ModelOpt
    MIXED_PRECISION checkpoint every module absent from `quantized_layers` is unquantized."""
    style = _style(info)
    for e in info.unquantized_entries:
        if _entry_matches(e, module, style):
            return e
    if info.quantized_layers is not None and style == "modelopt" and _listed(info.quantized_layers, module) is None:
        return _NOT_LISTED
    return None


def _ct_group_precision(group: dict) -> str | None:
    w = group.get("weights") or {}
    if group.get("format") == "nvfp4-pack-quantized" or (w.get("num_bits") == 4 and w.get("type") == "float"):
        return "fp4"
    if group.get("format") == "float-quantized" or (w.get("num_bits") == 8 and w.get("type") == "float"):
        return "fp8"
    return None


def declared_precision(info: FormatInfo, module: str) -> str | None:
    """What the metadata declares a (linear) module to be: 'fp4', 'fp8', or None (unquantized
    or unknown). ModelOpt: its quantized_layers entry or the global quant_algo; compressed-tensors:
    the config group whose target matches it (exact name, then `re:`, then a class name such as
    `Linear`, as compressed-tensors resolves them)."""
    if declared_unquantized(info, module):
        return None
    if _style(info) == "modelopt":
        if info.quantized_layers is not None:
            return _ALGO_PRECISION.get((_listed(info.quantized_layers, module) or {}).get("quant_algo"))
        return _ALGO_PRECISION.get(info.quant_algo)
    groups = list((info.config_quant.get("config_groups") or {}).values())
    tests = (lambda t: t == module,  # exact name
             lambda t: t.startswith("re:") and re.match(t[3:], module) is not None,
             lambda t: not t.startswith("re:") and "." not in t and t[:1].isupper())  # a class name (Linear)
    for test in tests:
        for g in groups:
            if any(test(t) for t in g.get("targets") or []):
                return _ct_group_precision(g)
    return None


def unquantized_matcher(info: FormatInfo) -> Callable[[str], str | None]:
    """`declared_unquantized` for many module names (same answers, same entry returned): literal
    entries by dict lookup, wildcard / `re:` entries compiled once and tried in order. Exclude
    lists of large checkpoints hold hundreds of entries, their MoE tens of thousands of modules."""
    style = _style(info)
    entries = info.unquantized_entries
    literal: dict[str, int] = {}
    patterns: list[tuple[int, re.Pattern[str]]] = []
    for i, e in enumerate(entries):
        if style == "modelopt" and any(c in e for c in "*?["):
            patterns.append((i, re.compile(fnmatch.translate(e))))
        elif style != "modelopt" and e.startswith("re:"):
            patterns.append((i, re.compile(e[3:])))
        else:
            literal.setdefault(e, i)

    listed = info.quantized_layers if style == "modelopt" else None

    def match(module: str) -> str | None:
        hit = literal.get(module)
        for i, rx in patterns:
            if hit is not None and i > hit:
                break
            if rx.match(module):
                return entries[i]
        if hit is None and listed is not None and _listed(listed, module) is None:
            return _NOT_LISTED
        return entries[hit] if hit is not None else None

    return match


def format_of(ckpt: str | Path) -> str:
    """quantkit's name for a checkpoint's format (modelopt, compressed-tensors, unquantized, or the kind)."""
    kind = detect_format(ckpt).kind
    return FORMAT_OF_KIND.get(kind, kind)
