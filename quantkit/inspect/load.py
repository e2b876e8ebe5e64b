"""A checkpoint as inspect sees it: its tensors' headers (never their bytes), config.json and the
quantization metadata, from a local directory or, over HTTP, from the Hub.

Local: model.safetensors.index.json + each shard's header (8-byte length + JSON). Hub:
`huggingface_hub.get_safetensors_metadata` (HTTP range requests for the headers) plus
config.json / hf_quant_config.json downloaded alone."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from quantkit.checkpoint.headers import TensorInfo, read_header, weight_files
from quantkit.errors import ModelSourceError
from quantkit.inspect.report import Finding

__all__ = ["Checkpoint", "load_checkpoint", "config_view", "looks_like_hub_id"]

INDEX = "model.safetensors.index.json"


@dataclass
class Checkpoint:
    source: str
    location: str  # local | hub
    meta_dir: Path | None  # holds config.json / hf_quant_config.json (what detect_format reads)
    config: dict | None
    tensors: dict[str, TensorInfo]
    files: list[str]
    root: Path | None = None  # local directory (for --deep), None on the Hub
    findings: list[Finding] = field(default_factory=list)


def config_view(data: dict | None) -> Any:
    """config.json as attributes, which is all `families_for` reads (model_type, text_config,
    layer pattern). transformers' AutoConfig is not used: importing it costs seconds, and a
    checkpoint of an architecture transformers does not know must still be inspected."""
    if data is None:
        return None
    ns = SimpleNamespace(**data)
    if isinstance(data.get("text_config"), dict):
        ns.text_config = SimpleNamespace(**data["text_config"])
    return ns


def looks_like_hub_id(source: str) -> bool:
    return not source.startswith((".", "/", "~")) and source.count("/") == 1 and not Path(source).exists()


def _read_json(p: Path) -> dict | None:
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"{p}:{exc.lineno}: invalid JSON: {exc.msg}",
                               hint="fix or re-download the file") from None


def _load_local(path: Path) -> Checkpoint:
    if not path.is_dir():
        raise ModelSourceError(f"{path} is not a directory", hint="pass a checkpoint directory or a Hub id org/name")
    index = _read_json(path / INDEX)
    if index is not None:  # as weight_files(), without parsing the (large) index twice
        base = {n: Path(n).name for n in set((index.get("weight_map") or {}).values())}
        files = [path / n for n in sorted(base)]
    else:
        files = weight_files(path)
    if not files:
        raise ModelSourceError(f"{path} is not a safetensors checkpoint: no *.safetensors and no {INDEX}",
                               hint="point at the directory holding the model's .safetensors files")
    tensors: dict[str, TensorInfo] = {}
    findings: list[Finding] = []
    missing: list[str] = []
    for f in files:
        try:
            part, _ = read_header(f)
        except (OSError, ValueError) as exc:  # absent, too short, bad JSON header
            missing.append(f"{f.name}: {type(exc).__name__}")
            continue
        tensors.update(part)
    if missing:
        findings.append(Finding.of("missing-shard", f"{len(missing)} weight file(s) missing or unreadable: "
                                   + ", ".join(missing[:3]), []))
    if index is not None:
        unread = {m.split(":")[0] for m in missing}
        wrong = [n for n, fname in (index.get("weight_map") or {}).items()
                 if base.get(fname) not in unread and (n not in tensors or tensors[n].file != base.get(fname))]
        if wrong:
            findings.append(Finding.of("index-mismatch", f"{len(wrong)} tensor(s) of the index are not in the "
                                       "shard it names", [w.rsplit(".", 1)[0] for w in wrong]))
    config = _read_json(path / "config.json")
    return Checkpoint(str(path), "local", path, config, tensors, [f.name for f in files], path, findings)


def _load_hub(repo_id: str, revision: str | None) -> Checkpoint:
    try:
        from huggingface_hub import get_safetensors_metadata, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        meta = get_safetensors_metadata(repo_id, revision=revision)
        meta_dir = None
        for name in ("config.json", "hf_quant_config.json"):
            try:
                meta_dir = Path(hf_hub_download(repo_id, name, revision=revision)).parent
            except EntryNotFoundError:
                continue
    except Exception as exc:  # huggingface_hub raises many types (offline, 401, 404, not safetensors)
        raise ModelSourceError(f"cannot read {repo_id} from the Hub: {type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0]}",
                               hint="check the id, your network and HF_TOKEN (gated repos), or download "
                                    "it and pass the directory") from exc
    tensors = {n: TensorInfo(n, t.dtype, tuple(t.shape), fname, tuple(t.data_offsets))
               for fname, fm in meta.files_metadata.items() for n, t in fm.tensors.items()}
    config = _read_json(meta_dir / "config.json") if meta_dir else None
    return Checkpoint(repo_id, "hub", meta_dir, config, tensors, sorted(meta.files_metadata))


def load_checkpoint(source: str, revision: str | None = None) -> Checkpoint:
    """A local checkpoint directory, or a Hub id `org/name` (headers over HTTP)."""
    p = Path(source).expanduser()
    if p.exists():
        ckpt = _load_local(p)
    elif looks_like_hub_id(source):
        ckpt = _load_hub(source, revision)
    else:
        raise ModelSourceError(f"checkpoint not found: {source}",
                               hint="pass an existing checkpoint directory or a Hub id org/name")
    if ckpt.config is None:
        ckpt.findings.append(Finding.of("no-config", "config.json is missing"))
    return ckpt
