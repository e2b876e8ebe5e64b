"""`quantkit.json`: what made a checkpoint, from what, with which versions, and the hashes that
later stages (validate, publish) bind to."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "sha256_file", "file_hashes", "content_hash", "tool_versions", "write_manifest",
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
