#!/usr/bin/env bash
# Create .venv (once) and install into it; safe to re-run (it re-installs only when a pyproject.toml changed).
#   bash scripts/setup.sh        the package with every extra, the three framework distributions and the test tools
#   bash scripts/setup.sh demo   the core only (torch, transformers, tokenizers): what `pixie-rerank demo` needs
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-test}"
case "$what" in
  test | demo) ;;
  *) echo "setup.sh: unknown set '$what'; use test (the default) or demo" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
[ -f .venv/.pixie-setup-demo ] || python -m pip install -q --upgrade pip
# Pin torch first: an unpinned torch pulls a multi-GB CUDA build. On a GPU machine, install the torch build
# for your CUDA before running this script and it is kept.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# A stamp per set holds the hash of the pyproject.toml files it was installed from.
core=$(sha256sum pyproject.toml | cut -d' ' -f1)
full=$(cat pyproject.toml integrations/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$what" = demo ]; then
  if [ "$(cat .venv/.pixie-setup-demo 2>/dev/null)" != "$core" ]; then
    python -m pip install -q -e .
    echo "$core" > .venv/.pixie-setup-demo
  fi
  exit 0
fi
if [ "$(cat .venv/.pixie-setup-test 2>/dev/null)" != "$full" ]; then
  # The framework extras name their own distributions (langchain-pixie, ...), which live in integrations/ and are
  # not on the package index yet: given as folders too, pip takes them from there.
  integrations=()
  for folder in integrations/*/; do integrations+=(-e "$folder"); done
  python -m pip install -q -e ".[test]" "${integrations[@]}"
  echo "$full" > .venv/.pixie-setup-test
  echo "$core" > .venv/.pixie-setup-demo
fi
