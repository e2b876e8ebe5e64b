"""safetensors headers without tensor bytes: the 8-byte length, then the JSON header."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TensorInfo", "read_header", "checkpoint_tensors", "weight_files", "patch_values", "rewrite_file",
           "save_torch_file", "tensor_bytes", "SHARD_BYTES"]

# Largest safetensors shard a quantize run writes (its backend's export; `--max-shard-size`).
# Hashing, converting and loading go shard by shard, each shard on its own core: one 4.45 GB shard
# took 3.5 s to sha256 on the H200 machine, 4 pieces of it 1.2 s (bench/formats.md); transformers'
# own default (50 GB) puts a 27B NVFP4 model in one file.
SHARD_BYTES = 2 << 30

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype: BF16, F16, F32, U8, F8_E4M3, I32...
    shape: tuple[int, ...]
    file: str
    offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors, __metadata__) of one .safetensors file, reading only its header."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise ValueError(f"{path}: header length {n} is implausible")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    tensors = {k: TensorInfo(k, v["dtype"], tuple(v["shape"]), path.name, tuple(v["data_offsets"]))
               for k, v in header.items()}
    return tensors, meta


def weight_files(ckpt: str | Path) -> list[Path]:
    """The .safetensors files of a checkpoint: those named in the index, else all in the dir."""
    ckpt = Path(ckpt)
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [ckpt / n for n in names]
    return sorted(ckpt.glob("*.safetensors"))


def checkpoint_tensors(ckpt: str | Path) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for f in weight_files(ckpt):
        tensors, _ = read_header(f)
        out.update(tensors)
    return out


def _data_start(path: Path) -> int:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def tensor_bytes(ckpt: str | Path, t: TensorInfo) -> bytes:
    """The stored bytes of one tensor (from `checkpoint_tensors` / `read_header`)."""
    path = Path(ckpt) / t.file
    with path.open("rb") as f:
        f.seek(_data_start(path) + t.offsets[0])
        return f.read(t.nbytes)


def patch_values(path: str | Path, values: dict[str, bytes]) -> None:
    """Overwrite the bytes of some tensors of a .safetensors file in place (each new value has
    the old one's byte length): per-tensor scales change without rewriting gigabytes."""
    from quantkit.checkpoint.manifest import forget_sha256

    path = Path(path)
    tensors, _ = read_header(path)
    start = _data_start(path)
    forget_sha256(path)
    with path.open("r+b") as f:
        for name, raw in values.items():
            t = tensors[name]
            if len(raw) != t.nbytes:
                raise ValueError(f"{path}: {name} holds {t.nbytes} bytes, not {len(raw)}")
            f.seek(start + t.offsets[0])
            f.write(raw)


def rewrite_file(src: str | Path, dst: str | Path, names: dict[str, str], shapes: dict[str, tuple[int, ...]],
                 values: dict[str, bytes], metadata: dict[str, str] | None = None,
                 hash_source: bool = False) -> None:
    """Write `dst` as `src` with tensors renamed (`names`: old -> new), shapes restated (`shapes`,
    by new name: same element count) and some tensors' bytes replaced (`values`, by new name: same
    length). The tensor data streams through once in large chunks (the new values patched in on
    the way) while other threads hash what is written, and with `hash_source` what was read: both
    sha256 are remembered (checkpoint.manifest), so no manifest reads the gigabytes again. `dst`
    is written whole, then renamed."""
    from quantkit.checkpoint.manifest import remember_sha256

    src, dst = Path(src), Path(dst)
    tensors, meta = read_header(src)
    header: dict = {"__metadata__": {**meta, **(metadata or {})}} if (meta or metadata) else {}
    for old, t in sorted(tensors.items(), key=lambda kv: kv[1].offsets[0]):
        new = names.get(old, old)
        header[new] = {"dtype": t.dtype, "shape": list(shapes.get(new, t.shape)), "data_offsets": list(t.offsets)}
    patches = []
    for name, raw in values.items():
        lo, hi = header[name]["data_offsets"]
        if len(raw) != hi - lo:
            raise ValueError(f"{src}: {name} holds {hi - lo} bytes, not {len(raw)}")
        patches.append((lo, raw))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with _Sha256Stream() as h_dst, _Sha256Stream() as h_src:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            head = fin.read(_data_start(src))
            if hash_source:
                h_src.feed([head])
            fout.write(struct.pack("<Q", len(raw)) + raw)
            h_dst.feed([struct.pack("<Q", len(raw)) + raw])
            _stream_patched(fin, fout, sorted(patches, key=lambda p: p[0]), h_dst, h_src if hash_source else None)
        digests = h_dst.hexdigest(), h_src.hexdigest()
    os.replace(tmp, dst)
    remember_sha256(dst, digests[0])
    if hash_source:
        remember_sha256(src, digests[1])


_CHUNK = 1 << 24


def _stream_patched(fin, fout, patches: list[tuple[int, bytes]], h_dst: "_Sha256Stream",
                    h_src: "_Sha256Stream | None") -> None:
    """Copy the data section chunk by chunk, `patches` (data offset, new bytes; sorted, disjoint)
    written over the read bytes; the hashers get the written chunk and the read one (the
    untouched parts of the buffer plus the patched ranges' original bytes)."""
    pos = first = 0
    while True:
        buf = bytearray(_CHUNK)
        n = fin.readinto(buf)
        if not n:
            return
        view, end = memoryview(buf)[:n], pos + n
        src_parts, cut, j = [], 0, first
        while j < len(patches) and patches[j][0] < end:
            off, new = patches[j]
            lo, hi = max(off, pos) - pos, min(off + len(new), end) - pos
            if lo < hi:
                src_parts += [view[cut:lo], bytes(view[lo:hi])]
                view[lo:hi] = new[lo + pos - off:hi + pos - off]
                cut = hi
            j += 1
        while first < len(patches) and patches[first][0] + len(patches[first][1]) <= end:
            first += 1
        fout.write(view)
        h_dst.feed([view])
        if h_src is not None:
            h_src.feed(src_parts + [view[cut:]])
        pos = end


class _Sha256Stream:
    """sha256 computed in a worker thread over pieces fed in order; at most a few chunks in
    flight, so memory stays bounded when hashing is slower than the copy."""

    def __init__(self, in_flight: int = 4):
        import collections
        import hashlib
        from concurrent.futures import ThreadPoolExecutor

        self._h, self._max = hashlib.sha256(), in_flight
        self._pool, self._pending = ThreadPoolExecutor(max_workers=1), collections.deque()

    def feed(self, pieces: list) -> None:
        self._pending.append(self._pool.submit(lambda: [self._h.update(p) for p in pieces]))
        while len(self._pending) > self._max:
            self._pending.popleft().result()

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._h.hexdigest()

    def __enter__(self) -> "_Sha256Stream":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


_STAGE = 1 << 26  # pinned host buffer that GPU tensors pass through on their way to the file


def save_torch_file(tensors: dict, filename: str | Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, byte for byte, without its host copy of every tensor.

    safetensors copies each GPU tensor to fresh pageable host memory (`tensor.to("cpu")`) and
    writes the file once all are there; the page faults of that memory dominate: the 4.45 GB
    NVFP4 shard of a 7.24B model took 3.8-4.5 s to write on the H200 machine, 1.1-1.2 s streamed
    to the file through one 64 MB pinned buffer as here, in safetensors' own order (bench/formats.md).

    Identical bytes by construction: safetensors itself serializes one-element stand-ins of the
    same names, dtypes and metadata; that header gives the order and the dtype names, and the
    header written here must reproduce it exactly from the stand-ins' sizes before it is built
    from the real ones. Anything else (a different header, shared or non-contiguous tensors,
    another layout, a big-endian host) goes to safetensors unchanged, errors included."""
    import sys

    import torch
    from safetensors.torch import save as st_save
    from safetensors.torch import save_file as st_save_file

    plain = sys.byteorder == "little" and isinstance(tensors, dict) and all(
        isinstance(t, torch.Tensor) and t.layout == torch.strided and t.is_contiguous()
        and t.device.type in ("cpu", "cuda") for t in tensors.values())
    if not plain or _shares_storage(tensors.values()):
        return st_save_file(tensors, filename, metadata=metadata)
    ref = st_save({n: torch.zeros(1, dtype=t.dtype) for n, t in tensors.items()}, metadata=metadata)
    (n_ref,) = struct.unpack("<Q", ref[:8])
    ref_header = json.loads(ref[8:8 + n_ref])
    order = [k for k in ref_header if k != "__metadata__"]
    dtypes = {k: ref_header[k]["dtype"] for k in order}
    meta = ref_header.get("__metadata__")  # in safetensors' order (a hash map's: it varies by call)
    unit = {k: tensors[k].element_size() for k in order}
    if _st_header(order, dtypes, {k: (1,) for k in order}, unit, meta) != ref[:8 + n_ref]:
        return st_save_file(tensors, filename, metadata=metadata)
    sizes = {k: tensors[k].numel() * unit[k] for k in order}
    head = _st_header(order, dtypes, {k: tuple(tensors[k].shape) for k in order}, sizes, meta)
    with open(filename, "wb") as f:
        f.write(head)
        _write_tensor_bytes(f, [tensors[k] for k in order], _STAGE)


def _shares_storage(tensors) -> bool:
    """Whether two tensors have one storage (safetensors refuses some of those, accepts others)."""
    seen = set()
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() and st.nbytes():
            key = (t.device, st.data_ptr())
            if key in seen:
                return True
            seen.add(key)
    return False


def _st_header(order: list[str], dtypes: dict, shapes: dict, nbytes: dict, metadata: dict | None) -> bytes:
    """8-byte length + the JSON header (space-padded to 8 bytes) of a safetensors file whose
    tensors are laid out back to back in `order`."""
    header: dict = {"__metadata__": metadata} if metadata is not None else {}
    pos = 0
    for k in order:
        header[k] = {"dtype": dtypes[k], "shape": list(shapes[k]), "data_offsets": [pos, pos + nbytes[k]]}
        pos += nbytes[k]
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_tensor_bytes(f, tensors: list, stage_bytes: int = _STAGE) -> None:
    """The tensors' bytes in order: host tensors written from their memory, device tensors
    copied into a pinned staging buffer (one synchronous DMA each, at full bus speed) that is
    written whenever it fills."""
    import torch

    stage = stage_np = None
    fill = 0
    for t in tensors:
        flat = t.detach().reshape(-1).view(torch.uint8)
        if _on_host(flat):
            if fill:
                f.write(stage_np[:fill])
                fill = 0
            f.write(flat.numpy())
            continue
        if stage is None:
            stage = _pinned(stage_bytes)
            stage_np = stage.numpy()
        pos, total = 0, flat.numel()
        while pos < total:
            n = min(stage_bytes - fill, total - pos)
            stage[fill:fill + n].copy_(flat[pos:pos + n])
            fill, pos = fill + n, pos + n
            if fill == stage_bytes:
                f.write(stage_np)
                fill = 0
    if fill:
        f.write(stage_np[:fill])


def _on_host(t) -> bool:
    return t.device.type == "cpu"


def _pinned(nbytes: int):
    import torch

    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
