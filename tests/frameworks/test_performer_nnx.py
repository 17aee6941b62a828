"""Linear-time (performer) attention in the Flax NNX attention modules (issue 15), and parity
with nmn 0.3.5's ``nmn.nnx.RotaryYatAttention(use_performer=True)``.

The reference of the module tests is :func:`nmn_array.linear_attention.performer_attention`
applied to the q, k, v computed here from the module's own kernels, with its stored
projection, then its output kernel. For nmn parity both modules come from one
``nnx.Rngs`` seed (their projections' kernels are then equal: checked) and nmn's projection
arrays are copied into ours (nmn keeps SLAY's in ``perf_*`` caches and MAY/RAY's in
``_perf_cache`` / ``_perf_meta``). Error metric: max |difference| / max |reference|.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
N = pytest.importorskip("nmn.nnx")

from nmn_array.frameworks import _flax, _performer  # noqa: E402
from nmn_array.frameworks import nnx as M  # noqa: E402

import nmn_array  # noqa: E402
from nmn_array.attention import normalize_qk  # noqa: E402
from nmn_array.linear_attention import performer_attention  # noqa: E402
from tests.frameworks._parity import scaled_error  # noqa: E402
from tests.frameworks._performer_cases import (  # noqa: E402
    BAD_ARGUMENTS,
    CLASSES,
    JIT_RTOL,
    KINDS,
    RTOL,
    SMALL,
    B,
    D,
    E,
    H,
    L,
)

jnp = jax.numpy
F64, F32 = jnp.float64, jnp.float32

pytestmark = pytest.mark.skipif(
    not jax.config.jax_enable_x64, reason="float64 tests need JAX_ENABLE_X64=1 (tests/conftest)"
)


def _module(cls, kind="slay", seed=0, dtype=F64, **kw):
    """A performer module with alpha moved to 1.3 (so it matters)."""
    kw = {"use_performer": True, "performer_kind": kind, **SMALL, "param_dtype": dtype, **kw}
    if cls == "mha":
        m = M.MultiHeadAttention(H, E, rngs=nnx.Rngs(seed), **kw)
    else:
        m = M.RotaryYatAttention(E, H, 16, rngs=nnx.Rngs(seed), **kw)
    if m.alpha is not None:
        m.alpha[...] = jnp.full((1,), 1.3, dtype)
    return m


def _x(length=L, seed=1, dtype=F64, batch=B):
    return jax.random.normal(jax.random.key(seed), (batch, length, E), dtype)


def _layers(m):
    if isinstance(m, M.MultiHeadAttention):
        return m.query, m.key, m.value, m.out
    return m.q_proj, m.k_proj, m.v_proj, m.o_proj


def _heads(x, layer):
    """(B, L, E) -> (B, H, L, d) through a LinearGeneral ``layer``."""
    y = x @ layer.kernel[...]
    y = y if layer.bias is None else y + layer.bias[...]
    return jnp.swapaxes(y.reshape(x.shape[0], x.shape[1], H, D), 1, 2)


def _projection(m):
    return {k: np.asarray(getattr(m, f"perf_{k}")[...]) for k in m._performer.keys}


def _reference(m, query, key=None, mask=None):
    """performer_attention of the module's q, k, v, then its output kernel."""
    key = query if key is None else key
    lq, lk, lv, lo = _layers(m)
    q, k, v = _heads(query, lq), _heads(key, lk), _heads(key, lv)
    if isinstance(m, M.RotaryYatAttention):
        pos = jnp.arange(query.shape[1])
        q, k = (nmn_array.rotary_embedding(t, pos, theta=m.theta) for t in (q, k))
    if m.performer_kind == "slay" and m.performer_normalize:
        q, k = normalize_qk(q, k, epsilon=m.epsilon)
    alpha = m.alpha[...] if m.alpha is not None else m._constant_alpha_value
    out = performer_attention(
        q, k, v, m.performer_kind, _projection(m), causal=m.causal, mask=mask,
        epsilon=m.epsilon, alpha=alpha,
    )  # fmt: skip
    out = jnp.swapaxes(out, 1, 2)  # (B, L, H, d)
    if isinstance(m, M.MultiHeadAttention):
        y = jnp.einsum("blhd,hdo->blo", out, lo.kernel[...])
    else:
        y = out.reshape(query.shape[0], query.shape[1], E) @ lo.kernel[...]
    return y if lo.bias is None else y + lo.bias[...]


def _call(m, q, kv=None, mask=None, **kw):
    if isinstance(m, M.MultiHeadAttention):
        return m(q, kv, mask=mask, **kw)
    return m(q, mask, **kw)


# --- (1) the module computes performer_attention on its own q, k, v --------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_module_equals_performer_attention_of_its_heads(cls, kind, causal):
    m = _module(cls, kind, causal=causal)
    x = _x()
    out = _call(m, x)
    assert out.shape == (B, L, E) and out.dtype == F64
    assert scaled_error(out, _reference(m, x)) < RTOL


def test_constant_alpha_and_performer_normalize_false():
    m = _module("rotary", "slay", constant_alpha=True, performer_normalize=False)
    x = _x() * 0.05  # short vectors: the extra normalisation (eps inside the root) matters
    out = _call(m, x)
    assert scaled_error(out, _reference(m, x)) < RTOL
    on = _module("rotary", "slay", constant_alpha=True)
    assert scaled_error(out, _call(on, x)) > 1e-8  # the flag is not ignored


def test_cross_attention_of_another_length():
    m = _module("mha", "radial", use_bias=True)
    q, kv = _x(length=5, seed=2), _x(length=9, seed=3)
    out = m(q, kv)
    assert out.shape == (B, 5, E)
    assert scaled_error(out, _reference(m, q, kv)) < RTOL


# --- the projection: seeded by rngs.params(), not a Param, in the state -----------------
def test_projection_is_seeded_by_rngs_and_drawn_where_nmn_draws_it():
    a, b, c = _module("rotary", seed=0), _module("rotary", seed=0), _module("rotary", seed=3)
    assert np.array_equal(a.perf_projections[...], b.perf_projections[...])
    assert not np.array_equal(a.perf_projections[...], c.perf_projections[...])
    # MHA draws it after the projections: their kernels are the exact module's
    exact = M.MultiHeadAttention(H, E, param_dtype=F64, rngs=nnx.Rngs(0))
    assert np.array_equal(exact.out.kernel[...], _module("mha").out.kernel[...])
    assert not nnx.state(exact, M.PerformerProjection)


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_fixes_the_projection(kind):
    a, b = (
        _module("rotary", kind, seed=0, causal=True),
        _module("rotary", kind, seed=1, causal=True),
    )
    x = _x()
    assert scaled_error(b(x), a(x)) > 1e-6  # another seed: other weights and projection
    graphdef, state = nnx.split(a)
    pure = nnx.to_pure_dict(state)  # what a checkpoint holds
    assert {f"perf_{k}" for k in a._performer.keys} <= set(pure)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    assert np.array_equal(nnx.merge(graphdef, state)(x), a(x))
    nnx.update(b, nnx.state(a))
    assert np.array_equal(b(x), a(x))


@pytest.mark.parametrize("cls", CLASSES)
def test_projection_is_not_a_param_and_gradients_reach_the_kernels(cls):
    m = _module(cls, "maclaurin", causal=True)
    params = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(m, nnx.Param))}
    assert params and not any("perf_" in p for p in params)
    before = _projection(m)
    x = _x()

    def loss(model):
        return jnp.sum(_call(model, x) ** 2)

    grads = nnx.grad(loss)(m)  # an nnx.State of the Params
    names = (
        ("query", "key", "value", "out")
        if cls == "mha"
        else ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    for name in names:
        assert float(jnp.abs(grads[name]["kernel"][...]).max()) > 0
    assert float(jnp.abs(grads.alpha[...]).max()) > 0
    opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)
    opt.update(m, grads)
    after = _projection(m)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_construction_under_eval_shape_and_a_traced_key():
    """nnx.eval_shape traces the construction: the draw is a pure_callback of the key."""
    abstract = nnx.eval_shape(
        lambda: M.RotaryYatAttention(E, H, 16, use_performer=True, rngs=nnx.Rngs(0))
    )
    assert abstract.perf_anchors.shape == (16, D)
    config = _performer.settings({"use_performer": True, "performer_kind": "radial", **SMALL})
    draw = lambda key: _flax.performer_projection(config, D, key, 1e-5, F64)  # noqa: E731
    eager, jitted = draw(jax.random.key(4)), jax.jit(draw)(jax.random.key(4))
    assert all(np.array_equal(eager[k], jitted[k]) for k in eager)


# --- (4) causal, (5) key-padding masks, (6) decode -------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_causal_output_ignores_later_tokens(cls, kind):
    m = _module(cls, kind, causal=True)
    x = _x()
    y = x.at[:, 4:].set(_x(seed=9)[:, 4:])
    a, b = _call(m, x), _call(m, y)
    assert float(jnp.abs(a[:, :4] - b[:, :4]).max()) < 1e-13
    assert float(jnp.abs(a[:, 4:] - b[:, 4:]).max()) > 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_key_padding_mask_hides_keys(kind):
    m = _module("mha", kind)
    q, kv = _x(length=5, seed=2), _x(seed=3)
    keep = jnp.ones((B, 1, 1, L), bool).at[0, ..., 5:].set(False).at[1, ..., :2].set(False)
    other = jnp.where(keep[:, 0, 0, :, None], kv, _x(seed=4))
    a = m(q, kv, mask=keep)
    assert float(jnp.abs(a - m(q, other, mask=keep)).max()) < 1e-13
    assert scaled_error(a, _reference(m, q, kv, mask=keep)) < RTOL
    assert scaled_error(m(q, kv), a) > 1e-6  # the mask does hide something


def test_refused_inputs():
    m = _module("rotary", "slay")
    with pytest.raises(ValueError, match="key-padding"):
        m(_x(), jnp.tril(jnp.ones((L, L), bool)))
    m.init_cache(B, 8)
    with pytest.raises(ValueError, match=r"decode=True.*use_performer=True"):
        m(_x(length=1), decode=True)
    with pytest.raises(ValueError, match="sow_weights"):
        m(_x(), sow_weights=True)


# --- (7) compiled ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_nnx_jit_equals_eager(kind):
    m = _module("rotary", kind, causal=True, dropout_rate=0.25)
    x = _x()
    eager = m(x)
    # XLA fuses and reorders the compiled graph: rounding-level differences, not equality
    assert scaled_error(nnx.jit(lambda mod, t: mod(t))(m, x), eager) < JIT_RTOL
    run = nnx.jit(lambda mod, t, r: mod(t, deterministic=False, rngs=r))
    dropped = run(m, x, nnx.Rngs(dropout=5))
    assert scaled_error(dropped, m(x, deterministic=False, rngs=nnx.Rngs(dropout=5))) < JIT_RTOL
    assert scaled_error(dropped, eager) > 1e-3  # dropout on the output did something


# --- (8) causal=True in exact mode ----------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_exact_causal_equals_a_causal_mask(cls):
    make = (
        (lambda **kw: M.MultiHeadAttention(H, E, param_dtype=F64, rngs=nnx.Rngs(0), **kw))
        if cls == "mha"
        else (lambda **kw: M.RotaryYatAttention(E, H, 16, param_dtype=F64, rngs=nnx.Rngs(0), **kw))
    )
    plain, causal = make(), make(causal=True)
    x = _x()
    tril = jnp.tril(jnp.ones((L, L), bool))
    pad = jnp.ones((B, 1, 1, L), bool).at[0, ..., 0].set(False)
    assert scaled_error(_call(causal, x), _call(plain, x, mask=tril)) < RTOL
    both = _call(causal, x, mask=pad)
    assert scaled_error(both, _call(plain, x, mask=tril & pad)) < RTOL
    assert float(jnp.abs(both[0, 0]).max()) == 0.0  # query 0 of sequence 0 sees no key
    assert scaled_error(_call(causal, x), _call(plain, x)) > 1e-6


# --- (9) bad arguments ----------------------------------------------------------------
@pytest.mark.parametrize("kw, name", BAD_ARGUMENTS)
@pytest.mark.parametrize("cls", CLASSES)
def test_bad_arguments_name_themselves(cls, kw, name):
    with pytest.raises(ValueError, match=name):
        _module(cls, **kw)


def test_custom_attention_fn_with_performer_or_causal_is_refused():
    for kw in ({"use_performer": True}, {"causal": True}):
        with pytest.raises(ValueError, match="attention_fn"):
            M.MultiHeadAttention(H, E, attention_fn=N.yat_attention, rngs=nnx.Rngs(0), **kw)


# --- nmn 0.3.5 parity -----------------------------------------------------------------
def _nmn_pair(kind, dtype, **kw):
    """nmn's RotaryYatAttention and ours from one seed, alpha 1.25 in both, nmn's
    projection arrays copied into ours."""
    kw = {"use_performer": True, "performer_kind": kind, **SMALL, "param_dtype": dtype, **kw}
    theirs = N.RotaryYatAttention(E, H, 16, rngs=nnx.Rngs(0), **kw)
    mine = M.RotaryYatAttention(E, H, 16, rngs=nnx.Rngs(0), **kw)
    for ours, their in zip(_layers(mine), _layers(theirs)):
        assert np.array_equal(ours.kernel[...], their.kernel[...])  # one seed, one draw order
    if theirs.alpha is not None:
        theirs.alpha[...] = jnp.full((1,), 1.25, dtype)
        mine.alpha[...] = theirs.alpha[...]
    for key in mine._performer.keys:
        if kind == "slay":
            source = getattr(theirs, f"perf_{key}")[...]
        elif key in theirs._perf_cache:
            source = theirs._perf_cache[key][...]
        else:  # RAY's bias is a Python float in nmn's static metadata
            source = jnp.asarray(theirs._perf_meta[key])
        ours = getattr(mine, f"perf_{key}")
        assert ours[...].shape == jnp.shape(source)
        ours[...] = jnp.asarray(source, ours[...].dtype)
    return mine, theirs


# Measured max |ours - nmn| / max |nmn| (2 x 7 x 8, with and without a key-padding mask):
# float64 <= 4e-13 for every kind; float32 SLAY 2.6e-7, MAY 3.3e-6, RAY 5.5e-5 (causal;
# 1.7e-5 not). The float32 figures are rounding in different summation orders (our causal
# readout sums in chunks, nmn's cumulatively): each library's float32 output is as far from
# the float64 one (SLAY 3e-7, MAY 1e-5, RAY 3.7e-2: its sign-indefinite features cancel).
PARITY = {F64: {"slay": 1e-11, "maclaurin": 1e-11, "radial": 1e-11}}
# RAY's weights are sign-indefinite: its denominator cancels (sum |w| / |sum w| reaches ~1e2
# at these seeds), which multiplies float32 rounding; 7.4e-4 was measured on one machine,
# 3e-4 on another (XLA's CPU code differs), so the bound leaves a margin over both.
PARITY[F32] = {"slay": 2e-6, "maclaurin": 3e-5, "radial": 2e-3}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_nmn_rotary_performer_parity(kind, causal, dtype):
    mine, theirs = _nmn_pair(kind, dtype, causal=causal)
    x = _x(dtype=dtype)
    keep = jnp.ones((B, H, 1, L), bool).at[1, :, :, 5:].set(False)
    for mask in (None, keep):
        assert scaled_error(mine(x, mask), theirs(x, mask)) < PARITY[dtype][kind]


@pytest.mark.parametrize("kind", KINDS)
def test_nmn_parity_constant_alpha_offset_and_dropout(kind):
    """nmn's NNX multiplies the performer output by a constant alpha too; RoPE at an offset;
    dropout on the output from the same key draws the same Bernoulli mask."""
    mine, theirs = _nmn_pair(kind, F64, constant_alpha=True, dropout_rate=0.3)
    x = _x()
    rtol = PARITY[F64][kind]
    assert scaled_error(mine(x, position_offset=4), theirs(x, position_offset=4)) < rtol
    kw = dict(deterministic=False)
    ours = mine(x, rngs=nnx.Rngs(dropout=2), **kw)
    assert scaled_error(ours, theirs(x, rngs=nnx.Rngs(dropout=2), **kw)) < rtol
    assert scaled_error(ours, mine(x)) > 1e-3  # dropout did drop
