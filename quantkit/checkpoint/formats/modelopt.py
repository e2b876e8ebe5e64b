"""ModelOpt's Hugging Face NVFP4 export: `hf_quant_config.json` plus `quantization_config`
(`quant_method: modelopt`) in config.json; unquantized modules listed as fnmatch wildcards in
`exclude_modules` (mirrored as `ignore` in config.json); per linear `weight` (packed E2M1, uint8),
`weight_scale` (FP8), `weight_scale_2` and `input_scale` (FP32, multiplied)."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path


from quantkit.checkpoint.formats.base import Format, FormatInfo, Nvfp4Linear, Tensors, add_entries, reciprocal

__all__ = ["MODELOPT"]

# quant_algo -> detect_format kind (NVFP4_AWQ: AWQ-calibrated NVFP4 with pre_quant_scale tensors;
# W4A16_NVFP4: weight-only NVFP4)
_KIND = {"NVFP4": "modelopt-nvfp4", "NVFP4_AWQ": "modelopt-nvfp4", "W4A16_NVFP4": "modelopt-nvfp4",
         "FP8": "modelopt-fp8", "MIXED_PRECISION": "mixed"}
_ALGO_PRECISION = {"NVFP4": "fp4", "NVFP4_AWQ": "fp4", "W4A16_NVFP4": "fp4", "FP8": "fp8"}
NOT_LISTED = "(not in quantized_layers)"
_SENTINEL = re.compile(r"\x00[^*]*")


def listed(layers: dict, module: str) -> dict | None:
    """The quantized_layers entry of `module` or of its nearest listed ancestor (fused experts)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        hit = layers.get(".".join(parts[:i]))
        if hit is not None:
            return hit
    return None


class ModelOptFormat(Format):
    name = "modelopt"
    dir_name = "modelopt"
    backend = "modelopt"
    title = "ModelOpt"
    hub_tag = "modelopt"
    color = "#76b900"
    nvfp4_kind = "modelopt-nvfp4"
    kinds = ("modelopt-nvfp4", "modelopt-fp8")
    metadata_files = ("hf_quant_config.json",)
    tensors = Tensors("weight", "weight_scale", "weight_scale_2", "input_scale", global_scale_divides=False)

    def detect(self, config: dict, hf_quant_config: dict | None) -> FormatInfo | None:
        qc = config.get("quantization_config") or {}
        method = qc.get("quant_method")
        if hf_quant_config is None and method != "modelopt":
            return None
        q = hf_quant_config.get("quantization", {}) if hf_quant_config else qc
        algo = q.get("quant_algo") or qc.get("quant_algo")
        prod = (hf_quant_config or qc).get("producer", {}) or {}
        entries = list(q.get("exclude_modules") or qc.get("ignore") or [])
        mixed = algo == "MIXED_PRECISION"
        layers = (q.get("quantized_layers") or qc.get("quantized_layers")) if mixed else None
        return FormatInfo(_KIND.get(algo, "unknown"), method, prod.get("name"), prod.get("version"), algo, None,
                          q.get("group_size"), q.get("kv_cache_quant_algo"), entries, qc, hf_quant_config,
                          dict(layers or {}) if mixed else None)

    def entry_pattern(self, entry: str):
        if any(c in entry for c in "*?["):  # fnmatch wildcards on module names, as ModelOpt's export writes them
            return re.compile(fnmatch.translate(entry)).match
        return None

    def subtree_entry(self, prefix: str, anywhere: bool = False) -> str:
        return f"{prefix}*" if anywhere else f"{prefix}.*"

    def add_unquantized(self, ckpt: Path, entries: list[str]) -> None:
        add_entries(ckpt / "hf_quant_config.json", ("quantization", "exclude_modules"), entries)
        add_entries(ckpt / "config.json", ("quantization_config", "ignore"), entries)

    def unlisted(self, info: FormatInfo, module: str) -> str | None:
        """MIXED_PRECISION: every module absent from quantized_layers is unquantized."""
        if info.quantized_layers is not None and listed(info.quantized_layers, module) is None:
            return NOT_LISTED
        return None

    def declared_precision(self, info: FormatInfo, module: str) -> str | None:
        if info.quantized_layers is not None:
            return _ALGO_PRECISION.get((listed(info.quantized_layers, module) or {}).get("quant_algo"))
        return _ALGO_PRECISION.get(info.quant_algo)

    def serve_commands(self, repo: str) -> dict[str, str]:
        return {"vllm": f"vllm serve {repo} --quantization modelopt",
                "sglang": f"python -m sglang.launch_server --model-path {repo} --quantization modelopt_fp4"}

    def read_linear(self, parts: dict) -> Nvfp4Linear:
        inp = parts.get("input_scale")
        return Nvfp4Linear(parts["weight"], parts["weight_scale"], parts["weight_scale_2"],
                           None if inp is None else reciprocal(inp))  # vLLM: input_global_scale_inv = 1 / input_scale

    def write_linear(self, lin: Nvfp4Linear) -> dict:
        import torch

        out = {"weight": lin.codes, "weight_scale": lin.block_scale,
               "weight_scale_2": lin.weight_scale.to(torch.float32).reshape(())}
        if lin.input_scale_inv is not None:
            out["input_scale"] = reciprocal(lin.input_scale_inv).reshape(())
        return out

    def quant_config(self, unquantized: list[str], patterns: list, versions: dict) -> tuple[dict, dict]:
        """ModelOpt's export layout; wildcard patterns become fnmatch entries (ModelOpt's syntax),
        regexes have no equivalent and are covered by the exact names."""
        globs = [p.raw for p in patterns if not p.raw.startswith("re:")]
        exclude = list(dict.fromkeys(list(unquantized) + globs))
        producer = {"name": "quantkit", "version": versions.get("quantkit")}
        hf = {"producer": producer, "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None,
                                                     "group_size": 16, "exclude_modules": exclude}}
        group = {"input_activations": {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16},
                 "weights": {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}, "targets": ["Linear"]}
        qc = {"config_groups": {"group_0": group}, "ignore": exclude, "quant_algo": "NVFP4", "producer": producer,
              "quant_method": "modelopt"}
        return qc, {"hf_quant_config.json": hf}

    def publish_problem(self, ckpt: Path, info: FormatInfo) -> tuple[str, str] | None:
        if not (ckpt / "hf_quant_config.json").is_file() or info.config_quant.get("quant_method") != "modelopt":
            return ("ModelOpt checkpoint lacks hf_quant_config.json or quant_method: modelopt in config.json",
                    "re-export with quantkit quantize --format modelopt")
        return None

    def repair(self, ckpt: Path) -> list[str]:
        """ModelOpt 0.47 wrote NemotronH exclude entries such as 'lm_head.\\x00backbone.pt_name_sentinel'
        that no loader matches: cut the sentinel off, in hf_quant_config.json and config.json."""
        fixes: list[str] = []
        for fname, path in (("hf_quant_config.json", ("quantization", "exclude_modules")),
                            ("config.json", ("quantization_config", "ignore"))):
            p = ckpt / fname
            data = json.loads(p.read_text()) if p.is_file() else {}
            node = data.get(path[0]) or {}
            entries = node.get(path[1])
            if not entries:
                continue
            fixed = _without_sentinels(entries, fname, fixes)
            if fixed != entries:
                node[path[1]] = fixed
                p.write_text(json.dumps(data, indent=4 if fname.startswith("hf_") else 2) + "\n")
        return fixes

    def write_metadata(self, out: Path, meta: dict) -> None:
        (out / "hf_quant_config.json").write_text(json.dumps(meta["hf_quant_config"], indent=4))


def _without_sentinels(entries: list[str], fname: str, fixes: list[str]) -> list[str]:
    fixed: list[str] = []
    for e in entries:
        clean = _SENTINEL.sub("", e)  # 'backbone.layers.0.\x00...sentinel*' -> 'backbone.layers.0.*'
        if clean != e and not clean.endswith("*"):
            clean = clean.rstrip(".")  # 'lm_head.\x00backbone.pt_name_sentinel' -> 'lm_head'
        if clean != e:
            fixes.append(f"{fname}: removed ModelOpt name sentinel from {e!r} -> {clean!r}")
        if clean and clean not in fixed:
            fixed.append(clean)
    return fixed


MODELOPT = ModelOptFormat()
