#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check pixie_integrations tests examples benchmarks
python -m pytest -q "$@"
