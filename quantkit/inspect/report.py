"""What `inspect` returns: findings (each with severity, code, the modules concerned, why it
matters, how to fix, and the public issue it comes from) and the report that holds them.

The catalogue of codes is data, mirrored in docs/inspect.md."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SEVERITIES", "CATALOGUE", "Finding", "InspectReport", "fold_names", "natural_key"]

SEVERITIES = ("error", "warning", "info")

# code -> (severity, why it matters, how to fix, source). Family findings (`<family>-in-fp4`) take
# their "why" from the family rule that keeps the module out of FP4.
CATALOGUE: dict[str, tuple[str, str, str, str]] = {
    "excluded-but-quantized": (
        "error",
        "the metadata tells the engine to build these layers unquantized, but their tensors are packed "
        "FP4/FP8: loading fails (`no module or parameter named lm_head.input_scale`) or the engine "
        "reads packed bytes as BF16 weights",
        "store these layers in BF16 (re-export them unquantized), or remove them from "
        "exclude_modules / ignore if they are meant to be quantized",
        "vLLM issue 45102 / PR 45132 (router and lm_head exported FP4 while excluded)"),
    "undeclared-bf16": (
        "error",
        "a BF16 linear (or a tied lm_head) that the metadata does not declare unquantized is built as FP4 "
        "by the engine, which then loads BF16 weights into FP4 parameters: a size-mismatch load error or "
        "silent garbage",
        "add these modules to `ignore` (compressed-tensors) / `exclude_modules` (ModelOpt); "
        "`quantkit quantize` writes them itself",
        "ModelOpt PR 1858 (NVBug 5718750: BF16 routers missing from exclude_modules)"),
    "engine-name-uncovered": (
        "error",
        "the ignore list names these BF16 modules under the checkpoint's names, but vLLM matches the "
        "modules it builds under its own names (fused `qkv_proj` / `in_proj_qkvz`, `language_model.model.*`, "
        "`model.*` for `backbone.*`; regexes are not renamed, wildcards only at the start): the BF16 "
        "weights are loaded as if quantized and every completion is garbage",
        "`quantkit inspect --fix`, or cover the names vLLM builds, e.g. `re:.*linear_attn.*` "
        "(compressed-tensors) or `*linear_attn*` (ModelOpt)",
        "vLLM issue 40252"),
    "metadata-files-disagree": (
        "error",
        "vLLM 0.32 reads config.json's `quantization_config` when it exists (its list key is `ignore`) and "
        "never hf_quant_config.json's `exclude_modules` then; engines and tools that read "
        "hf_quant_config.json (SGLang's ModelOpt loader, older vLLM, quantkit before 0.2) see the "
        "other list. Modules only the other file excludes are built FP4 over BF16 weights",
        "make both lists the same: copy hf_quant_config.json's exclude_modules to config.json's "
        "quantization_config.ignore (`quantkit inspect --fix` does it)",
        "vLLM weight_utils.get_quant_config; modelopt.py ModelOptQuantConfigBase.from_config"),
    "fused-parts-disagree": (
        "error",
        "vLLM builds one module from these parts (qkv_proj, gate_up_proj, in_proj_qkvz, the experts of "
        "a layer) with one quantization scheme; parts that differ in precision or in the ignore list "
        "fail to load (`different quantization schemes`) or load wrongly",
        "quantize or exclude all parts of a fused module together",
        "vLLM compressed_tensors/utils.py should_ignore_layer; packed_modules_mapping"),
    "tp-split": (
        "error",
        "with `--tensor-parallel-size N` the engine shards every linear across N ranks: a row-parallel "
        "NVFP4 weight whose per-rank input width is not a multiple of 16 splits an FP8 block scale's "
        "group between two ranks, and a width or row count that does not divide by N cannot be sharded: "
        "the engine refuses to load at that TP size",
        "serve at a TP size that divides every shape (inspect --tp), or keep those modules BF16",
        "vLLM fix for Nemotron-3-Nano NVFP4 at TP8 (232 values per rank)"),
    "missing-input-scale": (
        "error",
        "NVFP4 W4A4 needs the per-tensor activation scale (`input_scale` / `input_global_scale`); "
        "without it the engine fails to load or runs activations with a wrong scale",
        "re-export from a calibrated model (the exporter dropped the scales); check the exporter version",
        "ModelOpt / compressed-tensors NVFP4 tensor layout"),
    "missing-weight-scale": (
        "error",
        "every NVFP4 weight needs its FP8 block scale (`weight_scale`) and its FP32 global scale "
        "(`weight_scale_2` / `weight_global_scale`); without them the weight cannot be dequantized",
        "re-export the checkpoint; a partial copy or a converter bug dropped scale tensors",
        "ModelOpt / compressed-tensors NVFP4 tensor layout"),
    "scale-shape": (
        "error",
        "the block scale has fewer blocks than the weight needs (one per 16 input elements): the "
        "exporter computed it from the packed shape",
        "re-export with a fixed ModelOpt (unified HF export of compressed NVFP4 weights)",
        "ModelOpt PR 2038 (NVBug 5987078)"),
    "missing-kv-scales": (
        "error",
        "the metadata declares an FP8 KV cache but the attention layers carry no `k_scale` / "
        "`v_scale`: engines fall back to scale 1.0, which clips or wastes the FP8 range",
        "re-export with KV-cache calibration, or remove kv_cache_quant_algo / kv_cache_scheme and "
        "choose the KV dtype at serve time",
        "vLLM kv-cache scale loading (maybe_remap_kv_scale_name)"),
    "nvfp4-is-fp8": (
        "error",
        "the metadata says NVFP4 but the quantized weights are FP8 (float8_e4m3fn, ~6+ bits/param "
        "instead of ~4.5): the export lost the 4-bit packing; an engine builds FP4 layers and cannot "
        "load them",
        "re-export with a ModelOpt version that writes packed uint8 NVFP4 weights",
        "ModelOpt issue 868"),
    "no-fp4-tensors": (
        "error",
        "the metadata says NVFP4 but no weight is stored as packed FP4: this is an unquantized model "
        "with quantization metadata, and engines build FP4 layers for BF16 weights",
        "quantize it for real, or drop quantization_config / hf_quant_config.json",
        "field notes: wrong metadata fails silently"),
    "format-mismatch": (
        "error",
        "the quantization metadata and the tensors disagree (method, precision or tensor-name "
        "convention), so the engine picks the wrong loader for these layers",
        "make the metadata match the tensors: ModelOpt tensors (`weight`, `weight_scale_2`, "
        "`input_scale`) need hf_quant_config.json / quant_method modelopt; compressed-tensors tensors "
        "(`weight_packed`, `weight_global_scale`) need quant_method compressed-tensors",
        "field notes: the two checkpoint formats"),
    "group-size": (
        "error", "NVFP4 uses blocks of 16 elements; engines have no kernel for another group size",
        "re-quantize with group_size 16", "NVFP4 format"),
    "missing-shard": (
        "error", "a weight file named by model.safetensors.index.json is absent or unreadable",
        "re-download the checkpoint (an interrupted download or upload)", "safetensors index"),
    "index-mismatch": (
        "error", "model.safetensors.index.json names tensors that are not in the shard it points at",
        "regenerate the index or re-download the checkpoint", "safetensors index"),
    "unmatched-entry": (
        "warning",
        "an ignore / exclude entry matches no stored module and no module the engine builds: a typo "
        "or a stale name, and whatever it meant to keep out is not kept out",
        "fix or remove the entry (ignore it if it names a module class rather than a module)",
        "compressed-tensors utils/match.py warns on targets that match nothing"),
    "starved-experts": (
        "warning",
        "quantkit's manifest records MoE experts that the router sent fewer calibration tokens than the "
        "recipe's calibration.min_expert_tokens, and that were calibrated on those tokens only: their "
        "activation scales come from too few (or no) tokens of their own, so prompts that reach them can "
        "clip, or give NaN where a scale is missing or infinite",
        "quantize again with calibration.moe: all-experts (llm-compressor; ModelOpt 0.47 does not apply it "
        "to transformers 5's fused experts) or more calibration.samples",
        "vLLM issue 45212; ModelOpt PR 1421; llm-compressor PR 1864"),
    "calibration-amax": (
        "error",
        "FP4 modules whose activation amax (from the exported input scale; recorded in quantkit's manifest, "
        "or read from the stored scales by --deep) is zero, not finite, or outside any calibrated BF16 "
        "activation range: an uncalibrated scale (e.g. a vision tower or an expert that text-only or routed "
        "calibration never reached); the engine divides by it or flushes every activation of the layer",
        "quantize again with calibration.moe: all-experts or more samples; check calibration reached the layer "
        "(keep a vision tower out of FP4, or calibrate it with images)",
        "vLLM issue 45212; compressed-tensors initialises input_global_scale with torch.empty"),
    "unknown-format": (
        "warning", "the quantization metadata names a method inspect does not know; only generic checks ran",
        "check the producer's documentation for how engines load it", "-"),
    "no-config": (
        "warning", "no config.json: the family preset (GDN, Mamba, MoE...) and the hardware fit could not be checked",
        "add the model's config.json to the checkpoint", "-"),
    "unquantized": (
        "info", "no quantization metadata and no quantized tensors: this is a BF16/F16 checkpoint",
        "quantize it with `quantkit quantize`", "-"),
    "scale-not-finite": (
        "error",
        "NaN or Inf in a scale tensor: every block it scales dequantizes to NaN, and NaN logits "
        "decode as `!!!!`",
        "re-export with a fixed exporter (unclamped FP32 -> FP8 cast of block scales)",
        "ModelOpt issue 1633"),
    "scale-zero": (
        "error", "a per-tensor scale is zero: the layer's weights or activations collapse to zero (or divide by zero)",
        "re-export from a calibrated model; check calibration covered these layers (e.g. unused experts)",
        "NVFP4 format"),
    "zero-weight": (
        "error",
        "a whole projection is zero: the model loads and serves with no error, but the layer is dead",
        "re-download or re-convert the source weights; compare against the original checkpoint",
        "ollama issue 15866 (K projection of early layers entirely zero)"),
    "zero-rows": (
        "warning", "rows of a weight are entirely zero: those output channels are dead",
        "compare with the source model; re-export if the source rows are not zero",
        "ollama issue 15866"),
}

_IDX = re.compile(r"\.(\d+)(?=\.|$)")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in _DIGITS.split(name)]


def fold_names(names: list[str], limit: int = 0) -> list[str]:
    """Names with layer / expert indices folded (`layers.*.mlp.experts.*.up_proj (x96)`) where
    several share a shape, in first-seen order; at most `limit` (0: all)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_IDX.sub(".*", n), []).append(n)
    out = [f"{k} (x{len(v)})" if len(v) > 1 else v[0] for k, v in groups.items()]
    return out[:limit] if limit else out


@dataclass
class Finding:
    severity: str
    code: str
    message: str
    modules: list[str] = field(default_factory=list)
    why: str = ""
    fix: str = ""
    source: str = ""

    @classmethod
    def of(cls, code: str, message: str, modules: list[str] = (), *, why: str | None = None,
           fix: str | None = None, severity: str | None = None, source: str | None = None) -> "Finding":
        sev, dwhy, dfix, src = CATALOGUE.get(code, ("error", "", "", ""))
        return cls(severity or sev, code, message, sorted(set(modules), key=natural_key), why or dwhy, fix or dfix,
                   source or src)

    def to_dict(self) -> dict:
        return {"severity": self.severity, "code": self.code, "message": self.message,
                "count": len(self.modules), "modules": self.modules, "modules_folded": fold_names(self.modules),
                "why": self.why, "fix": self.fix, "source": self.source}


@dataclass
class InspectReport:
    source: str
    location: str  # local | hub
    format: dict[str, Any]
    model: dict[str, Any]
    precision: dict[str, Any]
    findings: list[Finding]
    hardware: dict[str, Any]
    deep: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    def by_severity(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def errors(self) -> list[Finding]:
        return self.by_severity("error")

    @property
    def warnings(self) -> list[Finding]:
        return self.by_severity("warning")

    def exit_code(self, fail_on: str = "error") -> int:
        """1 when there is a finding at `fail_on` severity or worse, else 0."""
        worst = SEVERITIES[: SEVERITIES.index(fail_on) + 1]
        return 1 if any(f.severity in worst for f in self.findings) else 0

    def to_dict(self) -> dict:
        return {
            "schema": "quantkit.inspect/1",
            "source": self.source, "location": self.location, "deep": self.deep,
            "format": self.format, "model": self.model, "precision": self.precision,
            "counts": {s: len(self.by_severity(s)) for s in SEVERITIES},
            "findings": [f.to_dict() for f in self.findings],
            "hardware": self.hardware, "stats": self.stats,
        }
