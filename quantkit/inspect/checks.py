"""Header-only findings: the metadata against the tensors (format, convention, group size),
family presets against what is stored in FP4, exclusion lists against stored precisions, scale
tensors present and well shaped, KV-cache scales, and exclusion entries that match nothing."""

from __future__ import annotations

import re
from typing import Callable

from quantkit.checkpoint.formats import FormatInfo, StoredModule, is_embedding
from quantkit.checkpoint.headers import TensorInfo
from quantkit.families import FAMILIES
from quantkit.inspect.names import Declared, FamilyCover
from quantkit.inspect.report import Finding

__all__ = ["FAMILY_CODES", "format_findings", "family_findings", "metadata_findings", "scale_findings",
           "kv_findings", "unmatched_findings", "kv_bytes_per_element", "w4a4"]

# Finding code per family whose preset keeps a module out of FP4: each family names its own.
FAMILY_CODES = {f.name: f.finding_code for f in FAMILIES}
_FLOAT = ("bf16", "f16", "f32")
_GROUP = 16


def _is_ct(m: StoredModule) -> bool:
    return any(t.endswith(".weight_packed") for t in m.tensors)


def _names(modules: dict[str, StoredModule], precision: str) -> list[str]:
    return [n for n, m in modules.items() if m.precision == precision]


def format_findings(info: FormatInfo, modules: dict[str, StoredModule], declared: Declared,
                    bits_per_param: float | None) -> list[Finding]:
    fp4, fp8 = _names(modules, "fp4"), _names(modules, "fp8")
    kind = info.kind
    out: list[Finding] = []
    if kind == "unquantized":
        if fp4 or fp8:
            out.append(Finding.of("format-mismatch", f"no quantization metadata, but {len(fp4)} module(s) are packed "
                                  f"FP4 and {len(fp8)} FP8: engines would load them as BF16", fp4 + fp8))
        else:
            out.append(Finding.of("unquantized", "no quantization metadata and no quantized tensors"))
        return out
    if kind == "unknown":
        out.append(Finding.of("unknown-format", f"quant_method {info.quant_method!r}, quant_algo {info.quant_algo!r}"))
    if kind.endswith("nvfp4"):
        bpp = f" ({bits_per_param:.2f} bits/param)" if bits_per_param else ""
        if not fp4 and fp8:
            out.append(Finding.of("nvfp4-is-fp8", f"metadata says NVFP4 but no weight is packed FP4 and {len(fp8)} "
                                  f"are FP8{bpp}: the NVFP4 export is really FP8", fp8))
        elif not fp4:
            out.append(Finding.of("no-fp4-tensors", f"metadata says NVFP4 but no weight is packed FP4{bpp}"))
        stray = [n for n in fp8 if not declared(n)] if fp4 else []
        if stray:
            out.append(Finding.of("format-mismatch", f"{len(stray)} module(s) are FP8 in a checkpoint whose metadata "
                                  "declares NVFP4 only", stray))
        want_ct = kind.startswith("compressed-tensors")
        wrong = [n for n in fp4 if _is_ct(modules[n]) != want_ct]
        if wrong:
            have = "ModelOpt (weight/weight_scale_2)" if want_ct else "compressed-tensors (weight_packed)"
            out.append(Finding.of("format-mismatch", f"metadata is {kind} but {len(wrong)} FP4 module(s) use {have} "
                                  "tensor names", wrong))
    if kind in ("modelopt-fp8", "compressed-tensors-fp8", "fp8") and fp4:
        out.append(Finding.of("format-mismatch", f"metadata says FP8 but {len(fp4)} module(s) are packed FP4", fp4))
    if info.group_size not in (None, _GROUP) and (kind.endswith("nvfp4") or kind == "mixed"):
        out.append(Finding.of("group-size", f"group_size is {info.group_size}, NVFP4 needs {_GROUP}"))
    return out


def family_findings(modules: dict[str, StoredModule], cover: FamilyCover) -> list[Finding]:
    hits: dict[tuple[str, str], tuple] = {}
    for name, m in modules.items():
        if m.precision != "fp4":
            continue
        fr = cover(name)
        if fr is not None:
            family, rule = fr
            hits.setdefault((family.name, rule.pattern.raw), (family, rule, []))[2].append(name)
    out = []
    for family, rule, names in hits.values():
        out.append(Finding.of(family.finding_code, f"{len(names)} module(s) stored FP4 that the {family.name} preset keeps out of "
                              f"FP4 (pattern {rule.pattern.raw!r})", names, why=rule.reason,
                              fix=f"re-quantize with the {family.name} preset (`quantkit quantize` applies it) or "
                                  f"exclude {rule.pattern.raw!r}", source=f"quantkit family:{family.name}"))
    return out


def _targeted(info: FormatInfo) -> Callable[[str], bool]:
    """Whether the metadata quantizes a module by default (before exclusions): compressed-tensors
    `config_groups` targets, ModelOpt MIXED_PRECISION `quantized_layers`; else every linear."""
    ql = ((info.hf_quant_config or {}).get("quantization") or {}).get("quantized_layers")
    if isinstance(ql, dict) and ql:
        return lambda n: n in ql
    if info.quant_method == "compressed-tensors":
        targets = [t for g in (info.config_quant.get("config_groups") or {}).values() for t in g.get("targets") or []]
        if not targets or any(not t.startswith("re:") and "." not in t and t[:1].isupper() for t in targets):
            return lambda n: True  # a class name such as "Linear": every linear
        regs = [re.compile(t[3:]) for t in targets if t.startswith("re:")]
        lits = {t for t in targets if not t.startswith("re:")}
        return lambda n: n in lits or any(r.match(n) for r in regs)
    return lambda n: True


def metadata_findings(info: FormatInfo, modules: dict[str, StoredModule], declared: Declared,
                      by_engine: bool = False) -> list[Finding]:
    """Stored precisions against the metadata read by checkpoint names; `by_engine`: those two
    questions are answered by the engine's own decisions instead (`engine.vllm_findings`)."""
    if by_engine:
        return []
    out = []
    packed = [n for n, m in modules.items() if m.precision in ("fp4", "fp8") and declared(n)]
    if packed:
        m0 = packed[0]
        out.append(Finding.of("excluded-but-quantized", f"{len(packed)} module(s) declared unquantized are stored "
                              f"{modules[m0].precision.upper()} (e.g. {m0} by entry {declared(m0)!r})", packed))
    if info.kind != "unquantized":
        targeted = _targeted(info)
        loose = [n for n, m in modules.items() if m.precision in _FLOAT and m.ndim == 2 and not is_embedding(n)
                 and not declared(n) and targeted(n)]
        if loose:
            out.append(Finding.of("undeclared-bf16", f"{len(loose)} BF16 linear module(s) are not declared unquantized "
                                  f"(e.g. {loose[0]}): an engine would load it as FP4", loose))
    return out


def w4a4(info: FormatInfo) -> bool:
    """Whether NVFP4 layers quantize activations too (and so need an input scale)."""
    if info.quant_method == "compressed-tensors":
        groups = (info.config_quant.get("config_groups") or {}).values()
        return any((g.get("weights") or {}).get("num_bits") == 4 and g.get("input_activations") for g in groups)
    algo = (info.quant_algo or "").upper()
    return algo.startswith("NVFP4") and "W4A16" not in algo or algo == "MIXED_PRECISION"


def scale_findings(info: FormatInfo, modules: dict[str, StoredModule], tensors: dict[str, TensorInfo]) -> list[Finding]:
    acts = w4a4(info)
    no_input: list[str] = []
    no_weight: list[str] = []
    bad_shape: list[str] = []
    for name, m in modules.items():
        if m.precision not in ("fp4", "fp8"):
            continue
        s = tensors.get(name + ".weight_scale")
        if m.precision == "fp8":
            if s is None:
                no_weight.append(name)
            continue
        w = tensors.get(name + ".weight_packed")
        ct = w is not None
        w = w if ct else tensors.get(name + ".weight")
        if s is None or (name + (".weight_global_scale" if ct else ".weight_scale_2")) not in tensors:
            no_weight.append(name)
        if acts and (name + (".input_global_scale" if ct else ".input_scale")) not in tensors:
            no_input.append(name)
        if w is not None and s is not None and len(s.shape) == len(w.shape):
            need = -(-w.shape[-1] * 2 // _GROUP)
            if s.shape[-1] < need or s.shape[:-1] != w.shape[:-1]:
                bad_shape.append(name)
    out = []
    if no_weight:
        out.append(Finding.of("missing-weight-scale", f"{len(no_weight)} quantized module(s) lack a block or global "
                              f"weight scale (e.g. {no_weight[0]})", no_weight))
    if no_input:
        want = "input_global_scale" if any(_is_ct(modules[n]) for n in no_input) else "input_scale"
        out.append(Finding.of("missing-input-scale", f"{len(no_input)} W4A4 module(s) lack {want} "
                              f"(e.g. {no_input[0]})", no_input))
    if bad_shape:
        n0 = bad_shape[0]
        out.append(Finding.of("scale-shape", f"{len(bad_shape)} module(s) have a weight_scale too small for their "
                              f"weight (e.g. {n0}: {tensors[n0 + '.weight_scale'].shape})", bad_shape))
    return out


def kv_bytes_per_element(info: FormatInfo) -> float:
    """Bytes per KV-cache element the metadata declares (2.0 when it declares nothing)."""
    kv = (info.kv_cache or "").upper()
    if not kv or kv in ("NONE", "NULL"):
        return 2.0
    if "NVFP4" in kv or "FP4" in kv:
        return 0.5625
    return 1.0 if ("FP8" in kv or '"NUM_BITS": 8' in kv) else 2.0


def kv_findings(info: FormatInfo, modules: dict[str, StoredModule], tensors: dict[str, TensorInfo]) -> list[Finding]:
    if kv_bytes_per_element(info) >= 2.0:
        return []
    have: dict[str, set[str]] = {"k": set(), "v": set()}
    for t in tensors:
        for kv in ("k", "v"):
            if t.endswith(f".{kv}_scale"):
                base = t[: -len(f".{kv}_scale")]
                for tail in (f".{kv}_proj", ".attn"):
                    base = base[: -len(tail)] if base.endswith(tail) else base
                have[kv].add(base)
    missing = []
    for name, m in modules.items():
        if name.endswith(".k_proj") and m.precision in ("fp4", "fp8"):
            attn = name[: -len(".k_proj")]
            need_v = f"{attn}.v_proj" in modules
            if attn not in have["k"] or (need_v and attn not in have["v"]):
                missing.append(attn)
    if not missing:
        return []
    kv = "FP8" if kv_bytes_per_element(info) == 1.0 else "NVFP4"
    return [Finding.of("missing-kv-scales", f"{kv} KV cache declared but {len(missing)} quantized attention "
                       f"layer(s) have no k_scale/v_scale (e.g. {missing[0]})", missing)]


def unmatched_findings(info: FormatInfo, modules: dict[str, StoredModule], engine_names: set[str],
                       declared: Declared) -> list[Finding]:
    names = set(modules) | engine_names
    reps = declared.representatives(names)
    tied = not any(n.rsplit(".", 1)[-1] == "lm_head" for n in modules)
    stale = []
    for e in info.unquantized_entries:
        if is_embedding(e) or declared.entry_hits(e, names, reps):
            continue
        if tied and declared.entry_hits(e, {"lm_head"}, ["lm_head"]):
            continue  # a tied lm_head is stored once, as the embedding
        stale.append(e)
    if not stale:
        return []
    what = "entry matches" if len(stale) == 1 else "entries match"
    return [Finding.of("unmatched-entry", f"{len(stale)} exclusion {what} no stored or engine-built module: "
                       + ", ".join(repr(e) for e in stale[:5]), stale)]
