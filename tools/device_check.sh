#!/usr/bin/env bash
# Build quartet_te._C on a Hopper device (sm_90a only, MAX_JOBS=16), run the GPU kernel tests and
# the kernel benchmark; logs go to $OUT (default ./runs/device).
# Usage: tools/device_check.sh [--no-bench | --quick-bench] [extra pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export MAX_JOBS=${MAX_JOBS:-16} QUARTET_TE_CUDA_ARCHS=${QUARTET_TE_CUDA_ARCHS:-90a} QUARTET_TE_FORCE_CUDA=1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BENCH=full
case "${1:-}" in
  --no-bench) BENCH=none; shift ;;
  --quick-bench) BENCH=quick; shift ;;
esac

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
  $PY -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)';
  nvcc --version | tail -1; } 2>&1 | tee "$OUT/device.txt"

echo "== build"
start=$(date +%s)
# The README's GPU install: builds quartet_te._C in place (offline: no deps, no index).
if ! $PY -m pip install -v --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
$PY -c 'import quartet_te.kernels as K; print("kernels:", K.is_available(return_reason=True))'

# Instruction mix of the quantize kernels (what bounds them: see docs/kernel_results.md).
so=$(ls quartet_te/_C*.so 2>/dev/null | head -1)
if [ -n "$so" ] && command -v cuobjdump >/dev/null; then
  cuobjdump -sass "$so" >"$OUT/sass.txt" 2>/dev/null
  $PY - "$OUT/sass.txt" <<'PYEOF' | tee "$OUT/sass_summary.txt"
import re, sys, collections
name, counts = None, collections.OrderedDict()
for line in open(sys.argv[1]):
    m = re.search(r"Function : (\S+)", line)
    if m:
        name = m.group(1); counts[name] = collections.Counter(); continue
    m = re.search(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", line)
    if name and m:
        counts[name][m.group(1)] += 1
for n, c in counts.items():
    if "row_kernel" in n or "tile_kernel" in n:
        top = ", ".join(f"{k} {v}" for k, v in c.most_common(12))
        print(f"{n[:90]}: {sum(c.values())} instrs; {top}")
PYEOF
fi

echo "== tests"
$PY -m pytest -m gpu tests/csrc -q -rs --durations=5 -p no:cacheprovider "$@" 2>&1 | tee "$OUT/tests.log" | tail -40
rc=${PIPESTATUS[0]}

if [ "$BENCH" != none ]; then
  echo "== bench"
  args=(--profile); [ "$BENCH" = quick ] && args=(--quick --profile)
  $PY -m quartet_te.bench.kernels "${args[@]}" 2>&1 | tee "$OUT/bench.log"
fi
exit $rc
