#!/usr/bin/env bash
# Runs the TE GPU tests and the benchmark on a GPU machine (see docs/te_gpu_results.md).
# Usage, with Transformer Engine importable (installed, or staged in /tmp/site):
#   bash tests/te/run_gpu.sh [stages]
# stages: any of "build tests train bench" (default: "tests train bench"); "build" installs the
# checkout as the README says (pip install --no-build-isolation -e ., which builds quartet_te._C;
# offline: --no-deps --no-index). Logs go to $LOGS (default: $OUT if set, else /tmp/out).
set -u
cd "$(dirname "$0")/../.."
# The checkout imports as is (quartet_te maps recipes/ and integration/); tests/te holds helpers.
export PYTHONPATH=/tmp/site:$PWD:$PWD/tests/te:${PYTHONPATH:-} PYTHONUNBUFFERED=1
LOGS=${LOGS:-${OUT:-/tmp/out}}; mkdir -p "$LOGS"
stages=${1:-"tests train bench"}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$LOGS/env.log"
python -c "import transformer_engine as t, torch; print('TE', t.__version__, 'torch', torch.__version__)" | tee -a "$LOGS/env.log"
for s in $stages; do
  case $s in
    build) (time MAX_JOBS=16 QUARTET_TE_CUDA_ARCHS=90a QUARTET_TE_FORCE_CUDA=1 timeout 300 python -m pip install -v --no-build-isolation --no-deps --no-index -e .) > "$LOGS/build.log" 2>&1; tail -3 "$LOGS/build.log";;
    tests) timeout 280 python -m pytest tests/te -m "not slow" -q -rfEs -p no:cacheprovider --timeout 120 -s 2>&1 | tee "$LOGS/tests.log" | grep -v "^$" | tail -60;;
    train) timeout 240 python -m pytest tests/te/test_te_training.py -q -rfE -p no:cacheprovider -s 2>&1 | tee "$LOGS/train.log" | tail -15;;
    bench) timeout 200 python tests/te/bench_te_layer.py 2>&1 | tee "$LOGS/bench.log" | tail -15;;
  esac
done
