"""The Keras tests run once per Keras backend, each in its own process.

``KERAS_BACKEND`` must name the backend (jax, torch or tensorflow) before Keras is imported:
Keras fixes its backend at import, so a missing or wrong value is an error here rather than
a silent run on Keras' default backend. Run::

    KERAS_BACKEND=jax pytest tests/keras_backends -p no:cacheprovider
    KERAS_BACKEND=torch pytest tests/keras_backends -p no:cacheprovider
    KERAS_BACKEND=tensorflow pytest tests/keras_backends -p no:cacheprovider
"""

from __future__ import annotations

import os

BACKENDS = ("jax", "torch", "tensorflow")

_requested = os.environ.get("KERAS_BACKEND", "")
if _requested not in BACKENDS:
    raise RuntimeError(
        f"tests/keras_backends needs KERAS_BACKEND set to one of {BACKENDS} (got "
        f"{_requested!r}); run it once per backend, e.g. "
        "KERAS_BACKEND=jax pytest tests/keras_backends -p no:cacheprovider"
    )

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# float64 parity needs 64-bit JAX (the root conftest sets this too; repeat it in case this
# directory is collected first).
os.environ.setdefault("JAX_ENABLE_X64", "1")

import keras  # noqa: E402

if keras.backend.backend() != _requested:
    raise RuntimeError(
        f"Keras was already imported with backend {keras.backend.backend()!r} but "
        f"KERAS_BACKEND={_requested!r}; run tests/keras_backends in a separate process"
    )
