"""Degenerate sizes: every backend gives the natural result, or the same clear error.

Natural results are written down from the formula, not computed by the code under test:
with empty vectors (d = 0 features, or no input channels) every dot product and squared
distance is 0, so ``y = alpha * b^2 / epsilon``; an empty batch, no neurons or no output
channels give an empty output of the right shape. A zero-size kernel or spatial input has no
patch to compare (torch, JAX and TF refuse it too) and Dask arrays with unknown chunk sizes
cannot be reshaped: both are refused with the argument and its shape in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import nmn_array as na

ALPHA, EPS = 2.0, 0.5
B3 = np.array([1.0, -2.0, 3.0])
NATURAL = ALPHA * B3**2 / EPS  # one value per output feature / channel


def _z(*shape: int) -> np.ndarray:
    return np.zeros(shape)


# name -> (call(convert), expected output shape, expected value per output feature or None)
NATURAL_CASES: dict[str, tuple[Callable[..., Any], tuple[int, ...], Any]] = {
    "yat d=0": (
        lambda c: na.yat(c(_z(4, 0)), c(_z(3, 0)), c(B3), alpha=ALPHA, epsilon=EPS),
        (4, 3),
        NATURAL,
    ),
    "yat d=0 leading axes": (
        lambda c: na.yat(c(_z(2, 4, 0)), c(_z(3, 0)), c(B3), alpha=ALPHA, epsilon=EPS),
        (2, 4, 3),
        NATURAL,
    ),
    "yat d=0 no bias": (lambda c: na.yat(c(_z(4, 0)), c(_z(3, 0))), (4, 3), np.zeros(3)),
    "yat d=0 vector w": (
        lambda c: na.yat(c(_z(4, 0)), c(_z(0)), 1.5, alpha=ALPHA, epsilon=EPS),
        (4,),
        ALPHA * 1.5**2 / EPS,
    ),
    "yat d=0 spherical": (
        lambda c: na.yat(c(_z(4, 0)), c(_z(3, 0)), c(B3), epsilon=EPS, spherical=True),
        (4, 3),
        # spherical distance of empty unit vectors: max(2 - 2*0, 0) = 2
        B3**2 / (2.0 + EPS),
    ),
    "yat d=0 weight_normalized": (
        lambda c: na.yat(c(_z(4, 0)), c(_z(3, 0)), c(B3), epsilon=EPS, weight_normalized=True),
        (4, 3),
        B3**2 / (1.0 + EPS),  # |w|^2 is taken as 1
    ),
    "yat batch 0": (lambda c: na.yat(c(_z(0, 4)), c(np.ones((3, 4)))), (0, 3), None),
    "yat no neurons": (lambda c: na.yat(c(np.ones((2, 4))), c(_z(0, 4))), (2, 0), None),
    "conv no in channels": (
        lambda c: na.yat_conv(c(_z(2, 0, 5)), c(_z(3, 0, 2)), c(B3), alpha=ALPHA, epsilon=EPS),
        (2, 3, 4),
        NATURAL[:, None],
    ),
    "conv2d no in channels, channels_last, groups": (
        lambda c: na.yat_conv(
            c(_z(2, 5, 4, 0)),
            c(_z(3, 0, 2, 2)),
            c(B3),
            groups=3,
            padding="same",
            stride=2,
            data_format="channels_last",
            alpha=ALPHA,
            epsilon=EPS,
        ),
        (2, 3, 2, 3),
        NATURAL,
    ),
    "conv no out channels": (
        lambda c: na.yat_conv(c(np.ones((2, 2, 5))), c(_z(0, 2, 2)), padding=1),
        (2, 0, 6),
        None,
    ),
    "conv3d no out channels, channels_last": (
        lambda c: na.yat_conv(
            c(np.ones((1, 3, 3, 3, 2))), c(_z(0, 2, 2, 2, 2)), data_format="channels_last"
        ),
        (1, 2, 2, 2, 0),
        None,
    ),
    "conv batch 0": (lambda c: na.yat_conv(c(_z(0, 2, 5)), c(np.ones((3, 2, 2)))), (0, 3, 4), None),
    "conv_transpose no in channels": (
        lambda c: na.yat_conv_transpose(
            c(_z(2, 0, 5)), c(_z(0, 3, 2)), c(B3), stride=2, alpha=ALPHA, epsilon=EPS
        ),
        (2, 3, 10),
        NATURAL[:, None],
    ),
    "conv_transpose no out channels": (
        lambda c: na.yat_conv_transpose(c(np.ones((2, 2, 5))), c(_z(2, 0, 3)), padding=1),
        (2, 0, 5),
        None,
    ),
    "conv_transpose batch 0": (
        lambda c: na.yat_conv_transpose(c(_z(0, 2, 5)), c(np.ones((2, 3, 2)))),
        (0, 3, 6),
        None,
    ),
    "attention d=0": (
        # every score is 0, so the softmax weights are uniform: the mean of the values
        lambda c: na.yat_attention(
            c(_z(2, 3, 0)), c(_z(2, 4, 0)), c(np.arange(8.0).reshape(2, 4, 1))
        ),
        (2, 3, 1),
        np.array([1.5, 5.5])[:, None, None],
    ),
    "attention batch 0": (
        lambda c: na.yat_attention(c(_z(0, 3, 2)), c(_z(0, 4, 2)), c(_z(0, 4, 5))),
        (0, 3, 5),
        None,
    ),
    "attention no queries": (
        lambda c: na.yat_attention_weights(c(_z(2, 0, 2)), c(np.ones((2, 4, 2)))),
        (2, 0, 4),
        None,
    ),
    "rotary d=0": (lambda c: na.rotary_embedding(c(_z(2, 3, 0))), (2, 3, 0), None),
    "rotary L=0": (lambda c: na.rotary_embedding(c(_z(2, 0, 4))), (2, 0, 4), None),
    "softermax empty axis": (lambda c: na.softermax(c(_z(3, 0))), (3, 0), None),
    "softermax empty batch": (lambda c: na.softermax(c(_z(0, 3)), axis=-1), (0, 3), None),
}


@pytest.mark.parametrize("name", list(NATURAL_CASES))
def test_natural_result(backend, name):
    call, shape, value = NATURAL_CASES[name]
    out = call(backend.from_numpy)
    assert isinstance(out, backend.array_type())
    got = backend.to_numpy(out)
    assert got.shape == shape and got.dtype == np.float64
    if value is not None:
        np.testing.assert_allclose(got, np.broadcast_to(value, shape), rtol=1e-12)


def test_dense_d0_torch_gradients_reach_bias_alpha_epsilon():
    """The d = 0 route keeps the result differentiable in the parameters it depends on."""
    torch = pytest.importorskip("torch")
    b = torch.tensor(B3, requires_grad=True)
    a = torch.tensor(ALPHA, requires_grad=True)
    e = torch.tensor(EPS, requires_grad=True)
    na.yat(
        torch.zeros(4, 0, dtype=torch.float64),
        torch.zeros(3, 0, dtype=torch.float64),
        b,
        alpha=a,
        epsilon=e,
    ).sum().backward()
    np.testing.assert_allclose(b.grad.numpy(), 4 * 2 * ALPHA * B3 / EPS)
    np.testing.assert_allclose(a.grad.item(), 4 * np.sum(B3**2) / EPS)
    np.testing.assert_allclose(e.grad.item(), -4 * ALPHA * np.sum(B3**2) / EPS**2)


# name -> (call(convert), words the message must contain)
ERROR_CASES: dict[str, tuple[Callable[..., Any], list[str]]] = {
    "conv zero-size kernel": (
        lambda c: na.yat_conv(c(np.ones((2, 2, 5))), c(_z(3, 2, 0))),
        ["w", "kernel", "(0,)", "(3, 2, 0)"],
    ),
    "conv2d zero-size kernel": (
        lambda c: na.yat_conv(c(np.ones((2, 2, 5, 5))), c(_z(3, 2, 2, 0)), padding=1),
        ["w", "kernel", "(2, 0)"],
    ),
    "conv zero-size input": (
        lambda c: na.yat_conv(c(_z(2, 2, 0)), c(np.ones((3, 2, 1))), padding=1),
        ["x", "spatial", "(0,)", "(2, 2, 0)"],
    ),
    "conv zero-size input, channels_last": (
        lambda c: na.yat_conv(
            c(_z(2, 4, 0, 2)), c(np.ones((3, 2, 1, 1))), data_format="channels_last"
        ),
        ["x", "spatial", "(4, 0)"],
    ),
    "conv_transpose zero-size kernel": (
        lambda c: na.yat_conv_transpose(c(np.ones((2, 2, 5))), c(_z(2, 3, 0))),
        ["w", "kernel", "(0,)"],
    ),
    "conv_transpose zero-size input": (
        lambda c: na.yat_conv_transpose(c(_z(2, 2, 0)), c(np.ones((2, 3, 2)))),
        ["x", "spatial", "(0,)"],
    ),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_same_clear_error(backend, name):
    call, words = ERROR_CASES[name]
    with pytest.raises(ValueError) as info:
        call(backend.from_numpy)
    for word in words:
        assert word in str(info.value)


def _unknown(da: Any, a: np.ndarray) -> Any:
    """A Dask array with NaN chunk sizes, as boolean indexing makes them."""
    keep = da.from_array(np.ones(a.shape[0], dtype=bool))
    out = da.from_array(a, chunks=(2, *a.shape[1:]))[keep]
    assert np.isnan(out.shape[0])
    return out


UNKNOWN_CASES: dict[str, tuple[Callable[..., Any], str]] = {
    "yat x": (lambda u, d: na.yat(u(np.ones((5, 4))), d(np.ones((3, 4)))), "x"),
    "yat w": (lambda u, d: na.yat(d(np.ones((5, 4))), u(np.ones((3, 4)))), "w"),
    "yat_conv": (lambda u, d: na.yat_conv(u(np.ones((5, 2, 6))), d(np.ones((3, 2, 2)))), "x"),
    "yat_conv_transpose": (
        lambda u, d: na.yat_conv_transpose(u(np.ones((5, 2, 6))), d(np.ones((2, 3, 2)))),
        "x",
    ),
    "yat_attention k": (
        lambda u, d: na.yat_attention(d(np.ones((5, 4))), u(np.ones((6, 4))), d(np.ones((6, 2)))),
        "k",
    ),
    "rotary_embedding": (lambda u, d: na.rotary_embedding(u(np.ones((5, 3, 4)))), "x"),
    "softermax": (lambda u, d: na.softermax(u(np.ones((5, 3)))), "x"),
}


@pytest.mark.parametrize("name", list(UNKNOWN_CASES))
def test_dask_unknown_chunk_sizes_are_refused_clearly(name):
    da = pytest.importorskip("dask.array")
    call, arg = UNKNOWN_CASES[name]
    with pytest.raises(ValueError) as info:
        call(lambda a: _unknown(da, a), da.from_array)
    msg = str(info.value)
    assert msg.startswith(f"{arg} has unknown sizes") and "nan" in msg
    assert f"{arg}.compute_chunk_sizes()" in msg


def test_dask_unknown_chunk_sizes_elementwise_squashers_still_work():
    da = pytest.importorskip("dask.array")
    x = np.abs(np.random.default_rng(0).normal(size=(5, 3)))
    got = na.softer_sigmoid(_unknown(da, x), n=2.0).compute()
    np.testing.assert_allclose(got, x**2 / (1 + x**2), rtol=1e-12)
