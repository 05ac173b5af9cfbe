#!/usr/bin/env bash
# Create .venv (once) and install the package with every extra and the test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
[ -f .venv/.pixie-setup ] || python -m pip install -q --upgrade pip
# Pin torch first: an unpinned torch pulls a multi-GB CUDA build. On a GPU machine, install the torch build
# for your CUDA before running this script and it is kept.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# Re-install only when pyproject.toml changed since the last successful setup.
stamp=.venv/.pixie-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
