#!/usr/bin/env bash
# The pre-training evidence runs on the lent GPU machine, after the TE stack is staged into
# /tmp/site (../shared/gpu/README.md).
#
# Issue 15 (docs/evidence_plan.md): runs that outlive machines. Each `call` runs the queue in the
# foreground until a wall-clock budget, then the running run saves a checkpoint and stops; the
# queue's state (logs, done markers, that checkpoint) goes to $OUT/state, comes back, and the
# next call carries it (runs/evidence2/state) or finds it still in /tmp on a warm machine.
#
#   bash tools/evidence_run.sh restore                # (device, carry runs/evidence2/state) state -> /tmp
#   bash tools/evidence_run.sh call 540 bf16 nvfp4-sr quartet2 …  # (device) setup if needed, run
#                                                     #   the queue for 540 s, snapshot -> $OUT/state
#   bash tools/evidence_run.sh collect FILES_AT       # (here) returned state -> runs/evidence2/{state,logs}
#   bash tools/evidence_run.sh status [RUN...]        # (here) progress of the collected runs, time left
#   bash tools/evidence_run.sh resume-check [RECIPE [ITERS]]  # (device) straight vs split run: bit-identical?
#
# Issue 7 (BENCHMARKS.md §7): a background queue (setsid) that lives as long as the machine, and
# `wait` calls follow it; each run must finish on the machine it started on.
#
#   bash tools/evidence_run.sh setup                  # unpack .corpus-pack, build quartet_te._C
#   bash tools/evidence_run.sh start bf16 quartet2 …  # queue runs (sequential, one GPU each)
#   bash tools/evidence_run.sh wait 560               # follow the queue up to 560 s; logs -> $OUT
#
# `call` knobs: $EVIDENCE_STATE / $EVIDENCE_LOGS (the collected state and logs here, default
# runs/evidence2/{state,logs}), $EVIDENCE_MIN_RUN_S (90: no new run with less time left),
# $EVIDENCE_EXIT_SLACK_S (20: a run stops this long before the budget ends),
# $EVIDENCE_TELEMETRY_ITERS (4: per-GEMM telemetry over the last N iterations of seed 1 of every
# FP4 recipe; 0: off), $EVIDENCE_DATA_SEED (1234), $EVIDENCE_RETRY_FAILED=1 (run failed runs again).
#
# A run is a recipe name (bf16, or an --fp4-recipe: quartet2, quartet2-rot, nvfp4-sr, …),
# optionally with a seed suffix (quartet2@s2 = --seed 1235; no suffix = seed 1 = 1234). `start`
# gives each seed its own data order; `call` gives every run the data order of --data-seed
# $EVIDENCE_DATA_SEED (1234), so seeds differ in their initialization only.
# Extra driver flags for every run: $EVIDENCE_FLAGS; $CONFIG, $CORPUS and $EVIDENCE_DIR override the
# config (start: llama-30m-evidence, call: llama-5m-evidence), the corpus and the device-side
# results folder (default /tmp/evidence/<run>.{jsonl,log}). More knobs of `call`: see below.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
device_env() {
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
}
OUT=${OUT:-/tmp/out}
EV=${EVIDENCE_DIR:-/tmp/evidence}
CORPUS=${CORPUS:-/tmp/corpus-byte}
CONFIG_GIVEN=${CONFIG:-}
CONFIG=${CONFIG:-examples/configs/llama-30m-evidence.args}
CK=$EV/ckpt                                             # call: <run>/iter_NNNNNNN/… + latest
STATE=${EVIDENCE_STATE:-runs/evidence2/state}           # the carried / collected snapshot
LOGS=${EVIDENCE_LOGS:-runs/evidence2/logs}              # collected logs (here)
MIN_RUN_S=${EVIDENCE_MIN_RUN_S:-90}                     # no new run with less time left
SLACK_S=${EVIDENCE_EXIT_SLACK_S:-20}                    # a run stops this long before the deadline
TEL_ITERS=${EVIDENCE_TELEMETRY_ITERS:-4}                # telemetry: last N iterations of seed 1 FP4 runs
DATA_SEED=${EVIDENCE_DATA_SEED:-1234}

setup() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import transformer_engine as t, megatron.core as m, torch; print('TE', t.__version__, \
'megatron-core', m.__version__, 'torch', torch.__version__)" || { echo "TE stack missing"; exit 1; }
  if ! ls quartet_te/_C*.so >/dev/null 2>&1; then
    start=$(date +%s)
    MAX_JOBS=16 QUARTET_TE_CUDA_ARCHS=90a QUARTET_TE_FORCE_CUDA=1 timeout 300 \
      $PY -m pip install -v --no-build-isolation --no-deps --no-index -e . >"$EV/build.log" 2>&1 \
        || { tail -30 "$EV/build.log"; exit 1; }
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
  tar czf "$OUT/evidence.tgz" -C "$EV" $(cd "$EV" && ls *.jsonl *.log *.csv *.done *.failed speed/* 2>/dev/null | grep -v build.log)
}

# ------------------------------------------------------------------ issue 15: resumable queue
run_seed() {  # recipe@sN -> 1233 + N; no suffix -> 1234
  local run=$1 recipe=${1%@*}
  if [ "$run" != "$recipe" ]; then echo $(( 1233 + ${run#*@s} )); else echo 1234; fi
}

check_runs() {  # every run is bf16 or a recipe name the Megatron registry accepts, seeds >= 1
  $PY - "$@" <<'PYEOF'
import re, sys
from quartet_te.integration.megatron.registry import MEGATRON_RECIPES
bad = [r for r in sys.argv[1:] if not re.fullmatch(r"[A-Za-z0-9_.-]+(@s[1-9][0-9]*)?", r)
       or r.split("@")[0] not in ("bf16", *MEGATRON_RECIPES)]
if bad or len(set(sys.argv[1:])) != len(sys.argv[1:]):
    print(f"bad or repeated runs {bad or sys.argv[1:]}: a run is bf16 or one of "
          f"{sorted(MEGATRON_RECIPES)}, optionally @sN (N >= 1)")
    sys.exit(2)
PYEOF
}

flag_value() {  # the last value of flag $1 in config $2 plus the extra flags $3…
  local flag=$1 cfg=$2; shift 2
  $PY -c 'import sys; t=[w for l in open(sys.argv[2]) for w in l.split("#",1)[0].split()]+sys.argv[3:]
v=[t[i+1] for i,w in enumerate(t[:-1]) if w==sys.argv[1]]; print(v[-1] if v else "")' "$flag" "$cfg" "$@"
}

latest() { cat "$CK/$1/latest" 2>/dev/null || echo 0; }
qlog() { echo "$(date -u +%T) $*" | tee -a "$EV/queue.log"; }  # a line of the call's report, kept

prepare() {  # what a call needs on this machine: the corpus, and on a GPU the stack and quartet_te._C
  mkdir -p "$EV" "$OUT"
  if command -v nvidia-smi >/dev/null 2>&1; then
    setup || return 1
  elif [ ! -f "$CORPUS/manifest.json" ]; then
    [ -d .corpus-pack ] || { echo "no corpus at $CORPUS and no .corpus-pack to unpack (carry it)"; return 1; }
    $PY -m quartet_te.corpus unpack .corpus-pack "$CORPUS" || return 1
  fi
}

restore() {  # the carried snapshot ($STATE) -> $EV, if it is newer than what this machine holds
  mkdir -p "$EV"
  if [ ! -f "$STATE/queue.tgz" ]; then
    echo "state: none carried ($STATE); this machine's snapshot: $(cat "$EV/snapshot.seq" 2>/dev/null || echo none)"
    return 0
  fi
  local carried here
  carried=$(tar xzf "$STATE/queue.tgz" -O snapshot.seq) || { echo "state: $STATE/queue.tgz unreadable"; return 1; }
  here=$(cat "$EV/snapshot.seq" 2>/dev/null || echo 0)
  if [ "$carried" -le "$here" ]; then
    echo "state: this machine's snapshot $here is as new as the carried $carried; keeping it"; return 0
  fi
  rm -rf "$CK"
  (cd "$EV" && rm -f ./*.jsonl ./*.done ./*.failed ./*.csv snapshot.seq \
     && ls -- *.log 2>/dev/null | grep -vx build.log | xargs -r rm -f)
  tar xzf "$STATE/queue.tgz" -C "$EV" || return 1
  if [ -f "$STATE/ckpt.txt" ]; then
    local run it dst
    read -r run it < "$STATE/ckpt.txt"
    dst=$CK/$run/iter_$(printf %07d "$it")
    mkdir -p "$dst" && cp "$STATE"/mp_rank_* "$dst"/ && echo "$it" > "$CK/$run/latest" || return 1
    echo "state: restored snapshot $carried, $run at iteration $it"
  else
    echo "state: restored snapshot $carried (no run in progress)"
  fi
}

snapshot() {  # the queue's state -> $OUT/state (<= 8 files of <= 16 MiB): queue.tgz, ckpt.txt, parts
  local seq run="" newest=0 t
  seq=$(( $(cat "$EV/snapshot.seq" 2>/dev/null || echo 0) + 1 )); echo "$seq" > "$EV/snapshot.seq"
  rm -rf "$OUT/state"; mkdir -p "$OUT/state"
  for f in "$CK"/*/latest; do  # the unfinished run (not failed) whose checkpoint is newest
    [ -e "$f" ] || continue
    local r; r=$(basename "$(dirname "$f")")
    [ -e "$EV/$r.done" ] || [ -e "$EV/$r.failed" ] && continue
    t=$(stat -c %Y "$f"); [ "$t" -ge "$newest" ] && { newest=$t; run=$r; }
  done
  if [ -n "$run" ]; then
    local it; it=$(latest "$run")
    cp "$CK/$run/iter_$(printf %07d "$it")"/mp_rank_* "$OUT/state/" && echo "$run $it" > "$OUT/state/ckpt.txt"
  fi
  (cd "$EV" && tar czf "$OUT/state/queue.tgz" snapshot.seq \
    $(ls -- *.jsonl *.log *.done *.failed *.csv 2>/dev/null | grep -vx build.log))
  local n big
  n=$(find "$OUT" -type f | wc -l); big=$(find "$OUT" -type f -size +16M | wc -l)
  echo "snapshot $seq -> $OUT/state: $(ls "$OUT/state" | tr '\n' ' ')($(du -sh "$OUT/state" | cut -f1))"
  [ "$n" -le 8 ] && [ "$big" -eq 0 ] || echo "WARNING: $OUT holds $n files, $big over 16 MiB: not all will come back"
}

call_progress() {  # one line per run of $1 (a results folder): done / paused at N / FAILED / waiting
  local dir=$1; shift
  for run in "$@"; do
    local last="" state=waiting
    [ -f "$dir/$run.jsonl" ] && last=$(tail -1 "$dir/$run.jsonl" | $PY -c 'import json,sys
r=json.loads(sys.stdin.read() or "{}"); print(" iteration %s loss %.4f%s" % (r.get("iteration"), r.get("loss", 0),
"" if r.get("val_loss") is None else " val %.4f" % r["val_loss"]) if r else "")' 2>/dev/null)
    [ -n "$last" ] && state=paused
    [ -e "$dir/$run.done" ] && state=done
    [ -e "$dir/$run.failed" ] && state=FAILED
    echo "  $run [$state]$last"
  done
}

call() {
  local budget=${1:?usage: call SECONDS RUN...}; shift
  [ $# -gt 0 ] || { echo "call: no runs given"; exit 2; }
  local deadline=$(( $(date +%s) + budget )) cfg=${CONFIG_GIVEN:-examples/configs/llama-5m-evidence.args}
  # shellcheck disable=SC2086
  local iters; iters=$(flag_value --train-iters "$cfg" ${EVIDENCE_FLAGS:-})
  device_env
  prepare || exit 1
  restore || exit 1
  check_runs "$@" || exit 2
  qlog "call: ${budget} s, config $cfg ($iters iterations), runs: $*"
  local ordered=() run
  for run in "$@"; do [ -e "$CK/$run/latest" ] && ordered+=("$run"); done   # a run in progress first
  for run in "$@"; do [ -e "$CK/$run/latest" ] || ordered+=("$run"); done
  for run in "${ordered[@]}"; do
    [ -e "$EV/$run.done" ] && continue
    if [ -e "$EV/$run.failed" ]; then
      [ -n "${EVIDENCE_RETRY_FAILED:-}" ] || continue
      rm -f "$EV/$run.failed"
    fi
    local left=$(( deadline - $(date +%s) ))
    if [ "$left" -lt "$MIN_RUN_S" ]; then
      qlog "$left s left, under $MIN_RUN_S: $run waits for the next call"; break
    fi
    local recipe=${run%@*} seed mins flags load="" tel="" rc it
    seed=$(run_seed "$run")
    mins=$(awk -v l="$left" -v s="$SLACK_S" 'BEGIN { printf "%.4f", (l - s) / 60 }')
    flags="--seed $seed --data-seed $DATA_SEED"
    [ "$recipe" != bf16 ] && flags="$flags --fp4-format e2m1 --fp4-recipe $recipe --fp4-seed $seed"
    [ -e "$CK/$run/latest" ] && load="--load $CK/$run"
    if [ "$recipe" != bf16 ] && [ "$seed" = 1234 ] && [ "$TEL_ITERS" -gt 0 ]; then
      tel="--telemetry-csv $EV/$run.telemetry.csv --telemetry-last-iters $TEL_ITERS"
    fi
    qlog "start $run (seed $seed${load:+, from iteration $(latest "$run")}, $left s left)"
    echo "=== queue: start $(date -u +%FT%T)" >> "$EV/$run.log"
    # shellcheck disable=SC2086
    timeout -k 10 $(( left + 30 )) $PY -m torch.distributed.run --nproc-per-node 1 \
      --master-port 29$(( RANDOM % 400 + 100 )) examples/pretrain_gpt.py @"$cfg" --data-path "$CORPUS" \
      $flags ${EVIDENCE_FLAGS:-} --save "$CK/$run" $load --exit-duration-in-mins "$mins" \
      --loss-log "$EV/$run.jsonl" $tel >> "$EV/$run.log" 2>&1
    rc=$?; it=$(latest "$run")
    local note=""; [ "$rc" -ne 0 ] && note=", then exit $rc"  # e.g. an error in the teardown
    if [ "$it" = "$iters" ]; then  # the final checkpoint comes after the final validation and log
      touch "$EV/$run.done"; rm -rf "${CK:?}/$run"
      qlog "done $run ($iters iterations$note)"
    elif [ "$rc" -eq 0 ] || awk '/^=== queue: start /{b=""} {b=b $0 "\n"} END{printf "%s", b}' "$EV/$run.log" \
        | grep -q "exiting at iteration $it of"; then  # this start saved and stopped, then failed
      qlog "paused $run at iteration $it of $iters (budget$note)"; break
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then  # killed past the deadline: resumable, not failed
      qlog "stopped $run past the deadline (exit $rc); it resumes from iteration $it"
      break
    else
      touch "$EV/$run.failed"
      qlog "FAILED $run (exit $rc; checkpoint at iteration $it kept on this machine)"
      grep -v -i warn "$EV/$run.log" | tail -20
    fi
  done
  snapshot
  call_progress "$EV" "$@"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  return 0
}

collect() {  # (here) a call's returned files -> $STATE (for the next carry) and $LOGS
  local src=${1:?usage: collect FILES_AT (the folder the reply names)}
  [ -d "$src/state" ] && src=$src/state
  [ -f "$src/queue.tgz" ] || { echo "collect: no queue.tgz in $src"; exit 1; }
  local new old=0
  new=$(tar xzf "$src/queue.tgz" -O snapshot.seq) || exit 1
  [ -f "$STATE/queue.tgz" ] && old=$(tar xzf "$STATE/queue.tgz" -O snapshot.seq)
  if [ "$new" -lt "$old" ] && [ -z "${EVIDENCE_FORCE:-}" ]; then
    echo "collect: $src holds snapshot $new, older than the collected $old (EVIDENCE_FORCE=1 to take it)"; exit 1
  fi
  rm -rf "$STATE.tmp"; mkdir -p "$STATE.tmp"; cp "$src"/* "$STATE.tmp"/ || exit 1
  for idx in "$STATE.tmp"/*.parts.json; do  # the checkpoint's parts against their sha256
    [ -e "$idx" ] || continue
    $PY -c 'import hashlib, json, pathlib, sys
i = pathlib.Path(sys.argv[1]); ix = json.loads(i.read_text())
d = b"".join((i.parent / n).read_bytes() for n in ix["parts"])
sys.exit(0 if len(d) == ix["bytes"] and hashlib.sha256(d).hexdigest() == ix["sha256"] else 1)' "$idx" \
      || { echo "collect: $(basename "$idx"): parts do not match their sha256; keeping the old state"; exit 1; }
  done
  rm -rf "$STATE"; mv "$STATE.tmp" "$STATE"
  mkdir -p "$LOGS"; tar xzf "$STATE/queue.tgz" -C "$LOGS"
  echo "collected snapshot $new into $STATE ($(du -sh "$STATE" | cut -f1)); logs in $LOGS"
  [ -f "$STATE/ckpt.txt" ] && echo "in progress: $(cat "$STATE/ckpt.txt")"
  status
}

status() {  # (here) the collected runs [and RUN... not started yet]: progress and time left
  local cfg=${CONFIG_GIVEN:-examples/configs/llama-5m-evidence.args} iters
  # shellcheck disable=SC2086
  iters=$(flag_value --train-iters "$cfg" ${EVIDENCE_FLAGS:-})
  $PY - "$LOGS" "$iters" "$@" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
logs, iters, extra = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
runs = sorted({p.name[:-len(".jsonl")] for p in logs.glob("*.jsonl")} | set(extra))
if not runs:
    sys.exit(print(f"no collected logs in {logs}"))
recs = {r: [json.loads(l) for l in (logs / f"{r}.jsonl").read_text().splitlines() if l.strip()]
        if (logs / f"{r}.jsonl").exists() else [] for r in runs}
ms = {}  # median iteration time per recipe, over its logged iterations after the first 20
for r, rs in recs.items():
    ms.setdefault(r.split("@")[0], []).extend(x["iter_ms"] for x in (rs[20:] or rs) if x.get("iter_ms"))
ms = {k: statistics.median(v) for k, v in ms.items() if v}
left_s, unknown = 0.0, []
for r in runs:
    done = max((x["iteration"] for x in recs[r]), default=0)
    state = "done" if (logs / f"{r}.done").exists() else "FAILED" if (logs / f"{r}.failed").exists() \
        else "paused" if done else "waiting"
    t = ms.get(r.split("@")[0])
    last = recs[r][-1] if recs[r] else {}
    val = [x["val_loss"] for x in recs[r] if x.get("val_loss") is not None]
    print(f"  {r} [{state}] {done}/{iters}" + (f" loss {last['loss']:.4f}" if last else "")
          + (f" val {val[-1]:.4f}" if val else "") + (f" | {t:.0f} ms/iteration" if t else ""))
    if state in ("paused", "waiting"):
        if t:
            left_s += (iters - done) * t / 1e3
        else:
            unknown.append(r)
print(f"left: {left_s / 60:.1f} min of training" + (f" + {', '.join(unknown)} (no time measured for the recipe yet)"
      if unknown else "") + ", plus ~30 s per run and call for process start")
PYEOF
}

resume_check() {  # (device) a short straight run vs the same run stopped halfway and resumed
  # TE's fused attention may pick non-deterministic backward kernels; ask for deterministic ones
  # (override with NVTE_ALLOW_NONDETERMINISTIC_ALGO=1). If the two differ, a repeat of the
  # straight run tells resume errors from run-to-run nondeterminism.
  export NVTE_ALLOW_NONDETERMINISTIC_ALGO=${NVTE_ALLOW_NONDETERMINISTIC_ALGO:-0}
  local recipe=${1:-quartet2} iters=${2:-24} cfg=${CONFIG_GIVEN:-examples/configs/llama-5m-evidence.args}
  device_env
  prepare || exit 1
  local d=$EV/resume-check/$recipe flags base rc
  rm -rf "$d"; mkdir -p "$d"
  flags="--seed 1234 --data-seed $DATA_SEED"
  [ "$recipe" != bf16 ] && flags="$flags --fp4-format e2m1 --fp4-recipe $recipe"
  base="@$cfg --data-path $CORPUS $flags ${EVIDENCE_FLAGS:-} --train-iters $iters --lr-warmup-iters 2"
  base="$base --eval-interval $(( iters / 2 ))"
  leg() {  # name, extra flags
    local name=$1; shift
    # shellcheck disable=SC2086
    $PY -m torch.distributed.run --nproc-per-node 1 --master-port 29$(( RANDOM % 400 + 100 )) \
      examples/pretrain_gpt.py $base --save "$d/$name" --loss-log "$d/$name.jsonl" "$@" \
      >> "$d/$name.log" 2>&1 && return 0
    echo "resume-check: $name $* failed"; grep -v -i warn "$d/$name.log" | tail -20; exit 1
  }
  leg straight
  leg split --exit-interval $(( iters / 2 ))
  leg split --load "$d/split"
  echo "straight vs stopped at $(( iters / 2 )) and resumed ($recipe, $iters iterations):"
  $PY tools/compare_checkpoints.py "$d/straight" "$d/split" --logs "$d/straight.jsonl" "$d/split.jsonl"; rc=$?
  if [ "$rc" -ne 0 ]; then
    leg repeat
    echo "straight vs a repeat of it (run-to-run determinism):"
    $PY tools/compare_checkpoints.py "$d/straight" "$d/repeat" --logs "$d/straight.jsonl" "$d/repeat.jsonl"
  fi
  grep -h " iteration " "$d/straight.log" | tail -2
  exit $rc
}


# ------------------------------------------------------------------ issue 15: all runs at once
# `launch` starts every run of issue 15 at once in the background (setsid), one process each,
# $EVIDENCE_JOBS at a time (default 8), under CUDA MPS when the machine has it (kernels of the
# small runs then share the GPU instead of taking turns); `wait` follows them. Same flags as
# `call` (one data order, --seed and --fp4-seed 1233+N, telemetry on seed 1), no checkpoints:
# the runs must finish on the machine they started on. Numerics do not depend on what else runs;
# tokens/s does, so `speed` times each recipe alone first.
#   bash tools/evidence_run.sh speed 64 bf16 nvfp4-sr quartet2   # (device) solo timing, 64 iterations
#   bash tools/evidence_run.sh launch bf16 bf16@s2 nvfp4-sr …    # (device) start all, return
#   bash tools/evidence_run.sh wait 560                          # (device) follow; logs -> $OUT
mps_start() {  # CUDA MPS for the concurrent runs, if the machine has it and a client works
  [ "${EVIDENCE_MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null 2>&1 || { echo "MPS: off"; return 0; }
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  pgrep -f nvidia-cuda-mps-control >/dev/null || nvidia-cuda-mps-control -d
  if timeout 60 $PY -c 'import torch; print("MPS client ok:", float(torch.ones(8, device="cuda").sum()))'; then
    return 0
  fi
  echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  echo "MPS: a client failed; running without it"
}

run_flags() {  # the driver flags of one run (as `call`, minus checkpoints)
  local run=$1 recipe=${1%@*} seed
  seed=$(run_seed "$run")
  local flags="--seed $seed --data-seed $DATA_SEED"
  [ "$recipe" != bf16 ] && flags="$flags --fp4-format e2m1 --fp4-recipe $recipe --fp4-seed $seed"
  if [ "$recipe" != bf16 ] && [ "$seed" = 1234 ] && [ "$TEL_ITERS" -gt 0 ]; then
    flags="$flags --telemetry-csv $EV/$run.telemetry.csv --telemetry-last-iters $TEL_ITERS"
  fi
  echo "$flags"
}

launch() {
  [ $# -gt 0 ] || { echo "launch: no runs given"; exit 2; }
  local cfg=${CONFIG_GIVEN:-examples/configs/llama-5m-evidence.args} jobs=${EVIDENCE_JOBS:-8} i=0 run
  device_env
  prepare || exit 1
  check_runs "$@" || exit 2
  mps_start
  export OMP_NUM_THREADS=1
  rm -f "$EV/queue.log"
  for run in "$@"; do
    i=$(( i + 1 ))
    cat > "$EV/run-$run.sh" <<EOF
cd $PWD
[ -e $EV/$run.done ] && exit 0
rm -f $EV/$run.jsonl $EV/$run.failed $EV/$run.telemetry.csv
echo "\$(date -u +%T) start $run"
$PY -m torch.distributed.run --nproc-per-node 1 --master-port $(( 29100 + 7 * i )) \\
  examples/pretrain_gpt.py @$cfg --data-path $CORPUS $(run_flags "$run") ${EVIDENCE_FLAGS:-} \\
  --loss-log $EV/$run.jsonl > $EV/$run.log 2>&1 && touch $EV/$run.done || touch $EV/$run.failed
echo "\$(date -u +%T) end $run"
EOF
  done
  { echo "cd $PWD"; echo "printf '%s\\n' $* | xargs -P $jobs -I{} bash $EV/run-{}.sh"; echo 'echo QUEUE DONE'; } > "$EV/queue.sh"
  setsid nohup bash "$EV/queue.sh" >>"$EV/queue.log" 2>&1 < /dev/null &
  echo "launched: $* ($jobs at a time, config $cfg, queue pid $!)"
}

speed() {  # (device) each recipe alone for N iterations: tokens/s and peak memory without company
  local iters=${1:?usage: speed ITERS RECIPE...}; shift
  local cfg=${CONFIG_GIVEN:-examples/configs/llama-5m-evidence.args} d=$EV/speed r
  device_env
  prepare || exit 1
  mkdir -p "$d"
  for r in "$@"; do
    local flags="--seed 1234 --data-seed $DATA_SEED"
    [ "$r" != bf16 ] && flags="$flags --fp4-format e2m1 --fp4-recipe $r"
    # shellcheck disable=SC2086
    $PY -m torch.distributed.run --nproc-per-node 1 --master-port 29090 examples/pretrain_gpt.py @"$cfg" \
      --data-path "$CORPUS" $flags --train-iters "$iters" --lr-warmup-iters 8 --eval-interval "$iters" \
      --eval-iters 1 --log-interval "$iters" --loss-log "$d/$r.jsonl" > "$d/$r.log" 2>&1 \
      || { echo "speed: $r failed"; grep -v -i warn "$d/$r.log" | tail -15; continue; }
    $PY - "$d/$r.jsonl" "$r" <<'PYEOF'
import json, statistics, sys
rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][16:]
ms = statistics.median(r["iter_ms"] for r in rs if "val_loss" not in r)
print(f"speed {sys.argv[2]}: {ms:.1f} ms/iteration, {statistics.median(r['tokens_per_s'] for r in rs) / 1e6:.3f}M "
      f"tokens/s, peak {max(r.get('peak_mem_gib', 0) for r in rs):.2f} GiB (median over iterations 17-{len(rs) + 16})")
PYEOF
  done
}

usage="evidence_run.sh restore | call SECONDS RUN... | collect DIR | status [RUN...] | resume-check [RECIPE [ITERS]]"
usage="$usage | setup | start RUN... | wait SECONDS | launch RUN... | speed ITERS RECIPE..."
cmd=${1:?usage: $usage}
shift
case $cmd in
  setup) device_env; mkdir -p "$EV" "$OUT"; setup ;;
  start) device_env; mkdir -p "$EV" "$OUT"; start "$@" ;;
  wait) mkdir -p "$EV" "$OUT"; wait_queue "$@" ;;
  launch) launch "$@" ;;
  speed) speed "$@" ;;
  restore) restore ;;
  call) call "$@" ;;
  collect) collect "$@" ;;
  status) status "$@" ;;
  resume-check) resume_check "$@" ;;
  *) echo "unknown command $cmd"; exit 2 ;;
esac
