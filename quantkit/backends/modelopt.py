"""NVIDIA ModelOpt: `mtq.quantize` with an NVFP4 config, then `export_hf_checkpoint`.

The plan's kept modules are disabled by exact name (`<module>.*` entries appended to
`quant_cfg`, where later entries win), so ModelOpt quantizes exactly what the plan shows.
Modules the plan keeps in FP8 (sensitivity-guided mixed precision) get FP8 per-tensor weight and
input quantizers by exact name; the export then writes `quant_algo: MIXED_PRECISION` with a
`quantized_layers` entry per layer.
Calibration runs on CPU or GPU; a forward pass through ModelOpt's NVFP4 fake-quant model
asserts CUDA, so quality is judged through the exported checkpoint, never in-process."""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from quantkit.backends.base import BackendResult, timed
from quantkit.checkpoint.headers import SHARD_BYTES
from quantkit.errors import BackendError
from quantkit.patterns import to_modelopt_disabled

__all__ = ["ModelOptBackend"]

# ModelOpt plugins quantkit never needs whose imports cost seconds: `torch_geometric` (the GNN
# plugin quantizes PyG's Linear, which no transformers model holds) pulls in torch_geometric and
# numba, 0.6 s of the cold import on the H200 machine (bench/formats.md). Skipped only while
# quantkit imports ModelOpt, and only where that package is not imported yet: ModelOpt's
# `import_plugin` takes the ModuleNotFoundError as "not installed" and goes on. A PyG model
# quantized in the same process would need ModelOpt imported before quantkit imports it.
_SKIPPED_PLUGINS = ("torch_geometric",)

_CONFIGS = {"nvfp4": "NVFP4_DEFAULT_CFG", "nvfp4-weight-only": "W4A16_NVFP4_CFG"}
# quant config "algorithm" per quantkit calibration algorithm
_ALGORITHMS = {"minmax": "max", "mse": {"method": "mse"}, "awq_lite": "awq_lite"}


class ModelOptBackend:
    name = "modelopt"
    format = "modelopt"
    # calibration algorithms and where they run (measured on the pinned version): awq_lite and mse
    # fake-quantize during calibration, which asserts CUDA ("amax must be a CUDA tensor")
    algorithms = {"minmax": "any", "mse": "cuda", "awq_lite": "cuda"}
    quantizes = {"linear": True, "experts": True}  # module kinds (quantkit.modules) it quantizes
    places_across_gpus = True  # --nproc: the model placed across GPUs by accelerate
    # MoE calibration (recipe calibration.moe): routed unless asked; all-experts is ModelOpt's
    # moe_calib_experts_ratio=1.0, a calibration-only forward with top_k = num_experts on the sparse
    # MoE blocks it recognises (gate + experts; not e.g. Gemma-4's decoder-level router)
    moe_default = "routed"
    moe_all_experts_limit = ("ModelOpt 0.47 applies moe_calib_experts_ratio only to MoE blocks whose experts are a "
                             "module list; transformers 5's fused experts are not (and share one input quantizer per "
                             "layer), so this layer was calibrated on routed tokens")

    def finish_metadata(self, out_dir: Path, plan: Any) -> None:
        """Nothing to add: the export's exclude_modules already names every kept module."""

    def check_available(self) -> None:
        """Installed? Importing it (seconds, cold) is left to `preload` or the first use."""
        import importlib.util

        if importlib.util.find_spec("modelopt") is None:
            raise BackendError("nvidia-modelopt is not installed", hint=_INSTALL_HINT)

    def preload(self) -> None:
        """Start importing ModelOpt in a background thread (the full path calls it once the
        main thread has imported what loading the model needs, and loads the weights meanwhile:
        the weights' copies to the GPU release the GIL). An import error surfaces, as a
        BackendError, where the modules are first needed."""
        _start_import()

    def quant_config(self, plan: Any, scheme: str, kv_cache: str = "none", algorithm: str = "minmax",
                     moe: str = "routed") -> dict:
        mtq, _ = _modelopt()
        cfg = copy.deepcopy(getattr(mtq, _CONFIGS[scheme]))
        cfg["algorithm"] = _ALGORITHMS[algorithm]
        if moe == "all-experts":
            algo = cfg["algorithm"]
            cfg["algorithm"] = {**(algo if isinstance(algo, dict) else {"method": algo}), "moe_calib_experts_ratio": 1.0}
        entries = cfg["quant_cfg"]
        for pattern, body in to_modelopt_disabled(plan.kept_names()).items():
            entries.append({"quantizer_name": pattern, **body})
        for name in plan.fp8_names():
            for q in ("weight_quantizer", "input_quantizer"):
                entries.append({"quantizer_name": f"{name}.{q}", "cfg": {"num_bits": (4, 3), "axis": None},
                                "enable": True})
        if kv_cache == "fp8":
            entries.append({"quantizer_name": "*[kv]_bmm_quantizer", "num_bits": (4, 3), "axis": None, "enable": True})
        return cfg

    def quantize(self, model: Any, tokenizer: Any, plan: Any, calib: Any, scheme: str, out_dir: Path,
                 progress: Callable[[str, int, int], None] | None = None, kv_cache: str = "none",
                 algorithm: str = "minmax", moe: str = "routed", max_shard_size: int = SHARD_BYTES) -> BackendResult:
        import time

        import torch

        timings: dict[str, float] = {}
        with timed(timings, "import_wait"):  # the rest of the background import (preload), if any
            mtq, export_hf_checkpoint = _modelopt()
        cfg = self.quant_config(plan, scheme, kv_cache, algorithm, moe)
        device = next(model.parameters()).device
        batches = calib.batches(getattr(calib, "batch_size", 1))
        marks: list[float] = []
        extra = calibration_forward_kwargs(model, plan)

        def run(m, ids):
            try:
                m(ids.to(device), use_cache=False, **extra)
            except torch.OutOfMemoryError:
                if len(ids) == 1:
                    raise
                # max calibration: a batch seen partly before the OOM only saw a subset of these
                # samples, so running both halves again gives the same amax
                torch.cuda.empty_cache()
                half = len(ids) // 2
                run(m, ids[:half])
                run(m, ids[half:])

        def forward_loop(m):
            marks.append(time.perf_counter())  # the quantizers are in place
            with torch.no_grad():
                for i, ids in enumerate(batches):
                    run(m, ids)
                    if progress:
                        progress("calibrate", i + 1, len(batches))
            marks.append(time.perf_counter())

        t0 = time.perf_counter()
        with timed(timings, "calibrate"):
            mtq.quantize(model, cfg, forward_loop)
        if len(marks) >= 2:  # where mtq.quantize's time went: inserting quantizers, forwards, the rest
            timings["insert_quantizers"] = round(marks[0] - t0, 3)
            timings["calibration_forwards"] = round(marks[1] - marks[0], 3)
        with timed(timings, "export"), _streamed_shard_writes():
            export_hf_checkpoint(model, export_dir=str(out_dir), max_shard_size=max_shard_size)
        return BackendResult(self.format, timings,
                             native_config={"base": _CONFIGS[scheme], "algorithm": cfg["algorithm"],
                                            "disabled_modules": len(plan.kept_names()),
                                            **({"fp8_modules": len(plan.fp8)} if plan.fp8 else {})})


def calibration_forward_kwargs(model: Any, plan: Any) -> dict:
    """`logits_to_keep=1` for the calibration forwards when the model's output projection is not
    quantized: nothing after it holds a quantizer, so the logits of every calibration token are
    work and memory for nothing. That projection is 21% of SmolLM2-135M's matmul work (a
    49152-token vocabulary on a 576-wide model); with Qwen's 151936-token vocabulary the logits of
    one 64 x 1024 calibration batch take 19.9 GB in BF16. Every amax is the same (tested: the same
    checkpoint bytes). Empty where the head is quantized (FP4 or FP8) or the forward takes no
    `logits_to_keep`."""
    import inspect

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return {}
    name = next((n for n, m in model.named_modules() if m is head), None)
    if name is None or name in set(plan.fp4_names()) | set(plan.fp8_names()):
        return {}
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


_INSTALL_HINT = "pip install 'nvidia-modelopt==0.47.0' (without the [hf] extra)"
_lock = threading.Lock()
_imported: dict[str, Any] = {}  # "future": the import's Future, once started


def _start_import():
    """The import of ModelOpt, started once per process in a daemon thread."""
    from concurrent.futures import Future

    with _lock:
        if "future" not in _imported:
            fut: Future = Future()

            def work() -> None:
                try:
                    fut.set_result(_import_modelopt())
                except BaseException as exc:  # re-raised where the modules are needed
                    fut.set_exception(exc)

            _imported["future"] = fut
            threading.Thread(target=work, name="quantkit-import-modelopt", daemon=True).start()
        return _imported["future"]


def _modelopt():
    """(modelopt.torch.quantization, export_hf_checkpoint), waiting for the background import."""
    try:
        return _start_import().result()
    except ImportError as exc:
        raise BackendError(f"nvidia-modelopt is not importable: {exc}", hint=_INSTALL_HINT) from exc


def _import_modelopt():
    with _skipping_plugins(_SKIPPED_PLUGINS), _lazy_torch_compile():
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint
    return mtq, export_hf_checkpoint


@contextmanager
def _lazy_torch_compile() -> Iterator[None]:
    """Inside the block, `torch.compile` of a plain function compiles at the function's first
    call instead of at once. ModelOpt 0.47 decorates module-level helpers with it while it
    imports (AutoQuantize's distributed log-softmax, the FP8 GEMM helpers), none of which an
    NVFP4 quantize calls, and the decoration imports torch's inductor compiler: 2.3 s of the
    cold import on the H200 machine (bench/formats.md). Modules and anything but plain functions
    go to `torch.compile` unchanged; so does everything outside the block."""
    import functools
    import inspect

    import torch

    real = torch.compile

    def lazy(model=None, **kwargs):
        if model is None:  # @torch.compile(...) with arguments
            return lambda fn: lazy(fn, **kwargs)
        if not inspect.isfunction(model):
            return real(model, **kwargs)
        compiled: list = []

        @functools.wraps(model)
        def call(*args, **kw):
            if not compiled:
                compiled.append(real(model, **kwargs))
            return compiled[0](*args, **kw)
        return call

    torch.compile = lazy
    try:
        yield
    finally:
        if torch.compile is lazy:
            torch.compile = real


@contextmanager
def _skipping_plugins(names: tuple[str, ...]) -> Iterator[None]:
    """`import NAME` raises ModuleNotFoundError inside the block for packages not imported yet
    (a None in sys.modules: Python's documented way to block an import), restored after it."""
    import sys

    blocked = [n for n in names if n not in sys.modules]
    for n in blocked:
        sys.modules[n] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for n in blocked:
            if n in sys.modules and sys.modules[n] is None:
                del sys.modules[n]


@contextmanager
def _streamed_shard_writes() -> Iterator[None]:
    """While ModelOpt exports: transformers' `save_pretrained` writes its shards with
    `headers.save_torch_file` (the same bytes as safetensors' `save_file`, streamed from the GPU
    through a pinned buffer instead of a pageable host copy of every tensor first: the 4.45 GB
    shard of a 7.24B model wrote in 1.1-1.2 s instead of 3.8-4.5 s on the H200 machine,
    bench/formats.md). Nothing changes where transformers names its writer differently."""
    import transformers.modeling_utils as mu

    from quantkit.checkpoint.headers import save_torch_file

    original = getattr(mu, "safe_save_file", None)
    if original is None:
        yield
        return
    mu.safe_save_file = save_torch_file
    try:
        yield
    finally:
        mu.safe_save_file = original
