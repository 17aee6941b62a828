"""Gradients on torch, jax and tensorflow: finite where the math is, and equal to central
finite differences of the naive float64 reference."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import nmn_array as na
from tests import reference as ref

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _seed_per_test(request: pytest.FixtureRequest) -> None:
    """Each test draws its data from its own seed, so data never depends on test order."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def normal(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


CASES = {
    "yat": (
        lambda x, w, b: na.yat(x, w, b, alpha=1.3),
        lambda x, w, b: ref.yat_ref(x, w, b, alpha=1.3),
        lambda: [normal(3, 4), normal(2, 4), normal(2)],
    ),
    "yat_kernel_layout": (
        lambda x, k, b: na.yat(x, k, b, alpha=0.8, weight_normalized=True, _w_in_out=True),
        lambda x, k, b: ref.yat_ref(x, k.T, b, alpha=0.8, weight_normalized=True),
        lambda: [normal(3, 4), normal(4, 2), normal(2)],
    ),
    "yat_spherical": (
        lambda x, w: na.yat(x, w, spherical=True),
        lambda x, w: ref.yat_ref(x, w, spherical=True),
        lambda: [normal(3, 4), normal(2, 4)],
    ),
    "yat_conv_2d": (
        lambda x, w, b: na.yat_conv(x, w, b, stride=2, dilation=(1, 2), groups=2, padding="same"),
        lambda x, w, b: ref.yat_conv_ref(
            x, w, b, stride=2, dilation=(1, 2), groups=2, padding="same"
        ),
        lambda: [normal(1, 2, 5, 5), normal(2, 1, 2, 2), normal(2)],
    ),
    "yat_conv_2d_channels_last": (
        lambda x, w, b: na.yat_conv(
            x, w, b, stride=2, dilation=(2, 1), groups=2, data_format="channels_last"
        ),
        lambda x, w, b: ref.yat_conv_ref(
            x, w, b, stride=2, dilation=(2, 1), groups=2, data_format="channels_last"
        ),
        lambda: [normal(1, 6, 5, 2), normal(2, 1, 2, 2), normal(2)],
    ),
    "yat_conv_3d": (
        lambda x, w: na.yat_conv(x, w, padding=1, stride=(1, 2, 1)),
        lambda x, w: ref.yat_conv_ref(x, w, padding=1, stride=(1, 2, 1)),
        lambda: [normal(1, 2, 3, 3, 3), normal(2, 2, 2, 2, 2)],
    ),
    "yat_conv_1d_reflect": (
        lambda x, w: na.yat_conv(x, w, padding=2, padding_mode="reflect"),
        lambda x, w: ref.yat_conv_ref(x, w, padding=2, padding_mode="reflect"),
        lambda: [normal(2, 2, 6), normal(3, 2, 3)],
    ),
    "yat_conv_transpose_1d": (
        lambda x, w, b: na.yat_conv_transpose(x, w, b, stride=2, padding=1, output_padding=1),
        lambda x, w, b: ref.yat_conv_transpose_ref(x, w, b, stride=2, padding=1, output_padding=1),
        lambda: [normal(1, 2, 4), normal(2, 3, 3), normal(3)],
    ),
    "yat_attention_causal": (
        lambda q, k, v: na.yat_attention(q, k, v, causal=True),
        lambda q, k, v: ref.yat_attention_ref(q, k, v, causal=True),
        lambda: [normal(1, 3, 4), normal(1, 3, 4), normal(1, 3, 2)],
    ),
    "yat_attention_spherical_l1": (
        lambda q, k, v: na.yat_attention(q, k, v, spherical=True, normalization="l1"),
        lambda q, k, v: ref.yat_attention_ref(q, k, v, spherical=True, normalization="l1"),
        lambda: [normal(2, 4), normal(3, 4), normal(3, 2)],
    ),
    "rotary": (
        lambda x: na.rotary_embedding(x),
        lambda x: ref.rotary_embedding_ref(x),
        lambda: [normal(3, 4)],
    ),
    "softermax": (
        # rows of softermax sum to ~1, so sum only part of each row to get a real gradient
        lambda x: na.softermax(x, n=2.0)[..., :2],
        lambda x: ref.softermax_ref(x, n=2.0)[..., :2],
        lambda: [np.abs(normal(2, 4)) + 0.1],
    ),
    "softer_sigmoid": (
        lambda x: na.softer_sigmoid(x, n=1.5),
        lambda x: ref.softer_sigmoid_ref(x, n=1.5),
        lambda: [np.abs(normal(2, 4)) * 2 + 0.1],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_finite_differences(ad_backend, case):
    f, f_ref, make = CASES[case]
    arrays = make()
    got = ad_backend.grad(f, arrays)
    expected = ref.numerical_grad(f_ref, arrays)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        scale = max(float(np.max(np.abs(e))), 1e-12)
        np.testing.assert_allclose(
            g, e, rtol=1e-5, atol=1e-6 * scale, err_msg=f"{case}: argument {i}"
        )


@pytest.mark.parametrize(
    "name, f, arrays",
    [
        ("x_equals_w", lambda x, w: na.yat(x, w), [np.ones((1, 3)), np.ones((2, 3))]),
        ("x_zero", lambda x, w: na.yat(x, w), [np.zeros((1, 3)), np.ones((2, 3))]),
        (
            "both_zero_spherical",
            lambda x, w: na.yat(x, w, spherical=True),
            [np.zeros((1, 3)), np.zeros((2, 3))],
        ),
        (
            "conv_patch_equals_filter",
            lambda x, w: na.yat_conv(x, w),
            [np.ones((1, 1, 4)), np.ones((1, 1, 2))],
        ),
        (
            "conv_zero_input",
            lambda x, w: na.yat_conv(x, w, padding=1),
            [np.zeros((1, 2, 4)), np.ones((1, 2, 3))],
        ),
        (
            "attention_fully_masked_row",
            lambda q, k: na.yat_attention_weights(
                q, k, mask=np.array([[False, False], [True, False]])
            ),
            [np.ones((2, 3)), np.ones((2, 3))],
        ),
        (
            "squashers_at_zero",
            lambda x: na.softer_sigmoid(x, n=2.0) + na.softermax(x, n=2.0),
            [np.zeros((2, 3))],
        ),
        ("squashers_huge", lambda x: na.soft_tanh(x, n=3.0), [np.full((2,), 1e200)]),
    ],
)
def test_gradients_are_finite_at_the_boundaries(ad_backend, name, f, arrays):
    if name == "attention_fully_masked_row":
        mod = ad_backend.module()
        mask = ad_backend.from_numpy(np.array([[False, False], [True, False]]))
        f = lambda q, k: na.yat_attention_weights(q, k, mask=mask)  # noqa: E731
        del mod
    for i, g in enumerate(ad_backend.grad(f, arrays)):
        assert np.all(np.isfinite(g)), f"{name}: gradient {i} is not finite: {g}"
