# The two set-up commands: `make demo` and `make test`. Each builds a local
# .venv on first use and refreshes it only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint benchmark clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/optreg demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check optreg tests benchmarks
	$(BIN)/mypy optreg

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --durations=15

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
