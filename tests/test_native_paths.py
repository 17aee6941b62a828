"""Native fast paths equal the portable standard-only path, in outputs and gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import nmn_array as na

torch = pytest.importorskip("torch")

DENSE_OPTIONS = list(
    itertools.product([False, True], [False, True], ["none", "vector", "scalar"], [False, True])
)


@pytest.mark.parametrize(
    "spherical, weight_normalized, bias_kind, learnable", DENSE_OPTIONS, ids=str
)
def test_torch_fused_dense_equals_portable(spherical, weight_normalized, bias_kind, learnable):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = {
        "none": None,
        "vector": torch.randn(4, generator=g, dtype=torch.float64),
        "scalar": 0.3,
    }[bias_kind]
    if isinstance(bias, torch.Tensor):
        bias.requires_grad_(True)
    alpha = torch.tensor([1.3], dtype=torch.float64, requires_grad=True) if learnable else 1.3
    eps = torch.tensor([1e-2], dtype=torch.float64, requires_grad=True) if learnable else 1e-2
    kw = dict(alpha=alpha, epsilon=eps, spherical=spherical, weight_normalized=weight_normalized)
    inputs = [t for t in (x, w, bias, alpha, eps) if isinstance(t, torch.Tensor)]

    fused = na.yat(x, w, bias, **kw)
    portable = na.yat(x, w, bias, **kw, _native=False)
    torch.testing.assert_close(fused, portable, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(fused.shape, generator=g, dtype=torch.float64)
    g_fused = torch.autograd.grad(fused, inputs, upstream)
    g_portable = torch.autograd.grad(portable, inputs, upstream)
    for a, b in zip(g_fused, g_portable, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the hand-written backward against finite differences, and its own derivative
    assert torch.autograd.gradcheck(
        lambda *t: na.yat(*t[:2], t[2] if bias_kind == "vector" else bias, **kw),
        (x, w, *inputs[2:]),
    )


def test_torch_fused_dense_clamped_distance_gradient():
    # x == w: the distance is clamped at 0 and its gradient must not flow through the clamp
    w = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    x = torch.ones(1, 3, dtype=torch.float64, requires_grad=True)
    fused = na.yat(x, w).sum()
    portable = na.yat(x, w, _native=False).sum()
    for a, b in zip(
        torch.autograd.grad(fused, (x, w)), torch.autograd.grad(portable, (x, w)), strict=True
    ):
        torch.testing.assert_close(a, b)
        assert torch.isfinite(a).all()


def test_torch_fused_dense_double_backward():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: na.yat(a, b, 0.2, alpha=1.1), (x, w))


def test_torch_fused_dense_float32_and_compile():
    x = torch.randn(8, 16)
    w = torch.randn(4, 16)
    torch.testing.assert_close(na.yat(x, w), na.yat(x, w, _native=False), rtol=1e-5, atol=1e-6)
    compiled = torch.compile(lambda a, b: na.yat(a, b), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w), na.yat(x, w))
    np.testing.assert_allclose(
        na.yat(x.double(), w.double()).numpy(),
        na.yat(x.double().numpy(), w.double().numpy()),
        rtol=1e-12,
    )


CONV_OPTIONS = list(
    itertools.product(
        ["conv", "transpose"], [False, True], ["none", "vector", "scalar"], [False, True]
    )
)


@pytest.mark.parametrize("kind, weight_normalized, bias_kind, learnable", CONV_OPTIONS, ids=str)
def test_torch_fused_conv_epilogue_equals_portable(kind, weight_normalized, bias_kind, learnable):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    shape = (4, 3, 2, 2) if kind == "transpose" else (6, 2, 2, 2)
    w = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    bias = {
        "none": None,
        "vector": torch.randn(6, generator=g, dtype=torch.float64),
        "scalar": 0.3,
    }[bias_kind]
    if isinstance(bias, torch.Tensor):
        bias.requires_grad_(True)
    alpha = torch.tensor([1.3], dtype=torch.float64, requires_grad=True) if learnable else 1.3
    eps = torch.tensor([1e-2], dtype=torch.float64, requires_grad=True) if learnable else 1e-2
    fn = na.yat_conv_transpose if kind == "transpose" else na.yat_conv
    kw = dict(
        stride=2, padding=1, groups=2, alpha=alpha, epsilon=eps, weight_normalized=weight_normalized
    )
    inputs = [t for t in (x, w, bias, alpha, eps) if isinstance(t, torch.Tensor)]

    fused = fn(x, w, bias, **kw)
    portable = fn(x, w, bias, **kw, _native=False)
    torch.testing.assert_close(fused, portable, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(fused.shape, generator=g, dtype=torch.float64)
    g_fused = torch.autograd.grad(fused, inputs, upstream)
    g_portable = torch.autograd.grad(portable, inputs, upstream)
    for a, b in zip(g_fused, g_portable, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda *t: fn(*t[:2], t[2] if bias_kind == "vector" else bias, **kw), (x, w, *inputs[2:])
    )


def test_torch_fused_conv_epilogue_clamp_and_double_backward():
    # a patch equal to its filter: the distance is clamped at 0 and no gradient flows there
    x = torch.ones(1, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.ones(1, 2, 3, dtype=torch.float64, requires_grad=True)
    fused = torch.autograd.grad(na.yat_conv(x, w).sum(), (x, w))
    portable = torch.autograd.grad(na.yat_conv(x, w, _native=False).sum(), (x, w))
    for a, b in zip(fused, portable, strict=True):
        torch.testing.assert_close(a, b)
        assert torch.isfinite(a).all()
    x = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda a, c, d: na.yat_conv(a, c, d, alpha=1.1, padding=1), (x, w, b)
    )


ATTENTION_OPTIONS = [
    dict(),
    dict(causal=True),
    dict(spherical=True),
    dict(mask=True),
    dict(mask=True, normalization="l1"),
    dict(causal=True, normalization="softermax", power=2.0),
]


@pytest.mark.parametrize("options", ATTENTION_OPTIONS, ids=str)
def test_torch_attention_fast_path_equals_portable(options):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([1.2], dtype=torch.float64, requires_grad=True)
    kw = dict(options)
    if kw.pop("mask", False):
        mask = torch.rand(2, 1, 4, 6, generator=g) < 0.5
        mask[0, 0, 1] = False  # a query that sees no key
        kw["mask"] = mask
    fast = na.yat_attention(q, k, v, alpha=alpha, **kw)
    portable = na.yat_attention(q, k, v, alpha=alpha, **kw, _native=False)
    torch.testing.assert_close(fast, portable, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    inputs = (q, k, v, alpha)
    for a, b in zip(
        torch.autograd.grad(fast, inputs, upstream),
        torch.autograd.grad(portable, inputs, upstream),
        strict=True,
    ):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
