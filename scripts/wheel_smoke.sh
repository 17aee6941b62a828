#!/usr/bin/env bash
# Install nmn-array as a user would and use it: build the sdist and, from it, the wheel; install
# the wheel in fresh venvs (never editable, never the source tree) and call every framework
# module; run a subset of the sdist's own tests from the unpacked sdist.
# Assumes `make setup` has run (the project venv has the pinned build tools and frameworks).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=3
export JAX_PLATFORMS=cpu
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Nothing may reach the source tree but the steps that say so.
unset PYTHONPATH

TMP=$(mktemp -d "${TMPDIR:-/tmp}/nmn-array-wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM # so that the EXIT trap cleans up on interruption too
started=$SECONDS
stage() { echo "== wheel smoke: $1 [$((SECONDS - started)) s]"; }

stage "build the sdist and the wheel (from the sdist)"
# From a copy laid out as a fresh clone: a stale *.egg-info/SOURCES.txt in the working tree
# is read back into the sdist and can hide a package missing from pyproject.toml.
$PY -c 'import sys; from pathlib import Path; from tests.test_packaging import clean_copy; clean_copy(Path(sys.argv[1]))' \
  "$TMP/src"
if ! $PY -m build --no-isolation --outdir "$TMP/dist" "$TMP/src" >"$TMP/build.log" 2>&1; then
  cat "$TMP/build.log"
  exit 1
fi
WHEEL=$(echo "$TMP"/dist/*.whl)
SDIST=$(echo "$TMP"/dist/*.tar.gz)
test -f "$WHEEL" && test -f "$SDIST"
echo "built $(basename "$SDIST") and $(basename "$WHEEL")"

# A fresh venv of the project's interpreter; pip comes from the project venv (--python).
fresh_venv() {
  $PY -m venv --without-pip "$1"
}
purelib() {
  "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'
}

stage "fresh venv with the wheel and the project's frameworks"
fresh_venv "$TMP/venv"
# Install first: with the project's site-packages visible, pip would see the editable
# nmn-array there and might uninstall it from the project venv.
$PY -m pip --python "$TMP/venv/bin/python" install -q --no-deps "$WHEEL"
# The frameworks (3 GB) come from the project venv's site-packages directories. A directory
# added by a .pth line is on sys.path, but its own .pth files (the editable install's finder)
# are not processed, so nmn_array can only come from the wheel; the script checks it does.
$PY -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("site-packages")))' \
  >"$(purelib "$TMP/venv")/_project_site_packages.pth"
cat >"$TMP/smoke.py" <<'EOF'
"""Import every framework module of the installed wheel and call each once."""

import sys
from pathlib import Path

import numpy as np

venv = Path(sys.prefix).resolve()


def from_venv(module):
    path = Path(module.__file__).resolve()
    assert path.is_relative_to(venv), f"{module.__name__} imported from {path}, not {venv}"
    print(f"{module.__name__}: {path}")


def check(name, out, shape):
    out = np.asarray(out)
    assert out.shape == shape, f"{name}: shape {out.shape}, expected {shape}"
    assert np.all(np.isfinite(out)) and np.any(out != 0), f"{name}: output {out}"
    print(f"{name}: forward {out.shape} ok")


import nmn_array  # noqa: E402
import nmn_array._native  # noqa: E402
import nmn_array.frameworks.torch as yat_torch  # noqa: E402

for module in (nmn_array, nmn_array._native, yat_torch):
    from_venv(module)

# The core on NumPy against the formula written out, and torch against NumPy.
import torch  # noqa: E402

rng = np.random.default_rng(0)
x, w = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
formula = (x @ w.T) ** 2 / (((x[:, None, :] - w[None, :, :]) ** 2).sum(-1) + 1e-5)
np.testing.assert_allclose(nmn_array.yat(x, w), formula, rtol=1e-9)
on_torch = nmn_array.yat(torch.from_numpy(x), torch.from_numpy(w))
assert isinstance(on_torch, torch.Tensor)
np.testing.assert_allclose(on_torch.numpy(), formula, rtol=1e-9)
print("nmn_array.yat: numpy and torch agree with the formula")

x32 = x.astype(np.float32)

layer = yat_torch.YatNMN(3, 5)
out = layer(torch.from_numpy(x32))
out.sum().backward()
check("torch YatNMN", out.detach(), (4, 5))
grads = [p.grad for p in layer.parameters() if p.requires_grad]
assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), grads
print(f"torch YatNMN: backward, {len(grads)} finite gradients")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import nmn_array.frameworks.linen as yat_linen  # noqa: E402
import nmn_array.frameworks.nnx as yat_nnx  # noqa: E402

from_venv(yat_nnx)
check("nnx YatNMN", yat_nnx.YatNMN(3, 5, rngs=nnx.Rngs(0))(x32), (4, 5))
from_venv(yat_linen)
model = yat_linen.YatNMN(features=5)
check("linen YatNMN", model.apply(model.init(jax.random.key(0), x32), x32), (4, 5))

import tensorflow as tf  # noqa: E402

import nmn_array.frameworks.tf as yat_tf  # noqa: E402

from_venv(yat_tf)
check("tf YatNMN", yat_tf.YatNMN(5)(tf.constant(x32)).numpy(), (4, 5))

import keras  # noqa: E402

import nmn_array.frameworks.keras as yat_keras  # noqa: E402

from_venv(yat_keras)
out = yat_keras.YatNMN(5)(x32)
check(f"keras ({keras.backend.backend()}) YatNMN", keras.ops.convert_to_numpy(out), (4, 5))
EOF
# Keras on torch: the path that needs nmn_array._native.
(cd "$TMP" && KERAS_BACKEND=torch "$TMP/venv/bin/python" smoke.py)
(cd "$TMP" && "$TMP/venv/bin/nmn-array" --help >"$TMP/help.txt")
grep -q "usage: nmn-array" "$TMP/help.txt"
echo "nmn-array --help: ok"

stage "minimal fresh venv (the wheel and its declared dependencies only)"
fresh_venv "$TMP/min"
$PY -m pip --python "$TMP/min/bin/python" install -q "$WHEEL"
$PY -m pip --python "$TMP/min/bin/python" list --format=freeze | tee "$TMP/min.txt"
(cd "$TMP" && "$TMP/min/bin/python" -c '
import sys
from pathlib import Path
import nmn_array, nmn_array._native
for m in (nmn_array, nmn_array._native):
    assert Path(m.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), m.__file__
print("import nmn_array: ok, from", nmn_array.__file__)
')
(cd "$TMP" && "$TMP/min/bin/nmn-array" --help >"$TMP/help_min.txt")
grep -q "usage: nmn-array" "$TMP/help_min.txt"
echo "nmn-array --help: ok"

stage "the sdist's tests, from the unpacked sdist"
mkdir "$TMP/sdist"
tar -xzf "$SDIST" -C "$TMP/sdist"
UNPACKED=$(echo "$TMP"/sdist/*/)
(
  cd "$UNPACKED"
  # Run from here, the sdist's own nmn_array comes first on sys.path (not the editable tree).
  $PY -c 'import nmn_array, pathlib; p = pathlib.Path(nmn_array.__file__).resolve(); assert p.is_relative_to(pathlib.Path.cwd().resolve()), p'
  # The generated tests, the spec and the capability table agree (all three are shipped).
  $PY -m nmn_array._spec check
  # A fast subset: the core against the float64 reference on every backend, and the errors
  # (less the mixed-library cases, which import TensorFlow for one check each).
  JAX_ENABLE_X64=1 NMN_ARRAY_HYPOTHESIS_PROFILE=ci \
    NMN_ARRAY_BACKENDS="${NMN_ARRAY_BACKENDS:-numpy,array_api_strict,torch,jax,tensorflow,dask}" \
    $PY -m pytest -q -p no:cacheprovider tests/test_core_reference.py::test_yat_matches_reference \
    tests/test_core_errors.py -k "not mixed"
)

echo "== wheel smoke: ok in $((SECONDS - started)) s"
