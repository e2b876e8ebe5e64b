"""quantkit checks its own outputs before they reach --out: the format metadata is right,
every metadata name resolves to real tensors, the stored precision of every module matches the
plan (FP4 count > 0; kept layers really BF16; FP8 exactly where the plan says fp8, declared FP8
in mixed-precision metadata), the metadata declares every BF16 linear unquantized (else an
engine would load it as FP4), and MTP tensors of the source are carried over in BF16. Fixable defects are fixed (and reported); the rest raise VerificationError."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantkit.checkpoint.formats import (FormatInfo, declared_precision, detect_format, get_format, is_embedding,
                                         stored_modules, unquantized_matcher)
from quantkit.checkpoint.headers import checkpoint_tensors, read_header, weight_files
from quantkit.errors import VerificationError
from quantkit.families import is_mtp, name_candidates

__all__ = ["VerifyReport", "verify_checkpoint", "plan_name_for"]


@dataclass
class VerifyReport:
    format_kind: str
    fp4_modules: int = 0
    kept_modules: int = 0
    fp8_modules: int = 0
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mtp_tensors_carried: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def plan_name_for(stored: str, planned: set[str]) -> str | None:
    """The planned (in-memory) module a stored module belongs to: the same name, the name with the
    on-disk prefix swapped as the families declare it (`backbone.` / `model.language_model.` ->
    `model.`), or an ancestor (per-expert `experts.3.up_proj` on disk belongs to the fused
    `experts` module in memory)."""
    for c in name_candidates(stored):
        parts = c.split(".")
        for i in range(len(parts), 0, -1):
            name = ".".join(parts[:i])
            if name in planned:
                return name
    return None


def _carry_mtp(ckpt: Path, source: Path, fmt: str, report: VerifyReport) -> None:
    """Copy the source's MTP tensors (dropped by transformers on load) into mtp.safetensors."""
    try:
        src_tensors = checkpoint_tensors(source)
    except (FileNotFoundError, ValueError):
        return
    out_tensors = checkpoint_tensors(ckpt)
    wanted = sorted(n for n in src_tensors if is_mtp(n) and n not in out_tensors)
    if not wanted:
        return
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    by_file: dict[str, list[str]] = {}
    for n in wanted:
        by_file.setdefault(src_tensors[n].file, []).append(n)
    tensors = {}
    for fname, names in by_file.items():
        with safe_open(str(source / fname), "pt") as f:
            for n in names:
                t = f.get_tensor(n)
                tensors[n] = t.to(torch.bfloat16) if t.is_floating_point() and t.dtype == torch.float32 else t
    save_file(tensors, str(ckpt / "mtp.safetensors"), metadata={"format": "pt"})
    index_p = ckpt / "model.safetensors.index.json"
    if index_p.is_file():
        index = json.loads(index_p.read_text())
    else:
        index = {"metadata": {}, "weight_map": {n: f.name for f in weight_files(ckpt) if f.name != "mtp.safetensors"
                                                for n in read_header(f)[0]}}
    index["weight_map"].update({n: "mtp.safetensors" for n in tensors})
    index_p.write_text(json.dumps(index, indent=2) + "\n")
    # Declare them unquantized so no engine loads them as FP4, in the format's own syntax: one
    # entry per MTP root module (the shortest prefix the mtp family's rules cover).
    f = get_format(fmt)
    f.add_unquantized(ckpt, sorted({f.subtree_entry(_mtp_root(n)) for n in tensors}))
    report.mtp_tensors_carried = len(tensors)
    report.fixes.append(f"carried {len(tensors)} MTP tensors of the source over in BF16 (mtp.safetensors)")


def _mtp_root(tensor: str) -> str:
    parts = tensor.split(".")
    return next((".".join(parts[:i]) for i in range(1, len(parts)) if is_mtp(".".join(parts[:i]))),
                tensor.rpartition(".")[0])


def verify_checkpoint(ckpt: Path, plan: Any, fmt: str, source: Path | None = None) -> VerifyReport:
    """Repair what is fixable (`repair_checkpoint`), then check metadata and every stored module
    against the plan; raise VerificationError on the first problem (counting the rest)."""
    ckpt = Path(ckpt)
    info = detect_format(ckpt)
    report = VerifyReport(info.kind)
    problems = _metadata_problems(ckpt, info, plan, fmt)
    repair_checkpoint(ckpt, fmt, source, report)
    info = detect_format(ckpt)  # re-read after the repairs
    stored = stored_modules(checkpoint_tensors(ckpt))
    report.fp4_modules = sum(m.precision == "fp4" for m in stored.values())
    if not report.fp4_modules:
        problems.append("no FP4 module in the checkpoint: the backend wrote an unquantized model")
    problems += _module_problems(info, stored, plan, report)
    report.warnings += _unused_entries(info, stored)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationError(f"{fmt} checkpoint failed verification: {problems[0]}{more}",
                                hint="nothing was written to --out; run with --debug and report it")
    return report


def repair_checkpoint(ckpt: Path, fmt: str, source: Path | None, report: VerifyReport) -> None:
    """The fixable defects, fixed and listed in report.fixes: the format's own repairs (ModelOpt's
    name sentinels) and the source's MTP tensors carried over in BF16."""
    report.fixes += get_format(fmt).repair(ckpt)
    if source is not None:
        _carry_mtp(ckpt, source, fmt, report)


def _metadata_problems(ckpt: Path, info: FormatInfo, plan: Any, fmt: str) -> list[str]:
    f = get_format(fmt)
    plans_fp8 = any(d.precision == "fp8" for d in plan.decisions)
    want_kind = "mixed" if plans_fp8 else f.nvfp4_kind  # NVFP4 + FP8 layers: mixed-precision metadata
    problems = []
    if info.kind != want_kind:
        problems.append(f"metadata says {info.kind!r} (quant_method {info.quant_method!r}), expected {want_kind!r}")
    if info.group_size not in (None, 16):
        problems.append(f"group_size is {info.group_size}, NVFP4 needs 16")
    problems += [f"{name} is missing" for name in f.metadata_files if not (ckpt / name).is_file()]
    return problems


def _module_problems(info: FormatInfo, stored: dict, plan: Any, report: VerifyReport) -> list[str]:
    """Every stored module against its plan decision and the metadata's declarations."""
    decisions = {d.module.name: d for d in plan.decisions}
    planned = set(decisions)
    declared = unquantized_matcher(info)
    problems: list[str] = []
    for m in stored.values():
        owner = plan_name_for(m.name, planned)
        problems += _against_plan(m, decisions.get(owner) if owner else None, plan.backend)
        entry = declared(m.name)
        problems += _against_metadata(m, info, entry)
        report.fp8_modules += m.precision == "fp8"
        if m.precision != "fp4" and not is_embedding(m.name):
            report.kept_modules += 1
    return problems


def _against_plan(m: Any, d: Any, backend: str) -> list[str]:
    out = []
    if d is not None and d.precision == "bf16" and m.precision == "fp4":
        out.append(f"{m.name} is FP4 but the plan keeps it BF16 ({d.reason})")
    if d is not None and d.precision == "fp4" and m.precision != "fp4":
        out.append(f"{m.name} is {m.precision.upper()} but the plan quantizes it: {backend} silently skipped it")
    if d is not None and d.precision == "fp8" and m.precision != "fp8":
        out.append(f"{m.name} is {m.precision.upper()} but the plan keeps it FP8 ({d.reason})")
    if m.precision == "fp8" and (d is None or d.precision != "fp8"):
        why = f"the plan says {d.precision.upper()}" if d is not None else "the plan does not know it"
        out.append(f"{m.name} is FP8 but {why}")
    return out


def _against_metadata(m: Any, info: FormatInfo, entry: str | None) -> list[str]:
    out = []
    if m.precision in ("fp4", "fp8") and entry:
        out.append(f"{m.name} is {m.precision.upper()} but the metadata declares it unquantized ({entry!r})")
    if info.kind == "mixed" and m.precision in ("fp4", "fp8") and not entry:
        said = declared_precision(info, m.name)
        if said != m.precision:
            out.append(f"{m.name} is {m.precision.upper()} but the metadata declares it {str(said).upper()}")
    if m.precision not in ("fp4", "fp8") and m.ndim == 2 and not is_embedding(m.name) and not entry:
        out.append(f"{m.name} is {m.precision.upper()} but the metadata does not declare it unquantized: "
                   "an engine would load it as FP4")
    return out


def _unused_entries(info: FormatInfo, stored: dict) -> list[str]:
    """Warnings for metadata entries that match no stored module (a tied lm_head is stored once, as
    the embedding; embedding entries are harmless)."""
    tied = not any(n.split(".")[-1] == "lm_head" for n in stored)
    out = []
    for e in info.unquantized_entries:
        one = unquantized_matcher(FormatInfo(info.kind, info.quant_method, unquantized_entries=[e]))
        if any(one(n) for n in stored) or is_embedding(e) or (tied and one("lm_head")):
            continue
        out.append(f"metadata entry {e!r} matches no stored module")
    return out
