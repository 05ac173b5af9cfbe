#!/usr/bin/env bash
# The GPU figures of docs/performance.md: parity checks, then the three workloads, then torch.compile (slowest,
# last). Run from the repo root on a CUDA machine with torch, transformers and sentence-transformers installed.
# Results land in ${OUT:-runs/gpu}.
set -uo pipefail
# No GPU, no run: every figure below is a CUDA figure (on a CPU: pixie-rerank bench --preset cpu).
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "benchmarks/gpu.sh: no NVIDIA GPU found (nvidia-smi missing or failing); run it on a CUDA machine, or on a CPU use: pixie-rerank bench --preset cpu" >&2
  exit 1
fi
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu.sh: this python's torch cannot use the GPU ($(python -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)); install a CUDA build of torch (https://pytorch.org/get-started/locally/)" >&2
  exit 1
fi
OUT="${OUT:-runs/gpu}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODEL_DIR=/tmp/pixie-bench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, transformers, sentence_transformers as s; print(torch.__version__, transformers.__version__, s.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 python benchmarks/gpu_parity.py --pixie-dir "$MODEL_DIR" > "$OUT/parity.txt" 2>&1; tail -20 "$OUT/parity.txt"
bench() { name=$1; limit=$2; shift 2; timeout "$limit" python -m pixie_integrations bench --no-progress --model-dir "$MODEL_DIR/pixie" --json "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2>&1; grep -E "^(\||workload)" "$OUT/$name.txt" || tail -5 "$OUT/$name.txt"; }
bench beir 200 --workload beir --systems card-bf16 card-fp32 pixie pixie-noprefix pixie:token_budget=32768 pixie:token_budget=65536
bench latency 100 --workload latency --repeats 10 --systems card-bf16 pixie pixie:token_budget=8192 pixie-noprefix
bench long 100 --workload long --queries 2 --systems card-bf16 pixie
bench beir-compile "${COMPILE_LIMIT:-300}" --workload beir --systems card-bf16 pixie-compile
