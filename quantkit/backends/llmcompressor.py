"""llm-compressor: `oneshot` with a `QuantizationModifier` (NVFP4 scheme), saved compressed
(compressed-tensors `nvfp4-pack-quantized`).

The ignore list is the plan's rules as `re:` regexes (llm-compressor expands them to exact
names in config.json). After saving, the same regexes are appended to the written `ignore`
list: serving engines that build fused modules (vLLM's `in_proj_qkvz`, `qkv_proj`) then match
the fused name too, instead of only the split names found in memory (vLLM issue 40252).

Modules the plan keeps in FP8 (sensitivity-guided mixed precision) get a second config group
(FP8 per-tensor weights and inputs) targeting their exact names, which win over the NVFP4 group's
`Linear` target; the checkpoint then has two config_groups (format `mixed-precision`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from quantkit.backends.base import BackendResult, timed
from quantkit.checkpoint.headers import SHARD_BYTES
from quantkit.errors import BackendError
from quantkit.patterns import to_llmcompressor_ignore

__all__ = ["LLMCompressorBackend", "ignore_list"]

_SCHEMES = {"nvfp4": "NVFP4", "nvfp4-weight-only": "NVFP4A16"}


def ignore_list(plan: Any) -> list[str]:
    """`re:` entries for every rule that decided at least one kept module, plus exact names of
    modules kept for structural/backend reasons."""
    used = {d.rule for d in plan.kept if d.rule}
    patterns = [r.pattern for r in plan.rules if r.pattern.raw in used]
    out = to_llmcompressor_ignore(patterns)
    out += [d.module.name for d in plan.kept if not d.rule and d.module.kind == "linear" and d.precision != "fp8"]
    return out


def _config_groups(plan: Any, scheme: str) -> dict | None:
    """NVFP4 for every Linear, FP8 (per-tensor, static) for the plan's FP8 modules by exact name."""
    fp8 = plan.fp8_names()
    if not fp8:
        return None
    from compressed_tensors.quantization import preset_name_to_scheme

    return {"group_0": preset_name_to_scheme(scheme, ["Linear"]), "group_1": preset_name_to_scheme("FP8", fp8)}


class LLMCompressorBackend:
    name = "llmcompressor"
    format = "compressed-tensors"
    # calibration algorithms and where they run (measured on 0.14): AWQ pins memory while smoothing
    # (pipelines/cache.py pin_memory), which needs an accelerator; mse and gptq run on CPU
    algorithms = {"minmax": "any", "mse": "any", "gptq": "any", "awq": "cuda"}
    quantizes = {"linear": True, "experts": True}  # module kinds (quantkit.modules) it quantizes
    places_across_gpus = False  # its sequential pipeline moves one layer at a time to the GPU
    # MoE calibration (recipe calibration.moe): oneshot's moe_calibrate_all_experts, True by default
    # in 0.14; it applies to every MoE it linearizes (each expert an nn.Linear with its own observers)
    moe_default = "all-experts"
    moe_all_experts_native = True

    @staticmethod
    def routing_paused() -> bool:
        """True while the sequential pipeline re-runs a layer only to propagate its outputs (its
        hooks disabled): those tokens were counted in the calibration pass (quantkit.calib_health)."""
        from llmcompressor.modifiers.utils.hooks import HooksMixin

        return bool(HooksMixin._HOOKS_DISABLED)

    def finish_metadata(self, out_dir: Path, plan: Any) -> None:
        """Append the plan's `re:` ignore entries to config.json (see the module docstring)."""
        _append_regex_ignores(out_dir / "config.json", [e for e in ignore_list(plan) if e.startswith("re:")])

    def check_available(self) -> None:
        try:
            import llmcompressor  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"llmcompressor is not importable: {exc}",
                               hint="pip install 'llmcompressor==0.14.0.1'") from exc

    def quantize(self, model: Any, tokenizer: Any, plan: Any, calib: Any, scheme: str, out_dir: Path,
                 progress: Callable[[str, int, int], None] | None = None, kv_cache: str = "none",
                 algorithm: str = "minmax", moe: str = "all-experts", max_shard_size: int = SHARD_BYTES) -> BackendResult:
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier

        from loguru import logger

        logger.disable("llmcompressor")  # its INFO lines drown quantkit's progress; errors still raise
        logger.disable("compressed_tensors")
        ignore = ignore_list(plan)
        kwargs = {}
        if kv_cache == "fp8":
            kwargs["kv_cache_scheme"] = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
                                         "symmetric": True}
        recipe = _recipe(algorithm, _SCHEMES[scheme], ignore, kwargs, _config_groups(plan, _SCHEMES[scheme]))
        ds = Dataset.from_dict({"input_ids": calib.input_ids,
                                "attention_mask": [[1] * len(x) for x in calib.input_ids]})
        timings: dict[str, float] = {}
        # One sample per forward. Measured on an H200 (bench/formats-dense-h200-2.json, 7.24B Llama,
        # 256 x 1024 equal-length tokens): llm-compressor 0.14 calibrated in 101.2 s at batch 64
        # against 83.7 s at batch 1 (its sequential pipeline caches every batch's activations per
        # layer); and with unequal lengths its collator truncates each batch to its shortest sample.
        batch = 1
        with timed(timings, "calibrate"):
            oneshot(model=model, processor=tokenizer, dataset=ds, recipe=recipe, batch_size=batch,
                    num_calibration_samples=len(calib.input_ids), max_seq_length=calib.seq_len,
                    moe_calibrate_all_experts=moe == "all-experts")
        with timed(timings, "export"):
            model.save_pretrained(out_dir, save_compressed=True, max_shard_size=max_shard_size)
            _append_regex_ignores(out_dir / "config.json", [e for e in ignore if e.startswith("re:")])
        return BackendResult(self.format, timings,
                             native_config={"ignore": ignore, "scheme": _SCHEMES[scheme], "algorithm": algorithm,
                                            "batch_size": batch, "moe_calibrate_all_experts": moe == "all-experts",
                                            **({"fp8_modules": plan.fp8_names()} if plan.fp8 else {})})


def _recipe(algorithm: str, scheme: str, ignore: list[str], kwargs: dict, config_groups: dict | None = None) -> list:
    """llm-compressor modifiers for a calibration algorithm (all with the NVFP4 scheme, or with
    `config_groups` when the plan mixes NVFP4 and FP8)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if config_groups:
        common = dict(config_groups=config_groups, ignore=ignore, **kwargs)
    else:
        common = dict(targets="Linear", scheme=scheme, ignore=ignore, **kwargs)
    if algorithm == "minmax":
        return [QuantizationModifier(**common)]
    if algorithm == "mse":  # MSE search over weight scales instead of min-max
        return [QuantizationModifier(**common, weight_observer="memoryless_mse")]
    if algorithm == "gptq":
        return [GPTQModifier(**common)]
    if algorithm == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        # AWQ smooths activation->weight pairs (an exact rescaling), then the NVFP4 scheme quantizes
        return [AWQModifier(), QuantizationModifier(**common)]
    raise ValueError(f"llmcompressor has no algorithm {algorithm!r}")


def _append_regex_ignores(config_json: Path, regexes: list[str]) -> None:
    cfg = json.loads(config_json.read_text())
    qc = cfg.get("quantization_config") or {}
    ign = list(qc.get("ignore") or [])
    ign += [r for r in regexes if r not in ign]
    qc["ignore"] = ign
    cfg["quantization_config"] = qc
    config_json.write_text(json.dumps(cfg, indent=2) + "\n")
