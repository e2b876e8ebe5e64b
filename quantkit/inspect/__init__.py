"""`quantkit inspect`: lint any NVFP4 checkpoint, ours or not, local or on the Hub, from its
safetensors headers and metadata alone (tensor bytes only with `deep=True`).

    report = inspect_checkpoint("out/grm-27b-nvfp4")
    if report.errors: ...

Modules: load (headers, config, Hub), precision (the precision map), checks (metadata vs tensors,
family presets, scales, KV scales, stale entries), engine (names vLLM builds), deep (tensor
scans), hardware (decode ceiling and memory fit), report (findings and their catalogue)."""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from types import SimpleNamespace

from quantkit.checkpoint.formats import FormatInfo, detect_format, stored_modules
from quantkit.errors import ModelSourceError
from quantkit.families import families_for, model_types_of
from quantkit.inspect import checks
from quantkit.inspect.engine import engine_findings, engine_modules, vllm_findings
from quantkit.inspect.hardware import MACHINES, Machine, hardware_fit
from quantkit.inspect.load import config_view, load_checkpoint, looks_like_hub_id
from quantkit.inspect.names import Declared, FamilyCover
from quantkit.inspect.precision import outside_modules, precision_map, tensor_format
from quantkit.inspect.report import CATALOGUE, SEVERITIES, Finding, InspectReport
from quantkit.inspect.tp import tp_findings
from quantkit.inspect.vllm import VLLM_VERSION, vllm_view
from quantkit.engines.vllm_layers import ARCHS

__all__ = ["inspect_checkpoint", "InspectReport", "Finding", "CATALOGUE", "SEVERITIES", "MACHINES", "Machine"]


def _order(f: Finding) -> tuple:
    return SEVERITIES.index(f.severity), f.code


@contextmanager
def _no_cyclic_gc():
    """A large MoE's headers become ~10^5 small acyclic objects; the cyclic collector would scan
    the growing heap again and again (it doubled inspect's time on a 150k-tensor checkpoint)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _manifest_findings(ckpt) -> list[Finding]:
    """Calibration health recorded by `quantkit quantize` in quantkit.json (local checkpoints)."""
    from quantkit.calib_health import inspect_findings
    from quantkit.checkpoint.manifest import read_manifest

    where = ckpt.root or ckpt.meta_dir
    return inspect_findings(read_manifest(where)) if where is not None else []


def inspect_checkpoint(path_or_id: str, deep: bool = False, *, revision: str | None = None,
                       context: int | None = None, tp: int = 1) -> InspectReport:
    """Inspect a checkpoint directory or Hub id. Reads headers and metadata only unless `deep`;
    `tp` > 1 also checks that every FP4 module shards at that tensor-parallel size.
    Raises ModelSourceError when the source is missing or not a safetensors checkpoint."""
    with _no_cyclic_gc():
        return _inspect(str(path_or_id), deep, revision, context, tp)


def _inspect(path_or_id: str, deep: bool, revision: str | None, context: int | None, tp: int = 1) -> InspectReport:
    t0 = time.perf_counter()
    if deep and looks_like_hub_id(path_or_id):
        raise ModelSourceError("--deep reads tensor bytes, which needs the checkpoint on disk",
                               hint=f"download it (`hf download {path_or_id} --local-dir DIR`) and inspect DIR")
    ckpt = load_checkpoint(path_or_id, revision)
    info = detect_format(ckpt.meta_dir) if ckpt.meta_dir is not None else FormatInfo("unquantized", None)
    modules = stored_modules(ckpt.tensors)
    config = config_view(ckpt.config) or SimpleNamespace()
    families = families_for(config)
    types = model_types_of(config)
    tkind, conventions = tensor_format(modules)
    others = outside_modules(ckpt.tensors, modules)
    precision = precision_map(ckpt.tensors, modules, others)
    declared = Declared(info)
    fused = engine_modules(modules, types)
    hfq = (info.hf_quant_config if info.hf_quant_config is not None else None)
    view = vllm_view(ckpt.config, hfq, modules, ckpt.tensors)

    findings = list(ckpt.findings)
    findings += checks.format_findings(info, modules, declared, precision["summary"]["linear_bits_per_param"])
    if info.kind != "unquantized" or tkind != "unquantized":
        findings += checks.family_findings(modules, FamilyCover(families, config))
        findings += checks.metadata_findings(info, modules, declared, by_engine=view.modelled)
        findings += checks.scale_findings(info, modules, ckpt.tensors)
        findings += checks.kv_findings(info, modules, ckpt.tensors)
        if view.modelled:  # vLLM's own decision per module it builds
            findings += vllm_findings(view, modules, ckpt.tensors, declared)
        else:
            findings += engine_findings(fused, declared)
        engine_names = set(fused) | set(view.modules) | {s for m in view.modules.values() for s in m.shards}
        findings += checks.unmatched_findings(info, modules, engine_names, declared)
        findings += tp_findings(modules, ckpt.tensors, tp)
        findings += _manifest_findings(ckpt)
    read = 0
    if deep:
        from quantkit.inspect.deep import deep_findings

        more, read = deep_findings(ckpt.root, ckpt.tensors, modules)
        findings += more
        if not any(f.code == "calibration-amax" for f in findings):  # quantkit.json said nothing: the scales
            from quantkit.calib_health import amax_findings, exported_amax

            stored = exported_amax(ckpt.root, w4a4=False, tensors=ckpt.tensors)
            findings += amax_findings(stored, "in the stored input scales")
    findings.sort(key=_order)

    hw = hardware_fit(ckpt.tensors, modules, ckpt.config, checks.kv_bytes_per_element(info), context,
                      others=others)
    cfg = ckpt.config or {}
    return InspectReport(
        source=ckpt.source, location=ckpt.location,
        format={**info.to_dict(), "tensor_format": tkind, "tensor_conventions": conventions},
        model={"model_type": cfg.get("model_type"), "architectures": cfg.get("architectures"),
               "model_types": types, "families": [f.name for f in families],
               "engine": {"name": "vllm", "version": VLLM_VERSION, "modelled": view.modelled,
                          "architecture_known": view.arch_name in ARCHS, "metadata_read": view.source}},
        precision=precision, findings=findings, hardware=hw, deep=deep,
        stats={"files": len(ckpt.files), "tensors": len(ckpt.tensors), "tensor_bytes_read": read,
               "seconds": round(time.perf_counter() - t0, 3)},
    )
