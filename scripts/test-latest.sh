#!/usr/bin/env bash
# Run the suite on the newest releases of every direct dependency (pyproject's ceilings ignored),
# in .venv-latest, apart from the locked .venv. Not part of CI: an upgrade is a deliberate step.
# torch stays the 2.13.0 CPU wheel (a newer torch on a CPU machine of this kind is a CUDA build).
# At the end it lists every package whose version differs from scripts/lock.txt. If the suite
# passes, `scripts/lockcheck.py --write scripts/lock.txt` run with .venv-latest's python records them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-latest
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m venv --clear "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0"
names=$(python3 - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["dev"]
print(" ".join(n for n in (re.split(r"[<>=!~;\[ ]", d)[0] for d in deps) if n != "torch"))
PY
)
"$VENV/bin/pip" install -q -U "torch==2.13.0" $names
"$VENV/bin/pip" install -q --no-deps -e .
status=0
"$VENV/bin/python" -m pytest -q "$@" || status=$?
echo "Versions that differ from scripts/lock.txt:"
"$VENV/bin/python" scripts/lockcheck.py scripts/lock.txt 2>&1 | sed 's/^/  /' || true
exit "$status"
