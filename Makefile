# Usual targets; each one sets up .venv first (CPU torch pinned, see scripts/setup.sh).
.PHONY: setup test lint format quickstart bench

setup:
	./scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

quickstart: setup
	.venv/bin/mlan quickstart --out runs/quickstart --overwrite

bench: setup
	MLAN_EXTRAS=bench ./scripts/setup.sh
	for b in benchmarks/*.py; do .venv/bin/python $$b || exit 1; done
