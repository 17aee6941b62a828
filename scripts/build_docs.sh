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
# One closing line for the log: the builder counts each `>>>` of a pycon block and each python
# block as one test (a failure has already stopped the script, with the diff).
summary=docs/_build/doctest/output.txt
tests=$(awk '/^ +[0-9]+ tests?$/ {print $1}' "$summary")
failed=$(awk '/failures? in tests$/ {print $1}' "$summary")
echo "examples: $((tests - failed)) passed, $failed failed"
