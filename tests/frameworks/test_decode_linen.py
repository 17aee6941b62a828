"""KV-cache decoding of the Flax Linen attention modules (issue 14), in flax.linen's idiom:
``init(..., decode=True)`` on ``(batch, max_length, features)`` makes the ``"cache"``
collection, ``apply(..., decode=True, mutable=["cache"])`` decodes; and the rotary
``positions=`` argument.

The reference is the same module's full forward with a lower-triangular boolean mask.
Error metric: the largest absolute difference over the largest reference magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation  # noqa: E402

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
pytest.importorskip("flax.linen")

from nmn_array.frameworks import linen  # noqa: E402

jnp = jax.numpy

pytestmark = pytest.mark.skipif(
    not jax.config.jax_enable_x64, reason="float64 needs JAX_ENABLE_X64=1 (tests/conftest)"
)

E, H, L = 8, 2, 7
RTOL = {"float64": 1e-10, "float32": 1e-5}
WINDOWS = [None, (2, 0), (2, 1)]
KINDS = ["mha", "rotary"]


def _module(kind, dtype="float64", **kw):
    kw = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype), **kw)
    if kind == "mha":
        return linen.MultiHeadAttention(num_heads=H, **kw)
    return linen.RotaryYatAttention(embed_dim=E, num_heads=H, max_seq_len=16, **kw)


def _x(batch=2, length=L, dtype="float64", seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, length, E)), dtype)


def _setup(m, x, max_length, batch=2):
    """Parameters (alpha perturbed so that it matters) and the zeroed cache of init."""
    params = m.init(jax.random.key(0), x)["params"]
    params = {**params, "alpha": params["alpha"] * 1.3}
    shape = (batch, max_length, E) if x.ndim == 3 else (max_length, E)
    cache = m.init(jax.random.key(0), jnp.zeros(shape, x.dtype), decode=True)["cache"]
    return params, cache


def _full(m, params, x):
    causal = jnp.tril(jnp.ones((x.shape[-2], x.shape[-2]), bool))
    return m.apply({"params": params}, x, mask=causal)


def _step(m, jit=True):
    def step(params, cache, x, **kw):
        out, upd = m.apply({"params": params, "cache": cache}, x, mutable=["cache"], **kw)
        return out, upd["cache"]

    return jax.jit(step, static_argnames=("decode",)) if jit else step


def _decode(step, params, cache, x, prefill=0):
    """``prefill`` tokens in one call (if any), then one token per call; outputs, cache."""
    chunks = ([slice(0, prefill)] if prefill else []) + [
        slice(t, t + 1) for t in range(prefill, x.shape[-2])
    ]
    outs = []
    for s in chunks:
        out, cache = step(params, cache, x[..., s, :], decode=True)
        outs.append(out)
    return jnp.concatenate(outs, axis=-2), cache


def _err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


# float32 once per module (with the two-sided window): the cost is in tracing, not numbers
CASES = [(w, "float64") for w in WINDOWS] + [((2, 1), "float32")]


@pytest.mark.parametrize(("window", "dtype"), CASES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_decode_one_token_at_a_time_equals_the_causal_forward(kind, window, dtype):
    m = _module(kind, dtype, window=window)
    x = _x(dtype=dtype)
    params, cache = _setup(m, x, 10)  # more slots than tokens: the empty ones must not count
    full = _full(m, params, x)
    out, cache = _decode(_step(m, jit=False), params, cache, x)
    assert out.dtype == jnp.dtype(dtype)
    assert _err(out, full) <= RTOL[dtype]
    assert int(cache["cache_index"]) == L
    assert cache["cached_key"].shape == (2, 10, H, E // H)


@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_decode_equals_the_causal_forward(kind, window):
    m = _module(kind, window=window)
    x = _x()
    params, cache = _setup(m, x, L)
    out, cache = _decode(_step(m, jit=False), params, cache, x, prefill=3)
    assert _err(out, _full(m, params, x)) <= 1e-10
    assert int(cache["cache_index"]) == L


@pytest.mark.parametrize(
    ("kind", "options"),
    [("rotary", {}), ("mha", dict(normalize_qk=True, block_size=2, window=(3, 0)))],
    ids=["rotary-plain", "mha-unit-qk-tiles-window"],
)
def test_decode_under_jit_equals_eager(kind, options):
    m = _module(kind, **options)
    x = _x()
    params, cache = _setup(m, x, 9)
    full = _full(m, params, x)
    eager, _ = _decode(_step(m, jit=False), params, cache, x, prefill=2)
    jitted, _ = _decode(_step(m), params, cache, x, prefill=2)
    assert _err(eager, full) <= 1e-10
    assert _err(jitted, eager) <= 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_decode_again_from_a_zeroed_cache_gives_the_same_outputs(kind):
    # Linen's reset: the cache of init again, or the used one zeroed
    m = _module(kind, window=(2, 0))
    x = _x()
    params, cache = _setup(m, x, L)
    step = _step(m, jit=False)
    first, used = _decode(step, params, cache, x)
    again, _ = _decode(step, params, jax.tree.map(jnp.zeros_like, used), x, prefill=2)
    assert _err(again, first) <= 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_full_cache_raises(kind):
    m = _module(kind)
    x = _x()
    params, cache = _setup(m, x, 4)
    step = _step(m, jit=False)
    _, cache = step(params, cache, x[:, :3], decode=True)
    with pytest.raises(ValueError, match=r"max_length=4, index=3, L=2"):
        step(params, cache, x[:, 3:5], decode=True)
    _, cache = step(params, cache, x[:, 3:4], decode=True)
    with pytest.raises(ValueError, match=r"full.*max_length=4, index=4, L=1"):
        step(params, cache, x[:, 4:5], decode=True)


def test_full_cache_raises_under_jit():
    m = _module("rotary")
    x = _x()
    params, cache = _setup(m, x, 2)
    step = _step(m)
    _, cache = step(params, cache, x[:, :2], decode=True)
    with pytest.raises(Exception, match=r"cache is full: max_length=2, index=2, L=1") as info:
        out, _ = step(params, cache, x[:, 2:3], decode=True)
        out.block_until_ready()
    assert "ValueError" in str(info.value) or isinstance(info.value, ValueError)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_without_a_cache_raises(kind):
    m = _module(kind)
    x = _x()
    params = m.init(jax.random.key(0), x)["params"]
    with pytest.raises(ValueError, match=r"init\(\.\.\., decode=True\)"):
        m.apply({"params": params}, x[:, :1], decode=True, mutable=["cache"])


@pytest.mark.parametrize("kind", KINDS)
def test_decode_shape_mismatch_raises(kind):
    m = _module(kind)
    x = _x()
    params, cache = _setup(m, x, 8, batch=3)
    with pytest.raises(ValueError, match=r"\(2, 1, 2, 4\).*\(3, 8, 2, 4\).*\(3, 1, 2, 4\)"):
        _step(m, jit=False)(params, cache, x[:, :1], decode=True)


def test_decode_key_length_mismatch_raises():
    m = _module("mha")
    x = _x()
    params, cache = _setup(m, x, 8)
    with pytest.raises(ValueError, match="as many keys as queries"):
        m.apply({"params": params, "cache": cache}, x[:, :1], x[:, :2], decode=True,
                mutable=["cache"])  # fmt: skip


def test_decode_field_equals_the_call_argument():
    x = _x()
    m = _module("rotary")
    params, cache = _setup(m, x, L)
    by_arg, _ = _decode(_step(m, jit=False), params, cache, x, prefill=2)
    fielded = _module("rotary", decode=True)
    outs = []
    for s in (slice(0, 2), *(slice(t, t + 1) for t in range(2, L))):
        out, upd = fielded.apply({"params": params, "cache": cache}, x[:, s], mutable=["cache"])
        cache = upd["cache"]
        outs.append(out)
    assert _err(jnp.concatenate(outs, axis=1), by_arg) <= 1e-12


def test_decode_unbatched():
    # no batch axis: the cache of init on (max_length, E) has none either
    m = _module("rotary", window=(1, 0))
    x = _x(batch=1)
    params, cache = _setup(m, x[0], L)
    assert cache["cached_key"].shape == (L, H, E // H)
    out, _ = _decode(_step(m, jit=False), params, cache, x[0], prefill=2)
    assert _err(out, _full(m, params, x)[0]) <= 1e-10


def test_decode_with_a_mask_over_the_slots():
    m = _module("rotary")
    x = _x()
    params, cache = _setup(m, x, L)
    hidden = jnp.ones((L, L), bool).at[:, 1].set(False)  # nobody sees token 1
    full = m.apply({"params": params}, x, mask=jnp.tril(jnp.ones((L, L), bool)) & hidden)
    step, outs = _step(m, jit=False), []
    for t in range(L):
        out, cache = step(params, cache, x[:, t : t + 1], mask=hidden[t : t + 1], decode=True)
        outs.append(out)
    assert _err(jnp.concatenate(outs, axis=1), full) <= 1e-10
    # a query that sees no slot gives zeros
    params, cache = _setup(m, x, L)
    none = jnp.zeros((1, L), bool)
    out, _ = step(params, cache, x[:, :1], mask=none, decode=True)
    assert not jnp.any(out)


def test_rotary_init_longer_than_max_seq_len_raises():
    m = _module("rotary")
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        m.init(jax.random.key(0), jnp.zeros((1, 17, E)), decode=True)


def test_rotary_positions_equal_the_offset():
    m = _module("rotary", window=(2, 1))
    x = _x()
    params = m.init(jax.random.key(0), x)["params"]
    apply = jax.jit(m.apply, static_argnames="position_offset")
    shifted = apply({"params": params}, x, position_offset=4)
    at = apply({"params": params}, x, positions=jnp.arange(4, 4 + L))
    assert _err(at, shifted) <= 1e-14
    # positions at other distances give other outputs (a common shift would not: RoPE)
    other = m.apply({"params": params}, x, positions=2 * jnp.arange(L))
    assert _err(other, shifted) > 1e-3


def test_rotary_positions_while_decoding():
    m = _module("rotary")
    x = _x()
    params, cache = _setup(m, x, L)
    full = _full(m, params, x)
    step = _step(m, jit=False)
    for shift in (0, 5):  # a common shift keeps the relative positions (RoPE)
        outs, c = [], cache
        for t in range(L):
            out, c = step(params, c, x[:, t : t + 1], positions=jnp.array([t + shift]), decode=True)
            outs.append(out)
        assert _err(jnp.concatenate(outs, axis=1), full) <= 1e-10


def test_rotary_positions_errors():
    m = _module("rotary")
    x = _x()
    params, cache = _setup(m, x, 8)
    v = {"params": params}
    with pytest.raises(ValueError, match="not both"):
        m.apply(v, x, position_offset=1, positions=jnp.arange(L))
    with pytest.raises(ValueError, match="positions reach 16, beyond max_seq_len=16"):
        m.apply(v, x, positions=jnp.arange(10, 10 + L))
    with pytest.raises(ValueError, match=r"positions must have shape \(L,\)"):
        m.apply(v, x, positions=jnp.arange(L + 1))
    with pytest.raises(ValueError, match="position_offset=2"):
        m.apply({**v, "cache": cache}, x[:, :1], decode=True, position_offset=2, mutable=["cache"])
