#!/usr/bin/env bash
# The documentation site and its examples, as `make docs` and CI run them. Assumes `make setup`
# has run (it installs requirements/docs.txt). Warnings are errors; the html build re-reads
# every page (-E) so a warning is never hidden by an earlier build, and the doctest build
# reuses the doctrees it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export TF_CPP_MIN_LOG_LEVEL=3
export JAX_PLATFORMS=cpu
# Keras fixes its backend at import; docs/conf.py defaults it to jax as well.
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"
SPHINX=("$BIN/python" -m sphinx -W --keep-going -q -d docs/_build/doctrees)

echo "== docs: html site (docs/_build/html)"
"${SPHINX[@]}" -E -b html docs docs/_build/html

echo "== docs: examples (every python and pycon block, sphinx.ext.doctest)"
"${SPHINX[@]}" -b doctest docs docs/_build/doctest
tail -n 5 docs/_build/doctest/output.txt
