#!/usr/bin/env bash
# Create .venv in the repository and install mlan with its dev tools, CPU-only, at the exact
# versions CI tested (scripts/lock.txt). torch==2.13.0 goes first (a local CPU wheel on machines
# of this kind); every later pip call runs under the lock, so no dependency can swap in a CUDA
# build or a release CI has not tested. Idempotent: a second run only checks that all is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MLAN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/pip" install -q "torch==2.13.0"
fi
# MLAN_EXTRAS (e.g. bench, mutate) joins dev in the one editable spec: a second ".[extra]" would
# ask pip for a non-editable copy of mlan as well, which it refuses as a conflict.
"$VENV/bin/pip" install -q -c scripts/lock.txt -e ".[dev${MLAN_EXTRAS:+,${MLAN_EXTRAS}}]"
# Everything installed must come from the lock: a package it does not name was never tested.
"$VENV/bin/python" scripts/lockcheck.py scripts/lock.txt
