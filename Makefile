# rnnlab: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup engine demo test lint format bench bench-quality clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) engine

# Build the C++ engine now (cached by source and toolchain), so a user's first command does not.
engine: $(STAMP)
	$(BIN)/python -c "from rnnlab.kernels.extension import build; build()"

demo: setup
	$(BIN)/rnnlab demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: lint engine
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP)
	$(BIN)/python bench/trainer.py
	$(BIN)/python bench/run.py

bench-quality: $(STAMP)
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
