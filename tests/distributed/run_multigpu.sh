#!/usr/bin/env bash
# Several GPUs of one host: the example driver under tensor, sequence, pipeline and data
# parallelism with Quartet II, each run against the one-GPU run of the same model and batches.
# Usage: tests/distributed/run_multigpu.sh [NGPUS=2] [ITERS=100]
# Pass: every parallel run's train loss (mean of its last 20 iterations) within 0.05 nats of the
# one-GPU run (layouts differ only in per-shard quantization scales and summation order; seeds
# come from rank-free layer names). Logs and summary.md go to $OUT (default runs/multigpu).
set -uo pipefail
cd "$(dirname "$0")/../.."
N=${1:-2}
ITERS=${2:-100}
OUT=${OUT:-runs/multigpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
Q2=(--fp4-format e2m1 --fp4-recipe quartet2)
BASE=(@examples/configs/gpt-bench-1gpu.args --train-iters "$ITERS" --eval-interval 0)
fail=0
run() {  # name nproc flags...
  local name=$1 np=$2; shift 2
  echo "== $name ($np GPUs): $*"
  $PY -m torch.distributed.run --nproc-per-node "$np" examples/pretrain_gpt.py "${BASE[@]}" "$@" \
    --loss-log "$OUT/$name.jsonl" >"$OUT/$name.log" 2>&1 || { grep -v -i warn "$OUT/$name.log" | tail -30; echo "FAILED: $name"; fail=1; }
  grep " iteration " "$OUT/$name.log" | tail -2
}
run ref_1gpu 1 "${Q2[@]}"
run tp2_sp_te 2 "${Q2[@]}" --tensor-model-parallel-size 2 --sequence-parallel
run pp2_te 2 "${Q2[@]}" --pipeline-model-parallel-size 2
run dp2_te 2 "${Q2[@]}" --micro-batch-size 8
run tp2_local 2 "${Q2[@]}" --tensor-model-parallel-size 2 --transformer-impl local
run pp2_nvfp4sr 2 --fp4-format e2m1 --fp4-recipe nvfp4-sr --pipeline-model-parallel-size 2
if [ "$N" -ge 4 ]; then
  run tp2_pp2_te 4 "${Q2[@]}" --tensor-model-parallel-size 2 --sequence-parallel --pipeline-model-parallel-size 2
  run dp2_tp2_te 4 "${Q2[@]}" --tensor-model-parallel-size 2 --sequence-parallel --micro-batch-size 8
fi
if [ "$N" -ge 8 ]; then
  run dp2_tp2_pp2_te 8 "${Q2[@]}" --tensor-model-parallel-size 2 --sequence-parallel \
    --pipeline-model-parallel-size 2 --micro-batch-size 8
fi
logs=("$OUT/ref_1gpu.jsonl")
for f in "$OUT"/*.jsonl; do [ "$f" != "$OUT/ref_1gpu.jsonl" ] && [[ "$f" != *nvfp4sr* ]] && logs+=("$f"); done
$PY tests/distributed/summarize_losses.py --max-gap 0.05 "${logs[@]}" | tee "$OUT/summary.md" || fail=1
exit $fail
