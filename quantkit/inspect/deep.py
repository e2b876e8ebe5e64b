"""`inspect --deep`: read tensor bytes after all, to find what no header shows: NaN / Inf / zero in
scale tensors (ModelOpt issue 1633), and all-zero rows or whole all-zero projections (ollama issue
15866: a K projection of early layers entirely zero). Streamed shard by shard, one tensor at a
time, large tensors in row slices, so memory stays bounded by CHUNK_BYTES whatever the model."""

from __future__ import annotations

from pathlib import Path

from quantkit.checkpoint.formats import StoredModule, is_embedding
from quantkit.checkpoint.headers import TensorInfo
from quantkit.inspect.precision import GLOBAL_SCALE_LEAVES, SCALE_LEAVES
from quantkit.inspect.report import Finding

__all__ = ["CHUNK_BYTES", "deep_findings"]

CHUNK_BYTES = 64 << 20
_ELEM = {"U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "BF16": 2, "F16": 2, "F32": 4}


Target = tuple[TensorInfo, str, str]  # (tensor, what, module)


def _targets(tensors: dict[str, TensorInfo], modules: dict[str, StoredModule]) -> dict[str, list[Target]]:
    """file -> [(tensor, what, module)] in file order; what: scale | global | packed | float."""
    out: dict[str, list[Target]] = {}

    def add(t: TensorInfo, what: str, mod: str) -> None:
        out.setdefault(t.file, []).append((t, what, mod))

    for t in tensors.values():
        mod, _, leaf = t.name.rpartition(".")
        if leaf in GLOBAL_SCALE_LEAVES:
            add(t, "global", mod)
        elif leaf in SCALE_LEAVES and t.dtype in _ELEM and t.dtype != "U8":
            add(t, "scale", mod)
    for m in modules.values():
        if m.precision == "fp4":
            w = next((t for t in m.tensors if t.endswith((".weight_packed", ".weight"))), None)
            if w is not None and tensors[w].dtype == "U8":
                add(tensors[w], "packed", m.name)
        elif m.ndim >= 2 and not is_embedding(m.name) and f"{m.name}.weight" in tensors:
            add(tensors[f"{m.name}.weight"], "float", m.name)
    for items in out.values():
        items.sort(key=lambda x: x[0].offsets[0])
    return out


def _chunks(f, t: TensorInfo):
    """The tensor as [rows, last] pieces of at most CHUNK_BYTES (one piece for small tensors)."""
    if len(t.shape) < 2:
        yield f.get_tensor(t.name).reshape(1, -1)
        return
    sl = f.get_slice(t.name)
    per_first = max(1, t.nbytes // max(t.shape[0], 1))
    step = max(1, CHUNK_BYTES // per_first)
    for i in range(0, t.shape[0], step):
        piece = sl[i:i + step]
        yield piece.reshape(-1, piece.shape[-1])


def deep_findings(root: Path, tensors: dict[str, TensorInfo],
                  modules: dict[str, StoredModule]) -> tuple[list[Finding], int]:
    """(findings, tensor bytes read)."""
    import torch
    from safetensors import safe_open

    bad, zero_scale, dead, rows = [], [], [], {}
    read = 0
    for fname, items in _targets(tensors, modules).items():
        with safe_open(str(root / fname), framework="pt") as f:
            for t, what, mod in items:
                zero_rows = total_rows = 0
                for piece in _chunks(f, t):
                    read += piece.numel() * piece.element_size()
                    if what in ("scale", "global"):
                        x = piece.float()
                        if not torch.isfinite(x).all():
                            bad.append(mod)
                        if what == "global" and (x == 0).any():
                            zero_scale.append(mod)
                        continue
                    if what == "packed":
                        z = (piece & 0x77) == 0  # nibbles 0x0 / 0x8: +-0 in E2M1
                    elif piece.element_size() == 1:
                        z = (piece.view(torch.uint8) & 0x7F) == 0  # FP8: +-0
                    else:
                        z = piece == 0
                    zero_rows += int(z.all(dim=-1).sum())
                    total_rows += piece.shape[0]
                if what in ("packed", "float") and zero_rows:
                    if zero_rows == total_rows:
                        dead.append(mod)
                    else:
                        rows[mod] = (zero_rows, total_rows)
    out = []
    if bad:
        out.append(Finding.of("scale-not-finite", f"{len(set(bad))} module(s) have NaN/Inf in a scale tensor "
                              f"(e.g. {bad[0]})", bad))
    if zero_scale:
        out.append(Finding.of("scale-zero", f"{len(set(zero_scale))} module(s) have a zero per-tensor scale "
                              f"(e.g. {zero_scale[0]})", zero_scale))
    if dead:
        out.append(Finding.of("zero-weight", f"{len(dead)} projection(s) are entirely zero (e.g. {dead[0]})", dead))
    if rows:
        n0 = next(iter(rows))
        out.append(Finding.of("zero-rows", f"{len(rows)} weight(s) have all-zero rows (e.g. {n0}: "
                              f"{rows[n0][0]} of {rows[n0][1]} rows)", list(rows)))
    return out, read
