"""Under ``torch.autocast`` the yat functions still compute in float32 (docs/mixed_precision.md).

Autocast would run their matmuls and convolutions in bfloat16: near a neuron the distance
``|x|^2 + |w|^2 - 2 x.w`` then cancels in 8 bits of mantissa. Every case below differs from
float32 by about 1e-2 (relative) without the fix; with it, it equals float32 exactly, since
the same float32 kernels run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from nmn_array.frameworks import torch as ours

import nmn_array
from nmn_array import linear_attention, random_features

BF16 = torch.bfloat16


def _amp(dtype=BF16):
    return torch.autocast("cpu", dtype=dtype)


def _near_collision():
    """Inputs a tiny step away from neurons: the case bfloat16 distances get wrong."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 64, generator=g)
    x = w[:6] + 1e-2 * torch.randn(6, 64, generator=g)
    return x, w


def _qkv(length=24, d=16):
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(2, 2, length, d, generator=g) for _ in range(3))


_SLAY = random_features.slay_projection(16, rng=0)
_PERFORMER = linear_attention.performer_projection("maclaurin", 16, rng=0)

CASES = {
    "yat": lambda: (nmn_array.yat, _near_collision(), {}),
    "yat_expanded": lambda: (nmn_array.yat, _near_collision(), {"distance": "expanded"}),
    "yat_conv": lambda: (
        nmn_array.yat_conv,
        (torch.randn(2, 8, 12, 12), torch.randn(6, 8, 3, 3)),
        {"padding": 1},
    ),
    "yat_conv_transpose": lambda: (
        nmn_array.yat_conv_transpose,
        (torch.randn(2, 8, 6, 6), torch.randn(8, 4, 3, 3)),
        {"stride": 2},
    ),
    "yat_attention": lambda: (nmn_array.yat_attention, _qkv(), {"causal": True}),
    "yat_attention_weights": lambda: (nmn_array.yat_attention_weights, _qkv()[:2], {}),
    "yat_linear_attention": lambda: (
        nmn_array.yat_linear_attention,
        (*_qkv(), lambda t: random_features.slay_features(t, _SLAY)),
        {"causal": True, "chunk_size": 8},
    ),
    "slay_features": lambda: (random_features.slay_features, (_qkv()[0], _SLAY), {}),
    "performer_attention": lambda: (
        linear_attention.performer_attention,
        (*_qkv(), "maclaurin", _PERFORMER),
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_inputs_compute_in_float32_under_autocast(name):
    torch.manual_seed(0)
    fn, args, kw = CASES[name]()
    ref = fn(*args, **kw)
    with _amp():
        out = fn(*args, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["yat", "yat_expanded", "yat_conv", "yat_attention"])
def test_float16_autocast_computes_in_float32(name):
    """float16 autocast: near a neuron the float16 product overflowed to inf (65504 is
    float16's largest value); in float32 it is float32's finite result."""
    torch.manual_seed(0)
    fn, args, kw = CASES[name]()
    ref = fn(*args, **kw)
    with _amp(torch.float16):
        out = fn(*args, **kw)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["yat", "yat_conv", "yat_attention"])
def test_bfloat16_inputs_return_bfloat16_computed_in_float32(name):
    """A bf16 input is upcast, computed in float32 and cast back, as without autocast."""
    torch.manual_seed(0)
    fn, args, kw = CASES[name]()
    args = tuple(a.to(BF16) for a in args)
    ref = fn(*args, **kw)
    with _amp():
        out = fn(*args, **kw)
    assert out.dtype == BF16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("native", [True, False], ids=["fused", "standard"])
def test_gradients_under_autocast_equal_float32(native):
    """The forward under autocast, ``backward()`` after it, as torch documents (a backward
    inside the autocast region is not supported by torch's custom autograd functions)."""
    x, w = _near_collision()
    grads = []
    for amp in (False, True):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=BF16, enabled=amp):
            loss = nmn_array.yat(xi, wi, _native=native).sum()
        loss.backward()
        grads.append((xi.grad, wi.grad))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


BACKWARD_INSIDE = {
    "yat": lambda: (nmn_array.yat, _near_collision(), {}),
    "yat_conv": lambda: (
        nmn_array.yat_conv,
        (torch.randn(2, 8, 12, 12), torch.randn(6, 8, 3, 3)),
        {"padding": 1},
    ),
    "yat_attention_blocked": lambda: (nmn_array.yat_attention, _qkv(), {"block_size": 8}),
}


@pytest.mark.parametrize("name", sorted(BACKWARD_INSIDE))
def test_backward_inside_the_autocast_region_equals_float32(name):
    """``backward()`` called inside the region (torch advises against it, users do it): the
    fused Functions' hand-written backward would run its matmuls in bfloat16 there; it turns
    autocast off as the forward does."""
    torch.manual_seed(0)
    fn, args, kwargs = BACKWARD_INSIDE[name]()
    grads = []
    for amp in (False, True):
        leaves = [a.clone().requires_grad_() for a in args]
        with torch.autocast("cpu", dtype=BF16, enabled=amp):
            out = fn(*leaves, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            out.square().sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_torch_func_under_autocast():
    """``torch.func.grad`` of a loss whose forward enters autocast (its backward then runs
    after the region, as torch recommends), and ``vmap`` inside autocast."""
    x, w = _near_collision()

    def loss(w, amp):
        with torch.autocast("cpu", dtype=BF16, enabled=amp):
            return nmn_array.yat(x, w).sum()

    ref = torch.func.grad(loss)(w, False)
    torch.testing.assert_close(torch.func.grad(loss)(w, True), ref, rtol=0, atol=0)
    rows = torch.func.vmap(lambda xi: nmn_array.yat(xi, w))
    with _amp():
        out = rows(x)
    torch.testing.assert_close(out, nmn_array.yat(x, w), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make, sample",
    [
        (lambda: ours.YatNMN(64, 32), lambda: _near_collision()[0]),
        (lambda: ours.YatConv2D(8, 6, 3, padding=1), lambda: torch.randn(2, 8, 10, 10)),
    ],
    ids=["YatNMN", "YatConv2D"],
)
def test_layers_under_autocast_compiled_fullgraph(make, sample):
    """Eager and ``torch.compile(fullgraph=True)``: the autocast test and the disabled
    region trace into one graph, and the result is float32's."""
    torch.manual_seed(0)
    layer, x = make(), sample()
    ref = layer(x)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    with _amp():
        eager, traced = layer(x), compiled(x)
    torch.testing.assert_close(eager, ref, rtol=0, atol=0)
    torch.testing.assert_close(traced, ref)
    assert traced.dtype == torch.float32


def test_attention_layer_under_autocast():
    """The projections are torch's own Linear layers, which autocast runs in bf16; the yat
    scores between them are float32, and the layer's output is the out projection's bf16."""
    torch.manual_seed(0)
    layer = ours.MultiHeadYatAttention(32, 4)
    x = torch.randn(2, 10, 32)
    ref = layer(x)
    ref = ref[0] if isinstance(ref, tuple) else ref
    with _amp():
        out = layer(x)
    out = out[0] if isinstance(out, tuple) else out
    assert out.dtype == BF16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_numpy_calls_do_not_import_torch():
    """The autocast test looks torch up in sys.modules; it never imports it."""
    code = (
        "import sys, numpy as np, nmn_array\n"
        "nmn_array.yat(np.ones((2, 3)), np.ones((4, 3)))\n"
        "nmn_array.yat_attention(np.ones((2, 3, 4)), np.ones((2, 3, 4)), np.ones((2, 3, 4)))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
