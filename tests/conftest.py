"""Shared fixtures. Expensive artefacts (the embedded SmolLM2 checkpoint, its quantized
variants, tiny hybrid checkpoints) are built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
# The vLLM environment the engine tiers serve with (scripts/setup_vllm.sh makes it).
VLLM_PY = Path(os.environ.get("QUANTKIT_ENGINE_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


@pytest.fixture(scope="module")
def vllm_env() -> Path:
    """The vLLM environment's Python; a module that needs it uses
    `pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("vllm_env")]`. Missing: skipped on a
    developer machine, a failure under CI (which must have it)."""
    if not VLLM_PY.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the vLLM environment ({VLLM_PY}); scripts/setup_vllm.sh makes it")
        pytest.skip("no vLLM environment: run scripts/setup_vllm.sh")
    return VLLM_PY


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
    """SmolLM2-135M quantized in both formats through the library pipeline (the recipe: 32 samples x 256):
    ModelOpt calibrates, compressed-tensors is converted from it (the default of --format both)."""
    from quantkit.quantize import QuantizeOptions, quantize
    from quantkit.recipe import resolve_recipe

    out = tmp_path_factory.mktemp("smol") / "smollm2"
    results = quantize(resolve_recipe("smollm2-135m"),
                       QuantizeOptions(formats=["modelopt", "compressed-tensors"], out=out))
    return {r.format: r.path for r in results}


@pytest.fixture(scope="session")
def smollm2_each(tmp_path_factory, smollm2_dir) -> dict[str, Path]:
    """The same with every library calibrating its own format (--calibrate-each): llm-compressor's
    own compressed-tensors output."""
    from quantkit.quantize import QuantizeOptions, quantize
    from quantkit.recipe import resolve_recipe

    out = tmp_path_factory.mktemp("smol-each") / "smollm2"
    results = quantize(resolve_recipe("smollm2-135m"),
                       QuantizeOptions(formats=["modelopt", "compressed-tensors"], out=out, calibrate_each=True))
    return {r.format: r.path for r in results}


def default_signals() -> None:
    """A `preexec_fn` for subprocesses a test will signal: SIGINT, SIGHUP and SIGTERM back at their
    defaults, whatever the test runner ignored (a background job ignores SIGINT, nohup ignores SIGHUP),
    since quantkit deliberately leaves an ignored signal ignored."""
    import signal

    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


@pytest.fixture()
def default_signal_handlers():
    """The same for this process, restored after the test."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}
    saved[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for sig, old in saved.items():
        signal.signal(sig, old)


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
