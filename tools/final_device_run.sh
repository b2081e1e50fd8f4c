#!/usr/bin/env bash
# One device call: build the extension, run every GPU test of the package's own code (kernels
# vs reference, reference CUDA vs CPU), then the quantization-error tables at the paper's scale.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}; mkdir -p "$OUT"
bash tools/device_check.sh --no-bench tests/reference/test_device_parity.py 2>&1 | tail -25
python3 -m quartet_te.bench.quant_error --rows 1048576 --square 8192 --gemm 4096 --device cuda 2>&1 | tee "$OUT/quant_error.md"
