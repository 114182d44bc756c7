# Two entry points. Both create .venv from nothing (torch comes from this machine's disk
# through pip) and are safe to re-run.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/histozoom demo --out demo_out

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# CPU-sized runs of every benchmark (each prints ratios measured in one run); run a
# script directly for full sizes, e.g. `.venv/bin/python bench/bench_models.py --device cuda`.
bench: $(STAMP)
	$(BIN)/python bench/bench_data.py
	$(BIN)/python bench/bench_evaluation.py
	$(BIN)/python bench/bench_instances.py
	$(BIN)/python bench/bench_postprocess.py
	$(BIN)/python bench/bench_models.py --size 256 --threads 1
	$(BIN)/python bench/bench_training.py --size 256 --threads 1
	$(BIN)/python bench/bench_engines.py --sizes 256

clean:
	rm -rf $(VENV) demo_out
