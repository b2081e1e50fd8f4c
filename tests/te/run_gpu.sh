#!/usr/bin/env bash
# Runs the TE GPU tests and the benchmark on the lent device machine (see docs/te_gpu_results.md).
# Usage there, after staging the TE stack into /tmp/site:  bash tests/te/run_gpu.sh [stages]
# stages: any of "tests train bench build" (default: "tests train bench"). Logs go to $OUT.
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
# Without an install, make quartet_te.recipes / quartet_te.integration importable from the tree.
[ -e quartet_te/recipes ] || ln -s ../recipes quartet_te/recipes
[ -e quartet_te/integration ] || ln -s ../integration quartet_te/integration
export PYTHONPATH=$PWD:$PWD/tests/te:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
stages=${1:-"tests train bench"}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.log"
python -c "import transformer_engine as t, torch; print('TE', t.__version__, 'torch', torch.__version__)" | tee -a "$OUT/env.log"
for s in $stages; do
  case $s in
    build) (time MAX_JOBS=16 QUARTET_TE_CUDA_ARCHS=90a timeout 240 python setup.py build_ext --inplace) > "$OUT/build.log" 2>&1; tail -3 "$OUT/build.log";;
    tests) timeout 280 python -m pytest tests/te -m "not slow" -q -rfEs -p no:cacheprovider --timeout 120 -s 2>&1 | tee "$OUT/tests.log" | grep -v "^$" | tail -60;;
    train) timeout 240 python -m pytest tests/te/test_te_training.py -q -rfE -p no:cacheprovider -s 2>&1 | tee "$OUT/train.log" | tail -15;;
    bench) timeout 200 python tests/te/bench_te_layer.py 2>&1 | tee "$OUT/bench.log" | tail -15;;
  esac
done
