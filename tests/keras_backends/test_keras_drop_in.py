"""Keras behaviours of nmn 0.3.5 that users rely on when switching (issue 11), per backend:
learnable epsilon validated and exact, gradients that stay finite (float16, a zero
attention head), and the functional attention API (against nmn.keras's, which runs on every
backend).
"""

from __future__ import annotations

import math

import keras
import nmn.keras as ref
import numpy as np
import pytest
from nmn_array.frameworks import keras as ours

from tests.frameworks._parity import assert_parity

BACKEND = keras.backend.backend()


def _softplus(raw: float) -> float:
    return raw + math.log1p(math.exp(-raw)) if raw > 0 else math.log1p(math.exp(raw))


@pytest.mark.parametrize("epsilon", [1e-46, 1e39])
def test_unrepresentable_learnable_epsilon_is_refused_at_construction(epsilon):
    for make in (ours.YatNMN, lambda *a, **k: ours.YatConv1D(*a, 3, **k)):
        with pytest.raises(ValueError, match="learnable epsilon"):
            make(3, learnable_epsilon=True, epsilon=epsilon)


@pytest.mark.parametrize("epsilon", [2.0**-1022, 1e-300, 1e150])
def test_float64_learnable_epsilon_is_exact(epsilon):
    """Keras' Constant initialiser goes through float32: 2**-1022 became 0, 1e150 failed."""
    layer = ours.YatNMN(3, learnable_epsilon=True, epsilon=epsilon, dtype="float64")
    layer.build((None, 4))
    raw = keras.ops.convert_to_numpy(layer.epsilon_param.value)
    assert raw.dtype == np.float64
    assert math.isclose(_softplus(float(raw[0])), epsilon, rel_tol=1e-13)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "mixed_float16"])
def test_low_precision_layers_store_the_raw_epsilon_in_float32(dtype):
    layer = ours.YatNMN(3, learnable_epsilon=True, epsilon=1e-7, dtype=dtype)
    layer.build((None, 4))
    assert keras.backend.standardize_dtype(layer.epsilon_param.dtype) == "float32"


def test_float16_gradients_near_a_neuron_stay_finite():
    layer = ours.YatNMN(4, dtype="float16")
    layer.build((None, 16))
    kernel = keras.ops.convert_to_numpy(layer.kernel.value).astype(np.float32)
    kernel *= 0.3 / np.abs(kernel).max()
    layer.kernel.assign(kernel.astype(np.float16))
    x = (kernel.T[:2] * 1.01).astype(np.float16)  # kernel (in, units): neurons are columns
    grad = _input_gradient(layer, x)
    assert np.isfinite(grad).all(), "non-finite float16 gradient"
    assert np.abs(grad).max() == 65504.0, "the case does not reach float16's range"


def test_normalize_qk_gradients_stay_finite_at_a_zero_head():
    """A zero token without projection biases has q = k = 0 in every head; normalize_qk
    (unit_heads) takes the norm's derivative as 0 there (keras.ops.normalize gave NaN on
    the torch backend)."""
    layer = ours.MultiHeadYatAttention(8, 2, normalize_qk=True, use_bias=False)
    x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype("float32")
    x[0, 1] = 0.0
    grad = _input_gradient(layer, x)
    assert np.isfinite(grad).all(), "non-finite gradient through a zero head"


def _input_gradient(layer, x: np.ndarray) -> np.ndarray:
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: layer(v).astype("float32").sum())(x))
    if BACKEND == "torch":
        import torch

        t = torch.tensor(x, requires_grad=True)
        layer(t).float().sum().backward()
        return t.grad.float().numpy()
    import tensorflow as tf

    v = tf.Variable(x)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(tf.cast(layer(v), tf.float32))
    return tape.gradient(total, v).numpy()


@pytest.mark.parametrize("spherical", [False, True])
def test_functional_attention_matches_nmn(spherical):
    rng = np.random.default_rng(7)
    q, k, v = (
        keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32"))
        for s in ((2, 5, 3, 4), (2, 4, 3, 4), (2, 4, 3, 6))
    )
    mask = rng.random((2, 3, 5, 4)) < 0.7
    mask[..., 0] = True
    mask = keras.ops.convert_to_tensor(mask)
    kw = {"mask": mask, "spherical": spherical, "scale": 1.5}
    assert_parity(ours.yat_attention(q, k, v, **kw), ref.yat_attention(q, k, v, **kw), 1e-5)
    assert_parity(
        ours.yat_attention_weights(q, k, **kw), ref.yat_attention_weights(q, k, **kw), 1e-5
    )
    dropped = keras.ops.convert_to_numpy(
        ours.yat_attention_weights(q, k, dropout_rate=0.5, training=True)
    )
    plain = keras.ops.convert_to_numpy(ours.yat_attention_weights(q, k))
    kept = dropped != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_allclose(dropped[kept], 2 * plain[kept], rtol=1e-6)
