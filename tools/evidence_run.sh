#!/usr/bin/env bash
# The pre-training evidence runs (issue 7, BENCHMARKS.md §5) on the lent GPU machine, after the
# TE stack is staged into /tmp/site (../shared/gpu/README.md). The runs outlast one device call
# (10 min), so they go to a background queue (setsid) that lives as long as the machine, and
# `wait` calls follow it; each run must finish on the machine it started on.
#
#   bash tools/evidence_run.sh setup                  # unpack .corpus-pack, build quartet_te._C
#   bash tools/evidence_run.sh start bf16 quartet2 …  # queue runs (sequential, one GPU each)
#   bash tools/evidence_run.sh wait 560               # follow the queue up to 560 s; logs -> $OUT
#
# A run is a recipe name (bf16, or an --fp4-recipe: quartet2, quartet2-rot, nvfp4-sr, …),
# optionally with a seed suffix (quartet2@s2 = seed 1235: same data order shift for every recipe).
# Extra driver flags for every run: $EVIDENCE_FLAGS; $CONFIG, $CORPUS and $EVIDENCE_DIR override the
# config, the corpus and the results folder (default /tmp/evidence/<run>.{jsonl,log}).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
PY=${PYTHON:-python3}
# Without an install (the GPU image has no package index), map recipes/ and integration/ in.
if ! $PY -c 'import quartet_te.recipes, quartet_te.integration' 2>/dev/null; then
  [ -e quartet_te/recipes ] || ln -s ../recipes quartet_te/recipes
  [ -e quartet_te/integration ] || ln -s ../integration quartet_te/integration
fi
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
EV=${EVIDENCE_DIR:-/tmp/evidence}; mkdir -p "$EV"
CORPUS=${CORPUS:-/tmp/corpus-byte}
CONFIG=${CONFIG:-examples/configs/llama-30m-evidence.args}

setup() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import transformer_engine as t, megatron.core as m, torch; print('TE', t.__version__, \
'megatron-core', m.__version__, 'torch', torch.__version__)" || { echo "TE stack missing"; exit 1; }
  if ! ls quartet_te/_C*.so >/dev/null 2>&1; then
    start=$(date +%s)
    MAX_JOBS=16 QUARTET_TE_CUDA_ARCHS=90a QUARTET_TE_FORCE_CUDA=1 timeout 300 \
      $PY setup.py build_ext --inplace >"$EV/build.log" 2>&1 || { tail -30 "$EV/build.log"; exit 1; }
    echo "built quartet_te._C in $(( $(date +%s) - start )) s"
  fi
  $PY -c 'import quartet_te.kernels as K; print("kernels:", K.is_available(return_reason=True))'
  if [ ! -f "$CORPUS/manifest.json" ]; then
    $PY -m quartet_te.corpus unpack .corpus-pack "$CORPUS" || exit 1
  fi
}

start() {
  # The queue script runs the given runs one after the other; done/failed markers let a later
  # `start` skip what already finished on this machine.
  {
    echo "cd $PWD"
    for run in "$@"; do
      recipe=${run%@*}; seed=1234
      [ "$run" != "$recipe" ] && seed=$(( 1233 + ${run#*@s} ))
      flags="--seed $seed"
      [ "$recipe" != bf16 ] && flags="$flags --fp4-format e2m1 --fp4-recipe $recipe"
      cat <<EOF
if [ ! -e $EV/$run.done ]; then
  echo "\$(date -u +%T) start $run"
  $PY -m torch.distributed.run --nproc-per-node 1 --master-port 29$(( RANDOM % 400 + 100 )) \
    examples/pretrain_gpt.py @$CONFIG --data-path $CORPUS $flags ${EVIDENCE_FLAGS:-} \
    --loss-log $EV/$run.jsonl > $EV/$run.log 2>&1 && touch $EV/$run.done || touch $EV/$run.failed
  echo "\$(date -u +%T) end $run"
fi
EOF
    done
    echo 'echo QUEUE DONE'
  } > "$EV/queue.sh"
  setsid nohup bash "$EV/queue.sh" >>"$EV/queue.log" 2>&1 < /dev/null &
  echo "queued: $* (queue pid $!)"
}

progress() {
  for f in "$EV"/*.log; do
    [ "$(basename "$f")" = build.log ] || [ "$(basename "$f")" = queue.log ] && continue
    line=$(grep -E " iteration " "$f" | tail -1 | sed -E 's/ \| learning rate: [^|]*//')
    state=running; [ -e "${f%.log}.done" ] && state=done; [ -e "${f%.log}.failed" ] && state=FAILED
    echo "  $(basename "${f%.log}") [$state]$line"
    [ "$state" = FAILED ] && grep -v -i warn "$f" | tail -15
  done
}

wait_queue() {
  local limit=${1:-560} t0=$(date +%s) last=0
  while true; do
    now=$(date +%s)
    if grep -q "QUEUE DONE" "$EV/queue.log" 2>/dev/null; then break; fi
    if [ $(( now - t0 )) -ge "$limit" ]; then break; fi
    if [ $(( now - last )) -ge 120 ]; then echo "$(date -u +%T)"; progress; last=$now; fi
    sleep 10
  done
  echo "$(date -u +%T) $(grep -c . "$EV/queue.log" 2>/dev/null) queue events"; cat "$EV/queue.log"
  progress
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  tar czf "$OUT/evidence.tgz" -C "$EV" $(cd "$EV" && ls *.jsonl *.log 2>/dev/null | grep -v build.log)
}

cmd=${1:?usage: evidence_run.sh setup | start RUN... | wait SECONDS}
shift
case $cmd in
  setup) setup ;;
  start) start "$@" ;;
  wait) wait_queue "$@" ;;
  *) echo "unknown command $cmd"; exit 2 ;;
esac
