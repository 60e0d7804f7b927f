#!/usr/bin/env bash
# Create .venv in the repository and install mlan with its dev tools, CPU-only.
# torch==2.13.0 goes first (a local CPU wheel on machines of this kind); every later pip
# call runs under scripts/constraints.txt so no dependency can swap in a CUDA build.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -c scripts/constraints.txt -e ".[dev]" ${MLAN_EXTRAS:+".[${MLAN_EXTRAS}]"}
