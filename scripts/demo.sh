#!/usr/bin/env bash
# Set up (if needed: the core only, not the test set) and rerank the model card's example with the real model,
# beside the card's published scores. Extra arguments go to `pixie-rerank demo` (e.g. --model ./PIXIE-...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
. .venv/bin/activate
pixie-rerank demo "$@"
