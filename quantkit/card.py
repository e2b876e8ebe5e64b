"""The model card: honest metadata for a published NVFP4 checkpoint, through huggingface_hub's
card API (`ModelCardData`): base model with `base_model_relation: quantized`, license inherited,
tags, the exact serving commands, the layers kept in BF16 with reasons, validation results."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["serve_commands", "build_card"]


def serve_commands(fmt: str, repo: str) -> dict[str, str]:
    """vLLM and SGLang commands, as the format says (only some formats need a quantization flag;
    passing one where the engine auto-detects is a classic first-run failure)."""
    from quantkit.checkpoint.formats import get_format

    return get_format(fmt).serve_commands(repo)


def _kept_table(manifest: dict) -> list[str]:
    import re

    groups: "OrderedDict[tuple[str, str], int]" = OrderedDict()
    for k in manifest.get("plan", {}).get("kept", []):
        key = (re.sub(r"\.\d+\.", ".*.", k["module"]), k["reason"])
        groups[key] = groups.get(key, 0) + 1
    rows = ["| modules (layers folded) | count | why BF16 |", "|---|---|---|"]
    rows += [f"| `{name}` | {n} | {reason} |" for (name, reason), n in groups.items()]
    return rows


def build_card(*, repo: str, fmt: str, manifest: dict, validation: dict | None, base_model: str | None,
               license: str | None, family: str | None, content_hash: str, forced: bool, quantkit_version: str):
    from huggingface_hub import ModelCard, ModelCardData

    from quantkit.calib_health import card_lines
    from quantkit.checkpoint.formats import get_format

    tags = ["nvfp4", "fp4", "quantized", get_format(fmt).hub_tag, "quantkit"]
    if family:
        tags.append(family)
    data = ModelCardData(base_model=base_model, base_model_relation="quantized" if base_model else None,
                         license=license or "other", tags=tags, library_name="transformers",
                         pipeline_tag="text-generation")
    plan = manifest.get("plan", {})
    cal = manifest.get("calibration", {})
    cmds = serve_commands(fmt, repo)
    lines = [f"# {repo.split('/')[-1]}", "",
             f"NVFP4 (W4A4: FP4 E2M1 weights and activations, FP8 E4M3 scale per 16 values, FP32 global scale) "
             f"quantization of [{base_model}](https://huggingface.co/{base_model}) in the "
             f"**{get_format(fmt).title}** format, made with quantkit "
             f"{quantkit_version} ({manifest.get('backend')}).", ""]
    if forced:
        lines += ["> **Warning: published with `--force` — this exact checkpoint has NOT passed quantkit validation.**", ""]
    lines += ["## Serve", "", "```bash", f"# vLLM", cmds["vllm"], "# SGLang", cmds["sglang"], "```", "",
              f"FP4 modules: {plan.get('fp4')} · kept in BF16: {len(plan.get('kept', []))} · "
              f"~{plan.get('bits_per_param', 0):.2f} bits/parameter", "",
              "## Layers kept in BF16, and why", ""] + _kept_table(manifest)
    lines += ["", "## Calibration", "",
              f"{cal.get('samples')} samples of {cal.get('dataset')} (<= {cal.get('seq_len')} tokens, seed {cal.get('seed')}, "
              f"{cal.get('tokens')} tokens; fingerprint `{str(cal.get('fingerprint'))[:23]}...`)", ""]
    health = card_lines(manifest)
    lines += health + ([""] if health else [])
    lines += ["## Validation", ""] + _validation_lines(validation)
    lines += ["", "## Provenance", "", f"- content hash (all files but README.md and quantkit files): `{content_hash}`",
              f"- recipe: `quantkit-recipe.yaml`; manifest with versions and per-file sha256: `quantkit.json`",
              f"- versions: " + ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items() if v), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


_LOCAL = {"--model", "--model-path", "--served-model-name", "--host", "--port"}


def _flags(argv: list[str]) -> list[str]:
    """The engine's serving flags without this machine's paths, host and port."""
    start = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
    out, skip = [], False
    for a in argv[start:]:
        if skip:
            skip = False
            continue
        if a in _LOCAL:
            skip = True
            continue
        out.append(a)
    return out


def _validation_lines(validation: dict | None) -> list[str]:
    """The validation section: verdict, engine and kernel, perplexity vs baseline, every check
    with its margin, the greedy probes."""
    from quantkit.judge import signed

    if not validation:
        return ["Not validated."]
    lines: list[str] = []
    v = validation["verdicts"][0]
    ppl = v.get("perplexity") or {}
    base = v.get("baseline") or {}
    facts = (v.get("logscan") or {}).get("facts", {})
    served = f" served as `{v['config']}`" if v.get("config") else ""
    lines += [f"Verdict **{v['verdict'].upper()}** with engine `{v['engine']}`{served} "
              f"(vLLM {', '.join(facts.get('vllm_version', ['?']))}; NVFP4 kernel "
              f"{', '.join(facts.get('nvfp4_linear_kernel', ['?']))}), suite `{validation.get('suite')}`, "
              f"{validation.get('created')}."]
    if v.get("engine_command"):
        lines.append(f"Engine flags it passed with: `{' '.join(_flags(v['engine_command']))}`.")
    if ppl:
        lines.append(f"Reference perplexity {ppl.get('perplexity'):.2f}" +
                     (f" (BF16 baseline {base['perplexity']:.2f})" if base.get("perplexity") else "") + ".")
    if not base:
        lines.append("Judged without a BF16 baseline: hard detectors and absolute ceilings only.")
    if v.get("note"):
        lines += ["", f"> {v['note']}"]
    checks = [c for c in v.get("checks", []) if c.get("passed") is not None]
    if checks:
        lines += ["", "| check | value | threshold | margin |", "|---|---|---|---|"]
        for c in checks:
            op = "<=" if c["direction"] == "max" else ">="
            lines.append(f"| {c['name']} | {c['value']} | {op} {c['threshold']} | {signed(c['margin'])} |")
    lines += ["", "| probe | passed | output |", "|---|---|---|"]
    for p in v.get("probes", []):
        out = p["text"].strip().replace("\n", " ").replace("|", "\\|")[:80]
        lines.append(f"| {p['id']} | {'yes' if p['passed'] else 'no'} | {out} |")
    return lines
