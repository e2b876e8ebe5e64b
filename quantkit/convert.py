"""Convert an NVFP4 checkpoint between formats without recalibrating: the FP4 codes and FP8
block scales are copied byte for byte, the per-tensor scales mapped through each format's
convention (`Format.read_linear` / `write_linear`, in the formats' own modules), the metadata
rebuilt in the target's syntax. Streamed one safetensors shard at a time (memory: one shard),
written through an atomic directory with a manifest, and inspected before it is renamed into place.

What cannot be converted losslessly is refused with the reason: FP8 or mixed-precision modules,
AWQ pre-quant scales, weight-only NVFP4, quantized KV-cache scales.

`quantkit quantize --format both` uses the same code: one library calibrates, the other format is
written from its output, so the two checkpoints serve identical numbers."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantkit.checkpoint.formats import Format, detect_format, format_for_kind, get_format, stored_modules
from quantkit.checkpoint.headers import checkpoint_tensors
from quantkit.errors import UsageError, VerificationError
from quantkit.progress import SILENT, Reporter

__all__ = ["ConvertResult", "convert", "convert_tensors", "make_reciprocal_stable", "metadata_lists"]

# files rebuilt (metadata) or owned by quantkit (manifest, card) rather than copied
_REBUILT = {"config.json", "hf_quant_config.json", "quantkit.json", "README.md", "model.safetensors.index.json"}
_REFUSED_LEAVES = {"pre_quant_scale": "AWQ pre-quant scales (NVFP4_AWQ) have no compressed-tensors equivalent",
                   "k_scale": "quantized KV-cache scales are not converted", "v_scale": "quantized KV-cache scales are not converted"}


@dataclass
class ConvertResult:
    path: Path
    source_format: str
    format: str
    modules: int = 0  # NVFP4 linears converted
    inexact_scales: int = 0  # per-tensor scales that moved by 1 ulp (float32 reciprocal, see Nvfp4Linear)
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)


def _nvfp4_format(ckpt: Path) -> Format:
    info = detect_format(ckpt)
    f = format_for_kind(info.kind)
    if f is None or info.kind != f.nvfp4_kind:
        raise UsageError(f"{ckpt} is not an NVFP4 checkpoint of a known format (its metadata says {info.kind!r})",
                         hint="convert works on ModelOpt and compressed-tensors NVFP4 checkpoints; "
                              "mixed-precision (FP8 + FP4) checkpoints cannot be converted losslessly")
    return f


def _refuse_lossy(ckpt: Path, src: Format) -> None:
    """Refuse, with the reason, what the target could not hold exactly."""
    tensors = checkpoint_tensors(ckpt)
    for name in tensors:
        leaf = name.rpartition(".")[2]
        if leaf in _REFUSED_LEAVES:
            raise UsageError(f"cannot convert {ckpt} losslessly: {name}: {_REFUSED_LEAVES[leaf]}",
                             hint="re-quantize from the BF16 source with quantkit quantize --format both")
    for m in stored_modules(tensors).values():
        if m.precision == "fp8":
            raise UsageError(f"cannot convert {ckpt}: {m.name} is FP8 (mixed precision); only NVFP4 and BF16 "
                             "modules are converted", hint="re-quantize with --format both and calibration.each: true")
        if m.precision == "fp4" and not any(t.endswith("." + src.tensors.input_scale) for t in m.tensors):
            raise UsageError(f"cannot convert {ckpt}: {m.name} has no activation scale (weight-only NVFP4 is "
                             "not converted yet)", hint="re-quantize with --format both")


def convert_tensors(src_dir: Path, dst_dir: Path, src: Format, dst: Format, stable: bool = False,
                    reporter: Reporter = SILENT, hash_source: bool = False) -> tuple[int, int]:
    """Rewrite every safetensors shard of `src_dir` into `dst_dir` (may be the same directory),
    NVFP4 linears renamed from `src`'s naming to `dst`'s and their per-tensor scales mapped,
    everything else kept. Only the scales pass through Python (a few bytes per linear); the rest
    is one streamed copy per shard, hashed on the way (`headers.rewrite_file`; `hash_source`:
    the source's sha256 too, for a manifest still to be written there), or nothing at all when
    the names stay (`headers.patch_values`, in place); shards in parallel threads. `stable`: move the scales to
    reciprocal-stable values first. Returns (linears, scales changed): with `stable` the linears
    whose scales moved, else those whose scales `dst` cannot store exactly."""
    import os
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from quantkit.checkpoint.headers import patch_values, read_header, rewrite_file, weight_files

    files = [f.name for f in weight_files(src_dir)]

    def one(fname: str) -> tuple[dict, int, int]:
        tensors, _ = read_header(src_dir / fname)
        names, shapes, values, n_mod, n_changed = _shard_plan(src_dir / fname, tensors, src, dst, stable)
        if src_dir == dst_dir and not any(o != n for o, n in names.items()):
            patch_values(dst_dir / fname, values)
        else:
            rewrite_file(src_dir / fname, dst_dir / fname, names, shapes, values, {"format": "pt"}, hash_source)
        return {names.get(n, n): fname for n in tensors}, n_mod, n_changed

    # shards in parallel: the copies and their sha256 release the GIL, and one core hashes 1.2-1.3 GB/s
    modules = changed = 0
    weight_map: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1, 8))) as pool:
        for k, fut in enumerate(as_completed([pool.submit(one, f) for f in files])):
            names_of, n_mod, n_changed = fut.result()
            weight_map.update(names_of)
            modules, changed = modules + n_mod, changed + n_changed
            reporter.advance("shards", k + 1, len(files))
    if len(files) > 1 or (src_dir / "model.safetensors.index.json").is_file():
        index = {"metadata": {"total_size": sum((dst_dir / f).stat().st_size for f in files)},
                 "weight_map": dict(sorted(weight_map.items()))}
        (dst_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return modules, changed


def _shard_plan(path: Path, tensors: dict, src: Format, dst: Format, stable: bool):
    """(renames, new shapes, new scale bytes, linears, scales changed) for one shard: the NVFP4
    linears' scale tensors are read (4 bytes each) and mapped through the formats."""
    from safetensors import safe_open

    by_mod: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        mod, _, leaf = name.rpartition(".")
        by_mod.setdefault(mod, {})[leaf] = t
    names, shapes, values = {}, {}, {}
    modules = changed = 0
    role_src, role_dst = src.tensors.roles(), dst.tensors.roles()
    scale_roles = ("global_scale", "input_scale")
    with safe_open(str(path), "pt") as f:
        for mod, parts in by_mod.items():
            if not _is_nvfp4(parts, src):
                continue
            stored = {role_src[r]: f.get_tensor(f"{mod}.{role_src[r]}") for r in scale_roles if role_src[r] in parts}
            lin = src.read_linear({**{leaf: None for leaf in src.tensors.all()}, **stored})
            if stable:
                lin, before = lin.reciprocal_stable(), lin
                changed += int(not lin.same_scales(before))
            written = dst.write_linear(lin)
            if not stable:
                changed += int(not dst.read_linear(written).same_scales(lin))
            for r, leaf in role_src.items():
                if leaf not in parts:
                    continue
                new = f"{mod}.{role_dst[r]}"
                names[f"{mod}.{leaf}"] = new
                if r in scale_roles:
                    shapes[new] = tuple(written[role_dst[r]].shape)
                    values[new] = written[role_dst[r]].contiguous().numpy().tobytes()
            modules += 1
    return names, shapes, values, modules, changed


def _is_nvfp4(parts: dict, f: Format) -> bool:
    """A module stored as NVFP4 in `f`'s naming (from header dtypes)."""
    codes, scale = parts.get(f.tensors.codes), parts.get(f.tensors.block_scale)
    return (codes is not None and codes.dtype == "U8" and scale is not None and scale.dtype == "F8_E4M3"
            and f.tensors.global_scale in parts)


def make_reciprocal_stable(ckpt: Path, fmt: str) -> int:
    """Rewrite a checkpoint's per-tensor scales in place to reciprocal-stable values (<= 1 ulp), so
    that converting it to any format is exact; the count of linears whose scales moved."""
    f = get_format(fmt)
    return convert_tensors(ckpt, ckpt, f, f, stable=True)[1]


def metadata_lists(ckpt: Path, src: Format) -> tuple[list[str], list]:
    """(exact module names, Patterns) the target must declare unquantized: the source's entries
    as quantkit Patterns (ModelOpt wildcards and `re:` regexes both are), plus every stored
    non-FP4 2-D module by exact name, so no BF16 linear is left undeclared in any syntax."""
    from quantkit.patterns import Pattern

    info = detect_format(ckpt)
    exact, patterns = [], []
    for e in info.unquantized_entries:
        if src.entry_pattern(e) is None:
            exact.append(e)
        else:
            patterns.append(Pattern(e))
    stored = stored_modules(checkpoint_tensors(ckpt))
    exact += [m.name for m in stored.values() if m.precision not in ("fp4", "fp8") and m.ndim == 2]
    exact += _unquantized_fused(ckpt, stored)
    return list(dict.fromkeys(exact)), patterns


def _unquantized_fused(ckpt: Path, stored: dict) -> list[str]:
    """The names of the modules the engine fuses from stored BF16 parts (`in_proj_ba`, `qkv_proj`,
    a layer's experts): a target syntax without regexes (ModelOpt) must name them too (vLLM issue
    40252), since a regex entry of the source that covered them does not translate."""
    from quantkit.families import model_types_of
    from quantkit.inspect.engine import engine_modules

    cfg = json.loads((ckpt / "config.json").read_text())
    return [name for name, parts in engine_modules(stored, model_types_of(cfg)).items()
            if all(m.precision not in ("fp4", "fp8") for m in parts.values())]


def write_metadata(src_dir: Path, dst_dir: Path, dst: Format, unquantized: list[str], patterns: list) -> None:
    """config.json = the source's with the target's quantization_config; the target's other
    metadata files; the source's other files (tokenizer, generation config, ...) copied."""
    from quantkit.checkpoint.manifest import tool_versions

    versions = {k: v for k, v in tool_versions().items() if v}
    qc, files = dst.quant_config(unquantized, patterns, versions)
    cfg = json.loads((src_dir / "config.json").read_text())
    cfg["quantization_config"] = qc
    (dst_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name, body in files.items():
        (dst_dir / name).write_text(json.dumps(body, indent=4) + "\n")
    for p in src_dir.iterdir():
        if p.is_file() and p.suffix != ".safetensors" and p.name not in _REBUILT and not p.name.startswith("."):
            if p.name in files:
                continue
            shutil.copy2(p, dst_dir / p.name)


def convert(source: str | Path, to: str, out: Path, overwrite: bool = False, reporter: Reporter = SILENT,
            inspect: bool = True) -> ConvertResult:
    """`quantkit convert`: see the module doc. `source`: a local checkpoint or a Hub id."""
    from quantkit.checkpoint.atomic import atomic_dir
    from quantkit.checkpoint.manifest import read_manifest, write_manifest
    from quantkit.source import local_checkpoint

    t0 = time.perf_counter()
    src_dir = Path(source) if Path(source).is_dir() else local_checkpoint(str(source), None)
    src, dst = _nvfp4_format(src_dir), get_format(to)
    if src is dst:
        raise UsageError(f"{source} is already {dst.name}", hint="nothing to convert")
    _refuse_lossy(src_dir, src)
    reporter.stage(f"convert [{src.name} -> {dst.name}]", str(src_dir))
    exact, patterns = metadata_lists(src_dir, src)
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        modules, inexact = convert_tensors(src_dir, tmp, src, dst, reporter=reporter)
        write_metadata(src_dir, tmp, dst, exact, patterns)
        res = ConvertResult(Path(out), src.name, dst.name, modules, inexact)
        if inspect:
            _inspect(tmp)
        old = read_manifest(src_dir) or {}
        res.seconds = round(time.perf_counter() - t0, 3)
        res.manifest = write_manifest(tmp, {
            "format": dst.name, "backend": old.get("backend"), "scheme": old.get("scheme", "nvfp4"),
            "source": old.get("source") or {"model": str(source), "local_path": str(src_dir)},
            "converted_from": {"path": str(src_dir), "format": src.name, "content_hash": old.get("content_hash")},
            "conversion": {"nvfp4_linears": modules, "inexact_scales": inexact, "seconds": res.seconds},
            **{k: old[k] for k in ("recipe", "plan", "calibration") if k in old}})
    return res


def _inspect(ckpt: Path) -> None:
    from quantkit.inspect import inspect_checkpoint

    errors = inspect_checkpoint(str(ckpt)).errors
    if errors:
        first = errors[0]
        raise VerificationError(f"the converted checkpoint fails inspect: {getattr(first, 'code', '')}: "
                                f"{getattr(first, 'message', first)} (+{len(errors) - 1} more)",
                                hint="nothing was written; run quantkit inspect on the source and report it")
