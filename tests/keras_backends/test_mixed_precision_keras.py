"""Keras mixed precision (``mixed_float16``, ``mixed_bfloat16``) with every yat layer, on
the backend named by ``KERAS_BACKEND`` (docs/mixed_precision.md).

A policy keeps the variables in float32 and runs ``call`` in the 16-bit compute dtype: the
inputs and the variables as read arrive in float16/bfloat16, the yat functions upcast them
and compute in float32 (the dtype contract), and the output is cast back to the compute
dtype. Training takes one ``fit`` step; float16's uses Keras' ``LossScaleOptimizer``, which
skips a step with non-finite gradients, so "the weights moved and are finite" means the
gradients were finite.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from nmn_array.frameworks import keras as ours

POLICIES = ("mixed_float16", "mixed_bfloat16")
#: max |y16 - y32| / max |y32| on the same weights: the output's rounding to the compute
#: dtype (2**-11, 2**-8) plus, in attention, Keras' projections computed in that dtype
#: (measured up to 1e-3 for float16 and 1.1e-2 for bfloat16 on the three backends).
TOLERANCE = {"mixed_float16": 4e-3, "mixed_bfloat16": 3e-2}

LAYERS = {
    "YatNMN": (lambda **kw: ours.YatNMN(8, **kw), (4, 16)),
    "YatConv1D": (lambda **kw: ours.YatConv1D(4, 3, **kw), (2, 10, 3)),
    "YatConv2D": (lambda **kw: ours.YatConv2D(4, 3, padding="same", **kw), (2, 8, 8, 3)),
    "YatConv3D": (lambda **kw: ours.YatConv3D(4, 3, **kw), (2, 5, 5, 5, 2)),
    "YatConvTranspose1D": (lambda **kw: ours.YatConvTranspose1D(4, 3, **kw), (2, 6, 3)),
    "YatConvTranspose2D": (
        lambda **kw: ours.YatConvTranspose2D(4, 3, strides=2, **kw),
        (2, 5, 5, 3),
    ),
    "YatConvTranspose3D": (lambda **kw: ours.YatConvTranspose3D(4, 3, **kw), (2, 4, 4, 4, 2)),
    # the embedding's yat scores (``attend``) of queries; its lookup: the test below
    "YatEmbed": (lambda **kw: ours.YatEmbed(10, 8, **kw), (4, 5, 8)),
    "MultiHeadYatAttention": (lambda **kw: ours.MultiHeadYatAttention(16, 2, **kw), (2, 6, 16)),
    "RotaryYatAttention": (
        lambda **kw: ours.RotaryYatAttention(16, 2, max_seq_len=32, **kw),
        (2, 6, 16),
    ),
}


def _inputs(name: str) -> np.ndarray:
    return np.random.default_rng(0).normal(size=LAYERS[name][1]).astype("float32")


def _apply(layer, x):
    return layer.attend(x) if isinstance(layer, ours.YatEmbed) else layer(x)


def _numpy(y) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_policy_layer_keeps_float32_variables_and_matches_float32(name, policy):
    make, _ = LAYERS[name]
    x = _inputs(name)
    reference = make()
    y32 = _numpy(_apply(reference, x))
    layer = make(dtype=policy)
    _apply(layer, x)  # build
    layer.set_weights(reference.get_weights())
    y = _apply(layer, x)
    compute = policy.removeprefix("mixed_")
    assert layer.compute_dtype == compute and layer.variable_dtype == "float32"
    assert {v.dtype for v in layer.weights} == {"float32"}, [v.dtype for v in layer.weights]
    assert keras.backend.standardize_dtype(y.dtype) == compute
    err = np.abs(_numpy(y) - y32).max() / np.abs(y32).max()
    assert err <= TOLERANCE[policy], err


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_policy_training_step_is_finite(name, policy):
    make, _ = LAYERS[name]
    x = _inputs(name)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(x.shape[1:], dtype=str(x.dtype))
    # the loss in float32, as Keras' mixed precision guide has it
    outputs = keras.layers.Activation("linear", dtype="float32")(_apply(make(dtype=policy), inputs))
    model = keras.Model(inputs, outputs)
    optimizer = keras.optimizers.Adam(1e-3)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="mse")
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    target = np.full((len(x), *model.output.shape[1:]), 0.5, "float32")
    loss = model.fit(x, target, batch_size=len(x), epochs=1, verbose=0).history["loss"][-1]
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    assert np.isfinite(loss), loss
    assert all(np.isfinite(a).all() for a in after)
    moved = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert all(moved), [v.path for v, m in zip(model.trainable_weights, moved) if not m]


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_embedding_lookup_is_in_the_compute_dtype(policy):
    reference, layer = ours.YatEmbed(10, 8), ours.YatEmbed(10, 8, dtype=policy)
    ids = np.array([[1, 2, 9]], dtype="int32")
    reference(ids), layer(ids)
    layer.set_weights(reference.get_weights())
    y = layer(ids)
    assert keras.backend.standardize_dtype(y.dtype) == policy.removeprefix("mixed_")
    exact = keras.ops.convert_to_numpy(
        keras.ops.cast(reference(ids), policy.removeprefix("mixed_"))
    )
    np.testing.assert_array_equal(_numpy(y), _numpy(exact))


def test_float16_saturates_instead_of_overflowing():
    """A query equal to an embedding scores ``alpha |e|^4 / epsilon`` (4e5 here), past
    float16's largest value: the output saturates at 65504 rather than becoming inf."""
    layer = ours.YatEmbed(10, 8, dtype="mixed_float16")
    ids = np.array([[1, 2, 9]], dtype="int32")
    layer(ids)
    weights = layer.get_weights()  # [embedding, alpha]
    layer.set_weights([np.full((10, 8), 0.5, "float32"), np.ones_like(weights[1])])
    scores = _numpy(layer.attend(layer(ids)))
    np.testing.assert_array_equal(scores, np.full((1, 3, 10), 65504.0, "float32"))


@pytest.mark.parametrize("policy", POLICIES)
def test_global_policy_applies_to_every_layer(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        for name, (make, _) in sorted(LAYERS.items()):
            layer = make()
            y = _apply(layer, _inputs(name))
            assert keras.backend.standardize_dtype(y.dtype) == layer.compute_dtype, name
            assert layer.compute_dtype == policy.removeprefix("mixed_"), name
            assert {v.dtype for v in layer.weights} == {"float32"}, name
            assert np.isfinite(_numpy(y)).all(), name
    finally:
        keras.mixed_precision.set_global_policy(previous)
