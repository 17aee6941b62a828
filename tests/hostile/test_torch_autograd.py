"""The fused torch autograd Functions under higher-order autograd and ``torch.func``.

Shapes have every axis of a different size, so a broadcast that confuses two axes fails
loudly instead of agreeing by accident (the earlier double-backward bug hid behind equal
sizes). The oracle is autograd over the portable path (``_native=False``), which shares no
code with the hand-written backward.
"""

from __future__ import annotations

import pytest
import torch
from nmn_array.frameworks import torch as nt
from torch.func import functional_call, grad, jacrev, vmap

import nmn_array

F64 = torch.float64


def _rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).requires_grad_()


def _dense(native, x, w, b, alpha, eps):
    return nmn_array.yat(x, w, b, alpha=alpha, epsilon=eps, _native=native)


def _attention(native, q, k, v, alpha, eps):
    return nmn_array.yat_attention(q, k, v, alpha=alpha, epsilon=eps, _native=native)


def _conv(native, x, w, b, alpha, eps):
    return nmn_array.yat_conv(x, w, b, padding=1, alpha=alpha, epsilon=eps, _native=native)


CASES = {
    # name: (function, input shapes); the last two inputs are alpha and epsilon, shape (1,)
    "dense": (_dense, [(2, 3, 5), (4, 5), (4,)]),
    "attention": (_attention, [(2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7)]),
    "conv2d": (_conv, [(2, 3, 6, 5), (4, 3, 3, 2), (4,)]),
}


def _inputs(shapes):
    arrays = [_rand(*s, seed=i) for i, s in enumerate(shapes)]
    alpha = torch.tensor([1.3], dtype=F64, requires_grad=True)
    eps = torch.tensor([0.2], dtype=F64, requires_grad=True)
    return [*arrays, alpha, eps]


def _grads(native, fn, inputs, probe, create_graph):
    y = fn(native, *inputs)
    return torch.autograd.grad((y * probe).sum(), inputs, create_graph=create_graph)


@pytest.mark.parametrize("name", sorted(CASES))
def test_create_graph_first_order_gradients_match(name):
    fn, shapes = CASES[name]
    inputs = _inputs(shapes)
    probe = torch.rand_like(fn(False, *inputs))
    want = _grads(False, fn, inputs, probe, create_graph=False)
    for create_graph in (False, True):
        got = _grads(True, fn, inputs, probe, create_graph)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hessian_vector_products_match_portable_path(name):
    fn, shapes = CASES[name]
    inputs = _inputs(shapes)
    probe = torch.rand_like(fn(False, *inputs))
    direction = [torch.randn_like(t) for t in inputs]

    def hvp(native):
        g = _grads(native, fn, inputs, probe, create_graph=True)
        dot = sum((gi * di).sum() for gi, di in zip(g, direction, strict=True))
        return torch.autograd.grad(dot, inputs, allow_unused=True)

    for got, want in zip(hvp(True), hvp(False), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradgradcheck(name):
    fn, shapes = CASES[name]
    small = [tuple(max(1, s - 1) if i else s for i, s in enumerate(shape)) for shape in shapes]
    if name == "conv2d":
        small = [(1, 2, 4, 3), (3, 2, 3, 2), (3,)]
    inputs = _inputs(small)
    assert torch.autograd.gradgradcheck(lambda *a: fn(True, *a), inputs)


# -- torch.func ---------------------------------------------------------------------


def _modules():
    torch.manual_seed(0)
    return {
        "dense": (nt.YatNMN(5, 4, bias=True).double(), (3, 5)),
        "conv2d": (nt.YatConv2D(3, 4, 3, padding=1).double(), (3, 3, 6, 5)),
        "attention": (nt.MultiHeadYatAttention(6, 2).double(), (3, 4, 6)),
    }


@pytest.mark.parametrize("name", ["dense", "conv2d", "attention"])
def test_torch_func_grad_and_functional_call(name):
    module, shape = _modules()[name]
    x = torch.randn(*shape, dtype=F64)
    params = {k: p.detach() for k, p in module.named_parameters()}

    def loss(p):
        return functional_call(module, p, (x,)).square().sum()

    got = grad(loss)(params)
    module.zero_grad()
    module(x).square().sum().backward()
    for key, p in module.named_parameters():
        torch.testing.assert_close(got[key], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["dense", "conv2d", "attention"])
def test_torch_func_per_sample_gradients(name):
    module, shape = _modules()[name]
    x = torch.randn(*shape, dtype=F64)
    params = {k: p.detach() for k, p in module.named_parameters()}

    def loss(p, sample):
        return functional_call(module, p, (sample.unsqueeze(0),)).square().sum()

    batched = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(shape[0]):
        one = grad(loss)(params, x[i])
        for key in params:
            torch.testing.assert_close(batched[key][i], one[key], rtol=1e-10, atol=1e-12)


def test_torch_func_vmap_and_jacrev_on_the_functions():
    x, w = _rand(4, 5, seed=1).detach(), _rand(3, 5, seed=2).detach()
    torch.testing.assert_close(vmap(lambda r: nmn_array.yat(r, w))(x), nmn_array.yat(x, w))
    q, k = _rand(2, 4, 5, seed=3).detach(), _rand(2, 6, 5, seed=4).detach()
    torch.testing.assert_close(
        vmap(lambda a, b: nmn_array.yat_attention(a, b, b))(q, k),
        nmn_array.yat_attention(q, k, k),
    )
    cx, cw = _rand(2, 3, 5, 4, seed=5).detach(), _rand(2, 3, 3, 3, seed=6).detach()
    torch.testing.assert_close(
        vmap(lambda s: nmn_array.yat_conv(s.unsqueeze(0), cw)[0])(cx), nmn_array.yat_conv(cx, cw)
    )
    fused = jacrev(lambda m: nmn_array.yat(x, m))(w)
    portable = jacrev(lambda m: nmn_array.yat(x, m, _native=False))(w)
    torch.testing.assert_close(fused, portable, rtol=1e-10, atol=1e-12)
