"""NNX YatNMN's ``distance_floor``, ``compute_mode`` and ``fused`` (issue 11): their meanings
on our core, against nmn.nnx 0.3.5 seeded alike, and the errors of bad values."""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation  # noqa: E402

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
N = pytest.importorskip("nmn.nnx")

from nmn_array.frameworks import nnx as M  # noqa: E402

import nmn_array  # noqa: E402
from tests.frameworks._parity import RTOL_F32, assert_parity, scaled_error  # noqa: E402

jnp = jax.numpy

#: "bf16" against nmn's "bf16" (scaled error), measured over the VARIANTS and input seeds
#: 1-5: at most 2.9e-2. Against the exact float32 layer ours is within 6.2e-3 (the bfloat16
#: casts of the operands, 2^-9 relative each), nmn's within 2.7e-2 (it also rounds the
#: intermediates to bfloat16); the bounds leave less than a factor 2 of room.
RTOL_BF16_NMN = 5e-2
RTOL_BF16_EXACT = 1e-2

#: keyword sets that change which variables exist and how the scalars enter the call.
VARIANTS = {
    "default": {},
    "no_bias_constant_alpha": {"use_bias": False, "constant_alpha": True},
    "learnable_eps_softplus_bias": {"learnable_epsilon": True, "softplus_bias": True},
    "no_alpha_weight_normalized": {"use_alpha": False, "weight_normalized": True},
}


def _x(shape=(5, 6), seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _pair(**kwargs):
    """Our YatNMN(6, 4) and nmn's, from one seed (the same variables, as the parity tests
    show), with a nonzero bias so that the bias enters the comparison."""
    ours, ref = (cls(6, 4, rngs=nnx.Rngs(0), **kwargs) for cls in (M.YatNMN, N.YatNMN))
    for layer in (ours, ref):
        if layer.bias is not None:
            layer.bias[...] = jnp.linspace(-0.5, 0.5, layer.bias.shape[0], dtype=layer.bias.dtype)
    return ours, ref


# --------------------------------------------------------------------------------------
# compute_mode
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("mode", ["fp32", "mixed"])
def test_fp32_and_mixed_are_the_default_bit_for_bit(mode, dtype, variant):
    if dtype == "float64" and not jax.config.jax_enable_x64:
        pytest.skip("float64 needs JAX_ENABLE_X64=1 (tests/conftest sets it)")
    kwargs = {**VARIANTS[variant], "param_dtype": jnp.dtype(dtype), "dtype": jnp.dtype(dtype)}
    default = M.YatNMN(6, 4, rngs=nnx.Rngs(0), **kwargs)
    layer = M.YatNMN(6, 4, compute_mode=mode, rngs=nnx.Rngs(0), **kwargs)
    x = _x(dtype=jnp.dtype(dtype))
    expected, got = default(x), layer(x)
    assert got.dtype == expected.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(expected, np.float64))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_bf16_is_the_core_on_bfloat16_arrays(variant):
    """Mode "bf16": input, kernel, bias, alpha and epsilon in bfloat16, then one core call."""
    layer = M.YatNMN(6, 4, compute_mode="bf16", rngs=nnx.Rngs(0), **VARIANTS[variant])
    x = _x()
    out = layer(x)
    assert out.dtype == jnp.bfloat16
    bf16 = jnp.bfloat16
    kernel, bias = layer.kernel[...].T.astype(bf16), layer._bias_array()
    scalars = layer._scalars()
    expected = nmn_array.yat(
        x.astype(bf16), kernel, None if bias is None else bias.astype(bf16),
        alpha=scalars["alpha"] if scalars["alpha"] is None or isinstance(scalars["alpha"], float)
        else scalars["alpha"].astype(bf16),
        epsilon=scalars["epsilon"] if isinstance(scalars["epsilon"], float)
        else scalars["epsilon"].astype(bf16),
        weight_normalized=layer.weight_normalized,
    )  # fmt: skip
    assert expected.dtype == bf16
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))
    # the cast matters: float32 operands give a different (more precise) answer
    full = M.YatNMN(6, 4, rngs=nnx.Rngs(0), **VARIANTS[variant])
    assert scaled_error(out.astype(jnp.float32), full(x)) > 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_bf16_matches_nmn_bf16_within_bfloat16_tolerance(variant):
    ours, ref = _pair(compute_mode="bf16", **VARIANTS[variant])
    exact, _ = _pair(**VARIANTS[variant])
    for seed in range(1, 6):
        x = _x(seed=seed)
        got = ours(x)
        assert got.dtype == jnp.bfloat16  # nmn returns the input dtype (float32)
        got = got.astype(jnp.float32)
        assert_parity(got, ref(x), RTOL_BF16_NMN, f"bf16 {variant} seed {seed}")
        assert_parity(got, exact(x), RTOL_BF16_EXACT, f"bf16 {variant} seed {seed} vs fp32")


@pytest.mark.parametrize("mode", ["fp16", "FP32", "bfloat16", None, ""])
def test_unknown_compute_mode_is_refused(mode):
    with pytest.raises(ValueError, match=r"compute_mode must be one of \('fp32', 'mixed', 'bf16'"):
        M.YatNMN(4, 3, compute_mode=mode, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------------------
# distance_floor
# --------------------------------------------------------------------------------------
# (0.0 is the default the parity tests cover; at x = w_j the unclamped distance is rounding
# noise, which no two implementations share)
@pytest.mark.parametrize("floor", [1e-3, 0.5, 4.0])
def test_distance_floor_clamps_the_distance_as_nmn(floor):
    ours, ref = _pair(distance_floor=floor)
    # the first rows are kernel columns themselves (distance 0), so the floor acts there
    x = jnp.concatenate([ours.kernel[...].T[:2], _x((3, 6))])
    got = ours(x)
    assert_parity(got, ref(x), RTOL_F32, f"distance_floor={floor}")
    kernel, bias, scalars = ours.kernel[...], ours._bias_array(), ours._scalars()
    expected = nmn_array.yat(x, kernel.T, bias, distance_floor=floor, **scalars)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=0)
    # at x = w_j the output is alpha (x.w_j + b_j)^2 / (floor + epsilon), not the unclamped
    unclamped = nmn_array.yat(x, kernel.T, bias, **scalars)
    assert not np.allclose(np.asarray(got[:2]), np.asarray(unclamped[:2]))


@pytest.mark.parametrize("floor", [-1e-3, float("nan"), float("inf")])
def test_bad_distance_floor_is_refused(floor):
    with pytest.raises(ValueError, match="distance_floor must be a non-negative finite"):
        M.YatNMN(4, 3, distance_floor=floor, rngs=nnx.Rngs(0))


def test_distance_floor_in_bf16_mode_matches_nmn():
    ours, ref = _pair(compute_mode="bf16", distance_floor=0.25)
    x = jnp.concatenate([ours.kernel[...].T[:2], _x((3, 6))])
    assert_parity(ours(x).astype(jnp.float32), ref(x), RTOL_BF16_NMN, "bf16 floor 0.25")


# --------------------------------------------------------------------------------------
# fused
# --------------------------------------------------------------------------------------
def _grads(layer, x):
    def loss(model, x):
        return jnp.sum(model(x) ** 2)

    return nnx.grad(loss, argnums=(0, 1))(layer, x)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_is_unfused_and_matches_nmn_fused(variant):
    kwargs = VARIANTS[variant]
    fused, ref = _pair(fused=True, **kwargs)
    plain, _ = _pair(**kwargs)
    x = _x()
    out = fused(x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain(x)))
    assert_parity(out, ref(x), RTOL_F32, f"fused {variant}")
    (g_model, g_x), (r_model, r_x) = _grads(fused, x), _grads(ref, x)
    assert_parity(g_x, r_x, RTOL_F32, f"fused {variant} d/dx")
    ours_state, ref_state = nnx.state(g_model, nnx.Param), nnx.state(r_model, nnx.Param)
    for name in ("kernel", "bias", "alpha", "epsilon_param"):
        if name in ours_state:
            assert_parity(ours_state[name][...], ref_state[name][...], RTOL_F32, f"d/d{name}")
            assert bool(jnp.isfinite(ours_state[name][...]).all())


# --------------------------------------------------------------------------------------
# fused_yat_l1_attention, fused_yat_l1_self_attention
# --------------------------------------------------------------------------------------
_fused = pytest.importorskip("nmn.nnx.layers.attention.fused_yat_attention")


def _qkv(lq=5, lk=5, heads=2, d=4, dv=3, batch=(2,)):
    keys = jax.random.split(jax.random.key(7), 3)
    shapes = ((*batch, lq, heads, d), (*batch, lk, heads, d), (*batch, lk, heads, dv))
    return tuple(jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes, strict=True))


def _attention_cases():
    q, k, v = _qkv(lq=4, lk=6)
    bias = jax.random.normal(jax.random.key(3), (2, 4, 6), jnp.float32)  # (heads, Lq, Lk)
    mask = jax.random.bernoulli(jax.random.key(4), 0.6, (1, 2, 4, 6)).at[..., 0, :].set(False)
    return {
        "plain": ((q, k, v), {}),
        "bias_mask_scale": ((q, k, v), {"bias": bias, "mask": mask, "scale": 0.7}),
        "array_epsilon": ((q, k, v), {"epsilon": jnp.asarray(0.3, jnp.float32)}),
    }


@pytest.mark.parametrize("case", sorted(_attention_cases()))
def test_fused_yat_l1_attention_matches_nmn(case):
    args, kwargs = _attention_cases()[case]
    got = M.fused_yat_l1_attention(*args, **kwargs)
    assert_parity(got, _fused.fused_yat_l1_attention(*args, **kwargs), RTOL_F32, case)

    def loss(fn, q, k, v):
        return jnp.sum(jnp.sin(fn(q, k, v, **kwargs)))

    ours = jax.grad(lambda *a: loss(M.fused_yat_l1_attention, *a), argnums=(0, 1, 2))(*args)
    ref = jax.grad(lambda *a: loss(_fused.fused_yat_l1_attention, *a), argnums=(0, 1, 2))(*args)
    for name, g, r in zip("qkv", ours, ref, strict=True):
        assert bool(jnp.isfinite(g).all())
        assert_parity(g, r, RTOL_F32, f"{case} d/d{name}")


def test_fused_yat_l1_attention_fully_masked_query_gets_zeros():
    (q, k, v), kwargs = _attention_cases()["bias_mask_scale"]
    out = M.fused_yat_l1_attention(q, k, v, **kwargs)
    np.testing.assert_array_equal(np.asarray(out[:, 0]), 0.0)  # query 0 sees no key


def _self_attention_reference(x, v, bias=0.0, epsilon=1e-5, scale=None):
    """The formula of nmn's docstring in float64 NumPy, the distances as direct sums of
    squares (exactly 0 on the diagonal)."""
    x, v, bias = (np.asarray(a, np.float64) for a in (x, v, bias))
    xh = np.moveaxis(x, -2, -3)  # (*batch, heads, L, d)
    dot = xh @ np.swapaxes(xh, -1, -2)
    dist = ((xh[..., :, None, :] - xh[..., None, :, :]) ** 2).sum(-1)
    scores = (dot + bias) ** 2 / ((dist + epsilon) * (scale or np.sqrt(x.shape[-1])))
    weights = scores * (1 - np.eye(x.shape[-3])) / (scores.sum(-1, keepdims=True) + 1e-12)
    return np.moveaxis(weights @ np.moveaxis(v, -2, -3), -3, -2)


def test_fused_yat_l1_self_attention_default_epsilon():
    """With epsilon 1e-5 the diagonal score dominates the normaliser and nmn's float32
    distance of x to itself (|x|^2 + |x|^2 - 2 x.x, rounding noise against 1e-5) moves the
    output by up to 1.8e-2 (scaled); ours is exact there, so the float64 formula is the
    reference."""
    x, _, v = _qkv(lq=5, lk=5, dv=3)
    got = M.fused_yat_l1_self_attention(x, v)
    assert_parity(got, _self_attention_reference(x, v), RTOL_F32, "self default epsilon")


@pytest.mark.parametrize("case", ["bias_scale_epsilon", "epsilon"])
def test_fused_yat_l1_self_attention_matches_nmn(case):
    x, _, v = _qkv(lq=5, lk=5, dv=3)
    kwargs = {"epsilon": 0.05}
    if case == "bias_scale_epsilon":
        bias = jax.random.normal(jax.random.key(5), (2, 5, 5), jnp.float32)
        kwargs.update(bias=bias, scale=1.5)
    got = M.fused_yat_l1_self_attention(x, v, **kwargs)
    assert_parity(got, _fused.fused_yat_l1_self_attention(x, v, **kwargs), RTOL_F32, case)
    expected = _self_attention_reference(x, v, **kwargs)
    assert_parity(got, expected, RTOL_F32, f"{case} float64 formula")
    # the diagonal counts in the normaliser: the weights of a row sum to less than 1
    ones = jnp.ones_like(v)
    assert bool((M.fused_yat_l1_self_attention(x, ones, **kwargs) < 1).all())

    def loss(fn, x, v):
        return jnp.sum(jnp.sin(fn(x, v, **kwargs)))

    ours = jax.grad(lambda *a: loss(M.fused_yat_l1_self_attention, *a), argnums=(0, 1))(x, v)
    ref = jax.grad(lambda *a: loss(_fused.fused_yat_l1_self_attention, *a), argnums=(0, 1))(x, v)
    for name, g, r in zip("xv", ours, ref, strict=True):
        assert bool(jnp.isfinite(g).all())
        assert_parity(g, r, RTOL_F32, f"self {case} d/d{name}")
