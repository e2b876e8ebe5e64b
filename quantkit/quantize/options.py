"""What a quantize run is asked to do (options), what it returns per format (VariantResult), and
the checks of the request made before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantkit.backends import backend_class, backend_for_format, formats_of_backend
from quantkit.checkpoint.formats import parse_formats
from quantkit.checkpoint.headers import SHARD_BYTES
from quantkit.errors import UsageError
from quantkit.recipe import Recipe

__all__ = ["QuantizeOptions", "VariantResult", "parse_format", "resolve_formats", "apply_options", "check_nproc",
           "check_shard_size"]


@dataclass
class QuantizeOptions:
    formats: list[str] | None = None
    backend: str | None = None
    exclude: list[str] = field(default_factory=list)
    out: Path | None = None
    overwrite: bool = False
    strict: bool = False
    samples: int | None = None
    seq_len: int | None = None
    model: str | None = None
    algorithm: str | None = None
    mode: str = "auto"  # auto | full | layerwise
    max_memory: int | None = None  # bytes; default: the memory available now
    resume: bool = False
    nproc: int = 1  # GPUs the model is placed across (accelerate device_map, ModelOpt backend)
    calibrate_each: bool = False  # every format's library calibrates (else one does and the rest convert)
    max_shard_size: int = SHARD_BYTES  # bytes per safetensors shard written by the backend's export


@dataclass
class VariantResult:
    format: str
    backend: str
    path: Path
    manifest: dict
    timings: dict[str, float]
    peak_rss_bytes: int
    fp4_modules: int
    kept_modules: int
    size_bytes: int
    source_bytes: int


def parse_format(value: str) -> list[str]:
    """--format VALUE -> format names (a format, an alias such as `ct`, or `both`)."""
    return parse_formats(value)


def resolve_formats(recipe: Recipe, opts: QuantizeOptions) -> list[str]:
    if opts.formats:
        formats = opts.formats
    elif opts.backend:
        formats = formats_of_backend(opts.backend)
    else:
        formats = recipe.resolved_formats()
    if opts.backend and any(backend_for_format(f) != opts.backend for f in formats):
        writers = ", ".join(f"{backend_for_format(f)} writes {f}" for f in formats)
        raise UsageError(f"--backend {opts.backend} cannot write format(s) {', '.join(formats)}",
                         hint=f"{writers}; use --format both for both")
    return formats


def apply_options(recipe: Recipe, opts: QuantizeOptions) -> Recipe:
    r = recipe.model_copy(deep=True)
    if opts.model:
        r.model.source = opts.model
    if opts.samples:
        r.calibration.samples = opts.samples
    if opts.seq_len:
        r.calibration.seq_len = opts.seq_len
    if opts.algorithm:
        r.calibration.algorithm = opts.algorithm
    return r


def check_shard_size(opts: QuantizeOptions) -> None:
    if opts.max_shard_size < 1 << 20:
        raise UsageError(f"--max-shard-size {opts.max_shard_size} bytes is under 1 MiB",
                         hint="use e.g. --max-shard-size 2GiB")


def check_nproc(opts: QuantizeOptions, formats: list[str]) -> None:
    if opts.nproc <= 1:
        return
    import torch

    have = torch.cuda.device_count()
    if have < opts.nproc:
        raise UsageError(f"--nproc {opts.nproc} needs {opts.nproc} CUDA GPUs; this machine has {have}",
                         hint="drop --nproc (one GPU or CPU), or --mode layerwise: one layer at a time fits any model")
    single = [f for f in formats if not backend_class(backend_for_format(f)).places_across_gpus]
    if single:
        raise UsageError(f"--nproc places one model across GPUs, which the backend writing {single[0]} does not "
                         "use (llm-compressor's sequential pipeline moves one layer at a time to the GPU itself)",
                         hint="use --format modelopt with --nproc, or drop --nproc for compressed-tensors")
    if opts.mode == "layerwise" or opts.resume:
        raise UsageError("--nproc and --mode layerwise are alternatives", hint="pick one")
