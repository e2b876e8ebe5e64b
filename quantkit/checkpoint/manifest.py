"""`quantkit.json`: what made a checkpoint, from what, with which versions, and the hashes that
later stages (validate, publish) bind to."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "sha256_file", "file_hashes", "content_hash", "tool_versions", "numerics", "cpu_model", "write_manifest",
           "read_manifest", "remember_sha256", "forget_sha256"]

MANIFEST = "quantkit.json"
_VERSIONED = ("quantkit", "torch", "transformers", "nvidia-modelopt", "llmcompressor", "compressed-tensors",
              "safetensors", "accelerate")


# sha256 of files this process wrote or read whole (a conversion hashes the bytes as it copies
# them), keyed by path and the stat that changes with any rewrite: a manifest written later need
# not read gigabytes again. In-place writers call forget_sha256 (an mtime tick can hide an edit).
_KNOWN: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def remember_sha256(path: Path, digest: str) -> None:
    """Record the sha256 of `path` as it is now (its writer computed it while writing)."""
    _KNOWN[_stat_key(path)] = digest


def forget_sha256(path: Path) -> None:
    resolved = str(Path(path).resolve())
    for key in [k for k in list(_KNOWN) if k[0] == resolved]:  # list(): other threads may add meanwhile
        del _KNOWN[key]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    known = _KNOWN.get(_stat_key(path))
    if known is not None:
        return known
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_hashes(ckpt: Path) -> dict[str, str]:
    """sha256 of every file in the checkpoint except the manifest itself, by relative path; the
    files hashed in parallel (hashlib releases the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST]
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(files)))) as pool:
        digests = list(pool.map(sha256_file, files))
    return {str(p.relative_to(ckpt)): d for p, d in zip(files, digests)}


def content_hash(hashes: dict[str, str]) -> str:
    """One hash naming the checkpoint's content: sha256 over sorted (path, sha256) lines."""
    h = hashlib.sha256()
    for name in sorted(hashes):
        h.update(f"{name}\t{hashes[name]}\n".encode())
    return "sha256:" + h.hexdigest()


def tool_versions() -> dict[str, str | None]:
    out = {}
    for dist in _VERSIONED:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def numerics() -> dict[str, Any]:
    """What decides the low bits of a calibration on this machine (docs/reproducibility.md): the
    kernels torch dispatches to (instruction set), its thread count, the CPU. Two machines that agree
    on these produce bit-identical checkpoints from the same recipe, source and calibration."""
    import os
    import platform

    import torch

    return {"cpu": cpu_model(), "machine": platform.machine(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "mkl": torch.backends.mkl.is_available(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_manifest(ckpt: Path, body: dict[str, Any]) -> dict[str, Any]:
    hashes = file_hashes(ckpt)
    manifest = {
        "schema": "quantkit.manifest/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **body,
        "versions": tool_versions(),
        "files": hashes,
        "content_hash": content_hash(hashes),
    }
    (ckpt / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def read_manifest(ckpt: Path) -> dict[str, Any] | None:
    p = Path(ckpt) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None
