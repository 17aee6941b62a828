"""Tests of the naive float64 reference itself, against independent facts: closed-form
values, torch's linear convolutions, jax's transposed-convolution padding, and nmn 0.3.5's
torch layers as an oracle (weights copied, float64)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tests import reference as ref

torch = pytest.importorskip("torch")
F = torch.nn.functional

try:  # imported here so that no single test pays jax's ~1.5 s import
    import jax
except ImportError:  # pragma: no cover - jax is part of the test environment
    jax = None

try:  # nmn 0.3.5, the package this project re-implements, as an oracle
    import nmn.torch as nmn_torch
except ImportError:  # pragma: no cover
    nmn_torch = None

needs_nmn = pytest.mark.skipif(nmn_torch is None, reason="nmn (0.3.5) is not installed")

RNG = np.random.default_rng(123)


@pytest.fixture(autouse=True)
def _reseed():
    """Every test draws the same data however the tests are selected or ordered."""
    global RNG
    RNG = np.random.default_rng(123)


def normal(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


def rel_err(got: np.ndarray, expected: np.ndarray) -> float:
    """Max absolute error relative to the expected output's scale."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def expanded_yat(x, w, b=0.0, alpha=1.0, eps=1e-5):
    """Vectorised yat with the expanded distance, for well-conditioned data only."""
    s = x @ w.T
    d = np.maximum(np.sum(x * x, -1)[..., None] + np.sum(w * w, -1) - 2 * s, 0)
    return alpha * (s + b) ** 2 / (d + eps)


# --------------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------------
def test_yat_self_response():
    w = normal(6)
    # x == w: the distance is exactly 0, so alpha * |w|^4 / eps
    got = ref.yat_ref(w, w, alpha=2.0, epsilon=1e-3)
    assert got.shape == ()
    np.testing.assert_allclose(got, 2.0 * np.sum(w * w) ** 2 / 1e-3, rtol=1e-14)
    # every neuron against itself: the diagonal of a matrix product
    ws = normal(4, 6)
    diag = np.diagonal(ref.yat_ref(ws, ws, alpha=np.array([0.5])))
    np.testing.assert_allclose(diag, 0.5 * np.sum(ws * ws, -1) ** 2 / 1e-5, rtol=1e-14)


def test_yat_matches_the_expanded_formula_on_well_conditioned_data():
    x, w, b = normal(2, 3, 5), normal(4, 5), normal(4)
    got = ref.yat_ref(x, w, b, alpha=np.array(1.7), epsilon=np.array([1e-2]))
    assert got.shape == (2, 3, 4)
    assert rel_err(got, expanded_yat(x, w, b, 1.7, 1e-2)) < 1e-13
    # scalar bias broadcast over neurons; vector w gives the product of two vectors
    assert rel_err(ref.yat_ref(x, w, 0.3), expanded_yat(x, w, 0.3)) < 1e-13
    assert rel_err(ref.yat_ref(x, w[1], 0.3), expanded_yat(x, w, 0.3)[..., 1]) < 1e-13


def test_yat_spherical_and_weight_normalized_use_nmn_shortcuts():
    x, w = normal(3, 5), normal(4, 5)

    def unit(v):
        return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-8)

    xs, ws = unit(x), unit(w)
    s = xs @ ws.T
    spherical = s**2 / (np.maximum(2 - 2 * s, 0) + 1e-5)
    assert rel_err(ref.yat_ref(x, w, spherical=True), spherical) < 1e-12
    # spherical then weight_normalized: w is normalised twice, distance still 2 - 2s
    ws2 = unit(ws)
    s2 = xs @ ws2.T
    both = s2**2 / (np.maximum(2 - 2 * s2, 0) + 1e-5)
    got = ref.yat_ref(x, w, spherical=True, weight_normalized=True)
    assert rel_err(got, both) < 1e-12
    # weight_normalized alone: |w|^2 is taken as exactly 1
    s = x @ ws.T
    wn = (s + 0.2) ** 2 / (np.maximum(np.sum(x * x, -1)[:, None] + 1 - 2 * s, 0) + 1e-5)
    assert rel_err(ref.yat_ref(x, w, 0.2, weight_normalized=True), wn) < 1e-12


def test_yat_direct_distance_survives_near_collisions():
    # x = w + 1e-7 * noise: the expanded form loses every digit of the distance,
    # the direct one does not
    w = normal(1, 8) * 100
    delta = normal(1, 8) * 1e-7
    got = ref.yat_ref(w + delta, w, epsilon=1e-30)
    dot = float(np.sum((w + delta) * w))
    expected = dot**2 / float(np.sum(delta * delta))
    np.testing.assert_allclose(got, [[expected]], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------
def _t(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a))


def test_conv_1x1_equals_dense_per_pixel():
    x, w, b = normal(2, 3, 4, 5), normal(6, 3, 1, 1), normal(6)
    got = ref.yat_conv_ref(x, w, b, alpha=1.3)
    dense = ref.yat_ref(np.moveaxis(x, 1, -1), w[:, :, 0, 0], b, alpha=1.3)
    assert rel_err(got, np.moveaxis(dense, -1, 1)) < 1e-14
    last = ref.yat_conv_ref(np.moveaxis(x, 1, -1), w, b, alpha=1.3, data_format="channels_last")
    assert rel_err(last, dense) < 1e-14


CONV_DOT_CASES = [
    # (spatial rank, stride, padding, dilation, groups)
    (1, 1, 0, 1, 1),
    (1, 2, 1, 2, 2),
    (1, 3, 2, 1, 1),
    (2, 1, 1, 1, 2),
    (2, (2, 1), (1, 2), (1, 2), 1),
    (2, 2, 0, 2, 2),
    (3, 1, 1, 1, 1),
    (3, 2, (0, 1, 1), (2, 1, 1), 2),
]


@pytest.mark.parametrize("nd, stride, padding, dilation, groups", CONV_DOT_CASES)
def test_conv_dot_and_dist_match_torch(nd, stride, padding, dilation, groups):
    size = {1: 9, 2: 7, 3: 5}[nd]
    x, w = normal(2, 4, *([size] * nd)), normal(6, 4 // groups, *([3] * nd))
    s = ref._per_dim(stride, nd, "stride")
    d = ref._per_dim(dilation, nd, "dilation")
    pads = ref._conv_pads(padding, x.shape[2:], w.shape[2:], s, d)
    xpad = np.pad(x, [(0, 0), (0, 0), *pads])
    dot, dist = ref._conv_dot_and_dist(xpad, w, s, d, groups)

    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    tdot = conv(_t(x), _t(w), None, s, ref._per_dim(padding, nd, "padding"), d, groups).numpy()
    assert rel_err(dot, tdot) < 1e-14
    # nmn's expanded distance: conv(x^2, ones) per group + |w_o|^2 - 2 dot
    ones = torch.ones((groups, 4 // groups) + w.shape[2:], dtype=torch.float64)
    psq = conv(_t(x * x), ones, None, s, ref._per_dim(padding, nd, "padding"), d, groups)
    psq = psq.numpy().repeat(6 // groups, axis=1)
    wsq = np.sum(w.reshape(6, -1) ** 2, -1).reshape((1, 6) + (1,) * nd)
    assert rel_err(dist, psq + wsq - 2 * tdot) < 1e-13


@pytest.mark.parametrize("size, k, stride, dilation", [(7, 3, 1, 1), (7, 3, 2, 1), (8, 4, 3, 2)])
def test_conv_padding_strings(size, k, stride, dilation):
    x, w = normal(1, 2, size), normal(3, 2, k)
    same = ref.yat_conv_ref(x, w, stride=stride, dilation=dilation, padding="SAME")
    assert same.shape[-1] == math.ceil(size / stride)
    total = max((same.shape[-1] - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    explicit = ref.yat_conv_ref(
        x, w, stride=stride, dilation=dilation, padding=((total // 2, total - total // 2),)
    )
    np.testing.assert_array_equal(same, explicit)
    causal = ref.yat_conv_ref(x, w, stride=stride, dilation=dilation, padding="Causal")
    lo = ref.yat_conv_ref(
        x, w, stride=stride, dilation=dilation, padding=((dilation * (k - 1), 0),)
    )
    np.testing.assert_array_equal(causal, lo)
    valid = ref.yat_conv_ref(x, w, stride=stride, dilation=dilation, padding="valid")
    np.testing.assert_array_equal(valid, ref.yat_conv_ref(x, w, stride=stride, dilation=dilation))


def test_conv_weight_normalized_sets_filter_norm_to_one():
    x, w = normal(1, 2, 6), normal(3, 2, 3)
    unit = w / (np.sqrt(np.sum(w**2, axis=(1, 2), keepdims=True)) + 1e-8)
    s = F.conv1d(_t(x), _t(unit), padding=1).numpy()
    psq = F.conv1d(_t(x * x), torch.ones(1, 2, 3, dtype=torch.float64), padding=1).numpy()
    expected = 1.3 * s**2 / (np.maximum(psq + 1 - 2 * s, 0) + 1e-5)
    got = ref.yat_conv_ref(x, w, padding=1, weight_normalized=True, alpha=1.3)
    assert rel_err(got, expected) < 1e-12


# --------------------------------------------------------------------------------------------
# transposed convolution
# --------------------------------------------------------------------------------------------
def _transpose_cases():
    for nd, s, p, op, d, g in itertools.product(
        (1, 2), (1, 2, 3), (0, 1, 2), (0, 1, 2), (1, 2), (1, 2)
    ):
        if op < max(s, d) and (nd == 1 or (p + op + d + g) % 3 == 0):
            yield nd, s, p, op, d, g
    yield 3, 2, 1, 1, 1, 2
    yield 3, 1, 0, 0, 2, 1


@pytest.mark.parametrize(
    "nd, stride, padding, output_padding, dilation, groups", list(_transpose_cases())
)
def test_conv_transpose_dot_matches_torch(nd, stride, padding, output_padding, dilation, groups):
    size = {1: 5, 2: 4, 3: 3}[nd]
    x, w = normal(2, 2 * groups, *([size] * nd)), normal(2 * groups, 3, *([3] * nd))
    conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    expected = conv_t(_t(x), _t(w), None, stride, padding, output_padding, groups, dilation)
    xd, wd = ref._conv_transpose_direct(
        x, w, (stride,) * nd, padding, (output_padding,) * nd, (dilation,) * nd, groups
    )
    dot, _ = ref._conv_dot_and_dist(xd, wd, (1,) * nd, (dilation,) * nd, groups)
    assert rel_err(dot, expected.numpy()) < 1e-14


def _lax_transpose_pads(padding: str, ke: int, s: int) -> tuple[int, int]:
    """jax.lax.conv_transpose's padding of the zero-inserted input for "SAME" / "VALID"."""
    if padding == "SAME":
        total = ke + s - 2
        lo = ke - 1 if s > ke - 1 else math.ceil(total / 2)
    else:
        total = ke + s - 2 + max(ke - s, 0)
        lo = ke - 1
    return lo, total - lo


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize(
    "stride, k, dilation", [(1, 3, 1), (2, 3, 1), (3, 2, 1), (2, 3, 2), (4, 2, 1), (2, 4, 1)]
)
def test_conv_transpose_string_padding_as_torch(padding, stride, k, dilation):
    # lax's (lo, hi) is torch's padding p = ke - 1 - lo with output_padding hi - lo; when
    # hi - lo = -1 (odd "SAME") torch computes one extra output at the end, cropped here
    x, w = normal(2, 3, 5), normal(3, 2, k)
    ke = dilation * (k - 1) + 1
    lo, hi = _lax_transpose_pads(padding, ke, stride)
    op = hi - lo
    expected = F.conv_transpose1d(_t(x), _t(w), None, stride, ke - 1 - lo, max(op, 0), 1, dilation)
    expected = expected.numpy()[..., : expected.shape[-1] + min(op, 0)]
    length = 5 * stride if padding == "SAME" else 5 * stride + max(ke - stride, 0)
    assert expected.shape[-1] == length
    xd, wd = ref._conv_transpose_direct(x, w, (stride,), padding.lower(), (0,), (dilation,), 1)
    dot, _ = ref._conv_dot_and_dist(xd, wd, (1,), (dilation,), 1)
    assert rel_err(dot, expected) < 1e-14
    y = ref.yat_conv_transpose_ref(x, w, stride=stride, dilation=dilation, padding=padding)
    assert y.shape == (2, 2, length)


@pytest.mark.parametrize("padding, stride, k", [("SAME", 2, 3), ("SAME", 3, 2), ("VALID", 2, 3)])
def test_conv_transpose_string_padding_matches_jax(padding, stride, k):
    if jax is None:
        pytest.skip("jax is not installed")
    x, w = normal(1, 2, 4), normal(2, 2, k)
    # transpose_kernel=True: jax flips the kernel and swaps in/out, i.e. torch's semantics;
    # conftest turns on jax's x64 mode before jax is imported (else jax is float32)
    expected = np.asarray(
        jax.lax.conv_transpose(
            x,
            w,
            (stride,),
            padding,
            dimension_numbers=("NCH", "OIH", "NCH"),
            transpose_kernel=True,
        )
    )
    tol = 1e-14 if expected.dtype == np.float64 else 1e-5
    xd, wd = ref._conv_transpose_direct(x, w, (stride,), padding, (0,), (1,), 1)
    dot, _ = ref._conv_dot_and_dist(xd, wd, (1,), (1,), 1)
    assert rel_err(dot, expected) < tol


def test_conv_transpose_distance_counts_all_taps():
    # nmn: D = conv_transpose(x^2, ones) + |w_o|^2 (all taps) - 2 dot
    x, w, b = normal(2, 4, 5), normal(4, 3, 3), normal(6)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    tx, tw = _t(x), _t(w)
    s = F.conv_transpose1d(tx, tw, None, 2, 1, 1, 2, 1).numpy()
    q = F.conv_transpose1d(tx * tx, torch.ones_like(tw), None, 2, 1, 1, 2, 1).numpy()
    wsq = np.sum(w.reshape(2, 2, 3, 3) ** 2, axis=(1, 3)).reshape(1, 6, 1)
    expected = 0.7 * (s + b[:, None]) ** 2 / (np.maximum(q + wsq - 2 * s, 0) + 1e-5)
    got = ref.yat_conv_transpose_ref(x, w, b, alpha=0.7, **kw)
    assert rel_err(got, expected) < 1e-12
    last = ref.yat_conv_transpose_ref(
        np.moveaxis(x, 1, -1), w, b, alpha=0.7, data_format="channels_last", **kw
    )
    assert rel_err(last, np.moveaxis(expected, 1, -1)) < 1e-12


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
def test_attention_softmax_rows_sum_to_one_and_masks():
    q, k = normal(2, 3, 4, 5), normal(1, 3, 6, 5)
    mask = RNG.random((2, 1, 4, 6)) < 0.6
    mask[0, 0, 2, :] = False
    wts = ref.yat_attention_weights_ref(q, k, mask=mask)
    assert wts.shape == (2, 3, 4, 6)
    full = mask.any(-1)
    np.testing.assert_allclose(wts.sum(-1)[np.broadcast_to(full, (2, 3, 4))], 1.0, rtol=1e-14)
    assert np.all(wts[np.broadcast_to(~mask, wts.shape)] == 0.0)
    assert np.all(wts[0, :, 2] == 0.0)


def test_attention_scores_formula_and_normalisations():
    q, k, v = normal(3, 4), normal(5, 4), normal(5, 2)
    s = q @ k.T
    dist = np.sum(q**2, -1)[:, None] + np.sum(k**2, -1) - 2 * s
    score = 1.4 * 0.3 * s**2 / (dist + 1e-2)
    kw = dict(alpha=1.4, scale=0.3, epsilon=1e-2)
    soft = np.exp(score - score.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    assert rel_err(ref.yat_attention_weights_ref(q, k, **kw), soft) < 1e-13
    assert rel_err(ref.yat_attention_ref(q, k, v, **kw), soft @ v) < 1e-13
    l1 = score / (score.sum(-1, keepdims=True) + 1e-2)
    assert rel_err(ref.yat_attention_weights_ref(q, k, normalization="l1", **kw), l1) < 1e-13
    p = score**2.5
    sm = p / (1e-12 + p.sum(-1, keepdims=True))
    got = ref.yat_attention_weights_ref(q, k, normalization="softermax", power=2.5, **kw)
    assert rel_err(got, sm) < 1e-13
    # default scale is 1 / sqrt(d)
    a = ref.yat_attention_weights_ref(q, k, normalization="l1")
    b = ref.yat_attention_weights_ref(q, k, normalization="l1", scale=0.5)
    np.testing.assert_allclose(a, b, rtol=1e-14)


def test_attention_causal_aligns_queries_to_the_end_of_the_keys():
    q, k = normal(2, 3), normal(5, 3)
    got = ref.yat_attention_weights_ref(q, k, causal=True)
    # query i sees key j iff j <= i + Lk - Lq = i + 3
    visible = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=bool)
    assert np.all(got[~visible] == 0.0) and np.all(got[visible] > 0.0)
    np.testing.assert_array_equal(got, ref.yat_attention_weights_ref(q, k, mask=visible))


def test_attention_spherical():
    q, k = normal(3, 4), normal(5, 4)
    qn = q / np.sqrt(np.sum(q**2, -1, keepdims=True) + 1e-5)
    kn = k / np.sqrt(np.sum(k**2, -1, keepdims=True) + 1e-5)
    s = qn @ kn.T
    score = s**2 / ((np.maximum(2 - 2 * s, 0) + 1e-5) * 2.0)
    expected = score / (score.sum(-1, keepdims=True) + 1e-5)
    got = ref.yat_attention_weights_ref(q, k, spherical=True, normalization="l1")
    assert rel_err(got, expected) < 1e-12


# --------------------------------------------------------------------------------------------
# rotary, squashers, finite differences
# --------------------------------------------------------------------------------------------
def test_rotary_embedding_properties():
    x = normal(2, 5, 6)
    np.testing.assert_allclose(ref.rotary_embedding_ref(x, np.zeros(5, int)), x, rtol=0)
    y = ref.rotary_embedding_ref(x, theta=100.0)
    pair_norm = np.hypot(x[..., ::2], x[..., 1::2])
    np.testing.assert_allclose(np.hypot(y[..., ::2], y[..., 1::2]), pair_norm, rtol=1e-14)
    # relative positions: <R_m q, R_n k> depends only on m - n
    q, k = normal(1, 6), normal(1, 6)
    a = ref.rotary_embedding_ref(q, [7]) @ ref.rotary_embedding_ref(k, [3]).T
    b = ref.rotary_embedding_ref(q, [4]) @ ref.rotary_embedding_ref(k, [0]).T
    np.testing.assert_allclose(a, b, rtol=1e-12)
    # the first pair turns by exactly the position (inv_freq_0 = 1)
    e = np.zeros((1, 4))
    e[0, 0] = 1.0
    np.testing.assert_allclose(
        ref.rotary_embedding_ref(e, [0.5])[0, :2], [np.cos(0.5), np.sin(0.5)]
    )


def test_squasher_values():
    np.testing.assert_allclose(ref.softermax_ref([1.0, 2.0]), [1 / 3, 2 / 3], rtol=1e-12)
    np.testing.assert_allclose(ref.softermax_ref([1.0, 2.0], n=2), [0.2, 0.8], rtol=1e-12)
    np.testing.assert_allclose(
        ref.softermax_ref([[1.0], [3.0]], axis=0), [[0.25], [0.75]], rtol=1e-12
    )
    np.testing.assert_allclose(ref.softer_sigmoid_ref([0.0, 1.0, 3.0], n=2), [0, 0.5, 0.9])
    np.testing.assert_allclose(ref.soft_tanh_ref([0.0, 1.0, 3.0], n=2), [-1, 0, 0.8])


def test_numerical_grad_of_a_known_function():
    x, y = normal(3), normal(2, 3)
    gx, gy, none = ref.numerical_grad(lambda x, y, _: x**2 * y, [x, y, None])
    # exact for a quadratic up to rounding, ~1e-16 * |f| / eps
    np.testing.assert_allclose(gx, 2 * x * y.sum(0), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(gy, np.broadcast_to(x**2, (2, 3)), rtol=1e-8, atol=1e-8)
    assert none is None


# --------------------------------------------------------------------------------------------
# nmn 0.3.5's torch layers as an oracle
# --------------------------------------------------------------------------------------------
def _load(module, w, b, alpha):
    module = module.double()
    with torch.no_grad():
        module.weight.copy_(_t(w))
        module.bias.copy_(_t(b))
        module.alpha.fill_(alpha)
    return module


@needs_nmn
@pytest.mark.parametrize(
    "spherical, weight_normalized", [(False, False), (True, False), (False, True), (True, True)]
)
def test_matches_nmn_torch_yatnmn(spherical, weight_normalized):
    x, w, b = normal(4, 6), normal(5, 6), normal(5)
    layer = nmn_torch.YatNMN(
        6, 5, spherical=spherical, weight_normalized=weight_normalized, param_dtype=torch.float64
    )
    layer = _load(layer, w, b, 1.3)
    expected = layer(_t(x)).detach().numpy()
    got = ref.yat_ref(x, w, b, alpha=1.3, spherical=spherical, weight_normalized=weight_normalized)
    assert rel_err(got, expected) < 1e-10


NMN_CONV2D = [
    dict(padding=1),
    dict(padding=1, groups=2),
    dict(stride=2, padding=1, dilation=2, groups=2),
    dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(padding="same"),
    dict(padding="same", dilation=2, groups=2),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=2, padding_mode="circular", stride=2),
    dict(padding=(1, 2), padding_mode="replicate", groups=2),
    dict(padding="same", padding_mode="reflect"),
    dict(padding=1, weight_normalized=True),
]


@needs_nmn
@pytest.mark.parametrize("kwargs", NMN_CONV2D, ids=str)
def test_matches_nmn_torch_yatconv2d(kwargs):
    x, w, b = normal(2, 4, 7, 6), normal(6, 4 // kwargs.get("groups", 1), 3, 3), normal(6)
    layer = _load(nmn_torch.YatConv2D(4, 6, 3, **kwargs), w, b, 0.8)
    expected = layer(_t(x)).detach().numpy()
    got = ref.yat_conv_ref(x, w, b, alpha=0.8, **kwargs)
    assert rel_err(got, expected) < 1e-10


@needs_nmn
def test_matches_nmn_torch_yatconv1d_and_3d():
    x, w, b = normal(2, 2, 9), normal(4, 1, 3), normal(4)
    layer = _load(nmn_torch.YatConv1D(2, 4, 3, stride=2, padding=2, groups=2), w, b, 1.0)
    got = ref.yat_conv_ref(x, w, b, stride=2, padding=2, groups=2)
    assert rel_err(got, layer(_t(x)).detach().numpy()) < 1e-10
    x, w, b = normal(1, 2, 4, 5, 4), normal(3, 2, 2, 3, 2), normal(3)
    kw = dict(padding=1, dilation=(1, 2, 1), padding_mode="circular")
    layer = _load(nmn_torch.YatConv3D(2, 3, (2, 3, 2), **kw), w, b, 1.0)
    assert rel_err(ref.yat_conv_ref(x, w, b, **kw), layer(_t(x)).detach().numpy()) < 1e-10


NMN_TRANSPOSE = [
    (1, dict()),
    (1, dict(stride=2, padding=1, output_padding=1)),
    (1, dict(stride=3, output_padding=2, groups=2)),
    (1, dict(stride=2, dilation=2, groups=2, padding=2)),
    (2, dict(stride=2, padding=1, output_padding=1)),
    (2, dict(stride=(2, 1), groups=2, dilation=(1, 2), padding=(0, 1))),
]


@needs_nmn
@pytest.mark.parametrize("nd, kwargs", NMN_TRANSPOSE, ids=str)
def test_matches_nmn_torch_yatconvtranspose(nd, kwargs):
    groups = kwargs.get("groups", 1)
    size = {1: 6, 2: 4}[nd]
    x, w, b = normal(2, 4, *([size] * nd)), normal(4, 6 // groups, *([3] * nd)), normal(6)
    cls = {1: nmn_torch.YatConvTranspose1D, 2: nmn_torch.YatConvTranspose2D}[nd]
    layer = _load(cls(4, 6, 3, **kwargs), w, b, 1.2)
    expected = layer(_t(x)).detach().numpy()
    got = ref.yat_conv_transpose_ref(x, w, b, alpha=1.2, **kwargs)
    assert rel_err(got, expected) < 1e-10


@needs_nmn
@pytest.mark.parametrize("spherical", [False, True])
def test_matches_nmn_torch_attention_weights(spherical):
    from nmn.torch.attention.yat_attention import yat_attention, yat_attention_weights

    # nmn layout: (batch, length, heads, dim); the reference: (batch, heads, length, dim)
    q, k, v = normal(2, 4, 3, 5), normal(2, 6, 3, 5), normal(2, 6, 3, 2)
    mask = RNG.random((2, 1, 4, 6)) < 0.7
    mask[1, 0, 0, :] = False
    alpha = torch.tensor([1.3], dtype=torch.float64)
    expected = yat_attention_weights(
        _t(q), _t(k), mask=_t(mask), alpha=alpha, spherical=spherical
    ).numpy()
    qh, kh, vh = (np.moveaxis(a, 2, 1) for a in (q, k, v))
    got = ref.yat_attention_weights_ref(qh, kh, mask=mask, alpha=1.3, spherical=spherical)
    assert np.max(np.abs(got - expected)) < 1e-12
    out = yat_attention(_t(q), _t(k), _t(v), mask=_t(mask), alpha=alpha, spherical=spherical)
    got = ref.yat_attention_ref(qh, kh, vh, mask=mask, alpha=1.3, spherical=spherical)
    assert rel_err(got, np.moveaxis(out.numpy(), 2, 1)) < 1e-12


@needs_nmn
def test_matches_nmn_torch_squashers():
    x = _t(np.abs(normal(3, 4)) * 2)
    for n in (1.0, 2.5):
        assert rel_err(ref.softermax_ref(x.numpy(), n), nmn_torch.softermax(x, n).numpy()) < 1e-14
        expected = nmn_torch.softer_sigmoid(x, n).numpy()
        assert rel_err(ref.softer_sigmoid_ref(x.numpy(), n), expected) < 1e-14
        assert rel_err(ref.soft_tanh_ref(x.numpy(), n), nmn_torch.soft_tanh(x, n).numpy()) < 1e-14
