"""Float32 accuracy where the expanded distance cancels: near-collisions and large biases.

Every backend is compared with the float64 reference of ``tests/reference.py``, which
computes distances directly, under a tolerance that does not grow as the distance goes to 0
(a tolerance proportional to the result, from the unit roundoff and the feature size).
"""

from __future__ import annotations

import numpy as np
import pytest

import nmn_array
from tests import reference as ref

D = 64
U32 = float(np.finfo(np.float32).eps) / 2
# relative error bound for one refined yat value: numerator 2 k, distance k (k = 4 (d+2) u)
REL = 3 * 4 * (D + 2) * U32


def _w(seed=0, n=12, d=D):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _check(backend, got, want, rel=REL):
    got = backend.to_numpy(got).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=rel, atol=0)


def test_self_response_is_exact_in_float32(backend):
    """``yat(w, w)`` on the diagonal is ``|w|^4 / epsilon``; nmn's expanded form gives ~25%."""
    w = _w()
    y = nmn_array.yat(backend.from_numpy(w), backend.from_numpy(w))
    want = ref.yat_ref(w, w)
    diag = np.diagonal(backend.to_numpy(y)).astype(np.float64)
    np.testing.assert_allclose(diag, np.diagonal(want), rtol=REL)
    _check(backend, y, want)


def test_near_collision_is_accurate_in_float32(backend):
    w = _w(1)
    x = (w + 1e-3 * np.random.default_rng(2).normal(size=w.shape)).astype(np.float32)
    y = nmn_array.yat(backend.from_numpy(x), backend.from_numpy(w))
    _check(backend, y, ref.yat_ref(x, w))


def test_expanded_distance_is_still_available_and_cancels(backend):
    """``distance="expanded"`` is nmn's form; near a collision it is visibly off, which is
    what the default remedies (this guards the tests above against passing vacuously).

    Near, not at, the collision: at ``x == w`` exactly, a library whose matmul and sum round
    ``x.x`` identically (MLX) cancels to exactly 0, which is the right distance there."""
    w = _w()
    x = (w + 1e-3 * np.random.default_rng(2).normal(size=w.shape)).astype(np.float32)
    y = nmn_array.yat(backend.from_numpy(x), backend.from_numpy(w), distance="expanded")
    diag = np.diagonal(backend.to_numpy(y)).astype(np.float64)
    err = np.abs(diag / np.diagonal(ref.yat_ref(x, w)) - 1)
    assert err.max() > 100 * REL


def test_attention_self_scores_are_accurate_in_float32(backend):
    """``q == k``: each query's own key is its nearest; l1 weights depend on that score."""
    x = _w(3, n=6)[None]
    kw = dict(normalization="l1", scale=1e-3)
    got = nmn_array.yat_attention_weights(backend.from_numpy(x), backend.from_numpy(x), **kw)
    want = ref.yat_attention_weights_ref(x, x, **kw)
    _check(backend, got, want, rel=4 * REL)


def test_backends_agree_near_collisions(backend):
    w = _w(4)
    got = backend.to_numpy(nmn_array.yat(backend.from_numpy(w), backend.from_numpy(w)))
    np.testing.assert_allclose(got, nmn_array.yat(w, w), rtol=2 * REL)


def test_refined_distance_argument_is_validated():
    w = _w()
    with pytest.raises(ValueError, match="distance"):
        nmn_array.yat(w, w, distance="direct")
    with pytest.raises(ValueError, match="distance"):
        nmn_array.yat_attention(w[None], w[None], w[None], distance=1)


@pytest.mark.parametrize("b", [1e4, 1e6, 1e8])
def test_large_bias_keeps_float32_precision(backend, b):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 8)).astype(np.float32)
    w = rng.normal(size=(3, 8)).astype(np.float32)
    bias = np.full((3,), b, dtype=np.float32)
    y = nmn_array.yat(*(backend.from_numpy(a) for a in (x, w, bias)))
    _check(backend, y, ref.yat_ref(x, w, bias), rel=1e-6)


@pytest.mark.parametrize("b", [1e4, 1e8])
def test_large_bias_conv_keeps_float32_precision(backend, b):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = np.full((4,), b, dtype=np.float32)
    y = nmn_array.yat_conv(*(backend.from_numpy(a) for a in (x, w, bias)))
    _check(backend, y, ref.yat_conv_ref(x, w, bias), rel=1e-6)


@pytest.mark.parametrize("mode", ["spherical", "weight_normalized"])
def test_refined_unit_modes_stay_nonnegative_at_collisions(backend, mode):
    """At ``x == w`` the ``1 - |v|^2`` terms of the unit-length modes can round below 0; the
    refined distance is clamped like the expanded one, so the output never turns negative."""
    w = (np.random.default_rng(7).uniform(-10, 10, size=(16, 8))).astype(np.float32)
    y = nmn_array.yat(backend.from_numpy(w), backend.from_numpy(w), epsilon=1e-8, **{mode: True})
    assert backend.to_numpy(y).min() >= 0
