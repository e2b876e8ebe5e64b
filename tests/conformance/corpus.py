"""The conformance corpus: checkpoint directories whose quantization metadata exercises every way
an ignore / exclude list can name modules, over tiny models of real architectures.

Each case directory holds config.json (with or without `quantization_config`), maybe
hf_quant_config.json, `case.json` (how it is served: `--quantization modelopt` for ModelOpt, as
quantkit's profiles do) and a link to its architecture's BF16 tiny weights (vLLM's decision does
not depend on tensor values; inspect reads only names and shapes). Built in the quantkit
environment; the vLLM side (vllm_oracle.py) reads the same directories.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import tiny_models as tm  # noqa: E402

# (corpus name, tiny kind, checkpoint prefix rewrite): the prefix variants store the text model
# under `model.language_model.` as the multimodal releases do.
ARCHS = [
    ("llama", "llama", None), ("gemma3", "gemma3", None), ("qwen3_moe", "qwen3_moe", None),
    ("qwen3_next", "qwen3_next", None), ("qwen3_5", "qwen3_5", None), ("qwen3_5_moe", "qwen3_5_moe", None),
    ("qwen3_5_moe_lm", "qwen3_5_moe", "model.language_model."), ("nemotron_h", "nemotron_h", None),
    ("gemma4", "gemma4", None), ("gemma4_lm", "gemma4", "model.language_model."), ("gemma4_moe", "gemma4_moe", None),
    ("gemma4_e", "gemma4_e", None), ("qwen3_5_moe_vl", "qwen3_5_moe_vl", None),
]
_NVFP4_GROUP = {"weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                            "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                                      "symmetric": True, "dynamic": "local"},
                "format": "nvfp4-pack-quantized"}


def _base(kind: str, prefix: str | None, root: Path) -> tuple[Path, list[str]]:
    """The architecture's BF16 tiny checkpoint and its weight names."""
    import torch
    from safetensors.torch import load_file, save_file

    d = root / "_base" / (kind + ("_lm" if prefix else ""))
    if not (d / "model.safetensors").is_file():
        _save_vl(d) if kind.endswith("_vl") else tm.save_tiny_checkpoint(kind, d)
        if prefix:
            sd = load_file(d / "model.safetensors")
            sd = {(prefix + k[len("model."):] if k.startswith("model.") else k): v.contiguous() for k, v in sd.items()}
            save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
            del torch
    from safetensors import safe_open

    with safe_open(d / "model.safetensors", "pt") as f:
        names = [k for k in f.keys() if len(f.get_slice(k).get_shape()) in (2, 3) or not k.endswith(".weight")]
    return d, names


def _save_vl(d: Path) -> None:
    """Qwen3.5-MoE as released (Qwen3_5MoeForConditionalGeneration): text model plus a 2-block
    vision tower, all tiny."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen3_5MoeConfig

    text = tm.tiny_config("qwen3_5_moe").to_dict()
    text.pop("architectures", None)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(Qwen3_5MoeConfig(text_config=text, vision_config=vision))
    model.to(torch.bfloat16).save_pretrained(d)
    tm.tiny_tokenizer().save_pretrained(d)


def _modules(names: list[str]) -> list[str]:
    out = []
    for n in names:
        if n.endswith(".weight") and "norm" not in n and "embed" not in n and "conv1d" not in n:
            out.append(n[: -len(".weight")])
        elif re.search(r"\.experts\.(gate_up_proj|down_proj)$", n):
            out.append(n)
    return out


def _prefix(mods: list[str]) -> str:
    m = next(m for m in mods if ".layers." in m)
    return m[: m.index(".layers.")]


_KEEP = re.compile(r"visual\.|\.linear_attn\.|\.mixer\.(in|out)_proj$|\.(mlp|mixer)\.gate$|shared_expert_gate$|router\.proj$")


def _fused(name: str) -> str:
    for parts, fused in ((("q_proj", "k_proj", "v_proj"), "qkv_proj"), (("gate_proj", "up_proj"), "gate_up_proj"),
                         (("in_proj_qkv", "in_proj_z"), "in_proj_qkvz"), (("in_proj_b", "in_proj_a"), "in_proj_ba")):
        parent, _, leaf = name.rpartition(".")
        if leaf in parts:
            return f"{parent}.{fused}"
    return name


def styles(mods: list[str]) -> dict[str, list[str]]:
    """Ignore-list styles people and tools write, from this architecture's own names."""
    p = _prefix(mods)
    ep = re.escape(p)
    keep = [m for m in mods if _KEEP.search(m)]
    attn0 = [m for m in mods if re.search(r"\.layers\.0\.self_attn\.[qkvo]_proj$", m)]
    first_attn = next((m.rsplit(".", 1)[0] for m in mods if m.endswith("self_attn.q_proj")), None)
    last_attn = next((m.rsplit(".", 1)[0] for m in reversed(mods) if m.endswith("self_attn.q_proj")), None)
    experts = [m for m in mods if re.search(r"\.experts\.\d+\.", m)]
    layer_e = experts[0].split(".experts.")[0] if experts else None
    out: dict[str, list[str]] = {
        "empty": [],
        "lm_head": ["lm_head"],
        "exact-split": keep + ["lm_head"],
        "exact-fused": list(dict.fromkeys(_fused(m) for m in keep + attn0)) + ["lm_head"],
        "regex-ckpt-prefix": [f"re:{ep}\\..*\\.linear_attn\\..*", f"re:{ep}\\..*\\.mixer\\..*",
                              f"re:{ep}\\.layers\\.0\\.self_attn\\..*", "re:model\\.visual\\..*", "re:lm_head"],
        "regex-any-prefix": ["re:.*linear_attn.*", "re:.*mixer\\.(in|out)_proj$", "re:.*\\.gate$",
                             "re:.*shared_expert_gate", "re:.*router.*", "re:.*visual.*", "re:.*lm_head"],
        "wildcard": ["*linear_attn*", "*mixer.in_proj*", "*mixer.out_proj*", "*.gate", "*shared_expert_gate*",
                     "*router*", "*visual*", "lm_head"],
        "wildcard-interior": [f"*{p}.layers.0.*", f"*{p.split('.')[-1]}.layers.1.self_attn*", "lm_head"],
        "shard-wildcards": [f"{p}.layers.*.mlp.gate_proj", f"{p}.layers.*.mlp.up_proj",
                            f"{p}.layers.*.self_attn.q_proj", f"{p}.layers.*.self_attn.k_proj",
                            f"{p}.layers.*.self_attn.v_proj", "lm_head"],
        "parent": [f"{p}.layers.0.linear_attn", f"{p}.layers.0.mixer", f"{p}.layers.1", "lm_head"],
        "partial-fused": [m for m in attn0 if m.endswith(("q_proj", "k_proj"))] + ["lm_head"],
        "first-attention-exact": ([f"{first_attn}.{x}" for x in ("q_proj", "k_proj", "v_proj", "o_proj")]
                                  if first_attn else []) + ["lm_head"],
        # every projection stored for the last attention layer (Gemma-4 k_eq_v layers store no v_proj)
        "last-attention-stored": [m for m in mods if last_attn and m.startswith(last_attn + ".")] + ["lm_head"],
    }
    if experts:
        out["experts-exact"] = [m for m in experts if m.startswith(layer_e + ".")] + ["lm_head"]
        out["experts-one"] = [experts[0], "lm_head"]
        out["experts-regex"] = ["re:.*experts.*", "re:.*lm_head"]
    if any(m.endswith("experts.gate_up_proj") for m in mods):
        out["experts-3d-names"] = [m for m in mods if m.endswith(("experts.gate_up_proj", "experts.down_proj"))] + ["lm_head"]
        out["experts-regex"] = ["re:.*experts.*", "re:.*lm_head"]
    return out


def _modelopt(entries: list[str]) -> tuple[dict, dict]:
    producer = {"name": "modelopt", "version": "0.47.0"}
    qc = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "ignore": entries, "producer": producer,
          "kv_cache_quant_algo": None}
    hfq = {"producer": producer, "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                                                  "exclude_modules": entries}}
    return qc, hfq


def _ct(entries: list[str], targets: list[str] | None = None) -> dict:
    return {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {**_NVFP4_GROUP, "targets": targets or ["Linear"]}}, "ignore": entries,
            "version": "0.19.0"}


def _write(case: Path, base: Path, qc: dict | None, hfq: dict | None, quantization: str | None) -> Path:
    case.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((base / "config.json").read_text())
    cfg.pop("quantization_config", None)
    if qc is not None:
        cfg["quantization_config"] = qc
    (case / "config.json").write_text(json.dumps(cfg, indent=1))
    if hfq is not None:
        (case / "hf_quant_config.json").write_text(json.dumps(hfq, indent=1))
    (case / "case.json").write_text(json.dumps({"quantization": quantization}))
    link = case / "model.safetensors"
    if not link.exists():
        link.symlink_to(base / "model.safetensors")
    return case


def build_corpus(root: Path) -> list[Path]:
    """Write every case under `root`; returns the case directories."""
    cases: list[Path] = []
    for name, kind, prefix in ARCHS:
        base, names = _base(kind, prefix, root)
        mods = _modules(names)
        seen: set[str] = set()
        for style, entries in styles(mods).items():
            key = json.dumps(entries)
            if key in seen:
                continue
            seen.add(key)
            qc, hfq = _modelopt(entries)
            cases.append(_write(root / f"{name}--modelopt--{style}", base, qc, hfq, "modelopt"))
            cases.append(_write(root / f"{name}--ct--{style}", base, _ct(entries), None, None))
        exact = styles(mods)["exact-split"]
        _, hfq = _modelopt(exact)
        qc, _ = _modelopt(["lm_head"])
        cases.append(_write(root / f"{name}--modelopt--files-disagree", base, qc, hfq, "modelopt"))
        cases.append(_write(root / f"{name}--modelopt--hf-quant-config-only", base, None, _modelopt(exact)[1], "modelopt"))
        cases.append(_write(root / f"{name}--ct--regex-targets", base,
                            _ct(["lm_head"], ["re:.*self_attn.*", "re:.*mlp.*", "re:.*experts.*"]), None, None))
    return cases


if __name__ == "__main__":
    for c in build_corpus(Path(sys.argv[1])):
        print(c)
