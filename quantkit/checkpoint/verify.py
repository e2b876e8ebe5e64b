"""quantkit checks its own outputs before they reach --out: the format metadata is right,
every metadata name resolves to real tensors, the stored precision of every module matches the
plan (FP4 count > 0; kept layers really BF16; FP8 exactly where the plan says fp8, declared FP8
in mixed-precision metadata), the metadata declares every BF16 linear unquantized (else an
engine would load it as FP4), and MTP tensors of the source are carried over in BF16. Fixable defects are fixed (and reported); the rest raise VerificationError."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantkit.checkpoint.formats import (NVFP4_KIND, FormatInfo, declared_precision, declared_unquantized, detect_format,
                                         is_embedding, stored_modules)
from quantkit.checkpoint.headers import checkpoint_tensors, read_header, weight_files
from quantkit.errors import VerificationError

__all__ = ["VerifyReport", "verify_checkpoint", "plan_name_for", "MTP_RE"]

MTP_RE = re.compile(r"(^|\.)mtp\.")
_SENTINEL = re.compile(r"\x00[^*]*")


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
    on-disk prefix swapped (`backbone.` / `model.language_model.` -> `model.`), or an ancestor
    (per-expert `experts.3.up_proj` on disk belongs to the fused `experts` module in memory)."""
    cands = [stored]
    head, _, rest = stored.partition(".")
    if head != "model":
        cands.append("model." + rest)
    if stored.startswith("model.language_model."):
        cands.append("model." + stored[len("model.language_model."):])
    for c in cands:
        parts = c.split(".")
        for i in range(len(parts), 0, -1):
            name = ".".join(parts[:i])
            if name in planned:
                return name
    return None


def _fix_sentinels(ckpt: Path, report: VerifyReport) -> None:
    """ModelOpt 0.47 wrote NemotronH exclude entries such as 'lm_head.\\x00backbone.pt_name_sentinel'
    that no loader matches: cut the sentinel off, in hf_quant_config.json and config.json."""
    for fname, path in (("hf_quant_config.json", ("quantization", "exclude_modules")),
                        ("config.json", ("quantization_config", "ignore"))):
        p = ckpt / fname
        if not p.is_file():
            continue
        data = json.loads(p.read_text())
        node = data
        for key in path[:-1]:
            node = node.get(key) or {}
        entries = node.get(path[-1])
        if not entries:
            continue
        fixed = []
        for e in entries:
            clean = _SENTINEL.sub("", e)  # 'backbone.layers.0.\x00...sentinel*' -> 'backbone.layers.0.*'
            if clean != e and not clean.endswith("*"):
                clean = clean.rstrip(".")  # 'lm_head.\x00backbone.pt_name_sentinel' -> 'lm_head'
            if clean != e:
                report.fixes.append(f"{fname}: removed ModelOpt name sentinel from {e!r} -> {clean!r}")
            if clean and clean not in fixed:
                fixed.append(clean)
        if fixed != entries:
            node[path[-1]] = fixed
            p.write_text(json.dumps(data, indent=4 if fname.startswith("hf_") else 2) + "\n")


def _carry_mtp(ckpt: Path, source: Path, fmt: str, report: VerifyReport) -> None:
    """Copy the source's MTP tensors (dropped by transformers on load) into mtp.safetensors."""
    try:
        src_tensors = checkpoint_tensors(source)
    except (FileNotFoundError, ValueError):
        return
    out_tensors = checkpoint_tensors(ckpt)
    wanted = sorted(n for n in src_tensors if MTP_RE.search(n) and n not in out_tensors)
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
    # Declare them unquantized so no engine loads them as FP4.
    if fmt == "modelopt":
        _add_entry(ckpt / "hf_quant_config.json", ("quantization", "exclude_modules"), "mtp*")
        _add_entry(ckpt / "config.json", ("quantization_config", "ignore"), "mtp*")
    else:
        _add_entry(ckpt / "config.json", ("quantization_config", "ignore"), "re:(.*\\.)?mtp\\..*")
    report.mtp_tensors_carried = len(tensors)
    report.fixes.append(f"carried {len(tensors)} MTP tensors of the source over in BF16 (mtp.safetensors)")


def _add_entry(p: Path, path: tuple[str, str], entry: str) -> None:
    if not p.is_file():
        return
    data = json.loads(p.read_text())
    node = data.setdefault(path[0], {})
    entries = node.setdefault(path[1], [])
    if entry not in entries:
        entries.append(entry)
    p.write_text(json.dumps(data, indent=2) + "\n")


def verify_checkpoint(ckpt: Path, plan: Any, fmt: str, source: Path | None = None) -> VerifyReport:
    ckpt = Path(ckpt)
    info = detect_format(ckpt)
    report = VerifyReport(info.kind)
    problems: list[str] = []
    plans_fp8 = any(d.precision == "fp8" for d in plan.decisions)
    want_kind = "mixed" if plans_fp8 else NVFP4_KIND[fmt]  # NVFP4 + FP8 layers: mixed-precision metadata
    if info.kind != want_kind:
        problems.append(f"metadata says {info.kind!r} (quant_method {info.quant_method!r}), expected {want_kind!r}")
    if info.group_size not in (None, 16):
        problems.append(f"group_size is {info.group_size}, NVFP4 needs 16")
    if fmt == "modelopt" and not (ckpt / "hf_quant_config.json").is_file():
        problems.append("hf_quant_config.json is missing")
    _fix_sentinels(ckpt, report)
    if source is not None:
        _carry_mtp(ckpt, source, fmt, report)
    info = detect_format(ckpt)  # re-read after fixes

    stored = stored_modules(checkpoint_tensors(ckpt))
    decisions = {d.module.name: d for d in plan.decisions}
    fp4 = [m for m in stored.values() if m.precision == "fp4"]
    report.fp4_modules = len(fp4)
    if not fp4:
        problems.append("no FP4 module in the checkpoint: the backend wrote an unquantized model")
    for m in stored.values():
        owner = plan_name_for(m.name, set(decisions))
        d = decisions.get(owner) if owner else None
        if d is not None and d.precision == "bf16" and m.precision == "fp4":
            problems.append(f"{m.name} is FP4 but the plan keeps it BF16 ({d.reason})")
        if d is not None and d.precision == "fp4" and m.precision != "fp4":
            problems.append(f"{m.name} is {m.precision.upper()} but the plan quantizes it: {plan.backend} silently skipped it")
        if d is not None and d.precision == "fp8" and m.precision != "fp8":
            problems.append(f"{m.name} is {m.precision.upper()} but the plan keeps it FP8 ({d.reason})")
        if m.precision == "fp8" and (d is None or d.precision != "fp8"):
            why = f"the plan says {d.precision.upper()}" if d is not None else "the plan does not know it"
            problems.append(f"{m.name} is FP8 but {why}")
        entry = declared_unquantized(info, m.name)
        if m.precision == "fp4" and entry:
            problems.append(f"{m.name} is FP4 but the metadata declares it unquantized ({entry!r})")
        if info.kind == "mixed" and m.precision in ("fp4", "fp8") and not entry:
            said = declared_precision(info, m.name)
            if said != m.precision:
                problems.append(f"{m.name} is {m.precision.upper()} but the metadata declares it {str(said).upper()}")
        if m.precision == "fp8":
            report.fp8_modules += 1
            if entry:
                problems.append(f"{m.name} is FP8 but the metadata declares it unquantized ({entry!r})")
        elif m.precision != "fp4" and m.ndim == 2 and not is_embedding(m.name) and not entry:
            problems.append(f"{m.name} is {m.precision.upper()} but the metadata does not declare it unquantized: "
                            "an engine would load it as FP4")
        if m.precision != "fp4" and not is_embedding(m.name):
            report.kept_modules += 1
    tied = not any(n.split(".")[-1] == "lm_head" for n in stored)
    for e in info.unquantized_entries:
        one = FormatInfo(info.kind, info.quant_method, unquantized_entries=[e])
        if any(declared_unquantized(one, n) for n in stored) or is_embedding(e):
            continue
        if tied and declared_unquantized(one, "lm_head"):
            continue  # a tied lm_head is stored once, as the embedding
        report.warnings.append(f"metadata entry {e!r} matches no stored module")
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationError(f"{fmt} checkpoint failed verification: {problems[0]}{more}",
                                hint="nothing was written to --out; run with --debug and report it")
    return report
