"""Checks against the modules the serving engine builds, not the ones in the file: fused modules
(`qkv_proj`, `gate_up_proj`, Qwen3.5 `in_proj_qkvz` / `in_proj_ba`, one FusedMoE per layer's
experts) whose parts disagree, and fused GDN names the ignore list misses (vLLM issue 40252).
The fused-name tables are data in `quantkit.checkpoint.engine_names`."""

from __future__ import annotations

import re

from quantkit.checkpoint.engine_names import FUSED_MOE_CONTAINER, MATCHED_BY_FUSED_NAME, packed_for, part_to_fused
from quantkit.checkpoint.formats import FormatInfo, StoredModule
from quantkit.engines.vllm_layers import VLLM_VERSION, EngineModule
from quantkit.engines.vllm_match import BF16, QUANTIZED
from quantkit.inspect.names import Declared
from quantkit.inspect.report import Finding
from quantkit.inspect.vllm import VllmView

__all__ = ["engine_modules", "engine_findings", "vllm_findings", "stored_precisions"]

_FLOAT = {"bf16", "f16", "f32"}
_EXPERT = re.compile(rf"^(.*\.{FUSED_MOE_CONTAINER})\.\d+\.[^.]+$")


def engine_modules(modules: dict[str, StoredModule], model_types: list[str]) -> dict[str, dict[str, StoredModule]]:
    """fused engine module name (in the checkpoint's namespace) -> {part name: stored module}."""
    p2f = part_to_fused(packed_for(model_types))
    out: dict[str, dict[str, StoredModule]] = {}
    for m in modules.values():
        e = _EXPERT.match(m.name) if ".experts." in m.name else None
        if e:  # every projection of every expert of a layer: one FusedMoE (w13 + w2)
            out.setdefault(e.group(1), {})[m.name] = m
            continue
        parent, _, leaf = m.name.rpartition(".")
        fused = p2f.get(leaf)
        if fused:
            out.setdefault(f"{parent}.{fused}", {})[m.name] = m
    return out


def _describe(parts: dict[str, StoredModule], declared: Declared) -> str:
    bits = []
    for name in sorted(parts)[:4]:
        m = parts[name]
        tag = "ignored" if declared(name) else "quantized per metadata"
        bits.append(f"{name.rsplit('.', 1)[-1]} {m.precision.upper()} ({tag})")
    return ", ".join(bits) + (" ..." if len(parts) > 4 else "")


def engine_findings(fused: dict[str, dict[str, StoredModule]], declared: Declared) -> list[Finding]:
    disagree: list[str] = []
    first_detail = ""
    uncovered: list[str] = []
    for name, parts in fused.items():
        precs = {m.precision for m in parts.values()}
        decl = {declared(p) is not None for p in parts}
        if len(precs) > 1 or len(decl) > 1:
            disagree.append(name)
            first_detail = first_detail or f"{name}: {_describe(parts, declared)}"
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in MATCHED_BY_FUSED_NAME and decl == {True} and precs <= _FLOAT and not declared(name):
            uncovered.append(name)
    out = []
    if disagree:
        out.append(Finding.of("fused-parts-disagree", f"{len(disagree)} fused engine module(s) built from parts "
                              f"that differ in precision or metadata; first: {first_detail}", disagree))
    if uncovered:
        out.append(Finding.of("engine-name-uncovered", f"{len(uncovered)} fused GDN module(s) vLLM builds are not "
                              "covered by the ignore list, though their split parts are (e.g. "
                              f"{uncovered[0]})", uncovered))
    return out


# ----------------------------------------------------------------------------- vLLM's own decisions
def stored_precisions(m: EngineModule, stored: dict[str, StoredModule], tensors: dict) -> set[str]:
    """The precisions the parts of an engine module are stored in (fp4, fp8, bf16, ...)."""
    out = set()
    for p in m.parts:
        if p in stored:
            out.add(stored[p].precision)
        elif p in tensors:  # a 3-D fused expert tensor (`experts.gate_up_proj`)
            out.add(_DTYPE.get(tensors[p].dtype, tensors[p].dtype.lower()))
    return out


_DTYPE = {"BF16": "bf16", "F16": "f16", "F32": "f32"}


def vllm_findings(view: VllmView, stored: dict[str, StoredModule], tensors: dict, declared: Declared) -> list[Finding]:
    """Every module vLLM builds whose decision (quantized or not, `quantkit.engines.vllm_match`)
    disagrees with what is stored, plus lists right on this vLLM but not on older ones."""
    eng = f"vLLM {VLLM_VERSION}"
    refused: list[tuple[str, str]] = []
    mixed: list[str] = []
    as_fp4: list[tuple[str, EngineModule]] = []
    packed_unq: list[str] = []
    for name, d in view.decisions.items():
        m = view.modules[name]
        precs = stored_precisions(m, stored, tensors)
        if d.startswith("error"):
            refused.append((name, d[len("error: "):]))
        elif len(precs) > 1:
            mixed.append(name)
        elif d == QUANTIZED and (precs <= _FLOAT if precs else not m.parts):  # no parts: a tied lm_head
            as_fp4.append((name, m))
        elif d == BF16 and precs & {"fp4", "fp8"}:
            packed_unq += [p for p in m.parts if p in stored and stored[p].precision in ("fp4", "fp8")]
    out = _refusal_findings(refused, mixed, view, stored, declared, eng)
    out += _as_fp4_findings(as_fp4, declared, eng, view)
    if packed_unq:
        m0 = packed_unq[0]
        out.append(Finding.of("excluded-but-quantized", f"{len(packed_unq)} module(s) {eng} builds unquantized are "
                              f"stored {stored[m0].precision.upper()} (e.g. {m0})", packed_unq))
    out += _older_engine_findings(view, declared)
    if not any(f.code == "metadata-files-disagree" for f in out):
        out += _files_disagree_warning(view, declared)
    return out


def _files_disagree_warning(view: VllmView, declared: Declared) -> list[Finding]:
    """ModelOpt's two lists differ, harmlessly for vLLM 0.32 (it reads config.json's): engines that
    read hf_quant_config.json (SGLang's ModelOpt loader, vLLM before config.json carried `ignore`)
    decide from the other list."""
    hfq = ((declared.info.hf_quant_config or {}).get("quantization") or {}).get("exclude_modules")
    if view.source != "config.json" or hfq is None or set(hfq) == set(view.read_entries):
        return []
    only_hfq = sorted(set(hfq) - set(view.read_entries))
    only_cfg = sorted(set(view.read_entries) - set(hfq))
    return [Finding.of("metadata-files-disagree", f"hf_quant_config.json's exclude_modules and config.json's ignore "
                       f"differ ({len(only_hfq)} entries only in the first, {len(only_cfg)} only in the second, e.g. "
                       f"{(only_hfq or only_cfg)[0]!r}); vLLM {VLLM_VERSION} reads config.json and loads it as "
                       "stored; engines that read hf_quant_config.json (SGLang) may not", only_hfq + only_cfg,
                       severity="warning")]


def _refusal_findings(refused, mixed, view, stored, declared, eng) -> list[Finding]:
    out = []
    if refused:
        name, msg = refused[0]
        out.append(Finding.of("fused-parts-disagree", f"{eng} refuses to load {len(refused)} module(s): "
                              f"{name}: {msg}", [n for n, _ in refused]))
    if mixed:
        m = view.modules[mixed[0]]
        parts = {p: stored[p] for p in m.parts if p in stored}
        out.append(Finding.of("fused-parts-disagree", f"{len(mixed)} engine module(s) built from parts stored in "
                              f"different precisions; first: {mixed[0]}: {_describe(parts, declared)}", mixed))
    return out


def _as_fp4_findings(as_fp4, declared, eng, view) -> list[Finding]:
    """BF16 weights in modules vLLM builds quantized: named in the list under checkpoint names
    but not under vLLM's (engine-name-uncovered), or not named at all (undeclared-bf16)."""
    read = Declared(FormatInfo(declared.info.kind, declared.info.quant_method,
                               unquantized_entries=view.read_entries))  # the list vLLM reads
    other = [(n, m) for n, m in as_fp4 if m.parts and all(declared(p) for p in m.parts)
             and not all(read(p) for p in m.parts)]
    named = [(n, m) for n, m in as_fp4 if m.parts and all(read(p) for p in m.parts)]
    loose = [(n, m) for n, m in as_fp4 if (n, m) not in named and (n, m) not in other]
    out = []
    if other:
        p0 = other[0][1].parts[0]
        out.append(Finding.of("metadata-files-disagree", f"{len(other)} module(s) with BF16 weights are excluded by "
                              f"the other metadata file but not by {view.source}'s list, which {eng} reads (e.g. "
                              f"{p0} by entry {declared(p0)!r}): {eng} builds them FP4", [n for n, _ in other]))
    if named:
        n0, m0 = named[0]
        out.append(Finding.of("engine-name-uncovered", f"{len(named)} module(s) {eng} builds as FP4 hold BF16 weights "
                              f"that the list declares only under checkpoint names (e.g. {m0.parts[0]} by entry "
                              f"{declared(m0.parts[0])!r}; vLLM matches {n0})", [n for n, _ in named]))
    if loose:
        parts = [p for _, m in loose for p in (m.parts or [m.name])]
        tied = "" if loose[0][1].parts else " (tied to the embedding)"
        out.append(Finding.of("undeclared-bf16", f"{len(parts)} BF16 linear module(s) are not declared unquantized "
                              f"(e.g. {parts[0]}{tied}): {eng} would load it as FP4", parts))
    return out


def _older_engine_findings(view: VllmView, declared: Declared) -> list[Finding]:
    """Fused GDN modules this vLLM ignores through their split parts, but that vLLM before 0.32
    (Qwen3.5 classes without the packed mapping) matched by the fused name alone."""
    uncovered = [n for n, m in view.modules.items() if n.rsplit(".", 1)[-1] in MATCHED_BY_FUSED_NAME
                 and view.decisions.get(n) == BF16 and len(m.shards) > 1
                 and m.parts and all(declared(p) for p in m.parts) and not declared(_ckpt_fused(m))]
    if not uncovered:
        return []
    return [Finding.of("engine-name-uncovered", f"{len(uncovered)} fused GDN module(s) are ignored by vLLM "
                       f"{VLLM_VERSION} through their split parts, but vLLM before 0.32 matches only the fused "
                       f"name (e.g. {uncovered[0]}): on those versions BF16 weights load as FP4",
                       uncovered, severity="warning")]


def _ckpt_fused(m: EngineModule) -> str:
    """The fused module's name in the checkpoint's namespace (its first part's parent + fused leaf)."""
    return f"{m.parts[0].rpartition('.')[0]}.{m.name.rsplit('.', 1)[-1]}"
