"""Comparison helpers shared by the hand-written tests."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: float64 must match the naive reference to this, relative to the output's scale
RTOL64 = 1e-10
#: float32: the expanded distance loses ~u * (|x|^2 + |w|^2) absolutely (u = 6e-8), which the
#: yat ratio amplifies by (|x|^2 + |w|^2) / (dist + eps); on the bounded random data used here
#: that factor stays below ~100, so 1e-4 relative to the output's scale holds with margin.
RTOL32 = 1e-4


def assert_matches(got: Any, ref: np.ndarray, dtype: str, what: str = "") -> None:
    """Elementwise ``|got - ref| <= rtol * (|ref| + max|ref|)`` for the dtype's rtol."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    rtol = RTOL64 if dtype == "float64" else RTOL32
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


def run(
    backend: Any, fn: Callable[..., Any], arrays: Sequence[Any], kwargs: dict, dtype: str
) -> np.ndarray:
    """Call ``fn(*arrays, **kwargs)`` on ``backend`` (jitted on JAX: eager JAX recompiles per op)."""
    args = [backend.from_numpy(a, dtype) for a in arrays]
    call = functools.partial(fn, **kwargs)
    if backend.name == "jax":
        call = backend.jit(call)
    return backend.to_numpy(call(*args))


def rounded(arrays: Sequence[Any], dtype: str) -> list[Any]:
    """The inputs as the backend sees them: rounded to ``dtype``, back in float64."""
    return [
        a if a is None or np.isscalar(a) else np.asarray(a).astype(dtype).astype(np.float64)
        for a in arrays
    ]
