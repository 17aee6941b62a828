"""nmn_array.frameworks.nnx against nmn.nnx 0.3.5: parity, state loading, jit, training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation  # noqa: E402

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
N = pytest.importorskip("nmn.nnx")

from nmn_array.frameworks import nnx as M  # noqa: E402

import nmn_array  # noqa: E402
from tests.frameworks._parity import RTOL_F32, RTOL_F64, assert_parity  # noqa: E402

jnp = jax.numpy
F64 = jnp.float64

pytestmark = pytest.mark.skipif(
    not jax.config.jax_enable_x64, reason="float64 parity needs JAX_ENABLE_X64=1 (tests/conftest)"
)


def _paths(module, kind=nnx.Param):
    return {p: v.shape for p, v in nnx.to_flat_state(nnx.state(module, kind))}


def _variables(module):
    """nmn's variables (params, frozen params, caches). nmn NNX YatNMN/Embed with
    ``constant_alpha=True`` also hold a plain array attribute ``_constant_alpha_value``, which
    ``nnx.state(model)`` lists but which is not a variable; ours is a Python float."""
    return nnx.state(module, nnx.Variable)


def _pair(our_cls, their_cls, *args, perturb=True, **kwargs):
    """nmn's module and ours from the same seed; nmn's learnable scalars are moved off their
    defaults, then its whole state is loaded into ours (``nnx.update``: by path)."""
    theirs = their_cls(*args, rngs=nnx.Rngs(0), **kwargs)
    mine = our_cls(*args, rngs=nnx.Rngs(0), **kwargs)
    assert _paths(mine) == _paths(theirs)
    if perturb:
        for path, var in nnx.to_flat_state(nnx.state(theirs, nnx.Param)):
            if path[-1] == "alpha":
                var[...] = jnp.full_like(var[...], 1.25)  # exact in float32 (nmn casts)
            elif path[-1] == "epsilon_param":
                var[...] = var[...] + 0.5
            elif path[-1] == "bias":
                key = jax.random.key(len(path))
                var[...] = 0.3 * jax.random.normal(key, var.shape, var[...].dtype)
    nnx.update(mine, _variables(theirs))
    return mine, theirs


_JITTED: dict = {}


def _j(module, *args, method=None, **kwargs):
    """``module(*args, **kwargs)`` (or ``module.<method>``) under ``nnx.jit``: one compilation
    per call signature instead of one per primitive in eager mode, which keeps the sweep
    fast. Jitted callers are cached, so equal graphs and shapes compile once per session;
    array and ``nnx.Rngs`` keyword arguments are traced, the others are static."""
    dynamic = {k: v for k, v in kwargs.items() if isinstance(v, (jax.Array, nnx.Rngs))}
    static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in dynamic))
    key = (method, static, tuple(sorted(dynamic)))
    if key not in _JITTED:

        def run(m, *a, **dyn):
            return (getattr(m, method) if method else m)(*a, **dict(static), **dyn)

        _JITTED[key] = nnx.jit(run)
    return _JITTED[key](module, *args, **dynamic)


def _x(*shape, seed=1, dtype=F64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


# --------------------------------------------------------------------------------------
# YatNMN (nmn computes in float32 whatever the input: compare in float32, rtol 1e-4)
# --------------------------------------------------------------------------------------
DENSE = {
    "plain": dict(),
    "no_bias_no_alpha": dict(use_bias=False, use_alpha=False),
    "constant_bias_alpha": dict(constant_bias=0.42, constant_alpha=True),
    "constant_alpha_float": dict(constant_alpha=1.7),
    "scalar_softplus_bias": dict(scalar_bias=True, softplus_bias=True),
    "spherical": dict(spherical=True),
    "weight_normalized": dict(weight_normalized=True),
    "spherical_weight_normalized": dict(spherical=True, weight_normalized=True),
    "learnable_eps": dict(learnable_epsilon=True, epsilon=1e-3),
    "positive_init_lazy": dict(positive_init=True, lazy=True),
}


@pytest.mark.parametrize("case", DENSE)
def test_yatnmn_parity_f32(case):
    mine, theirs = _pair(M.YatNMN, N.YatNMN, 6, 5, **DENSE[case])
    x = _x(2, 3, 6, dtype=jnp.float32)
    assert_parity(_j(mine, x), _j(theirs, x), RTOL_F32, f"YatNMN[{case}]")


def test_yatnmn_float64_stays_float64_decision_3():
    # nmn NNX computes in float32 even for float64 (§10.14); ours stays in float64 and
    # agrees with nmn's float64 PyTorch layer (kernel (in, out) = torch weight.T).
    torch = pytest.importorskip("torch")
    nmn_torch = pytest.importorskip("nmn.torch")
    layer = M.YatNMN(6, 5, param_dtype=F64, constant_bias=0.375, rngs=nnx.Rngs(0))
    ref = nmn_torch.YatNMN(6, 5, constant_bias=0.375).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.asarray(layer.kernel[...]).T))
        ref.alpha.copy_(torch.from_numpy(np.asarray(layer.alpha[...])))
    x = _x(4, 6)
    y = _j(layer, x)
    assert y.dtype == F64
    assert_parity(y, ref(torch.from_numpy(np.asarray(x))), RTOL_F64, "YatNMN[f64 vs nmn.torch]")


def test_yatnmn_variables_init_and_lazy():
    layer = M.YatNMN(30, 20, lazy=True, rngs=nnx.Rngs(0))
    assert isinstance(layer.kernel, M.FrozenParam) and layer.kernel.shape == (30, 20)
    assert set(_paths(layer)) == {("alpha",), ("bias",)}
    assert float(jnp.abs(layer.bias[...]).max()) == 0.0 and float(layer.alpha[0]) == 1.0
    wn = M.YatNMN(8, 3, weight_normalized=True, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(wn.kernel[...]), axis=0), 1, rtol=1e-6)
    eps = M.YatNMN(4, 3, learnable_epsilon=True, epsilon=1e-5, rngs=nnx.Rngs(0))
    assert abs(float(jax.nn.softplus(eps.epsilon_param[...].astype(F64))[0]) - 1e-5) < 1e-11
    assert M.YatDense is M.YatNMN
    half = _j(M.YatNMN(4, 3, rngs=nnx.Rngs(0)), jnp.ones((2, 4), jnp.float16))
    assert half.dtype == jnp.float32  # flax promotion of float16 inputs with float32 params
    half = _j(M.YatNMN(4, 3, dtype=jnp.float16, rngs=nnx.Rngs(0)), jnp.ones((2, 4)))
    assert half.dtype == jnp.float16 and bool(jnp.isfinite(half).all())


def test_yatnmn_unsupported_raise():
    with pytest.raises(ValueError, match="drop_rate"):
        M.YatNMN(4, 3, drop_rate=1.0, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------------------
# Convolutions (float64)
# --------------------------------------------------------------------------------------
# Cases combine several options each: every new combination of shapes and options costs
# JAX compilations, so the sweep is kept short but covers every option at least once.
CONV = {
    "same_groups_eps_softplus_scalar_bias": (
        (3, 3),
        dict(feature_group_count=2, learnable_epsilon=True, scalar_bias=True, softplus_bias=True),
    ),
    "valid_strides_no_bias_no_alpha": (
        (3, 3),
        dict(padding="VALID", strides=(2, 1), use_bias=False, use_alpha=False),
    ),
    "circular_stride_constants": (
        (3, 3),
        dict(padding="CIRCULAR", strides=2, constant_bias=0.375, constant_alpha=1.7),
    ),
    "circular_even_kernel": ((4, 2), dict(padding="CIRCULAR")),
    "reflect_dilation_weight_normalized": (
        (3, 3),
        dict(padding="REFLECT", kernel_dilation=2, weight_normalized=True),
    ),
    "pairs_strides_dilation": (
        (3, 3),
        dict(padding=[(1, 2), (0, 1)], strides=2, kernel_dilation=(1, 2)),
    ),
    "1d_causal": ((3,), dict(padding="CAUSAL", kernel_dilation=2)),
    "3d_int_padding": ((3, 2, 3), dict(padding=1, strides=(1, 2, 1))),
}


@pytest.mark.parametrize("case", CONV)
def test_conv_parity(case):
    k, kw = CONV[case]
    mine, theirs = _pair(M.YatConv, N.YatConv, 4, 6, k, param_dtype=F64, **kw)
    x = _x(2, *(9, 8, 7)[: len(k)], 4)
    assert_parity(_j(mine, x), _j(theirs, x), RTOL_F64, f"YatConv[{case}]")


def test_conv_mask_batch_dims_and_aliases():
    mask = (jax.random.uniform(jax.random.key(3), (3, 3, 2, 6)) > 0.3).astype(F64)
    mine, theirs = _pair(
        M.YatConv2D, N.YatConv2D, 4, 6, (3, 3), feature_group_count=2, mask=mask, param_dtype=F64
    )
    x = _x(1, 2, 9, 8, 4)  # two batch axes
    assert_parity(_j(mine, x), _j(theirs, x), RTOL_F64, "YatConv[mask, 2 batch axes]")
    single = _x(9, 8, 4)  # no batch axis
    assert_parity(_j(mine, single), _j(theirs, single), RTOL_F64, "YatConv[unbatched]")
    assert M.YatConv1D is M.YatConv3D is M.YatConv


def test_conv_constant_sqrt2():
    # nmn NNX's sqrt(2) is float32-rounded (§10.19); ours is exact, ours(True) == ours(sqrt 2)
    mine, theirs = _pair(M.YatConv, N.YatConv, 2, 3, (3,), constant_alpha=True, param_dtype=F64)
    exact = M.YatConv(2, 3, (3,), constant_alpha=math.sqrt(2), param_dtype=F64, rngs=nnx.Rngs(0))
    nnx.update(exact, _variables(theirs))
    x = _x(2, 9, 2)
    assert_parity(_j(mine, x), _j(exact, x), 1e-15, "YatConv[constant_alpha=True is sqrt(2)]")
    assert_parity(_j(mine, x), _j(theirs, x), 1e-7, "YatConv[sqrt(2) vs nmn float32 sqrt(2)]")


def test_conv_input_dilation_not_implemented():
    layer = M.YatConv(2, 3, (3,), input_dilation=2, rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="input"):
        layer(jnp.ones((1, 8, 2)))


CONV_T = {
    "same_stride_constant_bias_eps": (
        (3, 3),
        dict(strides=2, constant_bias=0.375, learnable_epsilon=True),
    ),
    "valid_dilation_no_bias_const_alpha": (
        (3, 3),
        dict(padding="VALID", strides=3, kernel_dilation=2, use_bias=False, constant_alpha=0.8),
    ),
    "same_k_lt_s_transpose_kernel": ((2, 2), dict(strides=(3, 2), transpose_kernel=True)),
    "explicit_pairs_no_alpha": ((3, 3), dict(padding=[(1, 2), (2, 2)], strides=2, use_alpha=False)),
    "1d_valid": ((4,), dict(strides=2, padding="VALID")),
    "3d_same": ((2, 3, 2), dict(strides=2)),
}


@pytest.mark.parametrize("case", CONV_T)
def test_conv_transpose_parity(case):
    k, kw = CONV_T[case]
    mine, theirs = _pair(M.YatConvTranspose, N.YatConvTranspose, 4, 6, k, param_dtype=F64, **kw)
    x = _x(2, *(5, 4, 3)[: len(k)], 4)
    assert_parity(_j(mine, x), _j(theirs, x), RTOL_F64, f"YatConvTranspose[{case}]")


def test_conv_transpose_unsupported_padding():
    layer = M.YatConvTranspose(2, 3, (3,), strides=2, padding="CIRCULAR", rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="CIRCULAR"):
        layer(jnp.ones((1, 5, 2)))
    layer = M.YatConvTranspose(2, 3, (3,), strides=2, padding=[(4, 1)], rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="padding"):
        layer(jnp.ones((1, 5, 2)))


# --------------------------------------------------------------------------------------
# Embed
# --------------------------------------------------------------------------------------
EMBED = {
    "learnable_alpha": dict(),
    "no_alpha": dict(use_alpha=False),
    "constant_alpha": dict(constant_alpha=1.7),
    "learnable_eps": dict(learnable_epsilon=True),
    "weight_normalized": dict(weight_normalized=True),
}


@pytest.mark.parametrize("case", EMBED)
def test_embed_parity(case):
    mine, theirs = _pair(M.Embed, N.Embed, 11, 6, param_dtype=F64, **EMBED[case])
    ids = jnp.array([[0, 3, 10], [5, 5, 1]])
    np.testing.assert_array_equal(mine(ids), theirs(ids))
    q = _x(2, 4, 6)
    assert_parity(
        _j(mine, q, method="attend"),
        _j(theirs, q, method="attend"),
        RTOL_F64,
        f"Embed.attend[{case}]",
    )


def test_embed_spherical_decision_7_and_dtype():
    mine, theirs = _pair(M.YatEmbed, N.Embed, 11, 6, spherical=True, param_dtype=F64)
    q = _x(3, 6)
    assert_parity(
        _j(mine, q, method="attend"),
        _j(theirs, q, method="attend"),
        1e-6,
        "Embed.attend[spherical, Decision 7]",
    )
    # Decision 3: a float64 query against a float32 table is computed in float64
    emb = M.Embed(5, 4, rngs=nnx.Rngs(0))
    assert emb.attend(_x(2, 4)).dtype == F64 and emb(jnp.array([1])).dtype == jnp.float32
    with pytest.raises(ValueError, match="integer"):
        emb(jnp.ones((2,)))


# --------------------------------------------------------------------------------------
# Multi-head attention (head_dim 4: nmn's float32 sqrt(d) is exact)
# --------------------------------------------------------------------------------------
def _causal(lq, lk):
    return jnp.tril(jnp.ones((lq, lk), bool), k=lk - lq)


def _mask(kind, lq=5, lk=5):
    if kind == "none":
        return None
    if kind == "causal":
        return _causal(lq, lk)
    if kind == "padding":
        return jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :lk]
    m = _causal(lq, lk).at[2].set(False)  # fully masked query row
    return m


MHA = {
    "default": dict(),
    "no_bias_no_alpha": dict(use_bias=False, use_alpha=False),
    "normalize_qk": dict(normalize_qk=True),
    "learnable_eps": dict(learnable_epsilon=True, epsilon=1e-3),
    "softermax": dict(use_softermax=True, power=2.0),
    "features": dict(qkv_features=16, out_features=6),
}


def _mha_case(case, mask):
    kw = dict(MHA[case])
    qkv = kw.get("qkv_features", 8)
    mine, theirs = _pair(
        M.MultiHeadAttention, N.MultiHeadAttention, qkv // 4, 8, param_dtype=F64, **kw
    )
    x = _x(2, 5, 8)
    m = _mask(mask)
    out = _j(mine, x, mask=m)
    assert_parity(out, _j(theirs, x, mask=m), RTOL_F64, f"MultiHeadAttention[{case},{mask}]")
    return out


@pytest.mark.parametrize("mask", ["none", "causal", "padding", "fully_masked_row"])
def test_mha_parity_masks(mask):
    out = _mha_case("default", mask)
    if mask == "fully_masked_row":
        assert float(jnp.abs(out[:, 2]).max()) == 0.0


@pytest.mark.parametrize("case", [c for c in MHA if c != "default"])
def test_mha_parity_options(case):
    _mha_case(case, "causal")


def test_mha_normalize_qk_zero_head_has_finite_gradients():
    """A zero token without projection biases gives q = k = 0 in every head: normalize_qk
    (Decision 2, through nmn_array.attention.unit_heads) takes the norm's derivative as 0
    there, as torch's normalize does, so the gradients stay finite (not NaN)."""
    mha = M.MultiHeadAttention(
        2, 8, normalize_qk=True, use_bias=False, param_dtype=F64, rngs=nnx.Rngs(0)
    )
    x = _x(2, 5, 8).at[0, 1].set(0.0)
    grad = jax.grad(lambda x: mha(x).sum())(x)
    assert np.all(np.isfinite(np.asarray(grad))), "NaN/inf gradient through a zero head"


def test_mha_cross_attention_and_alias():
    assert M.MultiHeadYatAttention is M.MultiHeadAttention
    mine, theirs = _pair(M.MultiHeadAttention, N.MultiHeadAttention, 2, 8, param_dtype=F64)
    q, kv, v = _x(2, 3, 8), _x(2, 7, 8, seed=2), _x(2, 7, 8, seed=3)
    m = _causal(3, 7)
    assert_parity(_j(mine, q, kv, v, mask=m), _j(theirs, q, kv, v, mask=m), RTOL_F64, "MHA[cross]")


def test_mha_constant_alpha_decision_1():
    # Decision 1: a constant alpha scales the scores before the softmax, exactly like nmn's
    # learnable alpha with that value (nmn NNX multiplies the output instead).
    mine = M.MultiHeadAttention(2, 8, constant_alpha=1.5, param_dtype=F64, rngs=nnx.Rngs(0))
    ref = N.MultiHeadAttention(2, 8, param_dtype=F64, rngs=nnx.Rngs(0))
    ref.alpha[...] = jnp.array([1.5])
    nnx.update(mine, nnx.state(ref, nnx.Not(nnx.PathContains("alpha"))))
    x = _x(2, 5, 8)
    assert_parity(_j(mine, x), _j(ref, x), RTOL_F64, "MHA[constant alpha, Decision 1]")


def test_mha_spherical_matches_nmn_normalized_attention_fn():
    mine = M.MultiHeadAttention(2, 8, spherical=True, param_dtype=F64, rngs=nnx.Rngs(0))
    ref = N.MultiHeadAttention(
        2, 8, attention_fn=N.yat_attention_normalized, param_dtype=F64, rngs=nnx.Rngs(0)
    )
    nnx.update(mine, nnx.state(ref))
    x = _x(2, 5, 8)
    m = _causal(5, 5)
    assert_parity(_j(mine, x, mask=m), _j(ref, x, mask=m), RTOL_F64, "MHA[spherical]")


def test_mha_decode_with_cache():
    mine, theirs = _pair(M.MultiHeadAttention, N.MultiHeadAttention, 2, 8, param_dtype=F64)
    x = _x(2, 4, 8)
    for m in (mine, theirs):
        m.init_cache((2, 4, 8), dtype=F64)
    full = _j(mine, x, mask=_causal(4, 4))
    step = nnx.jit(lambda m, t: m(t, decode=True))
    for t in range(4):
        tok = x[:, t : t + 1]
        ours_t = step(mine, tok)
        assert_parity(ours_t, _j(theirs, tok, decode=True), RTOL_F64, "MHA[decode step]")
        assert_parity(ours_t[:, 0], full[:, t], 1e-12, "MHA[decode == causal]")
    assert int(mine.cache_index[...]) == 4
    with pytest.raises(ValueError, match="full"):
        mine(x[:, :1], decode=True)


def test_mha_dropout_and_sow():
    attn = M.MultiHeadAttention(2, 8, dropout_rate=0.5, param_dtype=F64, rngs=nnx.Rngs(0))
    x = _x(2, 6, 8)
    a = _j(attn, x, deterministic=False, rngs=nnx.Rngs(dropout=1))
    b = _j(attn, x, deterministic=False, rngs=nnx.Rngs(dropout=1))
    c = _j(attn, x, deterministic=False, rngs=nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="rngs"):
        attn(x, deterministic=False)
    with pytest.raises(ValueError, match="deterministic"):
        attn(x)
    ref = N.MultiHeadAttention(2, 8, param_dtype=F64, rngs=nnx.Rngs(0))
    nnx.update(ref, nnx.state(attn))
    assert_parity(_j(attn, x, deterministic=True), _j(ref, x), RTOL_F64, "MHA[deterministic]")
    sowed = M.MultiHeadAttention(2, 8, param_dtype=F64, rngs=nnx.Rngs(0))
    _j(sowed, x, sow_weights=True)
    (weights,) = sowed.attention_weights.value
    assert weights.shape == (2, 2, 6, 6)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-12)


# --------------------------------------------------------------------------------------
# Rotary attention
# --------------------------------------------------------------------------------------
ROTARY = {
    "default": dict(),
    "bias_l1_learnable_eps": dict(use_bias=True, normalization="l1", learnable_epsilon=True),
    "softermax_no_out_proj_no_alpha": dict(
        use_softermax=True, power=2.0, use_out_proj=False, use_alpha=False
    ),
}


@pytest.mark.parametrize("case", ROTARY)
def test_rotary_parity(case):
    mine, theirs = _pair(
        M.RotaryYatAttention, N.RotaryYatAttention, 8, 2, 16, param_dtype=F64, **ROTARY[case]
    )
    x = _x(2, 5, 8)
    assert_parity(_j(mine, x), _j(theirs, x), RTOL_F64, f"RotaryYatAttention[{case}]")
    m = _causal(5, 5)
    assert_parity(
        _j(mine, x, m, position_offset=3),
        _j(theirs, x, m, position_offset=3),
        RTOL_F64,
        f"RotaryYatAttention[{case},causal,offset]",
    )


def test_rotary_decode_with_cache():
    mine, theirs = _pair(M.RotaryYatAttention, N.RotaryYatAttention, 8, 2, 16, param_dtype=F64)
    x = _x(2, 4, 8)
    for m in (mine, theirs):
        m.init_cache(2, 4, dtype=F64)
    # nmn's decode mixes its int32 cache index with Python-int offsets, which x64 makes int64
    # (TypeError in dynamic_update_slice): give nmn an int64 index.
    theirs.cache_index = nnx.Cache(jnp.array(0, jnp.int64))
    full = _j(mine, x, _causal(4, 4))
    for t in range(4):
        tok = x[:, t : t + 1]
        ours_t = _j(mine, tok, decode=True)
        assert_parity(ours_t, _j(theirs, tok, decode=True), RTOL_F64, "Rotary[decode step]")
        assert_parity(ours_t[:, 0], full[:, t], 1e-12, "Rotary[decode == causal]")


def test_rotary_normalize_qk_decision_2_and_max_seq_len():
    # Decision 2: normalize_qk is q / max(|q|, 1e-12) (nmn NNX Rotary uses a LayerNorm with a
    # learnable scale). Check the wiring against the pure functions directly.
    attn = M.RotaryYatAttention(8, 2, 16, normalize_qk=True, param_dtype=F64, rngs=nnx.Rngs(0))
    assert "query_ln" not in str(_paths(attn))
    x = _x(2, 5, 8)

    def heads(t):
        return jnp.swapaxes(t.reshape(2, 5, 2, 4), 1, 2)

    def unit(t):
        return t / jnp.linalg.norm(t, axis=-1, keepdims=True)

    q = nmn_array.rotary_embedding(unit(heads(x @ attn.q_proj.kernel[...])))
    k = nmn_array.rotary_embedding(unit(heads(x @ attn.k_proj.kernel[...])))
    o = nmn_array.yat_attention(q, k, heads(x @ attn.v_proj.kernel[...]), alpha=attn.alpha[...])
    ref = jnp.swapaxes(o, 1, 2).reshape(2, 5, 8) @ attn.o_proj.kernel[...]
    assert_parity(_j(attn, x), ref, 1e-12, "Rotary[normalize_qk, Decision 2]")
    with pytest.raises(ValueError, match="max_seq_len"):
        attn(x, position_offset=12)


# --------------------------------------------------------------------------------------
# State, jit, training
# --------------------------------------------------------------------------------------
class _Net(nnx.Module):
    """Nested layers (every layer's state loading is also exercised by each parity test)."""

    def __init__(self, lib, rngs):
        self.attn = lib.MultiHeadAttention(2, 8, param_dtype=F64, rngs=rngs)
        self.embed = lib.Embed(10, 8, param_dtype=F64, learnable_epsilon=True, rngs=rngs)
        self.head = lib.YatNMN(8, 5, param_dtype=F64, constant_alpha=1.5, rngs=rngs)

    def __call__(self, h, ids):
        h = h + self.embed(ids)[:, None, :]
        return self.attn(h).mean(1), self.embed.attend(h.mean(1)), self.head(h.mean(1))


def test_nmn_state_loads_and_split_merge():
    theirs = _Net(N, nnx.Rngs(0))
    mine = _Net(M, nnx.Rngs(1))
    assert _paths(mine) == _paths(theirs)
    nnx.update(mine, _variables(theirs))
    h, ids = _x(2, 5, 8), jnp.array([1, 7])
    a, b = _j(mine, h, ids), _j(theirs, h, ids)
    assert_parity(a[0], b[0], RTOL_F64, "state[_Net attn]")
    assert_parity(a[1], b[1], RTOL_F64, "state[_Net attend]")
    assert_parity(a[2], b[2], RTOL_F32, "state[_Net YatNMN (nmn float32)]")
    graphdef, state = nnx.split(mine)
    merged = nnx.merge(graphdef, state)
    for u, v in zip(_j(merged, h, ids), a):
        np.testing.assert_array_equal(u, v)
    # and back: our state loads into nmn's model
    nnx.update(theirs, nnx.state(mine))


def test_nnx_jit_equals_eager():
    dense = M.YatNMN(8, 3, param_dtype=F64, learnable_epsilon=True, rngs=nnx.Rngs(0))
    x = _x(2, 5, 8)
    np.testing.assert_allclose(_j(dense, x), dense(x), rtol=1e-12, atol=0)


def test_training_smoke():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.conv = M.YatConv(1, 4, (3,), rngs=rngs)
            self.head = M.YatNMN(32, 2, learnable_epsilon=True, rngs=rngs)

        def __call__(self, x):
            return self.head(self.conv(x).reshape(x.shape[0], -1))

    x = jax.random.normal(jax.random.key(0), (64, 8, 1), jnp.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(jnp.int32)
    model = Model(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(0.02), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_squashers_reexported():
    assert M.soft_tanh is nmn_array.soft_tanh
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # softermax: nmn's signature over the core's
    np.testing.assert_array_equal(
        M.softermax(x, 2.0, 1e-9, 0), nmn_array.softermax(x, 2.0, epsilon=1e-9, axis=0)
    )
    np.testing.assert_allclose(M.softer_sigmoid(jnp.array([1.0, 3.0])), [0.5, 0.75])
