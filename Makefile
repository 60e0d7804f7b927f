# Usual targets; each one sets up .venv first (the locked versions of scripts/lock.txt, CPU torch).
.PHONY: setup test test-fast test-latest lint format quickstart bench

setup:
	./scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

# The inner loop: everything but the tests marked slow (training, the lab, subprocesses).
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

# Not in CI: the suite on the newest releases (.venv-latest), then the versions that differ from the lock.
test-latest:
	./scripts/test-latest.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

quickstart: setup
	.venv/bin/mlan quickstart --out runs/quickstart --overwrite

# gpu_sft.py measures a GPU and refuses without one: skipped when torch sees none.
bench: setup
	MLAN_EXTRAS=bench ./scripts/setup.sh
	for b in benchmarks/*.py; do \
	  if [ "$$b" = benchmarks/gpu_sft.py ] && ! .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	    echo "$$b: skipped (no CUDA GPU)"; continue; fi; \
	  .venv/bin/python $$b || exit 1; done
