"""DropConnect of the Keras yat convolutions and transposed convolutions (issue 11).

nmn.keras 0.3.5 draws ``uniform(kernel.shape) < 1 - drop_rate`` from Keras' unseeded global
generator whenever ``use_dropconnect and training and drop_rate > 0``; ours draws the same
pattern from a ``keras.random.SeedGenerator`` the layer owns (as ``keras.layers.Dropout``
does), so the draws are not nmn's draws: these tests check the behaviour, not one draw.
Runs on the backend named by ``KERAS_BACKEND`` (see ``conftest.py``).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from nmn_array.frameworks import keras as ours

BACKEND = keras.backend.backend()
RATE = 0.3

# class name, constructor arguments, input shape (channels last)
CASES = [
    ("YatConv1D", dict(filters=4, kernel_size=3), (2, 9, 3)),
    ("YatConv2D", dict(filters=4, kernel_size=3, padding="same", groups=2), (2, 6, 6, 4)),
    ("YatConv3D", dict(filters=3, kernel_size=2), (1, 4, 4, 4, 2)),
    ("YatConvTranspose1D", dict(filters=4, kernel_size=3, strides=2), (2, 5, 3)),
    ("YatConvTranspose2D", dict(filters=3, kernel_size=3, padding="same"), (1, 4, 4, 3)),
    ("YatConvTranspose3D", dict(filters=2, kernel_size=2, strides=2), (1, 3, 3, 3, 2)),
]
IDS = [c[0] for c in CASES]


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _layer(cls, args, shape, seed=0, **kwargs):
    """A built float32 layer; ``seed`` fixes its weights and its DropConnect generator."""
    keras.utils.set_random_seed(seed)
    layer = getattr(ours, cls)(**args, **kwargs)
    layer.build(shape)
    return layer


def _input(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _same_weights(src, dst):
    dst.set_weights([np.asarray(w) for w in src.get_weights()])


def _drawn_keep(layer):
    """The keep pattern the layer's next training call draws: its own generator's state,
    replayed through ``keras.random.uniform`` (read before the call)."""
    generator = keras.random.SeedGenerator(seed=0)
    generator.state.assign(_np(layer._seed_generator.state.value))
    u = keras.random.uniform(tuple(layer.kernel.shape), dtype=layer.kernel.dtype, seed=generator)
    return _np(u) < 1.0 - layer.drop_rate


def _kernel_gradient(layer, x):
    """d sum(layer(x, training=True)) / d kernel, on the current backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, training=True))
        return _np(tape.gradient(loss, layer.kernel.value))
    if BACKEND == "torch":
        kernel = layer.kernel.value
        kernel.grad = None
        layer(x, training=True).sum().backward()
        return kernel.grad.detach().cpu().numpy()
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]
    index = [id(v) for v in layer.trainable_variables].index(id(layer.kernel))
    x = keras.ops.convert_to_tensor(x)  # stateless_call does not convert NumPy inputs

    def loss(values):
        y, _ = layer.stateless_call(values, frozen, x, training=True)
        return y.sum()

    return np.asarray(jax.grad(loss)(trainable)[index])


@pytest.mark.parametrize("cls,args,shape", CASES, ids=IDS)
def test_eval_mode_equals_the_layer_without_dropconnect(cls, args, shape):
    layer = _layer(cls, args, shape, use_dropconnect=True, drop_rate=RATE)
    plain = _layer(cls, args, shape, seed=5)
    _same_weights(layer, plain)
    x = _input(shape)
    expected = _np(plain(x))
    for training in (None, False):
        np.testing.assert_array_equal(_np(layer(x, training=training)), expected)
    # drop_rate=0 or use_dropconnect=False: training changes nothing either
    for kwargs in (dict(use_dropconnect=True, drop_rate=0.0), dict(drop_rate=RATE)):
        other = _layer(cls, args, shape, **kwargs)
        _same_weights(layer, other)
        np.testing.assert_array_equal(_np(other(x, training=True)), expected)


@pytest.mark.parametrize("weight_normalized", [False, True], ids=["plain", "weight_normalized"])
@pytest.mark.parametrize("cls,args,shape", CASES, ids=IDS)
def test_training_equals_the_layer_with_the_dropped_kernel(cls, args, shape, weight_normalized):
    # nmn's order: DropConnect (kept weights / (1 - rate)), then weight normalisation.
    opts = dict(weight_normalized=weight_normalized)
    layer = _layer(cls, args, shape, use_dropconnect=True, drop_rate=RATE, **opts)
    keep = _drawn_keep(layer)
    x = _input(shape)
    y = _np(layer(x, training=True))
    plain = _layer(cls, args, shape, seed=5, **opts)
    weights = [np.asarray(w) for w in layer.get_weights()]
    dropped = np.where(keep, weights[0] / np.float32(1.0 - RATE), np.float32(0.0))
    plain.set_weights([dropped, *weights[1:]])
    np.testing.assert_allclose(y, _np(plain(x)), rtol=1e-5, atol=1e-6)
    assert 0 < keep.sum() < keep.size
    assert not np.allclose(y, _np(layer(x, training=False)))


@pytest.mark.parametrize("cls,args,shape", CASES[1:2] + CASES[4:5], ids=IDS[1:2] + IDS[4:5])
def test_same_seed_same_draw_other_seed_other_draw(cls, args, shape):
    x = _input(shape)
    a, b, c = (
        _layer(cls, args, shape, seed=s, use_dropconnect=True, drop_rate=RATE) for s in (7, 7, 8)
    )
    _same_weights(a, c)
    ya, yb, yc = (_np(layer(x, training=True)) for layer in (a, b, c))
    np.testing.assert_array_equal(ya, yb)
    assert not np.allclose(ya, yc)
    # the generator advances: the next training call draws another pattern
    assert not np.allclose(ya, _np(a(x, training=True)))


def test_dropped_fraction_and_kernel_gradient():
    # 3 * 3 * 16 * 64 = 9216 weights: the dropped fraction is within 5 binomial sigmas of
    # drop_rate, and the kernel gradient is exactly 0 where (and only where) the draw
    # dropped a weight, finite elsewhere.
    shape = (2, 8, 8, 16)
    layer = _layer(
        "YatConv2D", dict(filters=64, kernel_size=3), shape, use_dropconnect=True, drop_rate=RATE
    )
    keep = _drawn_keep(layer)
    grad = _kernel_gradient(layer, _input(shape))
    n = keep.size
    assert abs((~keep).sum() / n - RATE) < 5 * math.sqrt(RATE * (1 - RATE) / n)
    np.testing.assert_array_equal(grad[~keep], 0.0)
    assert np.isfinite(grad).all()
    assert np.count_nonzero(grad[keep]) == keep.sum()


@pytest.mark.parametrize("rate", [-0.1, 1.0, float("nan")])
@pytest.mark.parametrize("cls", ["YatConv2D", "YatConvTranspose1D"])
def test_bad_drop_rate_is_named(cls, rate):
    with pytest.raises(ValueError, match="drop_rate"):
        getattr(ours, cls)(2, 3, use_dropconnect=True, drop_rate=rate)


@pytest.mark.parametrize("cls", ["YatConv1D", "YatConvTranspose2D"])
def test_config_round_trip_keeps_dropconnect(cls):
    layer = getattr(ours, cls)(2, 3, use_dropconnect=True, drop_rate=0.25)
    config = layer.get_config()
    assert (config["use_dropconnect"], config["drop_rate"]) == (True, 0.25)
    again = type(layer).from_config(config)
    assert (again.use_dropconnect, again.drop_rate) == (True, 0.25)


def test_model_fit_trains_with_dropconnect():
    # model.fit compiles the train step (jax.jit on JAX): the draw comes from the layer's
    # generator state, which fit threads through; predict (training=False) is deterministic.
    keras.utils.set_random_seed(3)
    layer = ours.YatConv1D(4, 3, use_dropconnect=True, drop_rate=0.5)
    model = keras.Sequential([keras.Input((9, 3)), layer, keras.layers.GlobalAveragePooling1D()])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = _input((16, 9, 3)), np.zeros((16, 4), dtype="float32")
    before = np.asarray(layer.get_weights()[0]).copy()
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.array_equal(before, np.asarray(layer.get_weights()[0]))
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
