#!/usr/bin/env bash
# Set up (if needed) and rerank the model card's example with the real model, beside the card's published scores.
# Extra arguments go to `pixie-rerank demo` (e.g. --model ./PIXIE-Spell-Reranker-Preview-0.6B).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
pixie-rerank demo "$@"
