"""Large magnitudes and infinities: the documented range of the yat product (docs/math.md,
"Range") and the limits of the squashers at inf.

Within the range (``|x|^2 + |w|^2`` and ``(x.w + b)^2`` finite in the compute dtype) results
are finite and match a float64 direct-distance reference on every backend, even at
``|x| ~ 1e18`` in float32. Beyond it the outcome is the documented one, element by element:
NaN when both overflow, +inf when only the numerator does, 0 when only the distance does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nmn_array as na
from tests.reference import (
    soft_tanh_ref,
    softer_sigmoid_ref,
    softermax_ref,
    yat_conv_ref,
    yat_ref,
)

F32_MAX = float(np.finfo(np.float32).max)
RNG = np.random.default_rng(11)


def _close(got: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    """float32 agreement: a dot product near 0 carries rounding relative to |x||w|, not to
    itself, so the absolute part of the tolerance follows the largest output."""
    np.testing.assert_allclose(
        got, ref, rtol=2e-5, atol=2e-5 * np.max(np.abs(ref), initial=0.0), err_msg=what
    )


def _f32(a: np.ndarray) -> np.ndarray:
    """Values exactly representable in float32, kept in float64 for the reference."""
    return a.astype(np.float32).astype(np.float64)


# name -> (x, w): inside the float32 range, with large magnitudes
INSIDE = {
    "x 1e18, w 1": (_f32(RNG.normal(size=(4, 8)) * 1e18), _f32(RNG.normal(size=(3, 8)))),
    "x 1e9, w 1e9": (_f32(RNG.normal(size=(4, 8)) * 1e9), _f32(RNG.normal(size=(3, 8)) * 1e9)),
    "x 1, w 1e18": (_f32(RNG.normal(size=(4, 8))), _f32(RNG.normal(size=(3, 8)) * 1e18)),
}


@pytest.mark.parametrize("name", list(INSIDE))
def test_dense_float32_large_magnitudes_inside_the_range(backend, name):
    x, w = INSIDE[name]
    assert ((x * x).sum(-1).max() + (w * w).sum(-1).max()) < F32_MAX / 10
    assert np.max((x @ w.T) ** 2) < F32_MAX / 10
    ref = yat_ref(x, w)
    for native in (True, False):
        out = na.yat(
            backend.from_numpy(x, "float32"), backend.from_numpy(w, "float32"), _native=native
        )
        got = backend.to_numpy(out).astype(np.float64)
        assert np.isfinite(got).all(), (name, native)
        _close(got, ref, f"{name} native={native}")


CONV_X = _f32(RNG.normal(size=(2, 3, 7)) * 1e18)
CONV_W = _f32(RNG.normal(size=(4, 3, 3)))


def test_conv_float32_large_magnitudes_inside_the_range(backend):
    x, w = CONV_X, CONV_W
    ref = yat_conv_ref(x, w, padding=1)
    out = na.yat_conv(backend.from_numpy(x, "float32"), backend.from_numpy(w, "float32"), padding=1)
    got = backend.to_numpy(out).astype(np.float64)
    assert np.isfinite(got).all()
    _close(got, ref)


def _cast(backend: Any, t: Any, name: str) -> Any:
    mod = backend.module()
    if backend.name == "torch":
        return t.to(getattr(mod, name))
    if backend.name == "jax":
        return t.astype(getattr(mod.numpy, name))
    if backend.name == "tensorflow":
        return mod.cast(t, getattr(mod, name))
    pytest.skip(f"{backend.name} has no bfloat16")


def _from_bfloat16(backend: Any, t: Any) -> np.ndarray:
    return backend.to_numpy(_cast(backend, t, "float32")).astype(np.float64)


def test_bfloat16_is_computed_in_float32_and_keeps_its_range(backend):
    """bfloat16 reaches float32's magnitudes; it is computed in float32, so the float32 range
    applies (the result is then rounded to bfloat16's 8 bits)."""
    x, w = INSIDE["x 1e18, w 1"]
    xb = _cast(backend, backend.from_numpy(x, "float32"), "bfloat16")
    wb = _cast(backend, backend.from_numpy(w, "float32"), "bfloat16")
    out = na.yat(xb, wb)
    assert out.dtype == xb.dtype
    got = _from_bfloat16(backend, out)
    ref = yat_ref(_from_bfloat16(backend, xb), _from_bfloat16(backend, wb))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-2)


# beyond the range: (x, w) with some squared norms or squared dot products above float32's max
BEYOND = {
    "x 1e20": (_f32(RNG.normal(size=(4, 8)) * 1e20), _f32(RNG.normal(size=(3, 8)))),
    "x 1e10, w 1e10": (_f32(RNG.normal(size=(6, 8)) * 1e10), _f32(RNG.normal(size=(5, 8)) * 1e10)),
    "x 1e20, w 1e-3": (_f32(RNG.normal(size=(4, 8)) * 1e20), _f32(RNG.normal(size=(3, 8)) * 1e-3)),
}


@pytest.mark.parametrize("name", list(BEYOND))
def test_dense_float32_beyond_the_range_is_as_documented(backend, name):
    x, w = BEYOND[name]
    sq = (x * x).sum(-1)[:, None] + (w * w).sum(-1)[None, :]
    num = (x @ w.T) ** 2
    ref = yat_ref(x, w)
    # classify each output, leaving out the few that lie within 10x of a boundary
    clear = (np.abs(np.log10(sq / F32_MAX)) > 1) & (np.abs(np.log10(num / F32_MAX)) > 1)
    dist_over, num_over = sq > F32_MAX, num > F32_MAX
    assert (dist_over | num_over)[clear].any(), "the case must leave the range"
    out = na.yat(backend.from_numpy(x, "float32"), backend.from_numpy(w, "float32"))
    got = backend.to_numpy(out).astype(np.float64)
    both = clear & dist_over & num_over
    only_num = clear & num_over & ~dist_over
    only_dist = clear & dist_over & ~num_over
    inside = clear & ~dist_over & ~num_over
    assert np.isnan(got[both]).all()
    assert (got[only_num] == np.inf).all()
    assert (got[only_dist] == 0).all()
    _close(got[inside], ref[inside])
    assert both.any() or only_num.any() or only_dist.any()


# --- squashers at inf ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, n, expected",
    [
        ([np.inf, 1.0], 1.0, [1.0, 0.0]),
        ([np.inf, 1.0, 0.0], 2.0, [1.0, 0.0, 0.0]),
        ([np.inf, np.inf, 3.0], 0.5, [0.5, 0.5, 0.0]),
        ([1e300, 1.0], 1.0, [1.0, 1e-300]),
        ([0.0, 0.0], 1.0, [0.0, 0.0]),
    ],
)
def test_softermax_limits_at_infinity(backend, x, n, expected):
    got = backend.to_numpy(na.softermax(backend.from_numpy(np.array(x)), n))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_softermax_rows_with_and_without_inf(backend):
    x = np.array([[np.inf, 2.0, 1.0], [3.0, 2.0, 1.0]])
    got = backend.to_numpy(na.softermax(backend.from_numpy(x), 2.0))
    np.testing.assert_allclose(got[0], [1.0, 0.0, 0.0], rtol=0, atol=0)
    np.testing.assert_allclose(got[1], softermax_ref(x[1], 2.0), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_squashers_at_infinity(backend, dtype):
    x = np.array([np.inf, 0.0, 1.0, 3.0])
    for n in (0.5, 1.0, 2.0):
        sig = backend.to_numpy(na.softer_sigmoid(backend.from_numpy(x, dtype), n))
        tanh = backend.to_numpy(na.soft_tanh(backend.from_numpy(x, dtype), n))
        np.testing.assert_allclose(sig[0], 1.0, rtol=0)
        np.testing.assert_allclose(tanh[0], 1.0, rtol=0)
        np.testing.assert_allclose(sig[1:], softer_sigmoid_ref(x[1:], n), rtol=1e-6)
        np.testing.assert_allclose(tanh[1:], soft_tanh_ref(x[1:], n), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1.0, 2.0])
def test_softermax_gradients_finite_for_large_finite_inputs(ad_backend, n):
    """Finite inputs, one of them huge: the limit form must not leak NaN into gradients."""
    x = np.array([[1e300, 2.0, 0.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    (g,) = ad_backend.grad(lambda t: na.softermax(t, n)[:, 0], [x])
    assert np.isfinite(g).all()
    # the ordinary row's gradient is the analytic one: d y_0 / d x_j
    p = x[1] ** n
    s = p.sum() + 1e-12
    dp = n * x[1] ** (n - 1)
    expected = -p[0] * dp / s**2
    expected[0] += dp[0] / s
    np.testing.assert_allclose(g[1], expected, rtol=1e-9)
