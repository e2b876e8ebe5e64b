"""`quantkit inspect --fix`: rewrite a checkpoint's unquantized-module lists (metadata only, never
a tensor) so that vLLM builds every module the way it is stored, then inspect the result.

What it changes, decided with vLLM's own matching (`quantkit.engines.vllm_match`):
- a BF16-stored module vLLM would build FP4 (split names listed, fused name not; a regex anchored
  at the checkpoint's prefix; a wildcard with an interior path; a tied lm_head...) gets an entry
  under the name vLLM looks up: the engine module's name in the checkpoint's namespace (vLLM
  renames literal entries itself), plus, for compressed-tensors experts, a regex on vLLM's name;
- a literal entry that names only FP4-stored modules (the engine would build them BF16) is removed;
- ModelOpt: config.json's `ignore` (the list vLLM 0.32 reads) and hf_quant_config.json's
  `exclude_modules` (what other engines read) become the same list.
What it cannot change (stored parts of one fused module in different precisions, a pattern entry
covering FP4 and BF16 modules alike) is reported, and the checkpoint keeps its errors.

Output: a new directory (weights hard-linked, else copied; atomic), or the same directory with
the old metadata files kept as `<file>.bak`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.checkpoint.atomic import atomic_dir
from quantkit.checkpoint.formats import stored_modules
from quantkit.checkpoint.formats.base import read_json
from quantkit.engines.vllm_match import BF16, QUANTIZED
from quantkit.errors import UsageError
from quantkit.inspect.engine import stored_precisions
from quantkit.inspect.vllm import VllmView, vllm_view

__all__ = ["FixResult", "plan_fix", "fix_checkpoint"]

_FLOAT = {"bf16", "f16", "f32"}


@dataclass
class FixResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    synced: list[str] = field(default_factory=list)  # entries copied between the two ModelOpt files
    unfixable: list[str] = field(default_factory=list)  # engine modules still wrong, with why
    out: Path | None = None
    backups: list[Path] = field(default_factory=list)
    report: object | None = None  # the InspectReport of the result

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.synced)

    def to_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "synced": self.synced, "unfixable": self.unfixable,
                "out": str(self.out) if self.out else None, "backups": [str(b) for b in self.backups]}


class _Lists:
    """The checkpoint's unquantized-module list(s), as one list to edit."""

    def __init__(self, config: dict, hfq: dict | None):
        self.config, self.hfq = json.loads(json.dumps(config)), json.loads(json.dumps(hfq)) if hfq else None
        qc = self.config.get("quantization_config") or {}
        self.modelopt = str(qc.get("quant_method") or ("modelopt" if hfq else "")).startswith("modelopt")
        cfg_list = list(qc.get("ignore") or [])
        hfq_list = list(((self.hfq or {}).get("quantization") or {}).get("exclude_modules") or [])
        self.entries = list(dict.fromkeys(hfq_list + cfg_list)) if self.modelopt else cfg_list
        self.synced = ([e for e in self.entries if e not in cfg_list or (self.hfq and e not in hfq_list)]
                       if self.modelopt else [])

    def written(self) -> tuple[dict, dict | None]:
        cfg = json.loads(json.dumps(self.config))
        if cfg.get("quantization_config") is not None:
            cfg["quantization_config"]["ignore"] = list(self.entries)
        hfq = json.loads(json.dumps(self.hfq)) if self.hfq else None
        if hfq is not None and isinstance(hfq.get("quantization"), dict):
            hfq["quantization"]["exclude_modules"] = list(self.entries)
        return cfg, hfq


def _ckpt_name(m) -> str:
    """The engine module under the checkpoint's names (vLLM renames literal entries itself)."""
    if m.kind == "experts":
        return m.parts[0][: m.parts[0].index(".experts") + len(".experts")]
    if len(m.shards) > 1:
        return f"{m.parts[0].rpartition('.')[0]}.{m.name.rsplit('.', 1)[-1]}"
    return m.parts[0] if m.parts else m.name


def _wrong(view: VllmView, stored: dict, tensors: dict) -> tuple[list, list, list]:
    """(BF16 modules built FP4, FP4 modules built BF16 or refused, modules that cannot be fixed)."""
    as_fp4, as_bf16, mixed = [], [], []
    for name, d in view.decisions.items():
        m = view.modules[name]
        precs = stored_precisions(m, stored, tensors)
        if len(precs) > 1:
            mixed.append(f"{name}: stored parts differ in precision ({', '.join(sorted(precs))})")
        elif d == QUANTIZED and (not precs or precs <= _FLOAT):
            as_fp4.append(m)
        elif d.startswith("error") and precs <= _FLOAT:
            as_fp4.append(m)  # a list covering some shards: name the fused module itself
        elif (d == BF16 or d.startswith("error")) and precs & {"fp4", "fp8"}:
            as_bf16.append(m)
    return as_fp4, as_bf16, mixed


def plan_fix(config: dict, hfq: dict | None, stored: dict, tensors: dict) -> tuple[FixResult, dict, dict | None]:
    """The edited metadata (config.json, hf_quant_config.json) and what changed."""
    lists = _Lists(config, hfq)
    res = FixResult(synced=list(lists.synced))
    for _ in range(4):  # entries added can make fused shards agree or disagree: re-decide until stable
        cfg, h = lists.written()
        view = vllm_view(cfg, h, stored, tensors)
        if not view.modelled:
            raise UsageError("inspect --fix edits ModelOpt and compressed-tensors NVFP4/FP8 lists only",
                             hint="this checkpoint's metadata is another kind (e.g. ModelOpt MIXED_PRECISION)")
        as_fp4, as_bf16, mixed = _wrong(view, stored, tensors)
        step_removed = _remove_literals(lists, as_bf16, stored)
        step_added = _add_entries(lists, as_fp4, ct=not lists.modelopt)
        res.removed += step_removed
        res.added += step_added
        if not step_added and not step_removed:
            break
    cfg, h = lists.written()
    view = vllm_view(cfg, h, stored, tensors)
    as_fp4, as_bf16, mixed = _wrong(view, stored, tensors)
    res.unfixable = mixed + [f"{m.name}: BF16 weights, still built FP4" for m in as_fp4] + \
        [f"{m.name}: FP4 weights, built unquantized by a pattern entry that also covers BF16 modules" for m in as_bf16]
    return res, cfg, h


def _remove_literals(lists: _Lists, as_bf16: list, stored: dict) -> list[str]:
    fp4_names = {p for m in as_bf16 for p in m.parts if stored.get(p) and stored[p].precision in ("fp4", "fp8")}
    fp4_names |= {_ckpt_name(m) for m in as_bf16 if m.parts}
    bf16 = {n for n, s in stored.items() if s.precision in _FLOAT}
    drop = [e for e in lists.entries if e in fp4_names and e not in bf16]
    lists.entries = [e for e in lists.entries if e not in drop]
    return drop


def _add_entries(lists: _Lists, as_fp4: list, ct: bool) -> list[str]:
    """Per wrong module, its checkpoint-namespace name; when that is already listed and vLLM still
    misses it, its name in vLLM's namespace (a regex for compressed-tensors, whose literal entries
    vLLM renames but whose regexes it does not)."""
    new: list[str] = []
    for m in as_fp4:
        first = _ckpt_name(m) if m.parts else "lm_head" if m.kind == "lm_head" else m.name
        cands = [first]
        if ct and m.kind == "experts":
            cands.append(f"re:{re.escape(m.name)}\\..*")  # vLLM decides experts from expert 0's names
        if first in lists.entries:
            cands.append(f"re:{re.escape(m.name)}$" if ct else m.name)
        new += [c for c in cands if c not in lists.entries and c not in new]
    lists.entries += new
    return new


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_meta(d: Path, cfg: dict, hfq: dict | None) -> None:
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if hfq is not None:
        (d / "hf_quant_config.json").write_text(json.dumps(hfq, indent=4) + "\n")


def fix_checkpoint(src: str | Path, out: str | Path | None = None, in_place: bool = False,
                   overwrite: bool = False) -> FixResult:
    """Fix `src`'s lists into `out` (a new directory) or in place (backups kept); returns what
    changed and the inspect report of the result."""
    from quantkit.inspect import inspect_checkpoint
    from quantkit.inspect.load import load_checkpoint

    src = Path(src)
    if not src.is_dir():
        raise UsageError(f"inspect --fix needs a local checkpoint directory, not {src}",
                         hint="download it first (`hf download ID --local-dir DIR`), then fix DIR")
    if (out is None) == (not in_place):
        raise UsageError("inspect --fix needs exactly one of --out DIR and --in-place")
    ck = load_checkpoint(str(src), None)
    hfq = read_json(src / "hf_quant_config.json")
    res, cfg, h = plan_fix(ck.config or {}, hfq, stored_modules(ck.tensors), ck.tensors)
    if in_place:
        res.out = src
        if res.changed:
            res.backups = _replace_in_place(src, cfg, h)
    else:
        res.out = Path(out)
        with atomic_dir(res.out, overwrite=overwrite) as tmp:
            for f in sorted(src.iterdir()):
                if f.is_file() and f.name not in ("config.json", "hf_quant_config.json"):
                    _link_or_copy(f, tmp / f.name)
            _write_meta(tmp, cfg, h)
    res.report = inspect_checkpoint(str(res.out))
    return res


def _replace_in_place(d: Path, cfg: dict, hfq: dict | None) -> list[Path]:
    backups = []
    for name in ("config.json", "hf_quant_config.json"):
        p = d / name
        if p.is_file():
            bak = d / f"{name}.bak"
            i = 1
            while bak.exists():
                bak, i = d / f"{name}.bak{i}", i + 1
            shutil.copy2(p, bak)
            backups.append(bak)
    tmp = d / ".fix-partial"
    tmp.mkdir(exist_ok=True)
    try:
        _write_meta(tmp, cfg, hfq)
        for f in tmp.iterdir():
            os.replace(f, d / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return backups
