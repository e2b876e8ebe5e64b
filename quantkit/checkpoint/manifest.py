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
           "read_manifest"]

MANIFEST = "quantkit.json"
_VERSIONED = ("quantkit", "torch", "transformers", "nvidia-modelopt", "llmcompressor", "compressed-tensors",
              "safetensors", "accelerate")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_hashes(ckpt: Path) -> dict[str, str]:
    """sha256 of every file in the checkpoint except the manifest itself, by relative path."""
    return {str(p.relative_to(ckpt)): sha256_file(p)
            for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST}


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
