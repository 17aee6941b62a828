"""DropConnect and fixed kernel masks of the NNX YatNMN, YatConv and YatConvTranspose (issue 11):
against nmn.nnx 0.3.5 seeded alike, the layers without them, and nmn_array.drop_connect."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation  # noqa: E402

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
N = pytest.importorskip("nmn.nnx")

from nmn_array.frameworks import nnx as M  # noqa: E402

import nmn_array  # noqa: E402
from tests.frameworks._parity import RTOL_F32, RTOL_F64, assert_parity  # noqa: E402

jnp = jax.numpy
F64 = jnp.float64

pytestmark = pytest.mark.skipif(
    not jax.config.jax_enable_x64, reason="float64 parity needs JAX_ENABLE_X64=1 (tests/conftest)"
)

#: name: (our class, nmn's class, positional arguments, keyword arguments, input shape).
LAYERS = {
    "dense": (M.YatNMN, N.YatNMN, (6, 5), {}, (3, 6)),
    "conv": (M.YatConv, N.YatConv, (3, 4, (3, 3)), {"padding": "VALID"}, (2, 7, 7, 3)),
    "conv_transpose": (
        M.YatConvTranspose,
        N.YatConvTranspose,
        (3, 4, (3, 3)),
        {"strides": (2, 2)},
        (2, 4, 4, 3),
    ),
}
CONVS = ("conv", "conv_transpose")


def _x(shape, seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _layer(name, cls=0, seed=0, **kwargs):
    """Layer ``name`` of ours (``cls=0``) or nmn's (``cls=1``) from ``nnx.Rngs(seed)``."""
    entry = LAYERS[name]
    return entry[cls](*entry[2], rngs=nnx.Rngs(seed), **{**entry[3], **kwargs})


def _kernel_shape(name):
    return tuple(_layer(name).kernel[...].shape)


# --------------------------------------------------------------------------------------
# Evaluation mode and rate 0: the layer without DropConnect, bit for bit
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAYERS)
def test_deterministic_equals_layer_without_dropconnect(name):
    plain = _layer(name)
    dropping = _layer(name, use_dropconnect=True, drop_rate=0.5)
    # the DropConnect key is forked after the variables: the same seed, the same weights
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(plain, nnx.Param)),
        nnx.to_flat_state(nnx.state(dropping, nnx.Param)),
    ):
        assert np.array_equal(np.asarray(a[...]), np.asarray(b[...])), path
    x = _x(LAYERS[name][4])
    expected = np.asarray(plain(x))
    assert np.array_equal(np.asarray(dropping(x, deterministic=True)), expected)
    assert np.array_equal(np.asarray(dropping(x, deterministic=True)), expected)
    # rate 0 draws nothing: equal in training mode too
    zero_rate = _layer(name, use_dropconnect=True, drop_rate=0.0)
    assert np.array_equal(np.asarray(zero_rate(x)), expected)
    # and without use_dropconnect a rate does nothing (nmn's rule)
    unused = _layer(name, drop_rate=0.5)
    assert np.array_equal(np.asarray(unused(x)), expected)


# --------------------------------------------------------------------------------------
# Training mode: nmn 0.3.5's own layer, same seed, same weights
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds", [(0, 0), (3, 7)], ids=["Rngs(0)", "params3_dropout7"])
@pytest.mark.parametrize("name", LAYERS)
def test_training_matches_nmn_seeded(name, seeds):
    params, dropout = seeds
    rngs = (
        (lambda: nnx.Rngs(params))
        if params == dropout
        else (lambda: nnx.Rngs(params=params, dropout=dropout))
    )
    entry = LAYERS[name]
    # nmn's YatNMN computes in float32 whatever the input (reference section 10.14): compare
    # in float32 there; its convolutions compute in float64
    dtype, rtol = (jnp.float32, RTOL_F32) if name == "dense" else (F64, RTOL_F64)
    kwargs = {**entry[3], "use_dropconnect": True, "drop_rate": 0.3, "param_dtype": dtype}
    mine = entry[0](*entry[2], rngs=rngs(), **kwargs)
    theirs = entry[1](*entry[2], rngs=rngs(), **kwargs)
    # the same variables under the same paths, the DropConnect key state included
    ours_state = dict(nnx.to_flat_state(nnx.state(mine, nnx.Variable)))
    their_state = dict(nnx.to_flat_state(nnx.state(theirs, nnx.Variable)))
    assert ours_state.keys() == their_state.keys()
    assert ("dropconnect_key", "key") in ours_state
    for path, var in their_state.items():
        a, b = ours_state[path][...], var[...]
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.array_equal(np.asarray(a), np.asarray(b)), path
    x = _x(entry[4], dtype=dtype)
    outputs = []
    for step in range(3):  # the key advances with each call, in both
        ours, ref = mine(x), theirs(x)
        assert_parity(ours, ref, rtol, f"{name}[step {step}]")
        outputs.append(np.asarray(ours))
    assert not np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], np.asarray(mine(x, deterministic=True)))


# --------------------------------------------------------------------------------------
# Training mode: the function with the keep pattern the layer drew (read off the gradient)
# --------------------------------------------------------------------------------------
def _output_and_kernel_grad(layer, x):
    """The layer's output and d(sum of outputs)/d kernel, from one call (one draw)."""

    def f(m):
        out = m(x)
        return out.sum(), out

    (_, out), grads = nnx.value_and_grad(f, has_aux=True)(layer)
    return out, grads["kernel"][...]


def test_dense_training_equals_function_with_drawn_keep():
    rate = 0.4
    layer = M.YatNMN(6, 5, use_dropconnect=True, drop_rate=rate, param_dtype=F64, rngs=nnx.Rngs(2))
    x = _x((4, 6), dtype=F64)
    out, grad = _output_and_kernel_grad(layer, x)
    keep = grad != 0  # exactly 0 where DropConnect dropped the weight
    fraction = float(1.0 - keep.mean())
    # 30 weights dropped with probability 0.4: a binomial 4-sigma interval
    assert abs(fraction - rate) <= 4 * math.sqrt(rate * (1 - rate) / keep.size), fraction
    assert bool(jnp.isfinite(grad).all())
    kernel = layer.kernel[...]
    expected = nmn_array.yat(
        x,
        nmn_array.drop_connect(kernel, keep, rate=rate).T,  # (in, out) -> (out, in)
        layer.bias[...],
        alpha=layer.alpha[...],
        epsilon=layer.epsilon,
    )
    assert_parity(out, expected, 1e-12, "YatNMN[drawn keep]")


@pytest.mark.parametrize("name", CONVS)
def test_conv_training_gradient_zero_where_dropped(name):
    rate = 0.5
    layer = _layer(name, seed=4, use_dropconnect=True, drop_rate=rate, param_dtype=F64)
    out, grad = _output_and_kernel_grad(layer, _x(LAYERS[name][4], dtype=F64))
    assert bool(jnp.isfinite(out).all()) and bool(jnp.isfinite(grad).all())
    dropped = grad == 0
    n = dropped.size
    assert abs(float(dropped.mean()) - rate) <= 4 * math.sqrt(rate * (1 - rate) / n)
    # the output is the function's with that keep pattern
    plain = _layer(name, seed=4, param_dtype=F64)
    plain.kernel[...] = nmn_array.drop_connect(plain.kernel[...], ~dropped, rate=rate)
    assert_parity(out, plain(_x(LAYERS[name][4], dtype=F64)), 1e-12, f"{name}[drawn keep]")


# --------------------------------------------------------------------------------------
# Fixed kernel masks (conv and transposed conv)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("boolean", [False, True], ids=["float", "bool"])
@pytest.mark.parametrize("name", CONVS)
def test_mask_equals_masked_kernel(name, boolean):
    shape = _kernel_shape(name)
    mask = jax.random.bernoulli(jax.random.key(5), 0.6, shape)
    masked = _layer(name, mask=mask if boolean else mask.astype(jnp.float32))
    plain = _layer(name)
    plain.kernel[...] = plain.kernel[...] * mask
    x = _x(LAYERS[name][4])
    assert np.array_equal(np.asarray(masked(x)), np.asarray(plain(x)))


@pytest.mark.parametrize("name", CONVS)
def test_mask_and_dropconnect_match_nmn(name):
    shape = _kernel_shape(name)
    mask = jax.random.bernoulli(jax.random.key(6), 0.7, shape).astype(F64)
    kwargs = dict(use_dropconnect=True, drop_rate=0.25, mask=mask, param_dtype=F64)
    mine, theirs = _layer(name, **kwargs), _layer(name, cls=1, **kwargs)
    x = _x(LAYERS[name][4], dtype=F64)
    for step in range(2):
        assert_parity(mine(x), theirs(x), RTOL_F64, f"{name}[mask + DropConnect, {step}]")
    assert_parity(mine(x, deterministic=True), theirs(x, deterministic=True), RTOL_F64, name)


# --------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [-0.1, 1.0, math.nan])
@pytest.mark.parametrize("name", LAYERS)
def test_bad_drop_rate_raises(name, rate):
    with pytest.raises(ValueError, match="drop_rate"):
        _layer(name, use_dropconnect=True, drop_rate=rate)


def test_attention_dropconnect_still_raises():
    # nmn 0.3.5 drops MultiHeadAttention's projection weights; not implemented here
    with pytest.raises(NotImplementedError, match="DropConnect"):
        M.MultiHeadAttention(2, 8, use_dropconnect=True, dropconnect_rate=0.1, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", CONVS)
def test_mask_of_wrong_shape_raises(name):
    shape = _kernel_shape(name)
    with pytest.raises(ValueError, match="(?i)mask.*shape"):
        _layer(name, mask=jnp.ones(shape[:-1] + (shape[-1] + 1,)))


# --------------------------------------------------------------------------------------
# Gradients, jit, training
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAYERS)
def test_gradients_flow_under_jit(name):
    layer = _layer(name, use_dropconnect=True, drop_rate=0.3)
    x = _x(LAYERS[name][4])

    @nnx.jit
    def step(m):
        def loss(m):
            return (m(x) ** 2).mean()

        return nnx.value_and_grad(loss)(m)

    first, grads = step(layer)
    second, _ = step(layer)  # the key state advanced inside jit
    assert float(first) != float(second)
    for path, g in nnx.to_flat_state(grads):
        assert bool(jnp.isfinite(g[...]).all()), path
    assert float(jnp.abs(grads["kernel"][...]).sum()) > 0
