"""``window`` and ``block_size`` of the Keras ``MultiHeadYatAttention`` on the backend
``KERAS_BACKEND`` names: the tiled path equals the materialised one in outputs and input
gradients, a window equals its explicit boolean mask, ``get_config`` keeps both, bad values
raise ValueError naming the argument."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from nmn_array.frameworks.keras import MultiHeadYatAttention

from tests.frameworks.test_attention_window_modules import (
    CROSS_MASK,
    LK,
    MASK,
    W_OUT,
    XK,
    XQ,
    E,
    H,
    L,
    _close,
)
from tests.test_blocked_attention import _window_mask

BACKEND = keras.backend.backend()


def _grad(layer, xq, xk, mask):
    """The output and the gradients of ``sum(output * W_OUT)`` with respect to the inputs."""
    kw = {} if mask is None else {"attention_mask": mask}
    inputs = [t for t in (xq, xk) if t is not None]

    def call(*xs):
        return layer(xs[0], xs[1], **kw) if len(xs) == 2 else layer(xs[0], **kw)

    if BACKEND == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(t) for t in inputs]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = call(*xs)
            loss = tf.reduce_sum(out * W_OUT)
        return out.numpy(), [g.numpy() for g in tape.gradient(loss, xs)]
    if BACKEND == "torch":
        import torch

        xs = [torch.tensor(t, requires_grad=True) for t in inputs]
        out = call(*xs)
        grads = torch.autograd.grad((out * torch.tensor(W_OUT)).sum(), xs)
        return out.detach().cpu().numpy(), [g.cpu().numpy() for g in grads]
    import jax

    def loss(*xs):
        out = call(*xs)
        return (out * W_OUT).sum(), out

    argnums = tuple(range(len(inputs)))
    grads, out = jax.grad(loss, argnums=argnums, has_aux=True)(*map(jax.numpy.asarray, inputs))
    return np.asarray(out), [np.asarray(g) for g in grads]


def _layers(*settings):
    """One layer per ``(window, block_size)``, all with the first one's weights (float64)."""
    layers = [
        MultiHeadYatAttention(E, H, window=w, block_size=b, dtype="float64") for w, b in settings
    ]
    for layer in layers:
        layer.build((2, L, E), (2, LK, E))
    # nonzero biases, so that a keyless query's zeroed output differs from the projection's
    weights = [
        np.random.default_rng(i).normal(size=w.shape) if w.shape == (E,) else w
        for i, w in enumerate(layers[0].get_weights())
    ]
    for layer in layers:
        layer.set_weights(weights)
    return layers


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("window", [(None, 0), (2, 1)], ids=["causal", "window21"])
def test_block_size_equals_materialised(window, masked, cross):
    xk = XK if cross else None
    mask = (CROSS_MASK if cross else MASK) if masked else None
    tiled, exact = _layers((window, 4), (window, None))
    _close(_grad(tiled, XQ, xk, mask), _grad(exact, XQ, xk, mask), f"{BACKEND} {window}")


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_window_equals_explicit_mask(cross, masked):
    # cross-attention with fewer keys: window (0, 0) leaves the first L - LK queries keyless
    xk, window, mask, lk = (XK, (0, 0), CROSS_MASK, LK) if cross else (None, (2, 1), MASK, L)
    explicit = _window_mask(L, lk, *window)
    windowed, plain = _layers((window, "auto"), (None, "auto"))
    given = mask if masked else None
    got = _grad(windowed, XQ, xk, given)
    _close(got, _grad(plain, XQ, xk, explicit & mask if masked else explicit), BACKEND)
    assert not np.allclose(got[0], _grad(plain, XQ, xk, given)[0]), "the window changed nothing"
    if cross:
        assert np.all(got[0][:, : L - LK] == 0.0)


def test_get_config_round_trip_keeps_window_and_block_size():
    layer = MultiHeadYatAttention(E, H, window=(3, None), block_size=16)
    config = layer.get_config()
    assert config["window"] == (3, None) and config["block_size"] == 16
    again = MultiHeadYatAttention.from_config(config)
    assert (again.window, again.block_size) == ((3, None), 16)
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert (tuple(restored.window), restored.block_size) == ((3, None), 16)
    default = MultiHeadYatAttention.from_config(MultiHeadYatAttention(E, H).get_config())
    assert (default.window, default.block_size) == (None, "auto")


@pytest.mark.parametrize("bad", [(-1, 0), (1,), (1.5, 0), "left", (True, 0)], ids=repr)
def test_bad_window_raises(bad):
    with pytest.raises(ValueError, match="window"):
        MultiHeadYatAttention(E, H, window=bad)


@pytest.mark.parametrize("bad", [0, -2, 2.0, "big", True], ids=repr)
def test_bad_block_size_raises(bad):
    with pytest.raises(ValueError, match="block_size"):
        MultiHeadYatAttention(E, H, block_size=bad)
