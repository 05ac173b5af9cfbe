#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run: parity checks, the three workloads (the card's code, the
# defaults, the padded path, torch.compile), and the fused-kernel comparison. Run from the repo root on a CUDA
# machine with torch, transformers and sentence-transformers installed (liger-kernel too, for its row).
# Results land in ${OUT:-runs/gpu}; each step has its own time limit, and a failing step does not stop the others.
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
MODEL_DIR="${MODEL_DIR:-/tmp/pixie-bench}"
QUERIES="${QUERIES:-8}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, transformers, sentence_transformers as s; print(torch.__version__, transformers.__version__, s.__version__)" | tee -a "$OUT/gpu.txt"
python -c "from pixie_integrations.benchmark import build_random_model as b; b('pixie', '$MODEL_DIR/pixie')" || exit 1

step() { name=$1; limit=$2; shift 2; start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; rc=$?
  echo "== $name: rc=$rc, $((SECONDS - start)) s"; }
bench() { name=$1; limit=$2; shift 2
  step "$name" "$limit" python -m pixie_integrations bench --no-progress --no-memory --model-dir "$MODEL_DIR/pixie" --json "$OUT/$name.json" "$@"
  grep -E "^(\||workload)|failed|Error" "$OUT/$name.txt" || tail -5 "$OUT/$name.txt"; }

step parity "${PARITY_LIMIT:-90}" python benchmarks/gpu_parity.py --pixie-dir "$MODEL_DIR"; grep -E ": " "$OUT/parity.txt" | grep -v "^ " | head -20
bench beir "${BEIR_LIMIT:-150}" --workload beir --queries "$QUERIES" --systems card-bf16 card-fp32 pixie:compile=false pixie-padded pixie:reuse_prefix=true pixie:token_budget=32768
# Compilation in a cold process (its time is this system's warmup_s), then the same graph from the disk cache.
bench beir-compile "${COMPILE_LIMIT:-200}" --workload beir --queries "$QUERIES" --systems card-bf16 pixie:compile=true pixie:compile=true,token_budget=32768
bench latency "${LATENCY_LIMIT:-90}" --workload latency --repeats 10 --systems card-bf16 pixie:compile=true pixie:compile=false pixie-padded
step kernels "${KERNELS_LIMIT:-90}" python benchmarks/gpu_kernels.py --model-dir "$MODEL_DIR/pixie"; grep -E "^packed" "$OUT/kernels.txt"
bench long "${LONG_LIMIT:-60}" --workload long --queries 2 --systems card-bf16 pixie:compile=true pixie:compile=false pixie-padded
