"""The modules vLLM 0.32 builds from a checkpoint, under vLLM's own names, as data plus the few
rules that turn checkpoint module names into them.

vLLM decides quantized-or-not per module *it* builds (a fused `qkv_proj`, one `experts` module per
MoE layer, `lm_head`), named after its model class's `hf_to_vllm_mapper` renames, not per tensor
in the file. `inspect` asks these questions the way vLLM does (`vllm_match.py`), and the
conformance test (tests/test_conformance.py) checks every answer against vLLM's own code in the
vLLM environment, including that the tables below still equal vLLM's class attributes.

Per architecture class (config.json `architectures[0]`), read from vllm/model_executor/models/:
- `rename`: the rename part of `hf_to_vllm_mapper` (`WeightsMapper.get_rename_mapper()`: stacked
  maps and drops removed), applied by vLLM to the quantization config's module lists;
- `drop`: prefixes / substrings the loader's full mapper maps to None (modules vLLM never builds
  in the main model, e.g. MTP heads);
- `packed`: `packed_modules_mapping` as the quantization config sees it (a class that adds
  entries in `__init__`, after `SupportsQuant.__new__` copied the mapping, keeps them out:
  Qwen3-MoE's `gate_up_proj`);
- `unquantized`: modules the class builds without a quantization config (always BF16), as
  regexes on vLLM names;
- `experts`: the checkpoint names (`gate`, `down`, `up`) of one expert's projections that
  compressed-tensors' MoE method matches as `<experts>.0.<name>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["VllmArch", "ARCHS", "VLLM_VERSION", "arch_for", "rename", "dropped", "EngineModule", "engine_layout",
           "kv_shared_from"]

VLLM_VERSION = "0.32.0"

_DENSE = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_GDN_SPLIT = {"in_proj_qkvz": ("in_proj_qkv", "in_proj_z"), "in_proj_ba": ("in_proj_b", "in_proj_a")}
_EXPERTS = ("gate_proj", "down_proj", "up_proj")


@dataclass(frozen=True)
class VllmArch:
    packed: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(_DENSE))
    rename_prefix: dict[str, str] = field(default_factory=dict)
    rename_substr: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()  # name prefixes vLLM does not build
    drop_substr: tuple[str, ...] = ()
    unquantized: tuple[str, ...] = ()  # regexes (re.search) on vLLM module names
    experts: tuple[str, str, str | None] = _EXPERTS
    builds: dict[str, tuple[str, ...]] | None = None  # fused modules the class builds, when not `packed`
    kv_shared: bool = False  # layers past num_hidden_layers - num_kv_shared_layers build q_proj only
    file: str = ""

    def fuses(self) -> dict[str, tuple[str, ...]]:
        return self.builds if self.builds is not None else self.packed


_QWEN_VL = {**_DENSE, "qkv": ("qkv",), **_GDN_SPLIT}
_QWEN_VL_RENAME = {"model.visual.": "visual.", "lm_head.": "language_model.lm_head.",
                   "model.language_model.": "language_model.model."}
_QWEN_NEXT_UNQ = (r"\.linear_attn\.conv1d$", r"\.mlp\.gate$", r"\.shared_expert_gate$")

ARCHS: dict[str, VllmArch] = {
    "LlamaForCausalLM": VllmArch(file="llama.py"),
    "Qwen3ForCausalLM": VllmArch(file="qwen3.py"),
    # packed_modules_mapping gains gate_up_proj in __init__ (mlp_only_layers), after
    # SupportsQuant.__new__ copied it to the quantization config: the config never sees it.
    "Qwen3MoeForCausalLM": VllmArch(packed={"qkv_proj": _DENSE["qkv_proj"]}, builds=dict(_DENSE),
                                    file="qwen3_moe.py ~543-576"),
    # GDN projections are stored fused; packed maps them to themselves.
    "Qwen3NextForCausalLM": VllmArch(packed={**_DENSE, "in_proj_qkvz": ("in_proj_qkvz",), "in_proj_ba": ("in_proj_ba",)},
                                     drop=("mtp.",), unquantized=_QWEN_NEXT_UNQ + (r"^lm_head$",),
                                     file="qwen3_next.py (lm_head built without quant_config)"),
    "Qwen3_5ForCausalLM": VllmArch(packed={**_DENSE, **_GDN_SPLIT}, rename_prefix={"model.language_model.": "model."},
                                   drop=("mtp.",), unquantized=_QWEN_NEXT_UNQ, file="qwen3_5.py ~298-330"),
    "Qwen3_5MoeForCausalLM": VllmArch(packed={**_DENSE, **_GDN_SPLIT}, rename_prefix={"model.language_model.": "model."},
                                      drop=("mtp.",), unquantized=_QWEN_NEXT_UNQ, file="qwen3_5.py ~455"),
    # VL wrappers: the text model under language_model., the vision tower under visual.
    "Qwen3_5ForConditionalGeneration": VllmArch(packed=_QWEN_VL, rename_prefix=_QWEN_VL_RENAME, drop=("mtp.",),
                                                unquantized=_QWEN_NEXT_UNQ, file="qwen3_5.py ~470-485"),
    "Qwen3_5MoeForConditionalGeneration": VllmArch(packed=_QWEN_VL, rename_prefix=_QWEN_VL_RENAME, drop=("mtp.",),
                                                   unquantized=_QWEN_NEXT_UNQ, file="qwen3_5.py ~470-485"),
    "NemotronHForCausalLM": VllmArch(packed={"qkv_proj": _DENSE["qkv_proj"]}, rename_prefix={"backbone": "model"},
                                     rename_substr={"A_log": "A", "embeddings": "embed_tokens"}, drop=("mtp",),
                                     unquantized=(r"\.mixer\.conv1d$", r"\.mixer\.gate$"),
                                     experts=("up_proj", "down_proj", None), file="nemotron_h.py ~720-760"),
    "Gemma3ForCausalLM": VllmArch(file="gemma3.py"),
    "Gemma4ForCausalLM": VllmArch(rename_prefix={"model.language_model.": "model."},
                                  drop_substr=("audio_tower.", "vision_tower.", "embed_audio.", "embed_vision."),
                                  unquantized=(r"\.router\.proj$",), kv_shared=True, file="gemma4.py ~375-431, 1402-1430"),
}
DEFAULT_ARCH = VllmArch(file="(architecture not in quantkit's table: LlamaForCausalLM's naming assumed)")


def arch_for(config: dict | None) -> tuple[str | None, VllmArch]:
    archs = (config or {}).get("architectures") or []
    name = archs[0] if archs else None
    return name, ARCHS.get(name, DEFAULT_ARCH)


def rename(name: str, arch: VllmArch) -> str:
    """`WeightsMapper.get_rename_mapper()._map_name`: substrings (first occurrence), then
    prefixes, in vLLM's order."""
    for sub, new in arch.rename_substr.items():
        if sub in name:
            name = name.replace(sub, new, 1)
    for pre, new in arch.rename_prefix.items():
        if name.startswith(pre):
            name = name.replace(pre, new, 1)
    return name


def dropped(name: str, arch: VllmArch) -> bool:
    return (bool(arch.drop) and name.startswith(arch.drop)) or any(s in name for s in arch.drop_substr)


@dataclass
class EngineModule:
    """One module vLLM builds: its name, what kind of layer, its shard names under vLLM's naming
    (a fused module's parts, as packed_modules_mapping expands them), and the stored checkpoint
    modules that fill it."""
    name: str
    kind: str  # linear | experts | lm_head
    shards: tuple[str, ...]
    parts: list[str] = field(default_factory=list)  # checkpoint module names (stored)
    fused_3d: bool = False  # experts stored as 3-D tensors (`experts.gate_up_proj`)


_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.([^.]+)$")
_EXPERT_3D = re.compile(r"^(.*\.experts)\.(gate_up_proj|down_proj|up_proj|gate_proj)$")


def _add(out: dict[str, EngineModule], name: str, kind: str, shards: tuple[str, ...], part: str, d3: bool = False):
    m = out.get(name)
    if m is None:
        m = out[name] = EngineModule(name, kind, shards, fused_3d=d3)
    m.parts.append(part)


def kv_shared_from(config: dict | None, arch: VllmArch) -> int | None:
    """The first layer index that only builds q_proj (Gemma-4 KV-shared layers), or None."""
    if not arch.kv_shared or not config:
        return None
    text = config.get("text_config") or config
    shared = text.get("num_kv_shared_layers") or 0
    return text["num_hidden_layers"] - shared if shared > 0 else None


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _kv_shared_skip(v: str, leaf: str, first_shared: int | None) -> bool | None:
    """None: not a KV-shared attention projection; True: not built; False: built alone (q_proj)."""
    if first_shared is None or leaf not in ("q_proj", "k_proj", "v_proj"):
        return None
    m = _LAYER.search(v)
    if m is None or int(m.group(1)) < first_shared:
        return None
    return leaf != "q_proj"


def engine_layout(linears: list[str], experts_3d: list[str], arch: VllmArch, lm_head_stored: bool,
                  first_kv_shared: int | None = None) -> dict[str, EngineModule]:
    """vLLM name -> EngineModule, from the checkpoint's 2-D linear module names and its 3-D expert
    tensors (`...experts.gate_up_proj`)."""
    fuses = arch.fuses()
    part_to_fused = {p: f for f, ps in fuses.items() for p in ps}
    out: dict[str, EngineModule] = {}
    for ck in linears:
        if dropped(ck, arch):
            continue
        v = rename(ck + ".weight", arch)[: -len(".weight")]  # vLLM renames weight names
        e = _EXPERT.match(v)
        if e:
            _add(out, e.group(1), "experts", (), ck)
            continue
        parent, _, leaf = v.rpartition(".")
        skip = _kv_shared_skip(v, leaf, first_kv_shared)
        if skip is not None:
            if not skip:
                _add(out, v, "linear", (), ck)
            continue
        fused = part_to_fused.get(leaf)
        if fused and fused != leaf:
            shards = tuple(f"{parent}.{s}" for s in fuses[fused])
            _add(out, f"{parent}.{fused}", "linear", shards, ck)
        elif v == "lm_head" or v.endswith(".lm_head"):
            _add(out, v, "lm_head", (), ck)
        else:
            _add(out, v, "linear", (), ck)
    for ck in experts_3d:
        if not dropped(ck, arch):
            _add(out, _EXPERT_3D.match(rename(ck, arch)).group(1), "experts", (), ck, d3=True)
    if not lm_head_stored:  # tied: vLLM still builds a ParallelLMHead and asks about it
        head = rename("lm_head.weight", arch)[: -len(".weight")]
        out.setdefault(head, EngineModule(head, "lm_head", ()))
    return out
