"""Every public function on every backend against the naive float64 reference (loops over
patches, distances computed directly, never by the expanded formula)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import nmn_array as na
from tests import reference as ref
from tests._assertions import assert_matches, rounded, run

RNG = np.random.default_rng(2024)
DTYPES = ["float64", "float32"]


@pytest.fixture(autouse=True)
def _seed_per_test(request: pytest.FixtureRequest) -> None:
    """Each test draws its data from its own seed, so data never depends on test order."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def normal(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


# --- dense ----------------------------------------------------------------------------
DENSE = {
    "plain": ({}, False),
    "bias": ({}, True),
    "alpha_eps": ({"alpha": 1.4142135623730951, "epsilon": 1e-3}, True),
    "spherical": ({"spherical": True}, False),
    "weight_normalized": ({"weight_normalized": True}, True),
    "both": ({"spherical": True, "weight_normalized": True, "alpha": 0.5}, False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(DENSE))
def test_yat_matches_reference(backend, case, dtype):
    kwargs, with_bias = DENSE[case]
    x, w = normal(2, 3, 6), normal(5, 6)
    b = normal(5) if with_bias else None
    got = run(backend, lambda x, w, b=None, **k: na.yat(x, w, b, **k), [x, w, b], kwargs, dtype)
    assert_matches(got, ref.yat_ref(*rounded([x, w, b], dtype), **kwargs), dtype, case)


@pytest.mark.parametrize("case", sorted(DENSE))
def test_yat_kernel_layout_matches_reference(backend, case):
    # the private (in, out) kernel layout the Flax and Keras modules pass as stored
    kwargs, with_bias = DENSE[case]
    x, w = normal(2, 3, 6), normal(5, 6)
    b = normal(5) if with_bias else None
    kernel = np.ascontiguousarray(w.T)
    got = run(
        backend,
        lambda x, k, b=None, **kw: na.yat(x, k, b, _w_in_out=True, **kw),
        [x, kernel, b],
        kwargs,
        "float64",
    )
    assert_matches(got, ref.yat_ref(x, w, b, **kwargs), "float64", case)


def test_yat_vector_and_exact_match():
    x, w = normal(3, 7), normal(7)
    np.testing.assert_allclose(na.yat(x, w), ref.yat_ref(x, w), rtol=1e-10)
    # x == w: distance 0, so the self-response alpha * |w|^4 / eps
    np.testing.assert_allclose(
        na.yat(w, w, alpha=2.0, epsilon=1e-3), 2.0 * np.sum(w * w) ** 2 / 1e-3, rtol=1e-12
    )


# --- convolution
CONV = {
    "1d_basic": (1, dict()),
    "1d_stride2_dil2_groups2": (1, dict(stride=2, dilation=2, groups=2, padding=1)),
    "1d_same_stride2": (1, dict(padding="same", stride=2)),
    "1d_causal_dil2": (1, dict(padding="causal", dilation=2)),
    "1d_pairs_reflect": (1, dict(padding=((2, 1),), padding_mode="reflect")),
    "1d_replicate": (1, dict(padding=2, padding_mode="replicate")),
    "1d_circular": (1, dict(padding=2, padding_mode="circular", groups=2)),
    "1d_weight_normalized": (1, dict(weight_normalized=True, alpha=1.3)),
    "2d_basic": (2, dict(padding=1)),
    "2d_stride_dil_groups": (2, dict(stride=(2, 1), dilation=(1, 2), groups=2, padding=(1, 2))),
    "2d_same_upper": (2, dict(padding="SAME", stride=2)),
    "2d_valid": (2, dict(padding="valid")),
    "2d_reflect_same": (2, dict(padding="same", padding_mode="reflect")),
    "2d_circular": (2, dict(padding=1, padding_mode="circular", groups=2, stride=2)),
    "2d_channels_last": (2, dict(padding="same", data_format="channels_last", groups=2)),
    # channels last goes through JAX's and TensorFlow's kernels without layout transposes
    "1d_channels_last_stride_dil": (
        1,
        dict(stride=2, dilation=2, groups=2, padding=((1, 2),), data_format="channels_last"),
    ),
    "2d_channels_last_strided_dilated": (
        2,
        dict(stride=2, dilation=(2, 1), padding="same", data_format="channels_last"),
    ),
    "2d_channels_last_reflect": (
        2,
        dict(padding=1, padding_mode="reflect", data_format="channels_last", alpha=0.7),
    ),
    "3d_channels_last_weight_normalized": (
        3,
        dict(padding="valid", groups=2, weight_normalized=True, data_format="channels_last"),
    ),
    "3d_basic": (3, dict(padding=1, groups=2)),
    "3d_stride_dil": (
        3,
        dict(stride=2, dilation=(2, 1, 1), padding="same", padding_mode="replicate"),
    ),
}


def _conv_inputs(nd: int, kwargs: dict):
    groups = kwargs.get("groups", 1)
    size = {1: 11, 2: 7, 3: 5}[nd]
    x = normal(2, 4, *([size] * nd))
    if kwargs.get("data_format") == "channels_last":
        x = np.moveaxis(x, 1, -1)
    w = normal(6, 4 // groups, *([3] * nd))
    return x, w, normal(6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CONV))
def test_yat_conv_matches_reference(backend, case, dtype):
    nd, kwargs = CONV[case]
    x, w, b = _conv_inputs(nd, kwargs)
    got = run(backend, na.yat_conv, [x, w, b], kwargs, dtype)
    assert_matches(got, ref.yat_conv_ref(*rounded([x, w, b], dtype), **kwargs), dtype, case)


@pytest.mark.parametrize("case", sorted(CONV))
def test_yat_conv_native_equals_portable(native_backend, case):
    backend = native_backend
    nd, kwargs = CONV[case]
    x, w, b = _conv_inputs(nd, kwargs)
    native = run(backend, na.yat_conv, [x, w, b], kwargs, "float64")
    portable = run(backend, na.yat_conv, [x, w, b], {**kwargs, "_native": False}, "float64")
    assert_matches(native, portable, "float64", case)


TRANSPOSE = {
    "1d_basic": (1, dict()),
    "1d_stride2_pad1_outpad1": (1, dict(stride=2, padding=1, output_padding=1)),
    "1d_stride3_k_lt_s": (1, dict(stride=3, output_padding=2)),
    "1d_dilation2_groups2": (1, dict(dilation=2, groups=2, stride=2)),
    "1d_same": (1, dict(padding="same", stride=2)),
    "1d_valid_stride3": (1, dict(padding="VALID", stride=3)),
    "2d_stride2_groups2": (2, dict(stride=2, groups=2, padding=1, output_padding=1)),
    "2d_channels_last_same": (2, dict(stride=(2, 1), padding="same", data_format="channels_last")),
    "2d_dilation_outpad": (2, dict(stride=1, dilation=2, output_padding=1)),
    "3d_stride2": (3, dict(stride=2, padding=1, groups=2)),
    "2d_weight_normalized_groups2": (2, dict(stride=2, groups=2, weight_normalized=True)),
}


def _transpose_inputs(nd: int, kwargs: dict):
    groups = kwargs.get("groups", 1)
    size = {1: 6, 2: 4, 3: 3}[nd]
    x = normal(2, 4, *([size] * nd))
    if kwargs.get("data_format") == "channels_last":
        x = np.moveaxis(x, 1, -1)
    return x, normal(4, 6 // groups, *([3] * nd)), normal(6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(TRANSPOSE))
def test_yat_conv_transpose_matches_reference(backend, case, dtype):
    nd, kwargs = TRANSPOSE[case]
    x, w, b = _transpose_inputs(nd, kwargs)
    got = run(backend, na.yat_conv_transpose, [x, w, b], kwargs, dtype)
    assert_matches(
        got, ref.yat_conv_transpose_ref(*rounded([x, w, b], dtype), **kwargs), dtype, case
    )


@pytest.mark.parametrize("case", sorted(TRANSPOSE))
def test_yat_conv_transpose_native_equals_portable(native_backend, case):
    backend = native_backend
    nd, kwargs = TRANSPOSE[case]
    x, w, b = _transpose_inputs(nd, kwargs)
    native = run(backend, na.yat_conv_transpose, [x, w, b], kwargs, "float64")
    portable = run(
        backend, na.yat_conv_transpose, [x, w, b], {**kwargs, "_native": False}, "float64"
    )
    assert_matches(native, portable, "float64", case)


# --- attention --------------------------------------------------------------------------
ATTENTION = {
    "softmax": dict(),
    "causal_square": dict(causal=True),
    "causal_decode": dict(causal=True, _lq=2),
    "mask_with_empty_row": dict(_mask=True),
    "spherical_alpha": dict(spherical=True, alpha=1.4142135623730951),
    "l1_masked": dict(normalization="l1", _mask=True),
    "softermax_power": dict(normalization="softermax", power=2.0, causal=True),
    "scale_eps": dict(scale=0.3, epsilon=1e-2),
}


def _attention_inputs(case: str):
    kwargs = dict(ATTENTION[case])
    lq = kwargs.pop("_lq", 5)
    with_mask = kwargs.pop("_mask", False)
    q, k, v = normal(2, 3, lq, 4), normal(2, 3, 5, 4), normal(2, 3, 5, 3)
    mask = None
    if with_mask:
        mask = RNG.random((2, 1, lq, 5)) < 0.6
        mask[0, 0, 1, :] = False  # a query that sees no key at all
    return q, k, v, mask, kwargs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(ATTENTION))
def test_yat_attention_matches_reference(backend, case, dtype):
    q, k, v, mask, kwargs = _attention_inputs(case)

    def attn(q, k, v, mask=None, **kw):
        return na.yat_attention(q, k, v, mask=mask, **kw)

    got = run(backend, attn, [q, k, v, mask], kwargs, dtype)
    expected = ref.yat_attention_ref(*rounded([q, k, v], dtype), mask=mask, **kwargs)
    assert_matches(got, expected, dtype, case)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("case", sorted(ATTENTION))
def test_yat_attention_weights_matches_reference(backend, case):
    q, k, _, mask, kwargs = _attention_inputs(case)

    def weights(q, k, mask=None, **kw):
        return na.yat_attention_weights(q, k, mask=mask, **kw)

    got = run(backend, weights, [q, k, mask], kwargs, "float64")
    expected = ref.yat_attention_weights_ref(q, k, mask=mask, **kwargs)
    assert_matches(got, expected, "float64", case)
    if mask is not None:
        assert np.all(got[0, 0, 1] == 0.0), "a query that sees no key must get all-zero weights"


# --- rotary and squashers -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding_matches_reference(backend, dtype):
    x = normal(2, 7, 6)
    got = run(backend, na.rotary_embedding, [x], {"theta": 500.0}, dtype)
    assert_matches(got, ref.rotary_embedding_ref(*rounded([x], dtype), theta=500.0), dtype)
    positions = np.arange(3, 10)
    got = backend.to_numpy(
        na.rotary_embedding(backend.from_numpy(x, dtype), backend.from_numpy(positions))
    )
    assert_matches(
        got, ref.rotary_embedding_ref(*rounded([x], dtype), positions), dtype, "offset positions"
    )


SQUASHERS = [
    ("softermax", {"n": 1.0}),
    ("softermax", {"n": 2.5, "axis": 0}),
    ("softer_sigmoid", {"n": 1.0}),
    ("softer_sigmoid", {"n": 3.0}),
    ("soft_tanh", {"n": 0.5}),
    ("soft_tanh", {"n": 2.0}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kwargs", SQUASHERS, ids=lambda p: str(p))
def test_squashers_match_reference(backend, name, kwargs, dtype):
    x = np.abs(normal(4, 5)) * 3
    got = run(backend, getattr(na, name), [x], kwargs, dtype)
    expected = getattr(ref, f"{name}_ref")(*rounded([x], dtype), **kwargs)
    assert_matches(got, expected, dtype, name)


def test_squashers_give_the_limit_where_the_plain_formula_overflows():
    big = np.array([1e30, 1e200, 0.0, 1.0])
    np.testing.assert_allclose(na.softer_sigmoid(big, n=2), [1.0, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(na.soft_tanh(big, n=2), [1.0, 1.0, -1.0, 0.0])
    np.testing.assert_allclose(na.softermax(np.array([1e200, 1e200]), n=2), [0.5, 0.5])
    assert np.all(np.isfinite(na.softermax(np.array([1e-200, 0.0]), n=2)))
