"""Shared kernel banks (``tie_kernel_bank``) of the Keras yat convolutions (issue 11).

nmn.keras 0.3.5 has banks in YatConv1D/2D/3D and YatConvTranspose1D/2D/3D, with a fixed
capacity (Keras variables cannot change shape). The oracle for the seeded tests is nmn.keras's
own tied layers: built after the same ``keras.utils.set_random_seed``, ours must draw the same
bank and give the same outputs. Every test uses its own bank id (nmn's registries are class
attributes) and clears our registry, so that no bank leaks from one test into another.
Runs on the backend named by ``KERAS_BACKEND`` (see ``conftest.py``).
"""

from __future__ import annotations

import keras
import nmn.keras as ref
import numpy as np
import pytest
from nmn_array.frameworks import keras as ours

from tests.frameworks import _banks

BACKEND = keras.backend.backend()

# class name, constructor arguments (after filters), input shape (channels last), filter axis
CASES = [
    ("YatConv1D", dict(kernel_size=3), (2, 9, 3), 2),
    ("YatConv2D", dict(kernel_size=3, padding="same", groups=2), (2, 6, 6, 4), 3),
    ("YatConv3D", dict(kernel_size=2), (1, 4, 4, 4, 2), 4),
    ("YatConvTranspose1D", dict(kernel_size=3, strides=2), (2, 5, 3), 1),
    ("YatConvTranspose2D", dict(kernel_size=3, padding="same"), (1, 4, 4, 3), 2),
    ("YatConvTranspose3D", dict(kernel_size=2, strides=2), (1, 3, 3, 3, 2), 3),
]
IDS = [c[0] for c in CASES]


_fresh_banks = _banks.fresh_banks(ours._BANKS)
bank_id = _banks.bank_id


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _input(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _tied(cls, args, shape, filters, bank_id, module=ours, **kw):
    """A built tied layer (float32)."""
    layer = getattr(module, cls)(
        filters, **args, tie_kernel_bank=True, kernel_bank_id=bank_id, **kw
    )
    layer.build(shape)
    return layer


def _slice(bank, axis, stop, start=0):
    """``bank[start:stop]`` along ``axis`` (``_slice(bank, axis, n)``: the first ``n``)."""
    index = [slice(None)] * bank.ndim
    index[axis] = slice(start, stop)
    return bank[tuple(index)]


def _untied_copy(layer, cls, args, shape, axis, **kw):
    """An untied layer holding ``layer``'s weights, its kernel the bank slice (a copy)."""
    copy = getattr(ours, cls)(layer.filters, **args, **kw)
    copy.build(shape)
    weights = [np.array(w) for w in layer.get_weights()]
    weights[0] = np.ascontiguousarray(_slice(weights[0], axis, layer.filters))
    copy.set_weights(weights)
    return copy


@pytest.mark.parametrize("cls,args,shape,axis", CASES, ids=IDS)
def test_tied_layers_share_one_variable(cls, args, shape, axis, bank_id):
    a = _tied(cls, args, shape, 2, bank_id, kernel_bank_size=6)
    b = _tied(cls, args, shape, 4, bank_id)
    assert a.kernel is b.kernel and a.kernel.shape[axis] == 6
    # a model holding both lists the bank once, so an optimiser steps it once
    holder = keras.layers.Layer()
    holder.parts = [a, b]
    assert sum(v is a.kernel for v in holder.trainable_variables) == 1
    x = _input(shape)
    before = _np(b(x))
    a.kernel.assign(-2.0 * _np(a.kernel))  # through one layer ...
    np.testing.assert_array_equal(_np(b.kernel), _np(a.kernel))  # ... seen by the other
    assert not np.array_equal(_np(b(x)), before)


@pytest.mark.parametrize("weight_normalized", [False, True], ids=["plain", "weight_normalized"])
@pytest.mark.parametrize("cls,args,shape,axis", CASES, ids=IDS)
def test_tied_layer_equals_untied_layer_on_the_bank_slice(
    cls, args, shape, axis, weight_normalized, bank_id
):
    kw = dict(weight_normalized=weight_normalized)
    layers = [_tied(cls, args, shape, n, bank_id, kernel_bank_size=6, **kw) for n in (2, 6, 4)]
    x = _input(shape)
    for layer in layers:
        out = _np(layer(x))
        assert out.shape[-1] == layer.filters
        ref_out = _np(_untied_copy(layer, cls, args, shape, axis, **kw)(x))
        np.testing.assert_array_equal(out, ref_out)


def _gradient(variable, loss):
    """d loss() / d variable on the current backend (``loss`` reads the variable)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss()
        return _np(tape.gradient(value, variable.value))
    if BACKEND == "torch":
        raw = variable.value
        raw.grad = None
        loss().backward()
        return raw.grad.detach().cpu().numpy()
    import jax

    def of(value):
        with keras.StatelessScope(state_mapping=[(variable, value)]):
            return loss()

    return np.asarray(jax.grad(of)(variable.value))


@pytest.mark.parametrize("cls,args,shape,axis", CASES, ids=IDS)
def test_gradients_of_all_users_add_up_in_the_bank(cls, args, shape, axis, bank_id):
    a = _tied(cls, args, shape, 2, bank_id, kernel_bank_size=6)
    b = _tied(cls, args, shape, 4, bank_id)
    x = keras.ops.convert_to_tensor(_input(shape))
    got = _gradient(a.kernel, lambda: keras.ops.sum(a(x)) + keras.ops.sum(keras.ops.square(b(x))))
    ta = _untied_copy(a, cls, args, shape, axis)
    tb = _untied_copy(b, cls, args, shape, axis)
    ga = _gradient(ta.kernel, lambda: keras.ops.sum(ta(x)))
    gb = _gradient(tb.kernel, lambda: keras.ops.sum(keras.ops.square(tb(x))))
    expected = np.zeros(got.shape, dtype=got.dtype)
    _slice(expected, axis, 2)[...] += ga
    _slice(expected, axis, 4)[...] += gb
    assert np.abs(ga).sum() > 0 and np.abs(gb).sum() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    # the filters only the larger layer uses get its gradient alone; unused ones get none
    np.testing.assert_allclose(
        _slice(got, axis, 4, 2), _slice(gb, axis, 4, 2), rtol=1e-5, atol=1e-6 * np.abs(gb).max()
    )
    assert not _slice(got, axis, None, 4).any()


@pytest.mark.parametrize("cls,args,shape,axis", CASES, ids=IDS)
def test_a_bank_never_grows(cls, args, shape, axis, bank_id):
    a = _tied(cls, args, shape, 2, bank_id)
    bank = _np(a.kernel)
    with pytest.raises(
        ValueError, match="has 2 units and cannot grow to 4 .*fixed capacity.*kernel_bank_size=4"
    ):
        _tied(cls, args, shape, 4, bank_id)
    np.testing.assert_array_equal(_np(a.kernel), bank)  # unchanged, and still used as it was
    assert a.kernel.shape[axis] == 2 and _np(a(_input(shape))).shape[-1] == 2
    # a layer that fits joins it; a larger bank size on a later layer is a growth too
    assert _tied(cls, args, shape, 2, bank_id).kernel is a.kernel
    with pytest.raises(ValueError, match="cannot grow to 4"):
        _tied(cls, args, shape, 2, bank_id, kernel_bank_size=4)


@pytest.mark.parametrize("cls,args,shape,axis", CASES, ids=IDS)
def test_bank_size_below_the_filters_raises(cls, args, shape, axis, bank_id):
    for size in (2, 0):  # nmn reads 0 as "unset" at build; it is a size too small here
        with pytest.raises(
            ValueError, match=rf"kernel_bank_size \({size}\) must be at least the units \(4\)"
        ):
            getattr(ours, cls)(4, **args, tie_kernel_bank=True, kernel_bank_size=size)
    # untied, the settings are kept (nmn configurations load) and change nothing
    layer = getattr(ours, cls)(4, **args, kernel_bank_size=2, kernel_bank_id=bank_id)
    layer.build(shape)
    assert layer.kernel.shape[axis] == 4 and not layer.tie_kernel_bank
    assert (layer.get_config()["kernel_bank_size"], layer.get_config()["kernel_bank"]) == (2, None)


def test_separate_banks(bank_id):
    cls, args, shape, _ = CASES[1]  # YatConv2D, groups=2, 4 channels
    a = _tied(cls, args, shape, 2, bank_id)
    others = [
        _tied(cls, args, shape, 2, bank_id + "-other"),
        _tied(cls, args, (2, 6, 6, 6), 2, bank_id),  # channels
        _tied(cls, dict(args, groups=1), (2, 6, 6, 2), 2, bank_id),  # groups, same kernel shape
        _tied(cls, dict(args, kernel_size=2), shape, 2, bank_id),
        _tied(cls, args, shape, 2, bank_id, dtype="float64"),
        _tied(cls, args, shape, 2, bank_id, kernel_initializer="glorot_uniform"),
        _tied("YatConvTranspose2D", dict(kernel_size=3), (1, 4, 4, 4), 2, bank_id),
    ]
    assert all(o.kernel is not a.kernel for o in others)
    # the default initializer, named or as a fresh object: the same bank
    assert _tied(cls, args, shape, 2, bank_id, kernel_initializer="orthogonal").kernel is a.kernel
    same = _tied(cls, args, shape, 2, bank_id, kernel_initializer=keras.initializers.Orthogonal())
    assert same.kernel is a.kernel


@pytest.mark.parametrize("cls,args,shape,axis", CASES[:2] + CASES[3:4], ids=IDS[:2] + IDS[3:4])
def test_dropconnect_draws_on_the_slice(cls, args, shape, axis, bank_id):
    kw = dict(use_dropconnect=True, drop_rate=0.3)
    layer = _tied(cls, args, shape, 2, bank_id, kernel_bank_size=5, **kw)
    copy = _untied_copy(layer, cls, args, shape, axis, **kw)
    x = _input(shape)
    np.testing.assert_array_equal(_np(layer(x)), _np(copy(x)))  # not training
    # the same generator state draws the same keep pattern of the slice's shape
    copy._seed_generator.state.assign(_np(layer._seed_generator.state.value))
    dropped = _np(layer(x, training=True))
    np.testing.assert_array_equal(dropped, _np(copy(x, training=True)))
    assert not np.array_equal(dropped, _np(layer(x)))


# --- configuration and saving ----------------------------------------------------------
@pytest.mark.parametrize("cls,args,shape,axis", CASES[1:2] + CASES[4:5], ids=[IDS[1], IDS[4]])
def test_config_round_trip_joins_the_bank_of_the_same_id(cls, args, shape, axis, bank_id):
    a = _tied(cls, args, shape, 2, bank_id, kernel_bank_size=6)
    b = _tied(cls, args, shape, 4, bank_id)
    config = b.get_config()
    # the bank's size, so that a layer made from it fits the bank even if it comes first
    assert (config["tie_kernel_bank"], config["kernel_bank_size"], config["kernel_bank"]) == (
        True,
        6,
        None,
    )
    c = getattr(ours, cls).from_config(config)
    c.build(shape)
    assert c.kernel is a.kernel and c.filters == 4
    ours._BANKS.clear()  # another process: the rebuilt layer makes a bank of the same size
    d = getattr(ours, cls).from_config(config)
    d.build(shape)
    assert d.kernel is not a.kernel and d.kernel.shape == a.kernel.shape
    d.set_weights(b.get_weights())
    x = _input(shape)
    np.testing.assert_array_equal(_np(d(x)), _np(b(x)))


def test_nmn_configs_with_a_kernel_bank_load(bank_id):
    cls, args, shape, axis = CASES[1]
    theirs = [
        _tied(cls, args, shape, n, bank_id, module=ref, kernel_bank_size=s)
        for n, s in ((2, 6), (4, None))
    ]
    serialized = keras.saving.serialize_keras_object(theirs[1])
    assert serialized["config"]["kernel_bank_size"] is None  # nmn: the capacity is in the ref
    mine = keras.saving.deserialize_keras_object(
        dict(serialized, module="nmn_array.frameworks.keras", registered_name=f"nmn_array>{cls}")
    )
    # built from nmn's build_config, with the reference's capacity
    assert type(mine) is getattr(ours, cls) and mine.kernel_bank_size == 6 and mine.built
    assert mine.kernel.shape == theirs[1].kernel.shape
    mine.set_weights(theirs[1].get_weights())
    x = _input(shape)
    np.testing.assert_allclose(_np(mine(x)), _np(theirs[1](x)), rtol=2e-6, atol=1e-6)
    # the reference object itself (nmn's unserialised get_config) too; anything else: named
    raw = theirs[1].get_config()["kernel_bank"]
    assert getattr(ours, cls)(2, 3, tie_kernel_bank=True, kernel_bank=raw).kernel_bank_size == 6
    with pytest.raises(TypeError, match="kernel_bank must be None or nmn.keras's"):
        getattr(ours, cls)(2, 3, tie_kernel_bank=True, kernel_bank="bank")


def test_a_saved_model_keeps_its_layers_tied(tmp_path, bank_id):
    cls, args, shape, axis = CASES[1]
    inputs = keras.Input(shape[1:])
    a = getattr(ours, cls)(4, **args, tie_kernel_bank=True, kernel_bank_id=bank_id)
    b = getattr(ours, cls)(4, **args, tie_kernel_bank=True, kernel_bank_id=bank_id)
    model = keras.Model(inputs, b(a(inputs)))
    assert a.kernel is b.kernel and len(model.trainable_variables) == 5
    path = tmp_path / "tied.keras"
    model.save(path)
    x = _input(shape)
    want = _np(model(x))
    # in this process the loaded layers join the original's bank (documented)
    again = keras.saving.load_model(path)
    assert again.layers[1].kernel is a.kernel and again.layers[2].kernel is a.kernel
    ours._BANKS.clear()  # as in a new process
    loaded = keras.saving.load_model(path)
    la, lb = loaded.layers[1:]
    assert la.kernel is lb.kernel and la.kernel is not a.kernel
    np.testing.assert_array_equal(_np(loaded(x)), want)


# --- seeded parity with nmn.keras 0.3.5's tied layers ----------------------------------
@pytest.mark.parametrize("cls,args,shape,axis", CASES, ids=IDS)
def test_seeded_banks_match_nmn(cls, args, shape, axis, bank_id):
    def build(module):
        keras.utils.set_random_seed(0)
        sizes = ((2, 6), (6, None), (4, None))
        return [
            _tied(cls, args, shape, n, bank_id, module=module, kernel_bank_size=s) for n, s in sizes
        ]

    theirs, mine = build(ref), build(ours)
    x = _input(shape)
    assert theirs[0].kernel is theirs[2].kernel and mine[0].kernel is mine[2].kernel
    for t, m in zip(theirs, mine):
        assert [w.shape for w in m.weights] == [w.shape for w in t.weights]
        for w_mine, w_theirs in zip(m.get_weights(), t.get_weights()):
            np.testing.assert_array_equal(w_mine, w_theirs)
        np.testing.assert_allclose(_np(m(x)), _np(t(x)), rtol=2e-6, atol=1e-6)
    for module, match in ((ref, "cannot be expanded"), (ours, "fixed capacity")):
        with pytest.raises(ValueError, match=match):  # both refuse to grow
            _tied(cls, args, shape, 8, bank_id, module=module)
