"""compressed-tensors (llm-compressor's output): `quantization_config` with
`quant_method: compressed-tensors`, config groups of format `nvfp4-pack-quantized`; unquantized
modules listed in `ignore` as exact names or `re:` regexes (matched with re.match); per linear
`weight_packed` (E2M1, uint8), `weight_scale` (FP8), `weight_global_scale` and
`input_global_scale` (FP32, divided)."""

from __future__ import annotations

import json
import re
from pathlib import Path


from quantkit.checkpoint.formats.base import Format, FormatInfo, Nvfp4Linear, Tensors, add_entries, reciprocal

__all__ = ["COMPRESSED_TENSORS"]


def _group_precision(group: dict) -> str | None:
    w = group.get("weights") or {}
    if group.get("format") == "nvfp4-pack-quantized" or (w.get("num_bits") == 4 and w.get("type") == "float"):
        return "fp4"
    if group.get("format") == "float-quantized" or (w.get("num_bits") == 8 and w.get("type") == "float"):
        return "fp8"
    return None


def _kind(qc: dict) -> str:
    fmt = qc.get("format")
    fmts = {g.get("format", fmt) for g in (qc.get("config_groups") or {}).values()} or {fmt}
    if fmts == {"nvfp4-pack-quantized"}:
        return "compressed-tensors-nvfp4"
    if fmts == {"float-quantized"}:
        return "compressed-tensors-fp8"
    return "mixed" if len(fmts) > 1 or fmt == "mixed-precision" else "unknown"


class CompressedTensorsFormat(Format):
    name = "compressed-tensors"
    dir_name = "ct"
    aliases = ("ct",)
    backend = "llmcompressor"
    title = "compressed-tensors"
    hub_tag = "compressed-tensors"
    color = "#1f6feb"
    nvfp4_kind = "compressed-tensors-nvfp4"
    kinds = ("compressed-tensors-nvfp4", "compressed-tensors-fp8")
    tensors = Tensors("weight_packed", "weight_scale", "weight_global_scale", "input_global_scale",
                      global_scale_divides=True, scale_shape=(1,))

    def detect(self, config: dict, hf_quant_config: dict | None) -> FormatInfo | None:
        qc = config.get("quantization_config") or {}
        if qc.get("quant_method") != "compressed-tensors":
            return None
        groups = qc.get("config_groups") or {}
        gs = next((g.get("weights", {}).get("group_size") for g in groups.values()), None)
        kv = qc.get("kv_cache_scheme")
        return FormatInfo(_kind(qc), "compressed-tensors", "compressed-tensors", qc.get("version"), None,
                          qc.get("format"), gs, json.dumps(kv) if kv else None, list(qc.get("ignore") or []), qc, None)

    def entry_pattern(self, entry: str):
        return re.compile(entry[3:]).match if entry.startswith("re:") else None  # vLLM: re.match

    def subtree_entry(self, prefix: str, anywhere: bool = False) -> str:
        lead = "(.*\\.)?" if anywhere else ""
        return f"re:{lead}{re.escape(prefix)}\\..*"

    def add_unquantized(self, ckpt: Path, entries: list[str]) -> None:
        add_entries(ckpt / "config.json", ("quantization_config", "ignore"), entries)

    def declared_precision(self, info: FormatInfo, module: str) -> str | None:
        """The config group whose target matches: exact name, then `re:`, then a class name such
        as `Linear`, as compressed-tensors resolves them."""
        groups = list((info.config_quant.get("config_groups") or {}).values())
        tests = (lambda t: t == module,
                 lambda t: t.startswith("re:") and re.match(t[3:], module) is not None,
                 lambda t: not t.startswith("re:") and "." not in t and t[:1].isupper())
        for test in tests:
            for g in groups:
                if any(test(t) for t in g.get("targets") or []):
                    return _group_precision(g)
        return None

    def serve_commands(self, repo: str) -> dict[str, str]:
        # no quantization flag: vLLM auto-detects compressed-tensors, and passing one is a classic failure
        return {"vllm": f"vllm serve {repo}", "sglang": f"python -m sglang.launch_server --model-path {repo}"}

    def read_linear(self, parts: dict) -> Nvfp4Linear:
        # vLLM: weight_global_scale = 1 / stored; input_global_scale_inv = stored
        return Nvfp4Linear(parts["weight_packed"], parts["weight_scale"], reciprocal(parts["weight_global_scale"]),
                           parts.get("input_global_scale"))

    def write_linear(self, lin: Nvfp4Linear) -> dict:
        """The same arithmetic as compressed-tensors' own ModelOptNvfp4Converter (1 / x)."""
        import torch

        out = {"weight_packed": lin.codes, "weight_scale": lin.block_scale,
               "weight_global_scale": reciprocal(lin.weight_scale).reshape(1)}
        if lin.input_scale_inv is not None:
            out["input_global_scale"] = lin.input_scale_inv.to(torch.float32).reshape(1)
        return out

    def quant_config(self, unquantized: list[str], patterns: list, versions: dict) -> tuple[dict, dict]:
        """llm-compressor's layout, built with compressed-tensors' own classes: NVFP4 for every
        Linear, `ignore` = the exact names plus every pattern as a `re:` entry (engines that fuse
        modules then match the fused name too, vLLM issue 40252)."""
        from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

        from quantkit.patterns import to_llmcompressor_ignore

        scheme = preset_name_to_scheme("NVFP4", ["Linear"])
        scheme.format = "nvfp4-pack-quantized"
        ignore = list(dict.fromkeys(list(unquantized) + to_llmcompressor_ignore(list(patterns))))
        qc = QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore, format="nvfp4-pack-quantized",
                                quantization_status="compressed").model_dump(mode="json")
        qc["version"] = versions.get("compressed-tensors")
        return qc, {}

    def publish_problem(self, ckpt: Path, info: FormatInfo) -> tuple[str, str] | None:
        if info.ct_format != "nvfp4-pack-quantized":
            return (f"compressed-tensors format is {info.ct_format!r}, expected 'nvfp4-pack-quantized'",
                    "re-export with quantkit quantize --format compressed-tensors")
        return None


COMPRESSED_TENSORS = CompressedTensorsFormat()
