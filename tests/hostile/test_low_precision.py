"""float16 training near ``x == w``: gradients saturate at float16's range instead of inf.

float16 inputs are computed in float32 (Decision 3). Near a collision the float32 gradient
exceeds 65504; the plain float32 -> float16 cast of the cotangent made it inf (then NaN in
the optimiser). As in nmn, the cast back saturates. Inside, float16 inputs follow exactly
the float32 computation on the same values, so each float16 gradient must equal the float32
gradient clipped to +-65504 and rounded to float16.
"""

from __future__ import annotations

import numpy as np
import pytest

import nmn_array

F16_MAX = float(np.finfo(np.float16).max)


def _near(seed: int, shape: tuple[int, ...], scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float16)


def _dense() -> tuple[np.ndarray, np.ndarray]:
    w = _near(0, (4, 16))
    return (w[:2] * np.float16(1.01)).astype(np.float16), w


def _conv() -> tuple[np.ndarray, np.ndarray]:
    w = _near(1, (3, 2, 3))  # (out, in, k)
    x = _near(2, (1, 2, 7))
    x[0, :, 2:5] = w[0] * np.float16(1.01)  # one patch next to kernel 0
    return x, w


def _conv_transpose() -> tuple[np.ndarray, np.ndarray]:
    w = _near(3, (2, 3, 1))  # (in, out, k): k = 1 is a dense yat per position
    x = _near(4, (1, 2, 5))
    x[0, :, 1] = w[:, 0, 0] * np.float16(1.01)
    return x, w


CASES = {
    "yat": (_dense, nmn_array.yat),
    "yat_conv": (_conv, nmn_array.yat_conv),
    "yat_conv_transpose": (_conv_transpose, nmn_array.yat_conv_transpose),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float16_gradients_saturate_near_collisions(ad_backend, name):
    make, fn = CASES[name]
    x, w = make()
    got = ad_backend.grad(fn, [x, w], jit=True)
    want = ad_backend.grad(fn, [x.astype(np.float32), w.astype(np.float32)], jit=True)
    saturated = False
    for g16, g32, what in zip(got, want, ("x", "w"), strict=True):
        assert g16.dtype == np.float16, what
        assert np.isfinite(g16).all(), f"{name}: non-finite float16 gradient of {what}"
        saturated |= bool((np.abs(g32) > F16_MAX).any())
        expected = np.clip(g32, -F16_MAX, F16_MAX).astype(np.float16)
        np.testing.assert_allclose(
            g16.astype(np.float64), expected.astype(np.float64), rtol=2e-3, atol=1e-3,
            err_msg=f"{name}: gradient of {what}",
        )  # fmt: skip
    # the data must reach the regime under test: some float32 gradient beyond float16
    assert saturated, f"{name}: no float32 gradient exceeds float16's range"
