"""inspect's model of vLLM: the modules vLLM builds from a checkpoint and, for each, whether vLLM
will build it quantized (`quantkit.engines.vllm_match`). A stored precision that disagrees with
that decision is the checkpoint that loads and prints garbage, or that fails at load.

    view = vllm_view(ckpt)   # ckpt: quantkit.inspect.load.Checkpoint (headers and metadata only)
    view.decisions           # {"model.layers.0.self_attn.qkv_proj": "fp4", ...}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.checkpoint.formats import StoredModule, is_embedding
from quantkit.checkpoint.formats.base import read_json
from quantkit.engines.vllm_layers import VLLM_VERSION, EngineModule, VllmArch, arch_for, engine_layout, kv_shared_from
from quantkit.engines.vllm_match import decide_all, matcher_for

__all__ = ["VllmView", "vllm_view", "VLLM_VERSION"]

_EXPERT_3D = re.compile(r"\.experts\.(gate_up_proj|down_proj|up_proj|gate_proj)$")


@dataclass
class VllmView:
    arch_name: str | None
    arch: VllmArch
    modules: dict[str, EngineModule]
    decisions: dict[str, str] = field(default_factory=dict)  # empty when the metadata is not modelled
    source: str | None = None  # the metadata file vLLM reads
    modelled: bool = True
    read_entries: list[str] = field(default_factory=list)  # its unquantized-module list, as written



def linear_names(stored: dict[str, StoredModule]) -> list[str]:
    """Stored modules vLLM builds as linear layers: 2-D weights (or packed FP4/FP8), no embeddings."""
    return [n for n, m in stored.items() if m.ndim == 2 and not is_embedding(n)]


def experts_3d(tensors: dict) -> list[str]:
    return [n for n, t in tensors.items() if _EXPERT_3D.search(n) and len(t.shape) == 3]


def vllm_view(config: dict | None, hf_quant_config: dict | None, stored: dict[str, StoredModule],
              tensors: dict) -> VllmView:
    arch_name, arch = arch_for(config)
    linears = linear_names(stored)
    head_stored = any(n == "lm_head" or n.endswith(".lm_head") for n in linears)
    modules = engine_layout(linears, experts_3d(tensors), arch, head_stored, kv_shared_from(config, arch))
    matcher, source = matcher_for(config or {}, hf_quant_config, arch)
    if matcher is None:
        return VllmView(arch_name, arch, modules, source=source, modelled=False)
    return VllmView(arch_name, arch, modules, decide_all(modules, matcher, arch), source, True, matcher.entries)


def vllm_view_of_dir(ckpt_dir: str | Path) -> VllmView:
    """The view of a local checkpoint directory (headers and metadata only)."""
    from quantkit.inspect.load import load_checkpoint
    from quantkit.checkpoint.formats import stored_modules

    ck = load_checkpoint(str(ckpt_dir), None)
    hfq = read_json(Path(ck.meta_dir) / "hf_quant_config.json") if ck.meta_dir is not None else None
    return vllm_view(ck.config, hfq, stored_modules(ck.tensors), ck.tensors)
