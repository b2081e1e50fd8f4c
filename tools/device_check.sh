#!/usr/bin/env bash
# Build quartet_te._C on a Hopper device (sm_90a only, MAX_JOBS=16), run the GPU kernel tests and
# the kernel benchmark; logs go to $OUT (the device tool's output folder) or ./runs/device.
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
if ! $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
# recipes/ and integration/ install as quartet_te.recipes / .integration; without an install
# (no package index on the device) a path hook maps them, like an editable install would.
if ! $PY -c 'import quartet_te.recipes' 2>/dev/null; then
  mkdir -p /tmp/qt_dev
  cat >/tmp/qt_dev/qt_dev_finder.py <<PYEOF
import importlib.abc, importlib.util, os, sys
ROOT = "$(pwd)"
MAP = {"quartet_te.recipes": ROOT + "/recipes", "quartet_te.integration": ROOT + "/integration"}
class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for pkg, d in MAP.items():
            if name == pkg or name.startswith(pkg + "."):
                base = os.path.join(d, *name[len(pkg) + 1:].split(".")) if name != pkg else d
                if os.path.isdir(base):
                    return importlib.util.spec_from_file_location(
                        name, os.path.join(base, "__init__.py"), submodule_search_locations=[base])
                if os.path.isfile(base + ".py"):
                    return importlib.util.spec_from_file_location(name, base + ".py")
        return None
sys.meta_path.insert(0, _Finder())
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
PYEOF
  site=$($PY -c 'import site; print(site.getsitepackages()[0])')
  echo "import sys; sys.path.insert(0, '/tmp/qt_dev'); import qt_dev_finder" >"$site/qt_dev_finder.pth"
fi
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
