"""The pure convolutions equal nmn 0.3.5's PyTorch layers, weights copied, in float64."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import nmn_array as na

torch = pytest.importorskip("torch")
nmn_torch = pytest.importorskip("nmn.torch")

RTOL = 1e-10


def _close(ours, theirs, what):
    scale = float(theirs.abs().max())
    torch.testing.assert_close(
        ours, theirs, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}"
    )


def _alpha(module):
    alpha = getattr(module, "alpha", None)
    return alpha if isinstance(alpha, torch.Tensor) else None


# torch's padding="same" (which nmn inherits) exists for stride 1 only
CONV_GRID = [
    case
    for case in itertools.product(
        [1, 2, 3],  # spatial dims
        [1, 2],  # groups
        [1, 2],  # stride
        [1, 2],  # dilation
        [1, "same", "valid"],  # padding
        ["zeros", "reflect", "replicate", "circular"],
    )
    if not (case[4] == "same" and case[2] != 1)
]


@pytest.mark.parametrize("nd, groups, stride, dilation, padding, mode", CONV_GRID, ids=str)
def test_yat_conv_equals_nmn_torch(nd, groups, stride, dilation, padding, mode):
    cls = getattr(nmn_torch, f"YatConv{nd}D")
    torch.manual_seed(nd * 100 + groups * 10 + stride)
    module = cls(
        4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode
    )
    module = module.double()
    size = {1: 13, 2: 8, 3: 7}[nd]
    x = torch.randn(2, 4, *([size] * nd), dtype=torch.float64)
    with torch.no_grad():
        theirs = module(x)
        ours = na.yat_conv(
            x,
            module.weight,
            module.bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            padding_mode=mode,
            alpha=_alpha(module),
            epsilon=module.epsilon if hasattr(module, "epsilon") else 1e-5,
        )
    _close(ours, theirs, f"YatConv{nd}D")


def test_yat_conv_constant_alpha_and_weight_normalized_equal_nmn():
    module = nmn_torch.YatConv2D(
        4, 6, 3, padding=1, constant_alpha=True, weight_normalized=True
    ).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        ours = na.yat_conv(
            x, module.weight, module.bias, padding=1, alpha=2.0**0.5, weight_normalized=True
        )
        _close(ours, module(x), "YatConv2D constant alpha, weight normalized")


# torch requires output_padding < max(stride, dilation)
TRANSPOSE_GRID = [
    case
    for case in itertools.product(
        [1, 2, 3],
        [1, 2],  # groups
        [1, 2],  # stride
        [1, 2],  # dilation
        [0, 1],  # padding
        [0, 1],  # output_padding
    )
    if case[5] < max(case[2], case[3])
]


@pytest.mark.parametrize(
    "nd, groups, stride, dilation, padding, output_padding", TRANSPOSE_GRID, ids=str
)
def test_yat_conv_transpose_equals_nmn_torch(nd, groups, stride, dilation, padding, output_padding):
    cls = getattr(nmn_torch, f"YatConvTranspose{nd}D")
    torch.manual_seed(nd * 100 + groups * 10 + stride)
    module = cls(
        4,
        6,
        3,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
    ).double()
    size = {1: 7, 2: 5, 3: 4}[nd]
    x = torch.randn(2, 4, *([size] * nd), dtype=torch.float64)
    with torch.no_grad():
        theirs = module(x)
        ours = na.yat_conv_transpose(
            x,
            module.weight,
            module.bias,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
            alpha=_alpha(module),
        )
    _close(ours, theirs, f"YatConvTranspose{nd}D")


def test_yat_dense_equals_nmn_torch():
    for kwargs in ({}, {"spherical": True}, {"weight_normalized": True}, {"constant_alpha": True}):
        module = nmn_torch.YatNMN(5, 3, **kwargs).double()
        x = torch.randn(4, 5, dtype=torch.float64)
        alpha = 2.0**0.5 if kwargs.get("constant_alpha") else _alpha(module)
        with torch.no_grad():
            ours = na.yat(
                x,
                module.weight,
                module.bias,
                alpha=alpha,
                spherical=kwargs.get("spherical", False),
                weight_normalized=kwargs.get("weight_normalized", False),
            )
            _close(ours, module(x), f"YatNMN {kwargs}")
    assert np.isfinite(ours.numpy()).all()
