"""Shared fixtures. Expensive artefacts (the embedded SmolLM2 checkpoint, its quantized
variants, tiny hybrid checkpoints) are built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Keep quantkit's embedded-model cache inside the run unless the caller chose one.
    os.environ.setdefault("QUANTKIT_CACHE", str(Path.home() / ".cache" / "quantkit"))


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from quantkit.embedded import materialize

    return materialize("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_quantized(tmp_path_factory, smollm2_dir) -> dict[str, Path]:
    """SmolLM2-135M quantized in both formats through the library pipeline (the recipe: 32 samples x 256)."""
    from quantkit.quantize import QuantizeOptions, quantize
    from quantkit.recipe import resolve_recipe

    out = tmp_path_factory.mktemp("smol") / "smollm2"
    results = quantize(resolve_recipe("smollm2-135m"),
                       QuantizeOptions(formats=["modelopt", "compressed-tensors"], out=out))
    return {r.format: r.path for r in results}


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
