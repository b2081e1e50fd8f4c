#!/usr/bin/env bash
# The Hopper fast path, measured side by side in one go on one GPU (BENCHMARKS.md §9):
#   build  the extension (sm_90a), unless this machine already built the current sources
#   tests  the kernel and fast-path device tests (bit-exact vs the reference), TE module tests
#   kbench python -m quartet_te.bench.kernels (kernels vs copy bandwidth; linear vs torch BF16,
#          TE BF16, TE FP8; CUDA-graph replay; activation memory)
#   layer  one te.TransformerLayer (hidden 4096, seq 2048): BF16, TE FP8, quartet2, nvfp4-sr; then
#          BF16, quartet2 and TE FP8 as CUDA-graph replays (the host taken out)
#   layerhost  the same layer, BF16 vs quartet2: host-issue time, host<->device syncs, cProfile
#   ledger the host time of the layer's (and a small te.Linear's) fwd+bwd inside our code vs the rest
#   layerbatch  the layer at batch 4 (8192 tokens per step), eager and as CUDA-graph replays
#   layerfuse   the layer with Megatron-Core's default gradient-accumulation fusion (FP32 main_grad
#          accumulated by each weight-gradient GEMM), BF16 and quartet2, eager and graphed
#   mlm    Megatron-LM's own pretrain_gpt.py (4 layers, hidden 1024, ffn 4096, seq 1024, mbs 8, gbs
#          $MLM_GBS (default 8; 32 = 4 micro-batches of gradient accumulation),
#          mock data, TE layers): BF16, TE FP8, --fp4-recipe quartet2 through our launcher
#          (MLM_RUNS adds e.g. bf16_graph / quartet2_graph: --cuda-graph-impl local;
#          MLM_HOST_PROFILE=START:STOP runs every recipe through our launcher with a cProfile of
#          those training steps, summed by package, at the end of each log; MLM_DEVICE_PROFILE=START:STOP
#          the same with torch.profiler: GPU kernel time per step by category)
#   gradacc  gradient accumulation against one micro-batch per step, same run: mlm eager BF16 and
#          quartet2 at gbs 8 and 32 (4 micro-batches), graphed at gbs 32, then eager gbs 32 again
#          with a cProfile of training steps 20-23 and the GPU kernel time of steps 24-27, and
#          graphed gbs 8 with the kernel time of steps 20-23; prints ms per micro-batch
#   host   tests/te/profile_host_overhead.py: host µs per call, cProfile listings in $OUT/host
#   ncu    Nsight Compute on the quantize kernels of one linear (tools/kernel_probe.py), if installed
# Usage: bash tools/gpu_fastpath.sh [stages...]   (default: build tests kbench layer mlm)
# Needs Transformer Engine and megatron-core on PYTHONPATH for tests/layer/mlm, and a Megatron-LM
# checkout (pretrain_gpt.py and megatron/) in $MEGATRON_LM (default .megatron-lm) for mlm.
# Logs go to $OUT (default runs/gpu_fastpath).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-runs/gpu_fastpath}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 PYTHONPATH=$ROOT:${PYTHONPATH:-}
PY=${PYTHON:-python3}
stages=${*:-"build tests kbench layer mlm"}

built_stamp() { cat csrc/* setup.py | sha1sum | cut -c1-12; }

for s in $stages; do
  echo "== $s ($(date -u +%H:%M:%S))"
  case $s in
    build)
      if [ -f quartet_te/.built ] && [ "$(cat quartet_te/.built)" = "$(built_stamp)" ] && ls quartet_te/_C*.so >/dev/null 2>&1; then
        echo "extension up to date"
      else
        start=$(date +%s)
        # The documented install (README "Install"): builds quartet_te._C in place.
        if MAX_JOBS=16 QUARTET_TE_CUDA_ARCHS=90a QUARTET_TE_FORCE_CUDA=1 \
            $PY -m pip install -v --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1; then
          built_stamp >quartet_te/.built; echo "built in $(( $(date +%s) - start )) s"
        else
          tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
        fi
      fi
      $PY -c 'import quartet_te.kernels as K; print("kernels:", K.is_available(return_reason=True))' ;;
    tests)
      $PY -m pytest -m gpu tests/csrc tests/reference/test_device_parity.py -q -rfEs -p no:cacheprovider -x \
        2>&1 | tee "$OUT/tests_csrc.log" | tail -8
      if $PY -c 'import transformer_engine.pytorch' 2>/dev/null; then
        PYTHONPATH=$ROOT/tests/te:$PYTHONPATH timeout 300 $PY -m pytest tests/te -m "not slow" -q -rfEs \
          -p no:cacheprovider 2>&1 | tee "$OUT/tests_te.log" | tail -8
      fi ;;
    kbench)
      timeout 420 $PY -m quartet_te.bench.kernels --profile 2>&1 | tee "$OUT/kbench.log" | grep -v "^$" | tail -70 ;;
    layer)
      timeout 300 $PY tests/te/bench_te_layer.py --hidden 4096 --ffn 16384 --heads 32 --seq 2048 --iters 10 \
        --recipes bf16,fp8_current,quartet2,nvfp4-sr --graph bf16,quartet2,fp8_current 2>&1 | tee "$OUT/layer.log" | tail -16 ;;
    ledger)
      for m in layer linear; do
        timeout 200 $PY tests/te/host_ledger.py --module $m 2>&1 | grep -v -i warn | tee "$OUT/ledger_$m.log" | head -40
      done ;;
    layerbatch)
      timeout 300 $PY tests/te/bench_te_layer.py --hidden 4096 --ffn 16384 --heads 32 --seq 2048 --batch 4 --iters 10 \
        --recipes bf16,fp8_current,quartet2 --graph bf16,quartet2,fp8_current 2>&1 | grep -v -i warn \
        | tee "$OUT/layer_batch4.log" | tail -16 ;;
    layerfuse)
      timeout 300 $PY tests/te/bench_te_layer.py --hidden 4096 --ffn 16384 --heads 32 --seq 2048 --iters 10 --fuse-wgrad \
        --recipes bf16,quartet2 --graph bf16,quartet2 2>&1 | grep -v -i warn | tee "$OUT/layer_fuse.log" | tail -12 ;;
    layerhost)
      timeout 300 $PY tests/te/bench_te_layer.py --hidden 4096 --ffn 16384 --heads 32 --seq 2048 --iters 10 \
        --recipes bf16,quartet2 --sync-check quartet2 --cprofile bf16,quartet2 2>&1 | grep -v -i warn \
        | tee "$OUT/layerhost.log" | head -60 ;;
    mlm)
      MLM=${MEGATRON_LM:-$ROOT/.megatron-lm}
      args=(--num-layers 4 --hidden-size 1024 --ffn-hidden-size 4096 --num-attention-heads 16
            --seq-length 1024 --max-position-embeddings 1024 --micro-batch-size 8 --global-batch-size ${MLM_GBS:-8}
            --train-iters ${MLM_ITERS:-60} --lr 1e-4 --min-lr 1e-5 --lr-decay-style cosine --bf16
            --mock-data --tokenizer-type NullTokenizer --vocab-size 32000 --transformer-impl transformer_engine
            --log-interval 10 --eval-interval 100000 --eval-iters 0 --distributed-backend nccl
            --no-gradient-accumulation-fusion --use-mcore-models)
      for run in ${MLM_RUNS:-bf16 fp8 quartet2}; do
        extra=(); entry=(pretrain_gpt.py); penv=()
        [ -n "${MLM_HOST_PROFILE:-}" ] && penv+=(QUARTET_TE_HOST_PROFILE=$MLM_HOST_PROFILE)
        [ -n "${MLM_DEVICE_PROFILE:-}" ] && penv+=(QUARTET_TE_DEVICE_PROFILE=$MLM_DEVICE_PROFILE)
        [ ${#penv[@]} -gt 0 ] && entry=(-m quartet_te.integration.megatron.launch pretrain_gpt.py)  # the windows are ours
        [ $run = fp8 ] && extra=(--fp8-format hybrid --fp8-recipe tensorwise)
        case $run in quartet2*) extra=(--fp4-format e2m1 --fp4-recipe quartet2)
          entry=(-m quartet_te.integration.megatron.launch pretrain_gpt.py) ;; esac
        case $run in *_graph) extra+=(--cuda-graph-impl local) ;; esac
        (cd "$MLM" && env "${penv[@]}" PYTHONPATH=$MLM:$PYTHONPATH timeout ${MLM_TIMEOUT:-150} $PY -m torch.distributed.run --nproc-per-node 1 \
          "${entry[@]}" "${args[@]}" "${extra[@]}" >"$OUT/mlm_$run.log" 2>&1)
        echo "$run rc=$?: $(grep -o 'elapsed time per iteration (ms): [0-9.]*' "$OUT/mlm_$run.log" | awk '{print $NF}' | tr '\n' ' ')"
        grep -E "Error|error:" "$OUT/mlm_$run.log" | grep -v -i warn | tail -3
      done ;;
    gradacc)
      # Each case in its own folder; ms/iter at iteration 20 (the mean of iterations 11-20).
      run_mlm() { local dir=$OUT/gradacc_$1; shift; env "$@" OUT="$dir" bash "$ROOT/tools/gpu_fastpath.sh" mlm; }
      run_mlm gbs8 MLM_GBS=8 MLM_ITERS=20 MLM_RUNS="bf16 quartet2"
      run_mlm gbs32 MLM_GBS=32 MLM_ITERS=20 MLM_RUNS="bf16 quartet2 bf16_graph quartet2_graph"
      run_mlm gbs32_profile MLM_GBS=32 MLM_ITERS=28 MLM_HOST_PROFILE=20:24 MLM_DEVICE_PROFILE=24:28 MLM_RUNS="bf16 quartet2"
      run_mlm gbs8_graph_profile MLM_GBS=8 MLM_ITERS=24 MLM_DEVICE_PROFILE=20:24 MLM_RUNS="bf16_graph quartet2_graph"
      for f in "$OUT"/gradacc_*/mlm_*.log; do
        mb=$(case $f in *gbs32*) echo 4 ;; *) echo 1 ;; esac)
        ms=$(grep -o 'elapsed time per iteration (ms): [0-9.]*' "$f" | sed -n 2p | awk '{print $NF}')
        echo "$(basename "$(dirname "$f")")/$(basename "$f" .log): ${ms:-?} ms/iter at 20, $mb micro-batch(es): $(
          [ -n "$ms" ] && awk -v m="$ms" -v n="$mb" 'BEGIN{printf "%.1f", m / n}') ms per micro-batch"
      done ;;
    host)
      timeout 300 $PY tests/te/profile_host_overhead.py --out "$OUT/host" 2>&1 | grep -v -i warn | tee "$OUT/host.log" ;;
    ncu)
      NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
      if [ -z "$NCU" ]; then echo "ncu not installed"; else
        # every row/tile kernel launch of the probe (the availability probe, then two rounds)
        timeout 400 "$NCU" --target-processes all -k regex:'row_kernel|tile_kernel' --launch-count 24 \
          --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
          --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis \
          $PY tools/kernel_probe.py >"$OUT/ncu.log" 2>&1; echo "ncu rc=$?"
        grep -E "^  .*_kernel|Duration|Executed Instructions  |Issue Slots Busy|Registers Per|Spilling Requests  |ERR" "$OUT/ncu.log" | head -90
      fi
      if command -v cuobjdump >/dev/null || [ -x /usr/local/cuda/bin/cuobjdump ]; then
        CUOBJ=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
        "$CUOBJ" -sass quartet_te/_C*.so | $PY tools/sass_histogram.py --match Lb0E --top 14 >"$OUT/sass.txt"
        echo "sass: $(wc -l <"$OUT/sass.txt") kernels in $OUT/sass.txt"
      fi ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
