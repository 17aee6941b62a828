"""MLX modules of nmn_array: parity with nmn.mlx 0.3.5, gradients, mx.compile, errors.

nmn.mlx computes float64 natively on the CPU, so dense parity runs in float64 to 1e-10
(scaled error). Its convolutions call ``mx.conv_general``, whose float64 results are only
float32-accurate in MLX 0.32 (measured: 3e-7 relative against NumPy), so conv parity allows
``RTOL_CONV``; ours (nmn_array's portable correlation) is checked to 1e-10 against the same
function run in NumPy float64. A float32 pass checks the default dtype to 1e-4 (the expanded distance cancels in
float32 near x == w, in both libraries, in different orders). Weights are copied from nmn's
module into ours BY PARAMETER NAME, after checking that both have the same names and shapes.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import nmn.mlx as ref
import numpy as np
import pytest
from mlx.utils import tree_map
from nmn_array.frameworks import mlx as ours

import nmn_array
from tests.frameworks._parity import RTOL_F32, RTOL_F64, assert_parity

RTOL_CONV = 2e-6  # nmn.mlx's float64 convolutions are float32-accurate (see above)
rng = np.random.default_rng(20261204)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Data depends on the test alone, not on which tests ran before it."""
    global rng
    seed = zlib.crc32(request.node.name.encode())
    rng = np.random.default_rng(seed)
    mx.random.seed(seed % 2**31)


def normal(*shape, dtype=mx.float64):
    return mx.array(rng.normal(size=shape), dtype=dtype)


def flat(params: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


#: nmn.mlx's RotaryYatAttention keeps its RoPE tables as (trainable) parameters; ours
#: computes RoPE from the positions (docs/frameworks/mlx.md)
ROPE_TABLES = ("freqs_cos", "freqs_sin")


def copy_weights(theirs, mine) -> None:
    """Give ``mine`` nmn's parameters (randomised first: nmn starts biases at 0, alpha at 1)."""
    t, m = flat(theirs.parameters()), flat(mine.parameters())
    t = {name: value for name, value in t.items() if name not in ROPE_TABLES}
    assert sorted(t) == sorted(m), f"parameter names differ: nmn {sorted(t)}, ours {sorted(m)}"
    for name, value in t.items():
        assert tuple(m[name].shape) == tuple(value.shape), (name, m[name].shape, value.shape)
        if name in ("bias", "alpha") or name.endswith("_bias"):
            value = mx.array(rng.uniform(0.5, 1.5, size=value.shape), dtype=value.dtype)
            theirs[name] = value
        mine[name] = value


def pair(make, x):
    """An nmn.mlx module and ours, both built on ``x``, with the same weights."""
    theirs, mine = make(ref), make(ours)
    theirs(x)
    mine(x)
    copy_weights(theirs, mine)
    return theirs, mine


DENSE = [
    {},
    {"use_bias": False},
    {"constant_bias": 0.5},
    {"use_alpha": False},
    {"constant_alpha": True},
    {"constant_alpha": 2.5, "constant_bias": -1.0},
    {"spherical": True},
    {"weight_normalized": True},
    {"spherical": True, "weight_normalized": True},
    {"learnable_epsilon": True, "epsilon": 1e-3},
    {"positive_init": True},
    {"epsilon": 0.1},
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kw", DENSE, ids=lambda kw: ",".join(kw) or "default")
def test_dense_matches_nmn(kw, dtype):
    dt = getattr(mx, dtype)
    x = normal(2, 3, 5, dtype=dt)
    theirs, mine = pair(lambda lib: lib.YatNMN(4, dtype=dt, **kw), x)
    got, want = mine(x), theirs(x)
    assert got.dtype == dt and got.shape == (2, 3, 4)
    rtol = RTOL_F64 if dtype == "float64" else RTOL_F32
    assert_parity(got, want, rtol, f"mlx YatNMN {kw} {dtype}")


def test_dense_alias_return_weights_and_weight_lists():
    x = normal(3, 5)
    theirs, mine = pair(
        lambda lib: lib.YatDense(4, dtype=mx.float64, return_weights=True, learnable_epsilon=True),
        x,
    )
    (y, kernel), (y_ref, kernel_ref) = mine(x), theirs(x)
    assert ours.YatDense is ours.YatNMN
    assert_parity(y, y_ref, RTOL_F64, "mlx YatDense return_weights")
    np.testing.assert_array_equal(np.array(kernel), np.array(kernel_ref))
    # get_weights: nmn's order [kernel, bias, alpha, epsilon_param]; set_weights round trips
    mine_w, ref_w = mine.get_weights(), theirs.get_weights()
    assert [tuple(w.shape) for w in mine_w] == [tuple(w.shape) for w in ref_w]
    for a, b in zip(mine_w, ref_w):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    fresh = ours.YatNMN(4, dtype=mx.float64, learnable_epsilon=True)
    fresh(x)
    fresh.set_weights(ref_w)
    assert_parity(fresh(x), y_ref, RTOL_F64, "mlx YatNMN set_weights")
    with pytest.raises(ValueError, match="Expected 4 weight tensors, got 1"):
        fresh.set_weights(ref_w[:1])
    with pytest.raises(ValueError, match="weight 'kernel' has shape"):
        fresh.set_weights([mx.zeros((5, 4), dtype=mx.float64), *ref_w[1:]])


def _conv_cases():
    cases = []
    for nd in (1, 2, 3):
        size = {1: 11, 2: 7, 3: 5}[nd]
        for kw in (
            {},
            {"padding": "same", "strides": 2},
            {"padding": 1, "dilation_rate": 2},
            {"padding": "valid", "groups": 2, "strides": 2},
            {"padding": "CIRCULAR"},
            {"padding": "REFLECT", "kernel_size": 2},
            {"weight_normalized": True, "constant_alpha": True},
            {"constant_bias": 0.25, "learnable_epsilon": True},
            {"use_bias": False, "use_alpha": False},
        ):
            cases.append((nd, size, kw))
    cases.append((1, 9, {"padding": "CAUSAL", "dilation_rate": 2}))
    cases.append((2, 7, {"padding": (1, 2)}))
    return cases


def _ref_dtype(nd: int, kw: dict) -> tuple[Any, float]:
    """The dtype nmn.mlx can run a case in, and the parity tolerance there: MLX's CPU
    convolution has no float64 kernel for dilation or groups, and no groups in 3-D at all."""
    if kw.get("dilation_rate", 1) != 1 or kw.get("groups", 1) != 1:
        return mx.float32, RTOL_F32
    return mx.float64, RTOL_CONV


@pytest.mark.parametrize(
    ("nd", "size", "kw"),
    [c for c in _conv_cases() if not (c[0] == 3 and "groups" in c[2])],
    ids=lambda v: ",".join(f"{k}={w}" for k, w in v.items()) if isinstance(v, dict) else str(v),
)
def test_conv_matches_nmn(nd, size, kw):
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    name = f"YatConv{nd}D"
    ref_dtype, rtol = _ref_dtype(nd, kw)
    x = normal(2, *(size,) * nd, 4, dtype=ref_dtype)
    theirs, mine = pair(lambda lib: getattr(lib, name)(6, k, dtype=ref_dtype, **kw), x)
    got, want = mine(x), theirs(x)
    assert got.shape == want.shape and got.dtype == ref_dtype
    assert_parity(got, want, rtol, f"mlx {name} {kw}")
    # float64 accuracy of ours, whatever nmn.mlx could run in: the same weights in float64
    x = x.astype(mx.float64)
    mine = getattr(ours, name)(6, k, dtype=mx.float64, **kw)
    mine(x)
    mine.update(tree_map(lambda a: a.astype(mx.float64), theirs.parameters()))
    got = mine(x)
    # float64 accuracy: the same call in NumPy float64 (nmn.mlx's kernel layout moved by hand)
    kernel = np.moveaxis(np.array(mine.kernel), -1, 1)
    bias = np.array(mine.bias) if "bias" in mine else mine._yat_args()["bias"]
    args = mine._yat_args()
    alpha = np.array(args["alpha"]) if isinstance(args["alpha"], mx.array) else args["alpha"]
    eps = args["epsilon"]
    eps = np.array(eps.astype(mx.float64)) if isinstance(eps, mx.array) else eps
    exact = nmn_array.yat_conv(
        np.array(x),
        kernel,
        bias,
        stride=mine.strides,
        padding=mine._pad,
        dilation=mine.dilation_rate,
        groups=mine.groups,
        padding_mode=mine._pad_mode,
        data_format="channels_last",
        weight_normalized=mine.weight_normalized,
        alpha=alpha,
        epsilon=eps,
    )
    assert_parity(got, exact, RTOL_F64, f"mlx {name} {kw} vs numpy float64")


def test_grouped_3d_conv_which_nmn_cannot_run():
    # MLX's conv has no groups in 3-D ("Can only handle groups != 1 in 1D or 2D"): nmn.mlx
    # raises, ours (the portable correlation) runs and equals the per-group convolutions
    x = normal(2, 5, 5, 5, 4)
    theirs = ref.YatConv3D(6, 3, groups=2, dtype=mx.float64)
    with pytest.raises(ValueError, match="groups"):
        theirs(x)
    mine = ours.YatConv3D(6, 3, groups=2, dtype=mx.float64, use_bias=False)
    got = mine(x)
    for g in range(2):
        half = ours.YatConv3D(3, 3, dtype=mx.float64, use_bias=False)
        half(x[..., 2 * g : 2 * g + 2])
        half.kernel = mine.kernel[3 * g : 3 * g + 3]
        assert_parity(got[..., 3 * g : 3 * g + 3], half(x[..., 2 * g : 2 * g + 2]), RTOL_F64)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_float32_matches_nmn(nd):
    x = normal(2, *(6,) * nd, 4, dtype=mx.float32)
    name = f"YatConv{nd}d"
    groups = 2 if nd < 3 else 1  # (MLX's conv has no 3-D groups)
    theirs, mine = pair(lambda lib: getattr(lib, name)(6, 3, padding="same", groups=groups), x)
    got = mine(x)
    assert got.dtype == mx.float32
    assert_parity(got, theirs(x), RTOL_F32, f"mlx {name} float32")


def test_gradients_match_nmn():
    x = normal(3, 5)
    theirs, mine = pair(lambda lib: lib.YatNMN(4, dtype=mx.float64, learnable_epsilon=True), x)

    def loss(model, inputs):
        return mx.sum(model(inputs) ** 2)

    (v_ref, g_ref), (v, g) = (nn.value_and_grad(m, loss)(m, x) for m in (theirs, mine))
    assert_parity(v, v_ref, RTOL_F64, "mlx YatNMN loss")
    g_ref, g = flat(g_ref), flat(g)
    assert sorted(g) == ["alpha", "bias", "epsilon_param", "kernel"]
    for name in g:
        assert_parity(g[name], g_ref[name], 1e-9, f"mlx YatNMN d/d{name}")


def test_conv_gradients_match_nmn():
    x = normal(2, 6, 6, 4)
    theirs, mine = pair(lambda lib: lib.YatConv2D(6, 3, padding="same", dtype=mx.float64), x)

    def loss(model, inputs):
        return mx.sum(model(inputs) ** 2)

    _, g_ref = nn.value_and_grad(theirs, loss)(theirs, x)
    _, g = nn.value_and_grad(mine, loss)(mine, x)
    for name in ("kernel", "bias", "alpha"):
        assert_parity(g[name], g_ref[name], 10 * RTOL_CONV, f"mlx YatConv2D d/d{name}")


def test_compile_equals_eager():
    x = normal(2, 7, 7, 4, dtype=mx.float32)
    layer = ours.YatConv2D(6, 3, padding="same")
    eager = layer(x)
    compiled = mx.compile(lambda inputs: layer(inputs))
    np.testing.assert_allclose(np.array(compiled(x)), np.array(eager), rtol=1e-6, atol=1e-6)


def test_lazy_freezes_only_the_kernel():
    for flag in ({"lazy": True}, {"freeze_kernel": True}):
        layer = ours.YatNMN(4, learnable_epsilon=True, **flag)
        layer(normal(2, 3, dtype=mx.float32))
        assert sorted(flat(layer.trainable_parameters())) == ["alpha", "bias", "epsilon_param"]
        assert "kernel" in flat(layer.parameters())


def test_dropconnect_only_when_not_deterministic():
    x = normal(3, 5, dtype=mx.float32)
    layer = ours.YatNMN(4, use_dropconnect=True, drop_rate=0.5)
    plain = layer(x)
    np.testing.assert_array_equal(np.array(layer(x, deterministic=True)), np.array(plain))
    mx.random.seed(7)
    dropped = layer(x, deterministic=False)
    # the same draw by hand: kept weights scaled by 1 / (1 - rate), dropped ones 0
    mx.random.seed(7)
    keep = mx.random.bernoulli(0.5, layer.kernel.shape)
    manual = ours.YatNMN(4)
    manual(x)
    manual.update(layer.parameters())
    manual.kernel = mx.where(keep, layer.kernel * 2.0, mx.zeros_like(layer.kernel))
    np.testing.assert_allclose(np.array(dropped), np.array(manual(x)), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.array(dropped), np.array(plain))


def test_float16_is_computed_in_float32():
    # Decision 3 (nmn.mlx computes in float16 itself): ours is the float32 result, rounded
    x32 = normal(4, 8, dtype=mx.float32)
    layer = ours.YatNMN(5, dtype=mx.float16)
    y16 = layer(x32.astype(mx.float16))
    assert y16.dtype == mx.float16
    wide = ours.YatNMN(5, dtype=mx.float32)
    wide(x32)
    wide.update(
        {k: v.astype(mx.float32) for k, v in flat(layer.parameters()).items() if "." not in k}
    )
    want = np.array(wide(x32.astype(mx.float16).astype(mx.float32)))
    np.testing.assert_allclose(np.array(y16.astype(mx.float32)), want, rtol=1e-3, atol=1e-3)


def test_learnable_epsilon_initialisation():
    # Decision 11: softplus(theta) = epsilon with theta = eps + log(-expm1(-eps)), stored in
    # float32 for a float16 layer (softplus^-1(1e-5) = -11.5 is fine there, 1e-5 is not)
    layer = ours.YatNMN(3, dtype=mx.float16, learnable_epsilon=True, epsilon=1e-5)
    layer(normal(2, 4, dtype=mx.float16))
    theta = layer.epsilon_param
    assert theta.dtype == mx.float32
    assert math.isclose(theta.item(), 1e-5 + math.log(-math.expm1(-1e-5)), rel_tol=1e-6)
    assert math.isclose(nn.softplus(theta.astype(mx.float64)).item(), 1e-5, rel_tol=1e-6)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="drop_rate must be in"):
        ours.YatNMN(4, drop_rate=1.0)
    with pytest.raises(ValueError, match="epsilon must be a positive finite float"):
        ours.YatNMN(4, epsilon=0.0)
    with pytest.raises(ValueError, match="features must be a positive int, got 0"):
        ours.YatNMN(0)
    with pytest.raises(TypeError, match="expected a floating dtype"):
        ours.YatNMN(4, dtype=mx.int32)
    with pytest.raises(ValueError, match="filters \\(5\\) must be divisible by groups \\(2\\)"):
        ours.YatConv2D(5, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size must be an int or 2 ints"):
        ours.YatConv2D(4, (3, 3, 3))
    with pytest.raises(ValueError, match="padding must be 'SAME', 'VALID'"):
        ours.YatConv1D(4, 3, padding="FULL")
    with pytest.raises(ValueError, match="Causal padding is only implemented for 1D"):
        ours.YatConv2D(4, 3, padding="CAUSAL")
    conv = ours.YatConv2D(4, 3, groups=2)
    with pytest.raises(ValueError, match="Input channels \\(3\\) must be divisible by groups"):
        conv(normal(1, 5, 5, 3, dtype=mx.float32))
    with pytest.raises(ValueError, match="expected input with 4 dims .* got shape \\(5, 5, 2\\)"):
        conv(normal(5, 5, 2, dtype=mx.float32))
    conv(normal(1, 5, 5, 2, dtype=mx.float32))
    with pytest.raises(ValueError, match="Input channels changed: expected 2, got 4"):
        conv(normal(1, 5, 5, 4, dtype=mx.float32))
    dense = ours.YatNMN(4)
    dense(normal(2, 3, dtype=mx.float32))
    with pytest.raises(ValueError, match="expected last dimension 3, got 6"):
        dense(normal(2, 6, dtype=mx.float32))
    with pytest.raises(TypeError, match="inputs must be an mlx.core.array, got ndarray"):
        dense(np.ones((2, 3), dtype=np.float32))


EMBED = [
    {},
    {"spherical": True},
    {"constant_alpha": True},
    {"use_alpha": False, "epsilon": 0.1},
    {"weight_normalized": True},
]


@pytest.mark.parametrize("kw", EMBED, ids=lambda kw: ",".join(kw) or "default")
def test_embed_matches_nmn(kw):
    theirs = ref.YatEmbed(12, 6, dtype=mx.float64, **kw)
    mine = ours.YatEmbed(12, 6, dtype=mx.float64, **kw)
    if kw.get("weight_normalized"):
        # normalised once at construction, as nmn.mlx does (Decision 7)
        norms = np.linalg.norm(np.array(mine.embedding), axis=1)
        np.testing.assert_allclose(norms, 1.0, rtol=1e-7)
    copy_weights(theirs, mine)
    ids = mx.array(rng.integers(0, 12, size=(2, 5)), dtype=mx.int32)
    np.testing.assert_array_equal(np.array(mine(ids)), np.array(theirs(ids)))
    q = normal(2, 5, 6)
    got = mine.attend(q)
    assert got.shape == (2, 5, 12) and got.dtype == mx.float64
    assert_parity(got, theirs.attend(q), RTOL_F64, f"mlx YatEmbed.attend {kw}")


def test_embed_errors():
    emb = ours.YatEmbed(10, 4)
    with pytest.raises(ValueError, match="YatEmbed inputs must be an integer mx.array"):
        emb(mx.array([1.0, 2.0], dtype=mx.float32))
    with pytest.raises(
        ValueError, match="query must have shape \\(..., 4\\), got shape \\(2, 5\\)"
    ):
        emb.attend(normal(2, 5, dtype=mx.float32))
    with pytest.raises(ValueError, match="num_embeddings must be a positive int"):
        ours.YatEmbed(0, 4)
    with pytest.raises(ValueError, match="features must be a positive int"):
        ours.YatEmbed(10, -1)


TRANSPOSE = [
    (1, {"strides": 2}),
    (1, {"strides": 2, "padding": 1, "output_padding": 1}),
    (1, {"strides": 2, "padding": "same", "kernel_size": 4}),
    (1, {"strides": 3, "padding": "same", "kernel_size": 2}),
    (1, {"strides": 2, "padding": "same", "output_padding": 1}),
    (1, {"strides": 1, "padding": "same", "dilation_rate": 2}),
    (2, {"strides": 2, "padding": "same", "constant_alpha": True}),
    (2, {"strides": (2, 1), "padding": (1, 0), "learnable_epsilon": True}),
    (3, {"strides": 2, "constant_bias": 0.5}),
    (3, {"strides": 2, "padding": "same", "use_bias": False, "use_alpha": False}),
]


@pytest.mark.parametrize(("nd", "kw"), TRANSPOSE, ids=lambda v: str(v))
def test_conv_transpose_matches_nmn(nd, kw):
    # MLX's conv_transpose has no float64 kernel: nmn.mlx runs in float32 only
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    name = f"YatConvTranspose{nd}D"
    x = normal(2, *(5,) * nd, 3, dtype=mx.float32)
    theirs, mine = pair(lambda lib: getattr(lib, name)(4, k, **kw), x)
    got, want = mine(x), theirs(x)
    assert got.shape == want.shape and got.dtype == mx.float32
    assert_parity(got, want, RTOL_F32, f"mlx {name} {kw}")
    # ours in float64 with the same weights: float64-accurate against NumPy
    x64 = x.astype(mx.float64)
    mine64 = getattr(ours, name)(4, k, dtype=mx.float64, **kw)
    mine64(x64)
    mine64.update(tree_map(lambda a: a.astype(mx.float64), mine.parameters()))
    got64 = mine64(x64)
    assert got64.dtype == mx.float64
    assert_parity(got64, want, RTOL_F32, f"mlx {name} {kw} float64")
    pads, output_padding, target = mine64._torch_padding(x.shape[1:-1])
    args = mine64._yat_args()
    eps = args["epsilon"]
    exact = nmn_array.yat_conv_transpose(
        np.array(x64),
        np.moveaxis(np.array(mine64.kernel), (-1, 0), (0, 1)),
        None if args["bias"] is None else np.array(args["bias"]),
        stride=mine64.strides,
        padding=pads,
        dilation=mine64.dilation_rate,
        output_padding=output_padding,
        data_format="channels_last",
        alpha=np.array(args["alpha"]) if isinstance(args["alpha"], mx.array) else args["alpha"],
        epsilon=np.array(eps) if isinstance(eps, mx.array) else eps,
    )
    if target is not None:
        exact = exact[(slice(None), *(slice(0, t) for t in target), slice(None))]
    assert_parity(got64, exact, RTOL_F64, f"mlx {name} {kw} vs numpy float64")


def test_conv_transpose_errors():
    with pytest.raises(ValueError, match="padding must be 'valid', 'same' or ints"):
        ours.YatConvTranspose1D(4, 3, padding="CIRCULAR")
    with pytest.raises(ValueError, match="output_padding must be an int or 2 ints"):
        ours.YatConvTranspose2D(4, 3, output_padding=(1, 1, 1))
    layer = ours.YatConvTranspose2D(4, 3)
    with pytest.raises(ValueError, match="expected input with 4 dims"):
        layer(normal(2, 5, 3, dtype=mx.float32))
    layer(normal(1, 5, 5, 3, dtype=mx.float32))
    with pytest.raises(ValueError, match="Input channels changed: expected 3, got 2"):
        layer(normal(1, 5, 5, 2, dtype=mx.float32))


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------
# nmn.mlx runs float64 through MLX's float64 exp, which is float32-accurate (measured: up to
# 3e-8 in outputs, 7e-8 in gradients); ours is float64-accurate (test_attention_float64_accuracy)
RTOL_ATTN64 = 5e-7
# its RoPE tables are float32-rounded besides (|error| <= 3e-8 in each cos and sin), which
# the squared score and its division amplify (measured up to 4.2e-7, at theta=100, offset 7)
RTOL_ROPE64 = 2e-6
E, H = 8, 2


def causal(n: int) -> Any:
    return mx.tril(mx.ones((n, n), dtype=mx.bool_))


def random_mask(*shape: int) -> Any:
    """A boolean mask (True = attend) in which query 1 sees no key."""
    mask = rng.random(shape) < 0.7
    mask[..., 0] = True
    mask[..., 1, :] = False
    return mx.array(mask)


def numpy_attention(module, x, mask=None, *, positions=None, keep=None) -> np.ndarray:
    """``module``'s output on self-attention over ``x``, from its parameters, by nmn_array's
    pure functions on NumPy float64: projections, heads, ``normalize_qk`` (Decision 2: ``q /
    max(|q|, 1e-12)``), RoPE at ``positions``, attention (``keep``: the dropout draw on its
    weights), merge, output projection, zeros for the queries that see no key."""
    w = {k: np.array(v.astype(mx.float64)) for k, v in flat(module.parameters()).items()}
    x = np.array(x.astype(mx.float64))
    b, length, _ = x.shape

    def project(t, name):
        return t @ w[f"{name}_kernel"] + w.get(f"{name}_bias", 0.0)

    def heads(name):
        return project(x, name).reshape(b, length, H, -1).transpose(0, 2, 1, 3)

    q, k, v = heads("q"), heads("k"), heads("v")
    if module._normalize_qk:
        q, k = (t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12) for t in (q, k))
    if positions is not None:
        q, k = (nmn_array.rotary_embedding(t, positions, theta=module.theta) for t in (q, k))
    alpha = module._alpha_arg()
    alpha = np.array(alpha.astype(mx.float64)) if isinstance(alpha, mx.array) else alpha
    np_mask = None if mask is None else np.array(mask)
    options = dict(mask=np_mask, alpha=alpha, epsilon=module.epsilon, spherical=module._spherical)
    options.update(normalization=module.normalization, power=module.power)
    if keep is None:
        out = nmn_array.yat_attention(q, k, v, **options)
    else:
        weights = nmn_array.yat_attention_weights(q, k, **options)
        out = np.where(keep, weights / (1.0 - module.dropout), 0.0) @ v
    out = out.transpose(0, 2, 1, 3).reshape(b, length, -1)
    out = project(out, "out") if "out_kernel" in w else out
    if np_mask is not None:
        has_key = np.broadcast_to(np_mask, (b, H, length, length)).any(axis=(1, 3))
        out = np.where(has_key[..., None], out, 0.0)
    return out


MHA = [
    {},
    {"use_bias": False},
    {"constant_alpha": True},
    {"constant_alpha": 0.5, "epsilon": 0.1},
    {"use_alpha": False},
    {"spherical": True},
    {"use_out_proj": False},
    {"dropout": 0.3},  # (called with training=False: no dropout)
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kw", MHA, ids=lambda kw: ",".join(kw) or "default")
def test_attention_matches_nmn(kw, dtype):
    dt = getattr(mx, dtype)
    x = normal(2, 6, E, dtype=dt)
    theirs, mine = pair(lambda lib: lib.MultiHeadYatAttention(E, H, dtype=dt, **kw), x)
    rtol = RTOL_ATTN64 if dtype == "float64" else RTOL_F32
    got = mine(x)
    assert got.dtype == dt and got.shape == (2, 6, E)
    assert_parity(got, theirs(x), rtol, f"mlx MultiHeadYatAttention {kw} {dtype}")
    # a mask per head with a query that sees no key: zeros there, after the output bias
    mask = random_mask(2, H, 6, 6)
    got = mine(x, mask=mask)
    assert not np.array(got)[:, 1].any()
    assert_parity(got, theirs(x, mask=mask), rtol, f"mlx MultiHeadYatAttention {kw} masked")


def test_cross_attention_matches_nmn():
    q, kv = normal(2, 6, E), normal(2, 4, E)
    theirs, mine = pair(lambda lib: lib.MultiHeadYatAttention(E, H, dtype=mx.float64), q)
    mask = random_mask(2, 1, 6, 4)
    got = mine(q, kv, kv, mask)
    assert got.shape == (2, 6, E)
    assert_parity(got, theirs(q, kv, kv, mask), RTOL_ATTN64, "mlx cross-attention")
    # key and value of their own feature sizes (nmn.mlx builds every kernel from the query's)
    wide = ours.MultiHeadYatAttention(E, H, dtype=mx.float64)
    assert wide(q, normal(2, 4, 5), normal(2, 4, 3)).shape == (2, 6, E)
    assert [wide[n].shape for n in ("q_kernel", "k_kernel", "v_kernel")] == [(8, 8), (5, 8), (3, 8)]


ROTARY = [
    {},
    {"use_bias": False},
    {"constant_alpha": True, "theta": 100.0},
    {"use_alpha": False, "epsilon": 0.1},
    {"use_out_proj": False},
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kw", ROTARY, ids=lambda kw: ",".join(kw) or "default")
def test_rotary_matches_nmn(kw, dtype):
    dt = getattr(mx, dtype)
    x = normal(2, 5, E, dtype=dt)
    theirs, mine = pair(lambda lib: lib.RotaryYatAttention(E, H, 16, dtype=dt, **kw), x)
    rtol = RTOL_ROPE64 if dtype == "float64" else RTOL_F32
    case = f"mlx RotaryYatAttention {kw} {dtype}"
    assert_parity(mine(x), theirs(x), rtol, case)
    assert_parity(mine(x, position_offset=7), theirs(x, position_offset=7), rtol, case + " +7")
    mask = random_mask(2, 1, 5, 5)
    assert_parity(mine(x, mask=mask), theirs(x, mask=mask), rtol, case + " masked")


def test_rotary_input_width_and_checkpoint_of_nmn(tmp_path):
    # nmn.mlx builds (input_dim, embed_dim) projections for any input width; its RoPE tables
    # freqs_cos / freqs_sin are parameters there (trainable), which ours does not have
    x = normal(2, 5, 6)
    theirs = ref.RotaryYatAttention(E, H, 16, dtype=mx.float64)
    theirs(x)
    path = str(tmp_path / "rotary.npz")  # (safetensors has no float64)
    theirs.save_weights(path)
    mine = ours.RotaryYatAttention(E, H, 16, dtype=mx.float64)
    mine.build(6)
    with pytest.raises(ValueError, match="freqs_cos"):
        mine.load_weights(path)
    mine.load_weights(path, strict=False)
    assert_parity(mine(x), theirs(x), RTOL_ROPE64, "mlx rotary from nmn's checkpoint")
    assert "freqs_cos" in flat(theirs.trainable_parameters())
    # MultiHeadYatAttention's checkpoints load as they are
    theirs = ref.MultiHeadYatAttention(E, H, dtype=mx.float64)
    theirs(normal(2, 5, E))
    theirs.save_weights(path)
    mine = ours.MultiHeadYatAttention(E, H, dtype=mx.float64)
    mine.build(E)
    mine.load_weights(path)
    x = normal(2, 5, E)
    assert_parity(mine(x), theirs(x), RTOL_ATTN64, "mlx attention from nmn's checkpoint")


@pytest.mark.parametrize("kind", ["mha", "rotary"])
def test_attention_float64_accuracy(kind):
    x = normal(2, 5, E)
    options = {"normalize_qk": True, "constant_alpha": 1.5, "epsilon": 1e-3}
    if kind == "mha":
        mine = ours.MultiHeadYatAttention(E, H, dtype=mx.float64, spherical=True, **options)
    else:
        mine = ours.RotaryYatAttention(
            E, H, 16, dtype=mx.float64, normalization="softermax", power=2.0, **options
        )
    mine(x)
    mine.update(
        tree_map(lambda a: mx.array(rng.normal(size=a.shape), dtype=a.dtype), mine.parameters())
    )
    mask = random_mask(2, 1, 5, 5)
    if kind == "mha":
        got, want = mine(x, mask=mask), numpy_attention(mine, x, mask)
    else:
        got = mine(x, mask=mask, position_offset=3)
        want = numpy_attention(mine, x, mask, positions=np.arange(3, 8))
    assert got.dtype == mx.float64
    assert_parity(got, want, RTOL_F64, f"mlx {kind} vs numpy float64")


def test_normalize_qk_is_decision_2():
    # ours: q / max(|q|, 1e-12) per head; nmn.mlx: q / sqrt(|q|^2 + 1e-6), which is far from
    # unit length for projections of norm ~1e-3 (Decision 2)
    x = normal(2, 5, E)
    theirs, mine = pair(
        lambda lib: lib.MultiHeadYatAttention(E, H, dtype=mx.float64, normalize_qk=True), x
    )
    for module in (theirs, mine):
        module.q_kernel = mine.q_kernel * 1e-3
        module.k_kernel = mine.k_kernel * 1e-3
        module.q_bias = module.k_bias = mx.zeros((E,), dtype=mx.float64)
    got = mine(x)
    assert_parity(got, numpy_attention(mine, x), RTOL_F64, "mlx normalize_qk (Decision 2)")
    from tests.frameworks._parity import scaled_error

    assert scaled_error(got, theirs(x)) > 1e-3  # nmn.mlx's rule differs, as documented


def test_floating_masks_are_additive():
    # nmn.mlx casts any mask to bool; ours reads a floating mask as additive logits (as the
    # tf and keras modules do): -inf hides a key, 0 leaves it, other values shift the score
    x = normal(2, 5, E)
    mine = ours.MultiHeadYatAttention(E, H, dtype=mx.float64)
    mask = random_mask(2, 1, 5, 5)
    additive = mx.where(mask, 0.0, -math.inf).astype(mx.float64)
    np.testing.assert_array_equal(np.array(mine(x, mask=additive)), np.array(mine(x, mask=mask)))
    shifted = mine(x, mask=mx.zeros((5, 5), dtype=mx.float64) + mx.eye(5, dtype=mx.float64))
    assert scaled_error_above(shifted, mine(x), 1e-6)
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        mine(x, mask=mx.ones((5, 5), dtype=mx.int32))


def scaled_error_above(a, b, threshold: float) -> bool:
    from tests.frameworks._parity import scaled_error

    return scaled_error(a, b) > threshold


@pytest.mark.parametrize("kind", ["mha", "rotary"])
def test_attention_dropout_draw(kind):
    x = normal(2, 5, E)
    make = {
        "mha": lambda: ours.MultiHeadYatAttention(E, H, dropout=0.4, dtype=mx.float64),
        "rotary": lambda: ours.RotaryYatAttention(E, H, 16, dropout=0.4, dtype=mx.float64),
    }[kind]
    mine = make()
    plain = mine(x)
    np.testing.assert_array_equal(np.array(mine(x, training=False)), np.array(plain))
    mx.random.seed(11)
    dropped = mine(x, training=True)
    # the same draw by hand: one Bernoulli keep mask over the weights (B, H, L, L)
    mx.random.seed(11)
    keep = np.array(mx.random.bernoulli(0.6, (2, H, 5, 5)))
    positions = np.arange(5) if kind == "rotary" else None
    want = numpy_attention(mine, x, keep=keep, positions=positions)
    assert_parity(dropped, want, RTOL_F64, f"mlx {kind} dropout")
    assert scaled_error_above(dropped, plain, 1e-3)


def test_attention_gradients_match_nmn():
    x = normal(2, 5, E)
    theirs, mine = pair(lambda lib: lib.MultiHeadYatAttention(E, H, dtype=mx.float64), x)
    mask = causal(5)

    def loss(model, inputs):
        return mx.sum(model(inputs, mask=mask) ** 2)

    (v_ref, g_ref), (v, g) = (nn.value_and_grad(m, loss)(m, x) for m in (theirs, mine))
    assert_parity(v, v_ref, RTOL_ATTN64, "mlx attention loss")
    g_ref, g = flat(g_ref), flat(g)
    assert sorted(g) == sorted(g_ref)
    for name in g:
        assert_parity(g[name], g_ref[name], 10 * RTOL_ATTN64, f"mlx attention d/d{name}")


def test_attention_compile_equals_eager():
    x = normal(2, 5, E, dtype=mx.float32)
    mine = ours.RotaryYatAttention(E, H, 16, normalize_qk=True)
    eager = mine(x, mask=causal(5))
    compiled = mx.compile(lambda inputs: mine(inputs, mask=causal(5)))
    np.testing.assert_allclose(np.array(compiled(x)), np.array(eager), rtol=1e-5, atol=1e-6)


# --- KV-cache decoding -----------------------------------------------------------------
def test_rotary_decode_matches_nmn():
    # a 3-token prefill, a 2-token chunk under a key-padding mask over the 5 keys cached so
    # far (nmn.mlx's form), then single tokens (one with a mask over 6 keys)
    x = normal(2, 8, E)
    theirs, mine = pair(lambda lib: lib.RotaryYatAttention(E, H, 16, dtype=mx.float64), x)
    for module in (theirs, mine):
        module.init_cache(2, 12)
    padding5 = mx.array(np.array([True, False, True, True, True]).reshape(1, 1, 1, 5))
    padding6 = mx.array(np.array([False, True, True, True, True, True]).reshape(1, 1, 1, 6))
    steps = [(0, 3, None), (3, 5, padding5), (5, 6, padding6), (6, 7, None), (7, 8, None)]
    for start, stop, mask in steps:
        chunk = x[:, start:stop]
        got, want = mine(chunk, mask=mask, decode=True), theirs(chunk, mask=mask, decode=True)
        assert_parity(got, want, RTOL_ROPE64, f"mlx rotary decode {start}:{stop}")
    assert mine.cache_index.value == theirs.cache_index == 8
    # the cache is state, not parameters (nmn.mlx's cached_key / cached_value are)
    assert sorted(flat(mine.parameters())) == sorted(
        n
        for n in flat(theirs.parameters())
        if n not in ROPE_TABLES + ("cached_key", "cached_value")
    )


@pytest.mark.parametrize("window", [None, (2, 0)], ids=["full", "window"])
@pytest.mark.parametrize("kind", ["mha", "rotary"])
def test_decode_equals_causal_forward(kind, window):
    x = normal(2, 6, E)
    if kind == "mha":
        mine = ours.MultiHeadYatAttention(E, H, dtype=mx.float64, window=window)
    else:
        mine = ours.RotaryYatAttention(E, H, 16, dtype=mx.float64, window=window)
    full = mine(x, mask=causal(6))

    def decode(first):
        outs = [mine(x[:, :first], decode=True)]
        outs += [mine(x[:, t : t + 1], decode=True) for t in range(first, 6)]
        return mx.concatenate(outs, axis=1)

    mine.init_cache(2, 8)
    assert_parity(decode(1), full, RTOL_F64, f"mlx {kind} {window} token by token")
    assert mine.cache_index.value == 6
    mine.reset_cache()
    assert mine.cache_index.value == 0 and not np.array(mine.cache_key.value).any()
    assert_parity(decode(3), full, RTOL_F64, f"mlx {kind} {window} prefill 3")
    assert "cache_key" not in flat(mine.parameters())
    # a compiled decoding step would replay a frozen cache: refused
    mine.reset_cache()
    with pytest.raises(ValueError, match="decode=True cannot run under mx.compile"):
        mx.compile(lambda t: mine(t, decode=True))(x[:, :1])


@pytest.mark.parametrize("kind", ["mha", "rotary"])
def test_cache_errors(kind):
    from tests.frameworks._rotary import check_cache_errors

    if kind == "mha":
        mine = ours.MultiHeadYatAttention(E, H)
        with pytest.raises(ValueError, match="give max_length"):
            mine.init_cache(2)
    else:
        mine = ours.RotaryYatAttention(E, H, 16)
        mine.init_cache(2)  # nmn.mlx's default: max_seq_len slots
        assert mine.cache_key.shape == (2, H, 16, E // H)
        with pytest.raises(ValueError, match="max_length \\(17\\) exceeds max_seq_len=16"):
            mine.init_cache(2, 17)
        mine = ours.RotaryYatAttention(E, H, 16)
    x = normal(2, 4, E, dtype=mx.float32)
    mine(x)
    check_cache_errors(mine, x, H)


def test_rotary_positions():
    x = normal(2, 5, E)
    mine = ours.RotaryYatAttention(E, H, 16, dtype=mx.float64)
    by_offset = mine(x, position_offset=4)
    by_positions = mine(x, positions=mx.arange(4, 9))
    assert_parity(by_positions, by_offset, RTOL_F64, "mlx rotary positions")
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        mine(x, position_offset=12)
    with pytest.raises(ValueError, match="positions reach 16"):
        mine(x, positions=mx.arange(12, 17))


# --- linear-time (performer) attention -------------------------------------------------
@pytest.mark.parametrize("causal_", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", ["slay", "maclaurin", "radial"])
@pytest.mark.parametrize("cls_name", ["MultiHeadYatAttention", "RotaryYatAttention"])
def test_performer_is_the_core_on_the_modules_projections(cls_name, kind, causal_):
    from tests.frameworks import _performer as perf

    cls = getattr(ours, cls_name)
    rotary = cls_name == "RotaryYatAttention"
    extra = dict(max_seq_len=16, normalize_qk=True) if rotary else {}
    mine = cls(perf.E, perf.H, dtype=mx.float64, **perf.performer_kwargs(kind, causal_), **extra)
    mine.build(perf.E)
    mine.update(
        tree_map(lambda a: mx.array(rng.normal(scale=0.5, size=a.shape) + 0.5, dtype=a.dtype),
                 mine.trainable_parameters())
    )  # fmt: skip
    params = {k: np.array(v) for k, v in flat(mine.parameters()).items()}
    projection = {k[len("performer_projection.") :]: v for k, v in params.items() if "." in k}
    weights = {k: v for k, v in params.items() if "." not in k}
    x = rng.normal(size=(2, perf.L, perf.E))
    mask = perf.key_padding(2, perf.L, rng)
    options = dict(
        causal=causal_, normalize_qk=rotary, positions=np.arange(perf.L) if rotary else None
    )
    case = f"mlx {cls_name} {kind} causal={causal_}"
    want = perf.reference(weights, projection, x, kind, **options)
    got = mine(mx.array(x, dtype=mx.float64))
    assert_parity(got, want, RTOL_F64, case)
    want = perf.reference(weights, projection, x, kind, mask=mask, **options)
    assert_parity(
        mine(mx.array(x, dtype=mx.float64), mask=mx.array(mask)), want, RTOL_F64, case + " masked"
    )


@pytest.mark.parametrize("cls_name", ["MultiHeadYatAttention", "RotaryYatAttention"])
def test_performer_projection_is_frozen_seeded_state(cls_name, tmp_path):
    from tests.frameworks import _performer as perf

    cls = getattr(ours, cls_name)

    def make(seed):
        mx.random.seed(seed)
        module = cls(perf.E, perf.H, **perf.performer_kwargs("slay"))
        module.build(perf.E)
        return module

    a, b, c = make(3), make(3), make(4)
    pa, pb, pc = (flat(m.performer_projection) for m in (a, b, c))
    assert sorted(pa) == ["anchors", "projections", "quad_nodes", "quad_weights"]
    for key in pa:
        np.testing.assert_array_equal(np.array(pa[key]), np.array(pb[key]))
    assert any(not np.array_equal(np.array(pa[k]), np.array(pc[k])) for k in pa)
    assert "performer_projection" not in a.trainable_parameters()
    # saved with the weights, so a reload reproduces the outputs
    path = str(tmp_path / "performer.safetensors")
    a.save_weights(path)
    c.load_weights(path)
    x = normal(2, perf.L, perf.E, dtype=mx.float32)
    np.testing.assert_array_equal(np.array(c(x)), np.array(a(x)))
    perf.check_bad_arguments(cls, rotary=cls_name == "RotaryYatAttention")
    a.init_cache(2, 8)
    with pytest.raises(ValueError, match="use_performer"):
        a(x[:, :1], decode=True)


def test_attention_errors():
    with pytest.raises(
        ValueError, match="embed_dim \\(8\\) must be divisible by num_heads \\(3\\)"
    ):
        ours.MultiHeadYatAttention(8, 3)
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 0"):
        ours.MultiHeadYatAttention(8, 0)
    with pytest.raises(ValueError, match="head_dim \\(3\\) must be even"):
        ours.RotaryYatAttention(6, 2)
    with pytest.raises(ValueError, match="dropout must be in"):
        ours.MultiHeadYatAttention(8, 2, dropout=1.0)
    with pytest.raises(ValueError, match="normalization must be"):
        ours.RotaryYatAttention(8, 2, normalization="sparsemax")
    with pytest.raises(TypeError, match="expected a floating dtype"):
        ours.MultiHeadYatAttention(8, 2, dtype=mx.int32)
    mha = ours.MultiHeadYatAttention(8, 2)
    with pytest.raises(ValueError, match="query must have shape \\(batch, length, features\\)"):
        mha(normal(5, 8, dtype=mx.float32))
    with pytest.raises(TypeError, match="query must be an mlx.core.array, got ndarray"):
        mha(np.ones((1, 5, 8), dtype=np.float32))
    mha(normal(1, 5, 8, dtype=mx.float32))
    with pytest.raises(ValueError, match="query has 6 features, the projections were built for 8"):
        mha(normal(1, 5, 6, dtype=mx.float32))
    with pytest.raises(TypeError, match="mask must be an mlx.core.array"):
        mha(normal(1, 5, 8, dtype=mx.float32), mask=np.ones((5, 5), bool))


def test_rotary_2d_positions_common_shift_and_per_sequence():
    mine = ours.RotaryYatAttention(16, 2, 64, dtype=mx.float64)
    x = normal(2, 6, 16)
    grid = np.stack([np.arange(6) // 3, np.arange(6) % 3], axis=-1)
    base = mine(x, positions=mx.array(grid))
    shifted = mine(x, positions=mx.array(grid + [5, 9]))
    assert_parity(shifted, base, 1e-12, "mlx 2-D shift")
    per_sequence = mx.array(np.stack([grid, grid + 3]))  # (B, L, 2): one grid per sequence
    assert_parity(mine(x, positions=per_sequence), base, 1e-12, "mlx per-sequence grid")
    assert scaled_error_above(mine(x, positions=mx.array(grid[::-1].copy())), base, 1e-3)


def test_attention_float16_is_computed_in_float32():
    # Decision 3: the float16 module's output is the float32 computation on its (float16)
    # weights and inputs, rounded once; nmn.mlx computes in float16 itself
    x = normal(2, 5, E, dtype=mx.float16)
    half = ours.RotaryYatAttention(E, H, 16, dtype=mx.float16)
    y16 = half(x, mask=causal(5))
    assert y16.dtype == mx.float16
    wide = ours.RotaryYatAttention(E, H, 16)
    wide(x.astype(mx.float32))
    wide.update(tree_map(lambda a: a.astype(mx.float32), half.parameters()))
    want = np.array(wide(x.astype(mx.float32), mask=causal(5)))
    np.testing.assert_allclose(np.array(y16.astype(mx.float32)), want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("cls_name", ["MultiHeadYatAttention", "RotaryYatAttention"])
def test_attention_mask_of_wrong_shape_and_empty_sequence(cls_name):
    # a (3, 3) mask for 5 tokens: our error names the argument and both shapes, not MLX's
    # broadcast error; a sequence of length 0 gives a (2, 0, E) output (the head split
    # reshapes with the batch size: -1 cannot be inferred for an empty array)
    layer = getattr(ours, cls_name)(E, H, dtype=mx.float32)
    x = normal(2, 5, E, dtype=mx.float32)
    with pytest.raises(ValueError, match=r"mask must broadcast to .*got shape \(3, 3\)"):
        layer(x, mask=mx.ones((3, 3), dtype=mx.bool_))
    assert layer(normal(2, 0, E, dtype=mx.float32)).shape == (2, 0, E)
