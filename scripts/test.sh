#!/usr/bin/env bash
# The test command (README and CI): set up the environments if needed, then run every tier,
# the slow end-to-end one (-m e2e) included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --vllm
exec .venv/bin/python -m pytest -q "$@"
