"""Publish only validated artefacts, with honest metadata.

Refuses unless a passing validation report exists for the checkpoint's *current* content hash
(`--force` exists, is loud, and is written into the card). Re-checks format metadata and runs
inspect first. Targets: `dir:PATH` (atomic: temp dir then rename) and `hf:ORG/NAME` (private by
default, one commit; the token comes from the environment or `hf auth login` and is never
printed or written)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantkit import __version__
from quantkit.checkpoint.formats import FORMATS, detect_format, format_for_kind
from quantkit.checkpoint.manifest import read_manifest
from quantkit.errors import PublishError, UsageError, first_line
from quantkit.report import find_passing_report
from quantkit.validate import checkpoint_hash

__all__ = ["PublishResult", "publish", "parse_target", "staged_files", "hf_operations"]



@dataclass
class PublishResult:
    target: str
    format: str
    content_hash: str
    forced: bool
    files: list[str] = field(default_factory=list)
    url: str | None = None


def parse_target(to: str) -> tuple[str, str]:
    kind, _, rest = to.partition(":")
    if kind not in ("hf", "dir") or not rest:
        raise UsageError(f"unknown publish target {to!r}", hint="use hf:ORG/NAME or dir:PATH")
    if kind == "hf" and rest.count("/") != 1:
        raise UsageError(f"hf target must be ORG/NAME, got {rest!r}", hint="e.g. --to hf:me/Model-NVFP4")
    return kind, rest


def _check_metadata(ckpt: Path) -> str:
    info = detect_format(ckpt)
    f = format_for_kind(info.kind)
    if f is None or info.kind != f.nvfp4_kind:
        raise PublishError(f"{ckpt} is not an NVFP4 checkpoint quantkit can publish (format: {info.kind})",
                           hint=f"publish an NVFP4 checkpoint of one of: {', '.join(FORMATS)}")
    problem = f.publish_problem(ckpt, info)
    if problem:
        raise PublishError(problem[0], hint=problem[1])
    fmt = f.name
    try:
        from quantkit.inspect import inspect_checkpoint
    except ImportError:
        return fmt
    errors = inspect_checkpoint(str(ckpt)).errors
    if errors:
        first = errors[0]
        raise PublishError(f"inspect found {len(errors)} error(s): {getattr(first, 'code', '')}: "
                           f"{getattr(first, 'message', first)}", hint=f"run `quantkit inspect {ckpt}`")
    return fmt


def _base_and_license(ckpt: Path, manifest: dict) -> tuple[str | None, str | None, str | None]:
    src = manifest.get("source", {})
    recipe = manifest.get("recipe", {})
    base, lic = src.get("model"), (recipe.get("publish") or {}).get("license")
    local = Path(src.get("local_path") or "")
    marker = local / "quantkit-embedded.json"
    if marker.is_file():  # embedded models know their upstream id and license
        m = json.loads(marker.read_text())
        base, lic = m["base_model"], lic or m["license"]
    elif (local / "README.md").is_file() and not lic:
        from huggingface_hub import ModelCard

        lic = ModelCard.load(local / "README.md").data.to_dict().get("license")
    plan = manifest.get("plan") or {}
    from quantkit.families import ARCH_FAMILIES

    arch = [f for f in plan.get("families", []) if f in {a.name for a in ARCH_FAMILIES}]
    family = arch[0] if arch else plan.get("model_type")
    return base, lic, family


def staged_files(ckpt: Path, card_text: str, validation: dict | None) -> dict[str, bytes | Path]:
    """Everything the target receives: the checkpoint's files (recipe and quantkit.json travel
    with them), the card, and the validation report."""
    files: dict[str, bytes | Path] = {str(p.relative_to(ckpt)): p for p in sorted(ckpt.rglob("*"))
                                      if p.is_file() and p.name != "README.md"}
    files["README.md"] = card_text.encode()
    if validation is not None:
        files["quantkit-validation.json"] = json.dumps(validation, indent=2, default=str).encode()
    return files


def hf_operations(files: dict[str, bytes | Path]) -> list:
    from huggingface_hub import CommitOperationAdd

    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=src if isinstance(src, bytes) else str(src))
            for name, src in files.items()]


def _to_dir(dest: Path, files: dict[str, bytes | Path], overwrite: bool) -> None:
    from quantkit.checkpoint.atomic import atomic_dir

    with atomic_dir(dest, overwrite=overwrite) as tmp:
        for name, src in files.items():
            out = tmp / name
            out.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                out.write_bytes(src)
            else:
                shutil.copy2(src, out)


def _to_hf(repo: str, files: dict[str, bytes | Path], private: bool, api: Any = None) -> str:
    from huggingface_hub import HfApi

    api = api or HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.create_commit(repo, hf_operations(files),
                                 commit_message=f"Upload NVFP4 checkpoint (quantkit {__version__})")
    except Exception as exc:  # network, auth: one line, never the token
        raise PublishError(f"upload to hf:{repo} failed: {type(exc).__name__}: {first_line(exc, 200)}",
                           hint="check `hf auth login` / HF_TOKEN and the network; uploads resume on retry") from exc
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"


def publish(ckpt: str | Path, to: str, *, force: bool = False, report: Path | None = None, private: bool = True,
            overwrite: bool = False, api: Any = None) -> PublishResult:
    ckpt = Path(ckpt)
    if not (ckpt / "config.json").is_file():
        raise UsageError(f"{ckpt} is not a checkpoint directory", hint="pass the output of quantkit quantize")
    kind, dest = parse_target(to)
    fmt = _check_metadata(ckpt)
    h = checkpoint_hash(ckpt)
    validation = find_passing_report(h, report)
    if validation is None and not force:
        raise PublishError(f"no passing validation report for {ckpt} at its current content hash {h[:23]}...",
                           hint=f"run `quantkit validate {ckpt}` (a checkpoint changed after validation must be "
                                "validated again), or --force to publish anyway (recorded in the card)")
    if validation is not None:
        validation = {**validation, "verdicts": [v for v in validation["verdicts"] if v.get("content_hash") == h][:1]}
    manifest = read_manifest(ckpt) or {}
    base, lic, family = _base_and_license(ckpt, manifest)
    repo_name = dest if kind == "hf" else str(Path(dest).resolve())
    card = build_card_text(repo_name, fmt, manifest, validation, base, lic, family, h, forced=validation is None)
    files = staged_files(ckpt, card, validation)
    result = PublishResult(to, fmt, h, forced=validation is None, files=sorted(files))
    if kind == "dir":
        _to_dir(Path(dest), files, overwrite)
        result.url = str(Path(dest).resolve())
    else:
        result.url = _to_hf(dest, files, private, api)
    return result


def build_card_text(repo, fmt, manifest, validation, base, lic, family, h, forced) -> str:
    from quantkit.card import build_card

    return str(build_card(repo=repo, fmt=fmt, manifest=manifest, validation=validation, base_model=base, license=lic,
                          family=family, content_hash=h, forced=forced, quantkit_version=__version__))
