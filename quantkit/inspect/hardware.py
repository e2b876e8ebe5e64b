"""Hardware fit: bytes of weights, bytes read per generated token (MoE: the active experts only),
the decode ceiling `bandwidth / active bytes` on named machines, and whether the weights fit
with room for the KV cache. Decode is memory-bandwidth bound: every token reads every active
weight once, so the ceiling is an upper bound no engine beats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantkit.checkpoint.formats import StoredModule, is_embedding
from quantkit.checkpoint.headers import TensorInfo
from quantkit.families import MTP, VISION, layer_kinds
from quantkit.families.moe import NUM_EXPERTS_KEYS, TOPK_KEYS
from quantkit.inspect.names import fold_expert, fold_indices, index_blind
from quantkit.inspect.precision import outside_modules

__all__ = ["Machine", "MACHINES", "MEMORY_FRACTION", "DEFAULT_CONTEXT", "hardware_fit"]


@dataclass(frozen=True)
class Machine:
    name: str
    bandwidth: float  # bytes/s
    memory: float  # bytes
    note: str = ""


# Vendor figures (GB = 1e9 bytes).
MACHINES: tuple[Machine, ...] = (
    Machine("DGX Spark", 273e9, 128e9, "GB10, 128 GB LPDDR5x unified, shared with the OS"),
    Machine("RTX PRO 6000 Blackwell", 1792e9, 96e9, "96 GB GDDR7"),
    Machine("B200", 8000e9, 180e9, "180 GB HBM3e"),
)
MEMORY_FRACTION = 0.9  # vLLM's default --gpu-memory-utilization
DEFAULT_CONTEXT = 32768  # tokens of KV cache one sequence should have room for

_NOT_DECODED = [r for f in (MTP, VISION) for r in f.rules(None)]  # MTP drafts, vision towers
_FOLD = fold_indices if index_blind([r.pattern.raw for r in _NOT_DECODED]) else fold_expert


def _cfg(config: dict | None, keys: tuple[str, ...]) -> Any:
    for c in (config or {}, (config or {}).get("text_config") or {}):
        for k in keys:
            if isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool):
                return c[k]
    return None


def _text(config: dict | None) -> dict:
    config = config or {}
    return {**config, **(config.get("text_config") or {})}


def _kv_layers(tc: dict) -> int:
    """Layers with a KV cache: attention of any kind but linear (the families read the kinds)."""
    kinds = layer_kinds(tc)
    if kinds:
        return sum(1 for k in map(str, kinds) if "attention" in k and "linear" not in k)
    return int(tc.get("num_hidden_layers") or 0)


def _kv_bytes_per_token(config: dict | None, elem_bytes: float) -> int | None:
    tc = _text(config)
    heads = tc.get("num_attention_heads")
    kv_heads = tc.get("num_key_value_heads") or heads
    head_dim = tc.get("head_dim") or (tc.get("hidden_size") // heads if heads and tc.get("hidden_size") else None)
    layers = _kv_layers(tc)
    if not (kv_heads and head_dim and layers):
        return None
    return int(2 * layers * kv_heads * head_dim * elem_bytes)


def hardware_fit(tensors: dict[str, TensorInfo], modules: dict[str, StoredModule], config: dict | None,
                 kv_elem_bytes: float = 2.0, context: int | None = None,
                 machines: tuple[Machine, ...] = MACHINES,
                 others: dict[str, TensorInfo] | None = None) -> dict[str, Any]:
    tied = not any(n.rsplit(".", 1)[-1] == "lm_head" for n in modules)
    by_module = {name: m.nbytes for name, m in modules.items()}
    for t in (outside_modules(tensors, modules) if others is None else others).values():
        mod = t.name.rsplit(".", 1)[0]
        by_module[mod] = by_module.get(mod, 0) + t.nbytes
    weights = sum(by_module.values())
    dense = experts = skipped = 0
    kind_of: dict[str, str] = {}  # cached per expert-folded name: 100k+ tensors in a large MoE
    for mod, nbytes in by_module.items():
        key = _FOLD(mod)
        kind = kind_of.get(key)
        if kind is None:
            if any(r.pattern.covers(mod) for r in _NOT_DECODED) or (is_embedding(mod) and not tied):
                kind = "skipped"  # MTP draft, vision tower; an embedding lookup reads one row per token
            elif ".experts." in mod + "." and "shared_expert" not in mod:
                kind = "experts"
            else:
                kind = "dense"
            kind_of[key] = kind
        if kind == "skipped":
            skipped += nbytes
        elif kind == "experts":
            experts += nbytes
        else:
            dense += nbytes
    k, n = _cfg(config, TOPK_KEYS), _cfg(config, NUM_EXPERTS_KEYS)
    frac = (k / n) if (experts and k and n) else 1.0
    active = int(dense + experts * frac)
    kv_tok = _kv_bytes_per_token(config, kv_elem_bytes)
    max_pos = _text(config).get("max_position_embeddings")
    ctx = context or (min(max_pos, DEFAULT_CONTEXT) if isinstance(max_pos, int) else DEFAULT_CONTEXT)
    rows = []
    for m in machines:
        room = m.memory * MEMORY_FRACTION - weights
        kv_tokens = int(room // kv_tok) if (kv_tok and room > 0) else (0 if room <= 0 else None)
        if room <= 0:
            fits = "no"
        elif kv_tokens is None or kv_tokens >= ctx:
            fits = "yes"
        else:
            fits = "tight"
        rows.append({"name": m.name, "bandwidth_gbs": m.bandwidth / 1e9, "memory_gb": m.memory / 1e9,
                     "decode_ceiling_tok_s": round(m.bandwidth / active, 1) if active else None,
                     "kv_room_bytes": int(max(room, 0)), "kv_tokens": kv_tokens, "fits": fits, "note": m.note})
    return {
        "weights_bytes": weights, "active_bytes_per_token": active,
        "moe": {"experts_bytes": experts, "experts_per_token": k, "num_experts": n,
                "active_fraction": round(frac, 5)} if experts else None,
        "not_decoded_bytes": skipped, "tied_embeddings": tied,
        "kv_bytes_per_token": kv_tok, "kv_bytes_per_element": kv_elem_bytes, "context": ctx,
        "memory_fraction": MEMORY_FRACTION, "machines": rows,
    }
