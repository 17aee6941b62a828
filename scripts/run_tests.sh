#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it. Assumes `make setup` has run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export TF_CPP_MIN_LOG_LEVEL=3
export JAX_ENABLE_X64=1
export JAX_PLATFORMS=cpu
export NMN_ARRAY_HYPOTHESIS_PROFILE="${NMN_ARRAY_HYPOTHESIS_PROFILE:-ci}"
export NMN_ARRAY_BACKENDS="${NMN_ARRAY_BACKENDS:-numpy,array_api_strict,torch,jax,tensorflow,dask,mlx}"

echo "== lint (ruff)"
$BIN/ruff check nmn_array frameworks tests benchmarks experiments
$BIN/ruff format --check nmn_array frameworks tests benchmarks experiments

echo "== type check (mypy, scripts/typecheck.sh)"
bash scripts/typecheck.sh

echo "== doctests"
$BIN/python -m pytest -q -p no:cacheprovider --doctest-modules nmn_array frameworks/_common.py

echo "== main suite (Keras layers of tests/generated on the tensorflow backend)"
KERAS_BACKEND=tensorflow $BIN/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile \
  tests --ignore=tests/keras_backends

# Keras fixes its backend at import: one process per backend. The generated Keras layer
# tests already ran on tensorflow above; here they run on jax and torch too.
for backend in jax torch tensorflow; do
  echo "== keras backend: $backend"
  if [ "$backend" = tensorflow ]; then
    # nmn.keras (the parity oracle) transposes dilated 1-D convolutions with TF's
    # Conv2DBackpropInput, whose plain CPU kernel refuses dilation > 1; oneDNN's accepts it,
    # and TF turns oneDNN on by default only on some CPUs. Our layers work either way.
    TF_ENABLE_ONEDNN_OPTS=1 KERAS_BACKEND=$backend $BIN/python -m pytest -q -p no:cacheprovider \
      tests/keras_backends
  else
    KERAS_BACKEND=$backend $BIN/python -m pytest -q -p no:cacheprovider \
      tests/keras_backends tests/generated -k keras
  fi
done

# The documentation site (warnings are errors) and every example in its pages.
echo "== docs (scripts/build_docs.sh, as make docs)"
bash scripts/build_docs.sh

# Editable installs import from the source tree; this builds the sdist and the wheel and uses
# them as a user would (fresh venvs, every framework module, the sdist's own tests).
echo "== wheel and sdist (scripts/wheel_smoke.sh)"
bash scripts/wheel_smoke.sh
