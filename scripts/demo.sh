#!/usr/bin/env bash
# The main job on the embedded default, offline: SmolLM2-135M-Instruct (from its PyPI package)
# -> plan -> NVFP4 in both formats (ModelOpt and compressed-tensors) under out/smollm2/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/quantkit plan smollm2-135m
.venv/bin/quantkit quantize smollm2-135m --format both --out out/smollm2 --overwrite "$@"
