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


def copy_weights(theirs, mine) -> None:
    """Give ``mine`` nmn's parameters (randomised first: nmn starts bias at 0, alpha at 1)."""
    t, m = flat(theirs.parameters()), flat(mine.parameters())
    assert sorted(t) == sorted(m), f"parameter names differ: nmn {sorted(t)}, ours {sorted(m)}"
    for name, value in t.items():
        assert tuple(m[name].shape) == tuple(value.shape), (name, m[name].shape, value.shape)
        if name in ("bias", "alpha"):
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
