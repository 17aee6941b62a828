"""Linear-time (performer) attention in the Flax Linen attention modules (issue 15).

The reference is :func:`nmn_array.linear_attention.performer_attention` applied to the q, k, v
computed here from the module's own ``params``, with the projection of its ``"performer"``
collection, then its output kernel. Float64; error metric: max |difference| / max |reference|.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
serialization = pytest.importorskip("flax.serialization")

from nmn_array.frameworks import linen as LN  # noqa: E402

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
F64 = jnp.float64

pytestmark = pytest.mark.skipif(
    not jax.config.jax_enable_x64, reason="float64 tests need JAX_ENABLE_X64=1 (tests/conftest)"
)


def _module(cls, kind="slay", **kw):
    kw = {"use_performer": True, "performer_kind": kind, **SMALL, "param_dtype": F64, **kw}
    if cls == "mha":
        return LN.MultiHeadAttention(num_heads=H, **kw)
    return LN.RotaryYatAttention(embed_dim=E, num_heads=H, max_seq_len=16, **kw)


def _x(length=L, seed=1, batch=B):
    return jax.random.normal(jax.random.key(seed), (batch, length, E), F64)


def _init(m, seed=0, *args):
    """``init`` on (B, L, E) ones, alpha moved to 1.3 (so it matters)."""
    variables = m.init(jax.random.key(seed), jnp.ones((B, L, E), F64), *args)
    params = dict(variables["params"])
    if "alpha" in params:
        params["alpha"] = jnp.full((1,), 1.3, F64)
    return {**variables, "params": params}


def _names(m):
    if isinstance(m, LN.MultiHeadAttention):
        return "query", "key", "value", "out"
    return "q_proj", "k_proj", "v_proj", "o_proj"


def _dense(params, name, x):
    y = x @ params[name]["kernel"]
    return y + params[name]["bias"] if "bias" in params[name] else y


def _reference(m, variables, query, key=None, mask=None):
    key = query if key is None else key
    p, (nq, nk, nv, no) = variables["params"], _names(m)

    def heads(name, x):
        y = _dense(p, name, x).reshape(x.shape[0], x.shape[1], H, D)
        return jnp.swapaxes(y, 1, 2)

    q, k, v = heads(nq, query), heads(nk, key), heads(nv, key)
    if isinstance(m, LN.RotaryYatAttention):
        pos = jnp.arange(query.shape[1])
        q, k = (nmn_array.rotary_embedding(t, pos, theta=m.theta) for t in (q, k))
    if m.performer_kind == "slay" and m.performer_normalize:
        q, k = normalize_qk(q, k, epsilon=m.epsilon)
    projection = {name[5:]: np.asarray(a) for name, a in variables["performer"].items()}
    alpha = p["alpha"] if "alpha" in p else LN.DEFAULT_CONSTANT_ALPHA
    out = performer_attention(
        q, k, v, m.performer_kind, projection, causal=m.causal, mask=mask, epsilon=m.epsilon,
        alpha=alpha,
    )  # fmt: skip
    out = jnp.swapaxes(out, 1, 2).reshape(query.shape[0], query.shape[1], E)
    return _dense(p, no, out)


def _apply(m, variables, q, kv=None, mask=None, **kw):
    if isinstance(m, LN.MultiHeadAttention):
        return m.apply(variables, q, kv, mask=mask, **kw)
    return m.apply(variables, q, mask, **kw)


# --- (1) the module computes performer_attention on its own q, k, v --------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_module_equals_performer_attention_of_its_heads(cls, kind, causal):
    m = _module(cls, kind, causal=causal)
    variables, x = _init(m), _x()
    out = _apply(m, variables, x)
    assert out.shape == (B, L, E) and out.dtype == F64
    assert scaled_error(out, _reference(m, variables, x)) < RTOL


def test_constant_alpha_and_cross_attention():
    m = _module("mha", "maclaurin", constant_alpha=True)
    q, kv = _x(length=5, seed=2), _x(length=9, seed=3)
    variables = _init(m)
    out = m.apply(variables, q, kv)
    assert out.shape == (B, 5, E)
    assert scaled_error(out, _reference(m, variables, q, kv)) < RTOL


# --- the projection: the "performer" collection, seeded by the init key ------------------
def test_projection_is_a_collection_seeded_by_the_init_key():
    m = _module("rotary", "radial")
    a, b, c = _init(m, 0), _init(m, 0), _init(m, 1)
    assert set(a) == {"params", "performer"} and not any("perf_" in n for n in a["params"])
    assert np.array_equal(a["performer"]["perf_omegas"], b["performer"]["perf_omegas"])
    assert not np.array_equal(a["performer"]["perf_omegas"], c["performer"]["perf_omegas"])
    jitted = jax.jit(m.init)(jax.random.key(0), jnp.ones((B, L, E), F64))  # a traced key
    assert all(np.array_equal(jitted["performer"][n], a["performer"][n]) for n in a["performer"])
    with pytest.raises(ValueError, match="'performer' collection"):
        m.apply({"params": a["params"]}, _x())


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_fixes_the_projection(kind):
    m = _module("rotary", kind, causal=True)
    a, b, x = _init(m, 0), _init(m, 1), _x()
    assert scaled_error(m.apply(b, x), m.apply(a, x)) > 1e-6
    restored = serialization.from_bytes(b, serialization.to_bytes(a))
    assert np.array_equal(m.apply(restored, x), m.apply(a, x))


@pytest.mark.parametrize("cls", CLASSES)
def test_gradients_reach_the_kernels_not_the_projection(cls):
    m = _module(cls, "slay", causal=True)
    variables, x = _init(m), _x()

    def loss(params):
        return jnp.sum(_apply(m, {**variables, "params": params}, x) ** 2)

    grads = jax.grad(loss)(variables["params"])
    for name in _names(m):
        assert float(jnp.abs(grads[name]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["alpha"]).max()) > 0


# --- (4) causal, (5) masks, (6) decode, (7) jit ----------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_causal_output_ignores_later_tokens(cls, kind):
    m = _module(cls, kind, causal=True)
    variables, x = _init(m), _x()
    y = x.at[:, 4:].set(_x(seed=9)[:, 4:])
    a, b = _apply(m, variables, x), _apply(m, variables, y)
    assert float(jnp.abs(a[:, :4] - b[:, :4]).max()) < 1e-13
    assert float(jnp.abs(a[:, 4:] - b[:, 4:]).max()) > 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_key_padding_mask_hides_keys(kind):
    m = _module("mha", kind)
    variables = _init(m)
    q, kv = _x(length=5, seed=2), _x(seed=3)
    keep = jnp.ones((B, 1, 1, L), bool).at[0, ..., 5:].set(False).at[1, ..., :2].set(False)
    other = jnp.where(keep[:, 0, 0, :, None], kv, _x(seed=4))
    a = m.apply(variables, q, kv, mask=keep)
    assert float(jnp.abs(a - m.apply(variables, q, other, mask=keep)).max()) < 1e-13
    assert scaled_error(a, _reference(m, variables, q, kv, mask=keep)) < RTOL
    assert scaled_error(m.apply(variables, q, kv), a) > 1e-6


def test_refused_inputs():
    m = _module("rotary", "maclaurin")
    variables = _init(m)
    with pytest.raises(ValueError, match="key-padding"):
        m.apply(variables, _x(), jnp.tril(jnp.ones((L, L), bool)))
    with pytest.raises(ValueError, match=r"decode=True.*use_performer=True"):
        m.init(jax.random.key(0), _x(), decode=True)


@pytest.mark.parametrize("kind", KINDS)
def test_jit_equals_eager(kind):
    m = _module("rotary", kind, causal=True, dropout_rate=0.25)
    variables, x = _init(m), _x()
    eager = m.apply(variables, x)
    # XLA fuses and reorders the compiled graph: rounding-level differences, not equality
    assert scaled_error(jax.jit(m.apply)(variables, x), eager) < JIT_RTOL
    rngs = {"dropout": jax.random.key(5)}
    dropped = jax.jit(lambda v, t: m.apply(v, t, deterministic=False, rngs=rngs))(variables, x)
    assert scaled_error(dropped, m.apply(variables, x, deterministic=False, rngs=rngs)) < JIT_RTOL
    assert scaled_error(dropped, eager) > 1e-3


# --- (8) causal=True in exact mode, (9) bad arguments ----------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_exact_causal_equals_a_causal_mask(cls):
    plain = _module(cls, use_performer=False)
    causal = _module(cls, use_performer=False, causal=True)
    variables, x = _init(plain), _x()
    tril = jnp.tril(jnp.ones((L, L), bool))
    pad = jnp.ones((B, 1, 1, L), bool).at[0, ..., 0].set(False)
    assert scaled_error(_apply(causal, variables, x), _apply(plain, variables, x, mask=tril)) < RTOL
    both = _apply(causal, variables, x, mask=pad)
    assert scaled_error(both, _apply(plain, variables, x, mask=tril & pad)) < RTOL
    assert float(jnp.abs(both[0, 0]).max()) == 0.0
    assert scaled_error(_apply(causal, variables, x), _apply(plain, variables, x)) > 1e-6


@pytest.mark.parametrize("kw, name", BAD_ARGUMENTS)
def test_bad_arguments_name_themselves(kw, name):
    with pytest.raises(ValueError, match=name):
        _init(_module("rotary", **kw))
