"""``bias`` of ``yat_attention(_weights)``: added to q.k inside the square, per score."""

from __future__ import annotations

import numpy as np
import pytest

import nmn_array as na
from tests.reference import yat_attention_ref, yat_attention_weights_ref

RNG = np.random.default_rng(11)
Q, K, V = (
    RNG.normal(size=(2, 3, 4, 5)),
    RNG.normal(size=(2, 3, 6, 5)),
    RNG.normal(size=(2, 3, 6, 2)),
)
BIASES = {
    "full": RNG.normal(size=(2, 3, 4, 6)),
    "per_head_row": RNG.normal(size=(3, 1, 6)),
    "scalar": 0.75,
}
MASK = RNG.random((4, 6)) < 0.7


@pytest.mark.parametrize("normalization", ["softmax", "l1", "softermax"])
@pytest.mark.parametrize("bias_name", sorted(BIASES))
@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "tensorflow", "array_api_strict"])
def test_bias_matches_reference(backend, bias_name, normalization):
    from tests.backends import Backend

    b = Backend(backend)
    bias = BIASES[bias_name]
    kw = dict(normalization=normalization, power=2.0, mask=MASK, causal=True)
    conv = (lambda a: a) if isinstance(bias, float) else b.from_numpy
    got = na.yat_attention(
        b.from_numpy(Q), b.from_numpy(K), b.from_numpy(V), bias=conv(bias),
        mask=b.from_numpy(MASK), **{k: v for k, v in kw.items() if k != "mask"},
    )  # fmt: skip
    want = yat_attention_ref(Q, K, V, bias=bias, **kw)
    np.testing.assert_allclose(b.to_numpy(got), want, rtol=1e-10, atol=1e-12)
    weights = na.yat_attention_weights(b.from_numpy(Q), b.from_numpy(K), bias=conv(bias))
    want_w = yat_attention_weights_ref(Q, K, bias=bias)
    np.testing.assert_allclose(b.to_numpy(weights), want_w, rtol=1e-10, atol=1e-12)


def test_bias_changes_the_scores_and_zero_bias_changes_nothing():
    plain = na.yat_attention_weights(Q, K, normalization="l1")
    zero = na.yat_attention_weights(Q, K, normalization="l1", bias=np.zeros((4, 6)))
    np.testing.assert_array_equal(zero, plain)
    assert not np.allclose(na.yat_attention_weights(Q, K, normalization="l1", bias=1.0), plain)


def test_bias_gradients_are_finite_and_match_finite_differences():
    import torch

    q, k, v = (torch.tensor(a, requires_grad=True) for a in (Q, K, V))
    bias = torch.tensor(BIASES["full"], requires_grad=True)

    def f(q, k, v, bias):
        return na.yat_attention(q, k, v, bias=bias, normalization="l1")

    assert torch.autograd.gradcheck(f, (q, k, v, bias))


@pytest.mark.parametrize(
    "bias, words",
    [
        (np.ones((4, 5)), ["bias", "(..., 4, 6)", "(4, 5)"]),
        (np.ones((3, 6)), ["bias", "(3, 6)"]),
        (np.ones((4, 6), dtype=np.int64), ["bias", "int64"]),
    ],
)
def test_bad_bias_raises(bias, words):
    with pytest.raises((ValueError, TypeError)) as info:
        na.yat_attention_weights(Q, K, bias=bias)
    assert all(w in str(info.value) for w in words), str(info.value)
