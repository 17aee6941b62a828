"""float16 layers near ``x == w``: finite gradients, saturated at float16's range.

The core test (test_low_precision.py) pins the rule on the pure functions; these check that
each framework's float16 layers reach it (no cast of their own that overflows), for the
dense, convolution and embedding families. The input of each layer copies one of its
neurons up to 1%, where the float32 gradient exceeds 65504.
"""

from __future__ import annotations

import numpy as np

F16_MAX = 65504.0


def _check(grad: np.ndarray) -> None:
    grad = np.asarray(grad, dtype=np.float64)
    assert np.isfinite(grad).all(), "non-finite float16 gradient"
    assert np.abs(grad).max() == F16_MAX, "the case does not reach float16's range"


def _torch_cases():
    import torch
    from nmn_array.frameworks import torch as ours

    torch.manual_seed(0)
    dense = ours.YatNMN(16, 4).half()
    conv = ours.YatConv1D(2, 3, 3).half()
    embed = ours.YatEmbed(5, 16).half()
    with torch.no_grad():
        for p in (dense.weight, conv.weight, embed.embedding):
            p.mul_(0.3 / p.abs().max())
    x_conv = torch.randn(1, 2, 7).half() * 0.3
    x_conv[0, :, 2:5] = conv.weight[0].detach() * 1.01
    return [
        (dense, (dense.weight.detach()[:2] * 1.01)),
        (conv, x_conv),
        (embed.attend, embed.embedding.detach()[:2] * 1.01),
    ]


def test_torch_float16_layers():
    for layer, x in _torch_cases():
        x = x.clone().requires_grad_(True)
        layer(x).float().sum().backward()
        _check(x.grad.float().numpy())


def test_nnx_float16_layers():
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from nmn_array.frameworks import nnx as ours

    layer = ours.YatNMN(16, 4, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
    layer.kernel[...] = layer.kernel[...] * (0.3 / jnp.abs(layer.kernel[...]).max())
    x = (layer.kernel[...].T[:2] * 1.01).astype(jnp.float16)
    grad = jax.grad(lambda v: jnp.sum(layer(v).astype(jnp.float32)))(x)
    _check(grad)


def test_tf_float16_layers():
    import tensorflow as tf
    from nmn_array.frameworks import tf as ours

    layer = ours.YatNMN(4, dtype=tf.float16)
    layer.build((None, 16))
    kernel = layer.kernel.numpy().astype(np.float32)
    layer.kernel.assign(tf.constant(kernel * (0.3 / np.abs(kernel).max()), tf.float16))
    x = tf.Variable(tf.cast(layer.kernel[:2] * 1.01, tf.float16))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(tf.cast(layer(x), tf.float32))
    _check(tape.gradient(total, x).numpy())
