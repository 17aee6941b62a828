"""DropConnect and fixed kernel masks of the NNX YatNMN, YatConv and YatConvTranspose, and
DropConnect of MultiHeadAttention's projections (issue 11): against nmn.nnx 0.3.5 seeded alike,
the layers without them, and nmn_array.drop_connect."""

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


# --------------------------------------------------------------------------------------
# MultiHeadAttention: DropConnect of the query, key, value and out projection kernels
# --------------------------------------------------------------------------------------
PROJECTIONS = ("query", "key", "value", "out")


def _attention(cls=M.MultiHeadAttention, rngs=None, **kwargs):
    """A 2-head attention over 8 features in float64 (``nnx.Rngs(0)`` unless ``rngs``)."""
    rngs = nnx.Rngs(0) if rngs is None else rngs
    return cls(2, 8, param_dtype=F64, rngs=rngs, **kwargs)


def _flat_variables(module):
    """Every variable of ``module`` by path, as numpy (random keys as their key data)."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Variable)):
        value = var[...]
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        out[path] = np.asarray(value)
    return out


@pytest.mark.parametrize("seeds", [(0, 0), (3, 7)], ids=["Rngs(0)", "params3_dropout7"])
def test_attention_training_matches_nmn_seeded(seeds):
    params, dropout = seeds
    rngs = (
        (lambda: nnx.Rngs(params))
        if params == dropout
        else (lambda: nnx.Rngs(params=params, dropout=dropout))
    )
    kwargs = dict(use_dropconnect=True, dropconnect_rate=0.3, deterministic=False)
    mine = _attention(rngs=rngs(), **kwargs)
    theirs = _attention(N.MultiHeadAttention, rngs=rngs(), **kwargs)
    # nmn forks the stream before drawing alpha and the projections: with nnx.Rngs(seed)
    # (one stream) a fork anywhere else changes every weight
    ours_state, their_state = _flat_variables(mine), _flat_variables(theirs)
    assert ours_state.keys() == their_state.keys()
    assert ("dropconnect_rng", "key") in ours_state and ("dropconnect_rng", "count") in ours_state
    for path, value in their_state.items():
        assert np.array_equal(ours_state[path], value), path
    # nonzero biases and alpha off 1 (exact in float32, where nmn casts it), copied into
    # ours: DropConnect must leave them alone
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(theirs, nnx.Param))):
        if path[-1] == "bias":
            var[...] = 0.5 + jax.random.uniform(jax.random.key(i), var[...].shape, F64)
        elif path[-1] == "alpha":
            var[...] = jnp.full_like(var[...], 1.25)
    nnx.update(mine, nnx.state(theirs))
    keys = ("q", "k", "v")
    x = {name: _x((2, 5, 8), seed=i + 1, dtype=F64) for i, name in enumerate(keys)}
    outputs = []
    for step in range(2):  # the count advances by 4 after each call, in both
        ours, ref = mine(x["q"], x["k"], x["v"]), theirs(x["q"], x["k"], x["v"])
        assert_parity(ours, ref, RTOL_F64, f"MultiHeadAttention[DropConnect, step {step}]")
        assert int(mine.dropconnect_rng.count[...]) == int(theirs.dropconnect_rng.count[...])
        outputs.append(np.asarray(ours))
    assert int(mine.dropconnect_rng.count[...]) == 8
    assert not np.array_equal(outputs[0], outputs[1])
    # a rejected call draws nothing: the count stays, the next call still matches nmn
    for module in (mine, theirs):
        with pytest.raises(ValueError, match="cache"):
            module(x["q"][:, :1], decode=True)
    assert int(mine.dropconnect_rng.count[...]) == 8
    assert_parity(mine(x["q"]), theirs(x["q"]), RTOL_F64, "MultiHeadAttention[after a rejection]")


def test_attention_deterministic_and_rate_zero_equal_plain_layer():
    plain = _attention()
    x = _x((2, 5, 8), dtype=F64)
    expected = np.asarray(plain(x))
    weights = nnx.state(plain, nnx.Param)
    dropping = _attention(use_dropconnect=True, dropconnect_rate=0.5)
    nnx.update(dropping, weights)
    for _ in range(2):
        assert np.array_equal(np.asarray(dropping(x, deterministic=True)), expected)
    assert int(dropping.dropconnect_rng.count[...]) == 0  # nothing drawn
    # the class attribute as nmn's: deterministic=True at construction
    flagged = _attention(use_dropconnect=True, dropconnect_rate=0.5, deterministic=True)
    nnx.update(flagged, weights)
    assert np.array_equal(np.asarray(flagged(x)), expected)
    # rate 0 draws nothing and needs no flag; without use_dropconnect a rate does nothing
    for kwargs in (dict(use_dropconnect=True), dict(dropconnect_rate=0.5)):
        module = _attention(**kwargs)
        nnx.update(module, weights)
        assert np.array_equal(np.asarray(module(x)), expected), kwargs
    assert not np.array_equal(np.asarray(dropping(x, deterministic=False)), expected)


def test_attention_needs_deterministic_flag_when_dropconnect_is_active():
    # as nmn: active DropConnect (like dropout) makes the call ask for the flag
    attn = _attention(use_dropconnect=True, dropconnect_rate=0.2)
    with pytest.raises(ValueError, match="deterministic"):
        attn(_x((2, 5, 8), dtype=F64))


@nnx.jit
def _projection_grads(module, x, weights):
    """The output and d(sum(out * weights))/d kernel of each projection from one call (one
    draw), compiled (eager differentiation is slow; the compiled draws are the eager ones,
    test_attention_gradients_under_jit_equal_eager)."""

    def loss(m):
        out = m(x)
        return (out * weights).sum(), out

    (_, out), grads = nnx.value_and_grad(loss, has_aux=True)(module)
    return out, {name: grads[name]["kernel"][...] for name in PROJECTIONS}


def test_attention_dropped_fraction_and_scaling():
    rate, features = 0.3, 64
    kwargs = dict(param_dtype=F64, rngs=nnx.Rngs(params=0, dropout=1))
    attn = M.MultiHeadAttention(
        4, features, use_dropconnect=True, dropconnect_rate=rate, deterministic=False, **kwargs
    )
    x = _x((2, 6, features), dtype=F64)
    out, grads = _projection_grads(attn, x, _x((2, 6, features), seed=9, dtype=F64))
    assert int(attn.dropconnect_rng.count[...]) == 4
    keeps = {}
    for name, grad in grads.items():
        assert bool(jnp.isfinite(grad).all()), name
        keep = np.asarray(grad != 0)  # exactly 0 where DropConnect dropped the weight
        # each of the n = 4096 weights dropped independently with probability rate: the
        # dropped count is Binomial(n, rate), within 5 standard deviations with probability
        # 1 - 6e-7 (normal approximation; n * rate >> 1)
        n = keep.size
        assert n == features * features
        fraction = 1.0 - float(keep.mean())
        assert abs(fraction - rate) <= 5 * math.sqrt(rate * (1 - rate) / n), (name, fraction)
        keeps[name] = keep
    # one key per projection: four different patterns (the out kernel is (H, d, out))
    flat = [keeps[name].reshape(-1) for name in PROJECTIONS]
    assert all(not np.array_equal(a, b) for i, a in enumerate(flat) for b in flat[i + 1 :])
    # the output is the plain layer's with each kernel replaced by nmn_array.drop_connect of
    # that pattern: kept weights scaled by 1 / (1 - rate), biases untouched
    plain = M.MultiHeadAttention(4, features, **kwargs)
    nnx.update(plain, nnx.state(attn, nnx.Param))
    for name in PROJECTIONS:
        kernel = getattr(plain, name).kernel
        kernel[...] = nmn_array.drop_connect(kernel[...], jnp.asarray(keeps[name]), rate=rate)
    assert_parity(out, plain(x), 1e-12, "MultiHeadAttention[drawn keep]")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, math.nan])
def test_attention_bad_dropconnect_rate_raises(rate):
    with pytest.raises(ValueError, match="dropconnect_rate"):
        _attention(use_dropconnect=True, dropconnect_rate=rate)


@pytest.mark.parametrize("rate", [True, False])
def test_attention_bool_dropconnect_rate_raises(rate):
    # a bool is not a probability: TypeError, as for every rate of nmn_array (check_rate)
    with pytest.raises(TypeError, match="dropconnect_rate"):
        _attention(use_dropconnect=True, dropconnect_rate=rate)


def test_attention_gradients_under_jit_equal_eager():
    kwargs = dict(use_dropconnect=True, dropconnect_rate=0.3, deterministic=False)
    attn, eager = _attention(**kwargs), _attention(**kwargs)
    x = _x((2, 5, 8), dtype=F64)

    def loss(m):
        return (m(x) ** 2).mean()

    @nnx.jit
    def step(m):
        return nnx.value_and_grad(loss)(m)

    first, grads = step(attn)
    second, _ = step(attn)  # the count advanced inside jit
    assert int(attn.dropconnect_rng.count[...]) == 8
    assert float(first) != float(second)
    for path, g in nnx.to_flat_state(grads):
        assert bool(jnp.isfinite(g[...]).all()), path
    for name in PROJECTIONS:
        assert float(jnp.abs(grads[name]["kernel"][...]).sum()) > 0, name
    # the compiled draws are the eager ones
    for value in (first, second):
        assert_parity(value, loss(eager), RTOL_F64, "jit == eager")


def test_attention_dropconnect_draws_no_dropout_key_for_a_custom_attention_fn():
    # DropConnect makes the call non-deterministic; without dropout (rate 0) nmn draws no
    # dropout key from the call's rngs, so neither may we when attention_fn is a callable
    kwargs = dict(use_dropconnect=True, dropconnect_rate=0.3, attention_fn=N.yat_attention)
    mine, theirs = _attention(**kwargs), _attention(N.MultiHeadAttention, **kwargs)
    x = _x((2, 5, 8), dtype=F64)
    ours_rngs, their_rngs = nnx.Rngs(dropout=5), nnx.Rngs(dropout=5)
    ours = mine(x, deterministic=False, rngs=ours_rngs)
    ref = theirs(x, deterministic=False, rngs=their_rngs)
    assert_parity(ours, ref, RTOL_F64, "MultiHeadAttention[DropConnect, attention_fn]")
    assert int(ours_rngs.dropout.count[...]) == int(their_rngs.dropout.count[...]) == 0
