# Everything a fresh machine needs: `make demo`, `make test` and `make docs` create the venv,
# install the pinned versions (requirements/ci.txt, requirements/docs.txt) and this package,
# then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck docs clean

$(STAMP): requirements/ci.txt requirements/docs.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir -U pip
	$(BIN)/python -m pip install -q -r requirements/ci.txt -r requirements/docs.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/nmn-array demo

lint: setup
	$(BIN)/ruff check nmn_array frameworks tests benchmarks experiments
	$(BIN)/ruff format --check nmn_array frameworks tests benchmarks experiments

# mypy on nmn_array and frameworks/ (settings: pyproject.toml [tool.mypy]).
typecheck: setup
	bash scripts/typecheck.sh

test: setup
	bash scripts/run_tests.sh

# The Sphinx site (docs/_build/html) with warnings as errors, then every example of the pages.
docs: setup
	bash scripts/build_docs.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache docs/_build
