# The two set-up commands: `make demo` and `make test`. Each builds a local
# .venv on first use and refreshes it only when pyproject.toml changes.
# `make docs` builds the documentation into docs/_build/html.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOWEST := .venv-lowest

.PHONY: demo test lint doctest docs dist lowest benchmark clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/optreg demo $(ARGS)

# Everything CI checks: lint, docstring examples, the documentation, the test suite, the packages,
# and the lowest dependency versions pyproject.toml allows. --dist loadfile: one worker per module, so
# a module's fixtures (the demo's quick run, the sharding subprocesses) are built once, not once per worker.
test: $(STAMP) lint doctest docs
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15
	$(MAKE) lowest

lint: $(STAMP)
	$(BIN)/ruff check optreg tests benchmarks tools docs
	$(BIN)/mypy optreg

# The `>>>` examples in the docstrings of every module (exit status 5: none collected yet).
doctest: $(STAMP)
	$(BIN)/python -m pytest -q -p no:xdist -p no:cacheprovider --doctest-modules optreg || test $$? -eq 5

# Offline, strict (a warning fails the build); notebooks are rendered, not executed.
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html -d docs/_build/doctrees docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

# An sdist and a wheel that pass `twine check`.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist . > /dev/null
	$(BIN)/twine check --strict dist/*

# The wheel in a clean virtual environment with exactly the dependency floors of pyproject.toml,
# then a smoke test run from outside the source tree.
lowest: dist
	rm -rf $(LOWEST)
	$(BIN)/python -m venv $(LOWEST)
	$(BIN)/python tools/floors.py > $(LOWEST)/floors.txt
	$(LOWEST)/bin/python -m pip install --quiet --constraint $(LOWEST)/floors.txt dist/optreg-*.whl
	cd $(LOWEST) && bin/python $(CURDIR)/tools/smoke_test.py

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) $(LOWEST) dist build docs/_build docs/_generated .pytest_cache .mypy_cache .ruff_cache
