"""The MLX adapter (nmn_array._mlx_namespace): resolution, dtypes, accuracy, gradients.

MLX is a required backend when ``NMN_ARRAY_BACKENDS`` names it (CI does); otherwise these
tests skip when it is not installed, like any optional backend (tests/backends.py).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import nmn_array as na
from nmn_array._namespace import array_namespace
from tests.backends import Backend

MLX = Backend("mlx")


@pytest.fixture
def mx():
    return MLX.module()


def test_resolves_to_the_adapter_and_rejects_mixing(mx):
    a = mx.ones((2, 3), dtype=mx.float32)
    assert array_namespace(a, None, 1.0).__name__ == "nmn_array._mlx_namespace"
    with pytest.raises(TypeError, match="cannot be mixed"):
        array_namespace(a, np.ones((2, 3), dtype=np.float32))


def test_resolution_does_not_import_mlx():
    code = (
        "import sys, numpy as np, nmn_array as na\n"
        "na.yat(np.ones((2, 3)), np.ones((4, 3)))\n"
        "assert 'mlx' not in sys.modules and 'mlx.core' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_yat_and_yat_conv_take_and_return_mx_arrays(mx, dtype):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    xc, wc = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(4, 3, 3, 3))
    mdt = getattr(mx, dtype)
    rtol = {"float64": 1e-12, "float32": 1e-5, "float16": 5e-3, "bfloat16": 4e-2}[dtype]
    for got, want in (
        (na.yat(mx.array(x, dtype=mdt), mx.array(w, dtype=mdt)), na.yat(x, w)),
        (
            na.yat_conv(mx.array(xc, dtype=mdt), mx.array(wc, dtype=mdt), padding=1, stride=2),
            na.yat_conv(xc, wc, padding=1, stride=2),
        ),
    ):
        assert isinstance(got, mx.array)
        assert got.dtype == mdt
        np.testing.assert_allclose(
            MLX.to_numpy(got), want, rtol=rtol, atol=rtol * np.abs(want).max()
        )


def test_float64_exp_sin_cos_are_float64_accurate(mx):
    # MLX's own float64 exp/sin/cos are float32-accurate; the adapter rebuilds them
    from nmn_array import _mlx_namespace as m

    x = np.concatenate([np.linspace(-740.0, 709.0, 4001), np.linspace(-1.0, 1.0, 101)])
    got = MLX.to_numpy(m.exp(mx.array(x, dtype=mx.float64)))
    # (atol: subnormal results below 2.2e-308 keep fewer bits, one unit of 5e-324 each)
    np.testing.assert_allclose(got, np.exp(x), rtol=4e-16, atol=1e-322)
    edges = MLX.to_numpy(m.exp(mx.array([np.inf, -np.inf, 710.0, -746.0], dtype=mx.float64)))
    assert edges.tolist() == [np.inf, 0.0, np.inf, 0.0]
    assert np.isnan(MLX.to_numpy(m.exp(mx.array([np.nan], dtype=mx.float64))))[0]
    t = np.linspace(-1e4, 1e4, 20001)
    tm = mx.array(t, dtype=mx.float64)
    np.testing.assert_allclose(MLX.to_numpy(m.sin(tm)), np.sin(t), rtol=0, atol=3e-16)
    np.testing.assert_allclose(MLX.to_numpy(m.cos(tm)), np.cos(t), rtol=0, atol=3e-16)
    g = mx.grad(lambda a: mx.sum(m.exp(a) + m.sin(a) + m.cos(a)))(
        mx.array(t[:50], dtype=mx.float64)
    )
    np.testing.assert_allclose(
        MLX.to_numpy(g), np.exp(t[:50]) + np.cos(t[:50]) - np.sin(t[:50]), rtol=1e-15, atol=1e-15
    )


def test_grad_of_yat_matches_float64_finite_differences(mx):
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(2, 4)), rng.normal(size=(3, 4))
    gx, gw = mx.grad(lambda a, b: mx.sum(na.yat(a, b)), argnums=[0, 1])(
        mx.array(x, dtype=mx.float64), mx.array(w, dtype=mx.float64)
    )
    h = 1e-6
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        fd[i] = (na.yat(x + e, w).sum() - na.yat(x - e, w).sum()) / (2 * h)
    np.testing.assert_allclose(MLX.to_numpy(gx), fd, rtol=1e-6, atol=1e-8)
    assert MLX.to_numpy(gw).shape == w.shape


def test_float16_gradient_saturates(mx):
    # near x == w the float32 gradient exceeds float16's range: it saturates, not inf
    x = mx.array([[1.0, 0.0]], dtype=mx.float16)
    w = mx.array([[1.0, 0.001]], dtype=mx.float16)
    g = mx.grad(lambda a: mx.sum(na.yat(a, w, epsilon=1e-7)))(x)
    assert g.dtype == mx.float16
    assert np.isfinite(MLX.to_numpy(g)).all()
