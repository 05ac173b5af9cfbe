#!/usr/bin/env bash
# The GPU figures of docs/performance.md. Run from the repo root on a CUDA machine with torch, transformers and
# sentence-transformers installed (liger-kernel too, for its row):
#
#   bash benchmarks/gpu.sh smoke   # ~1-2 min: kernels found, tiny-model parity, one short packed vs padded run
#   bash benchmarks/gpu.sh         # parity, the three workloads (card, defaults, padded, compile), fused kernels
#
# The whole run ends by DEADLINE seconds (default 480; smoke 150): each step gets its own limit, cut to the time
# left, and is killed with everything it started; a failing step does not stop the others. Results land in
# ${OUT:-runs/gpu}, a one-line summary per step goes to stdout, and ${OUT}/gpu-results.tgz is rewritten after
# every step, so a run cut short still leaves what it measured.
set -uo pipefail
MODE="${1:-all}"
case "$MODE" in smoke | all) ;; *) echo "usage: bash benchmarks/gpu.sh [smoke|all]" >&2; exit 2 ;; esac
# No GPU, no run: every figure below is a CUDA figure (on a CPU: pixie-rerank bench --preset cpu).
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "benchmarks/gpu.sh: no NVIDIA GPU found (nvidia-smi missing or failing); run it on a CUDA machine, or on a CPU use: pixie-rerank bench --preset cpu" >&2
  exit 1
fi
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu.sh: this python's torch cannot use the GPU ($(python -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)); install a CUDA build of torch (https://pytorch.org/get-started/locally/)" >&2
  exit 1
fi
if [ "$MODE" = smoke ]; then DEADLINE="${DEADLINE:-150}"; else DEADLINE="${DEADLINE:-480}"; fi
OUT="${OUT:-runs/gpu}"; RESULTS="$OUT/results"; mkdir -p "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODEL_DIR="${MODEL_DIR:-/tmp/pixie-bench}"
QUERIES="${QUERIES:-8}"

# Run one step within its limit and the run's deadline; `timeout` kills the step's whole process group (compile
# workers included), and its output goes to a file so that nothing left behind holds this script's stdout.
step() {
  local name=$1 limit=$2 left start rc; shift 2
  left=$((DEADLINE - SECONDS - 5))
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  if [ "$limit" -lt 15 ]; then echo "== $name: skipped, the run's deadline is near"; return; fi
  start=$SECONDS
  timeout -k 5 "$limit" "$@" </dev/null >"$RESULTS/$name.txt" 2>&1; rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start)) s (limit $limit s)$([ $rc = 124 ] && echo ', TIMED OUT')"
  tar czf "$OUT/gpu-results.tgz" -C "$RESULTS" . 2>/dev/null
}
bench() {
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" python -m pixie_integrations bench --no-progress --no-memory --model-dir "$MODEL_DIR/pixie" \
    --json "$RESULTS/$name.json" "$@"
  grep -E "^(\| [a-z]|workload)|failed|Error" "$RESULTS/$name.txt" | head -12
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, transformers, sentence_transformers as s; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sentence-transformers', s.__version__)"
  python -c "import torch; from pixie_integrations.packing import fast_kernel as k; print('packed kernel (bf16):', k(torch.device('cuda'), torch.bfloat16))"
} 2>&1 | tee "$RESULTS/machine.txt"
step model 120 python -c "from pixie_integrations.benchmark import build_random_model as b; b('pixie', '$MODEL_DIR/pixie')"

if [ "$MODE" = smoke ]; then
  step parity-tiny 60 python benchmarks/gpu_parity.py --tiny-only; grep -E "^tiny" "$RESULTS/parity-tiny.txt"
  bench smoke 60 --workload beir --queries 2 --systems card-bf16 pixie:compile=false pixie-padded pixie:reuse_prefix=true
  exit 0
fi
step parity 90 python benchmarks/gpu_parity.py --pixie-dir "$MODEL_DIR"; grep -E "^[a-z_0-9]+: " "$RESULTS/parity.txt"
bench beir 100 --workload beir --queries "$QUERIES" --systems card-bf16 card-fp32 pixie:compile=false pixie-padded \
  pixie:reuse_prefix=true pixie:token_budget=32768
# Compilation in a cold process (its time is this system's warmup_s), then the same graph from the disk cache.
bench beir-compile 150 --workload beir --queries "$QUERIES" --systems card-bf16 pixie:compile=true \
  pixie:compile=true,token_budget=32768 pixie:compile=true,reuse_prefix=true
bench latency 60 --workload latency --repeats 10 --systems card-bf16 pixie:compile=true pixie:compile=false pixie-padded
step kernels 60 python benchmarks/gpu_kernels.py --model-dir "$MODEL_DIR/pixie"; grep -E "^packed" "$RESULTS/kernels.txt"
bench long 45 --workload long --queries 2 --systems card-bf16 pixie:compile=true pixie:compile=false pixie-padded
