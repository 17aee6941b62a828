"""PyTorch prototypes of the proposals in ``docs/performance.md`` (see ``README.md`` here for
what they showed). Not part of the package; run from the repository root with nmn_array
installed: ``python experiments/prototypes_torch.py`` checks them against the real layers.

They are benchmark-only code: float32, ``groups=1``, zero padding, no masks, learnable alpha
and fixed epsilon, which is what the benchmarked layers use. Each is checked against the
real layer's outputs and gradients in :func:`check`. They are written from the closed-form derivatives of

``y = alpha * n^2 / q``, ``n = dot + b``, ``q = max(|a|^2 + |w|^2 - 2 dot, 0) + eps``:

with ``r = n / q``, ``u = alpha * G * r`` (G the incoming gradient) and
``h = u * r * [q > eps]``: ``dL/d dot = 2 (u + h)``, ``dL/d|a|^2 = -h``, ``dL/d|w|^2 = -h``
(summed over what each norm is shared by), ``dL/db = 2 u`` and ``dL/d alpha = G r n``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from nmn_array.benchmarks._common import Sizes
from nmn_array.benchmarks.torch_cases import merge_heads, split_heads
from torch import nn

aten = torch.ops.aten


# --------------------------------------------------------------------------------------
# Proposal 1: fused yat conv with a hand-written backward
# --------------------------------------------------------------------------------------
def _pool_ok(kernel, stride, padding, dilation) -> bool:
    """Whether ``avg_pool2d`` can compute the window sum (no dilation, padding <= k / 2)."""
    return all(d == 1 for d in dilation) and all(p <= k // 2 for p, k in zip(padding, kernel))


def window_sum(xsq, ones, stride, padding, dilation):
    """Sum of the 1-channel ``xsq`` over every kernel window: ``avg_pool2d`` times the
    window size where it applies (3-4x faster than oneDNN's 1-channel convolution)."""
    k = tuple(ones.shape[2:])
    if _pool_ok(k, stride, padding, dilation):
        return F.avg_pool2d(xsq, k, stride, padding, count_include_pad=True) * math.prod(k)
    return F.conv2d(xsq, ones, None, stride, padding, dilation)


def window_sum_backward(grad, xsq, ones, stride, padding, dilation):
    """Gradient of :func:`window_sum` with respect to ``xsq``."""
    k = tuple(ones.shape[2:])
    if _pool_ok(k, stride, padding, dilation):
        g = aten.avg_pool2d_backward(
            grad, xsq, list(k), list(stride), list(padding), False, True, None
        )
        return g.mul_(math.prod(k))
    return aten.convolution_backward(
        grad, xsq, ones, None, stride, padding, dilation, False, [0, 0], 1, [True, False, False]
    )[0]


class FusedYatConv2dFn(torch.autograd.Function):
    """Yat 2-D convolution in one autograd node.

    Forward: the bias is folded into the main convolution (``n = conv(x, w) + b``), the patch
    norms come from ONE channel (``|x|^2`` summed over channels first, then a 1-channel
    window sum, an ``avg_pool2d`` where possible), and the epilogue runs in place (6 passes
    over the output). Backward: one ``convolution_backward`` for both input and weight
    gradients, the norm terms reduced over output channels *before* the 1-channel
    transposed window sum; about 10 passes over the output instead of ~34 for autograd over
    the plain formula.
    """

    @staticmethod
    def forward(ctx, x, w, bias, alpha, epsilon: float, stride, padding, dilation):
        ones = x.new_ones((1, 1, *w.shape[2:]))
        n = F.conv2d(x, w, bias, stride, padding, dilation)
        xsq = torch.linalg.vector_norm(x, dim=1, keepdim=True).square_()
        psq = window_sum(xsq, ones, stride, padding, dilation)
        row = torch.linalg.vector_norm(w.flatten(1), dim=1).square_()
        if bias is not None:
            row = row + 2 * bias
        q = torch.add((row + epsilon).view(1, -1, 1, 1), n, alpha=-2)
        q.add_(psq)
        q.clamp_(min=epsilon)
        r = n / q
        y = n * r
        if alpha is not None:
            y.mul_(alpha)
        ctx.save_for_backward(x, w, xsq, ones, n, q, r, alpha)
        ctx.geometry = (stride, padding, dilation)
        ctx.epsilon = epsilon
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w, xsq, ones, n, q, r, alpha = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        need = ctx.needs_input_grad
        u = grad * r
        grad_alpha = None
        if alpha is not None:
            if need[3]:
                grad_alpha = torch.vdot(u.reshape(-1), n.reshape(-1)).reshape(alpha.shape)
            u.mul_(alpha)
        h = u * r
        h.masked_fill_(q <= ctx.epsilon, 0)
        h_pixels = h.sum(dim=1, keepdim=True)  # reduce over output channels first
        h_filters = h.sum(dim=(0, 2, 3))
        grad_b = u.sum(dim=(0, 2, 3)).mul_(2) if ctx.has_bias and need[2] else None
        s = h.add_(u)  # dL/d dot = 2 (u + h); the 2 is applied to the (smaller) results
        gx, gw, _ = aten.convolution_backward(
            s, x, w, None, stride, padding, dilation, False, [0, 0], 1, [need[0], need[1], False]
        )
        if gx is not None:
            gx.mul_(2)
            dxsq = window_sum_backward(h_pixels, xsq, ones, stride, padding, dilation)
            gx.addcmul_(x, dxsq, value=-2)
        if gw is not None:
            gw.mul_(2)
            gw.addcmul_(w, h_filters.view(-1, 1, 1, 1), value=-2)
        return gx, gw, grad_b, grad_alpha, None, None, None, None


class FusedYatConv2d(nn.Conv2d):
    """``nn.Conv2d`` parameters plus ``alpha``, forward through :class:`FusedYatConv2dFn`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.alpha = nn.Parameter(torch.ones(1))
        self.epsilon = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C, H, W)`` -> ``(N, O, H', W')``."""
        return FusedYatConv2dFn.apply(
            x,
            self.weight,
            self.bias,
            self.alpha,
            self.epsilon,
            self.stride,
            self.padding,
            self.dilation,
        )


# --------------------------------------------------------------------------------------
# Proposal 2: yat attention core (scores + softmax + values) in one autograd node
# --------------------------------------------------------------------------------------
def _probs(qc, kc, c, eps):
    """Softmax of yat scores for one chunk of (batch*head) slices: returns P, r, den, dot."""
    dot = torch.bmm(qc, kc.transpose(1, 2))
    qq = torch.linalg.vector_norm(qc, dim=-1).square_().unsqueeze(-1)
    kk = torch.linalg.vector_norm(kc, dim=-1).square_().unsqueeze(-2)
    den = torch.add(kk + eps, dot, alpha=-2)
    den.add_(qq)
    den.clamp_(min=eps)
    r = dot / den
    logits = dot * r
    logits.mul_(c)
    return torch.softmax(logits, dim=-1), r, den, dot


class YatAttentionFn(torch.autograd.Function):
    """``softmax(c * dot^2 / den) @ v`` with ``c = alpha * scale``, in one autograd node.

    The (batch*head) slices are processed in chunks of ``chunk`` slices, so the L x L
    temporaries of one chunk stay in cache. ``recompute=True`` (memory-lean) saves only q,
    k, v and the output and recomputes the scores chunk by chunk in the backward: peak
    memory is then O(chunk * L^2) instead of O(batch * heads * L^2).
    """

    @staticmethod
    def forward(ctx, q, k, v, alpha, epsilon: float, scale: float, chunk: int, recompute: bool):
        b, h, length, d = q.shape
        q3 = q.reshape(b * h, length, d)
        k3 = k.reshape(b * h, k.shape[2], d)
        v3 = v.reshape(b * h, v.shape[2], v.shape[3])
        c = scale if alpha is None else alpha * scale
        out = q3.new_empty((b * h, length, v.shape[3]))
        saved = []
        for i in range(0, b * h, chunk):
            sl = slice(i, i + chunk)
            p, r, den, dot = _probs(q3[sl], k3[sl], c, epsilon)
            torch.bmm(p, v3[sl], out=out[sl])
            if not recompute:
                saved.append((p, r, den, dot))
        ctx.save_for_backward(q3, k3, v3, out, alpha)
        ctx.saved = saved
        ctx.params = (epsilon, scale, chunk, recompute, q.shape, k.shape, v.shape)
        return out.view(b, h, length, v.shape[3])

    @staticmethod
    def backward(ctx, grad):
        q3, k3, v3, out, alpha = ctx.saved_tensors
        epsilon, scale, chunk, recompute, qs, ks, vs = ctx.params
        c = scale if alpha is None else alpha * scale
        g3 = grad.reshape(out.shape)
        dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
        grad_alpha = q3.new_zeros(()) if alpha is not None else None
        delta = (g3 * out).sum(dim=-1, keepdim=True)  # rowsum(P * dP), O(L d)
        for j, i in enumerate(range(0, q3.shape[0], chunk)):
            sl = slice(i, i + chunk)
            qc, kc, vc, gc = q3[sl], k3[sl], v3[sl], g3[sl]
            if recompute:
                p, r, den, dot = _probs(qc, kc, c, epsilon)
            else:
                p, r, den, dot = ctx.saved[j]
            torch.bmm(p.transpose(1, 2), gc, out=dv[sl])
            a = torch.bmm(gc, vc.transpose(1, 2))
            a.sub_(delta[sl]).mul_(p)  # dL/d logits
            u = a.mul_(r)  # a r
            if alpha is not None:
                grad_alpha += scale * torch.vdot(u.reshape(-1), dot.reshape(-1))
            u.mul_(c)
            hh = u * r
            hh.masked_fill_(den <= epsilon, 0)
            h_rows = hh.sum(dim=-1, keepdim=True)
            h_cols = hh.sum(dim=-2).unsqueeze(-1)
            s = hh.add_(u)  # dL/d dot = 2 (u + h)
            dq[sl] = torch.bmm(s, kc).mul_(2).addcmul_(qc, h_rows, value=-2)
            dk[sl] = torch.bmm(s.transpose(1, 2), qc).mul_(2).addcmul_(kc, h_cols, value=-2)
        if alpha is not None:
            grad_alpha = grad_alpha.reshape(alpha.shape)
        ctx.saved = None
        return dq.view(qs), dk.view(ks), dv.view(vs), grad_alpha, None, None, None, None


class FusedYatAttention(nn.Module):
    """Multi-head yat self-attention: ``nn.Linear`` q/k/v/out, core in :class:`YatAttentionFn`."""

    def __init__(
        self, embed_dim: int, num_heads: int, *, chunk_bytes: int | None, recompute: bool
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.alpha = nn.Parameter(torch.ones(1))
        self.chunk_bytes = chunk_bytes
        self.recompute = recompute
        self.epsilon = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, E)`` -> ``(B, L, E)``."""
        q, k, v = (
            split_heads(p(x), self.num_heads) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        b, h, length, d = q.shape
        if self.chunk_bytes is None:
            chunk = b * h
        else:
            chunk = max(1, self.chunk_bytes // (length * k.shape[2] * q.element_size()))
        y = YatAttentionFn.apply(
            q, k, v, self.alpha, self.epsilon, 1.0 / math.sqrt(d), chunk, self.recompute
        )
        return self.out_proj(merge_heads(y))


# --------------------------------------------------------------------------------------
# Proposal 3: the same nodes with their elementwise epilogues compiled by TorchInductor
# --------------------------------------------------------------------------------------
_COMPILED: dict[Any, Any] = {}


def compiled(fn: Any) -> Any:
    """``torch.compile(fn)`` (fullgraph, static shapes), created once per function."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _COMPILED[fn]


def conv_epilogue_fwd(n, psq, row, alpha, eps: float):
    """``alpha * n^2 / max(row - 2 n + psq, eps)`` (row = |w|^2 + 2 b + eps)."""
    q = torch.clamp(row - 2 * n + psq, min=eps)
    return alpha * n * n / q


def conv_epilogue_bwd(g, n, psq, row, alpha, eps: float):
    """``dL/d dot``, the norm terms reduced over output channels and over pixels, the bias
    and alpha gradients, from ``n``, the patch norms and the filter row only."""
    q = torch.clamp(row - 2 * n + psq, min=eps)
    r = n / q
    gr = g * r
    d_alpha = (gr * n).sum()
    u = alpha * gr
    h = torch.where(q > eps, u * r, 0.0)
    s = 2 * (u + h)
    return s, h.sum(1, keepdim=True), h.sum((0, 2, 3)), 2 * u.sum((0, 2, 3)), d_alpha


class CompiledYatConv2dFn(torch.autograd.Function):
    """:class:`FusedYatConv2dFn` with the epilogues compiled: one fused kernel forward, one
    (multi-output) backward; only ``n`` (plus the 1-channel patch norms) is saved."""

    @staticmethod
    def forward(ctx, x, w, bias, alpha, epsilon: float, stride, padding, dilation):
        ones = x.new_ones((1, 1, *w.shape[2:]))
        n = F.conv2d(x, w, bias, stride, padding, dilation)
        xsq = torch.linalg.vector_norm(x, dim=1, keepdim=True).square_()
        psq = window_sum(xsq, ones, stride, padding, dilation)
        row = torch.linalg.vector_norm(w.flatten(1), dim=1).square_()
        if bias is not None:
            row = row + 2 * bias
        row = (row + epsilon).view(1, -1, 1, 1)
        y = compiled(conv_epilogue_fwd)(n, psq, row, alpha, epsilon)
        ctx.save_for_backward(x, w, xsq, ones, n, psq, row, alpha)
        ctx.geometry = (stride, padding, dilation)
        ctx.epsilon = epsilon
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w, xsq, ones, n, psq, row, alpha = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        need = ctx.needs_input_grad
        s, h_pixels, h_filters, grad_b, grad_alpha = compiled(conv_epilogue_bwd)(
            grad, n, psq, row, alpha, ctx.epsilon
        )
        gx, gw, _ = aten.convolution_backward(
            s, x, w, None, stride, padding, dilation, False, [0, 0], 1, [need[0], need[1], False]
        )
        if gx is not None:
            dxsq = window_sum_backward(h_pixels, xsq, ones, stride, padding, dilation)
            gx.addcmul_(x, dxsq, value=-2)
        if gw is not None:
            gw.addcmul_(w, h_filters.view(-1, 1, 1, 1), value=-2)
        return (
            gx,
            gw,
            grad_b if ctx.has_bias else None,
            grad_alpha.reshape(alpha.shape),
            None,
            None,
            None,
            None,
        )


class CompiledYatConv2d(FusedYatConv2d):
    """Forward through :class:`CompiledYatConv2dFn`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C, H, W)`` -> ``(N, O, H', W')``."""
        return CompiledYatConv2dFn.apply(
            x,
            self.weight,
            self.bias,
            self.alpha,
            self.epsilon,
            self.stride,
            self.padding,
            self.dilation,
        )


def dense_epilogue_fwd(n, xx, row, alpha, eps: float):
    """``alpha * n^2 / max(row - 2 n + |x|^2, eps)`` (row = |w|^2 + 2 b + eps)."""
    q = torch.clamp(row - 2 * n + xx, min=eps)
    return alpha * n * n / q


def dense_epilogue_bwd(g, n, xx, row, alpha, eps: float):
    """``dL/d dot``, the norm terms per input row and per neuron, bias and alpha gradients."""
    q = torch.clamp(row - 2 * n + xx, min=eps)
    r = n / q
    gr = g * r
    d_alpha = (gr * n).sum()
    u = alpha * gr
    h = torch.where(q > eps, u * r, 0.0)
    s = 2 * (u + h)
    return s, h.sum(1, keepdim=True), h.sum(0), 2 * u.sum(0), d_alpha


class CompiledYatDenseFn(torch.autograd.Function):
    """Dense yat with compiled epilogues: addmm, one fused forward kernel; two mm and one
    fused backward kernel. Saves ``x``, ``w``, ``n`` and two norm vectors."""

    @staticmethod
    def forward(ctx, x, w, bias, alpha, epsilon: float):
        n = torch.addmm(bias, x, w.t())
        xx = torch.linalg.vector_norm(x, dim=1, keepdim=True).square_()
        row = torch.linalg.vector_norm(w, dim=1).square_().add_(bias, alpha=2).add_(epsilon)
        y = compiled(dense_epilogue_fwd)(n, xx, row, alpha, epsilon)
        ctx.save_for_backward(x, w, n, xx, row, alpha)
        ctx.epsilon = epsilon
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w, n, xx, row, alpha = ctx.saved_tensors
        s, h_rows, h_cols, grad_b, grad_alpha = compiled(dense_epilogue_bwd)(
            grad, n, xx, row, alpha, ctx.epsilon
        )
        gx = torch.mm(s, w).addcmul_(x, h_rows, value=-2)
        gw = torch.mm(s.t(), x).addcmul_(w, h_cols.unsqueeze(1), value=-2)
        return gx, gw, grad_b, grad_alpha.reshape(alpha.shape), None


class CompiledYatDense(nn.Module):
    """``weight (out, in)``, ``bias (out,)``, ``alpha (1,)``; :class:`CompiledYatDenseFn`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_normal_(self.weight)
        bound = 1.0 / math.sqrt(in_features)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.alpha = nn.Parameter(torch.ones(1))
        self.epsilon = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, in)`` -> ``(B, out)``."""
        return CompiledYatDenseFn.apply(x, self.weight, self.bias, self.alpha, self.epsilon)


def attn_epilogue_fwd(dot, qq, kk, c, eps: float):
    """Softmax over keys of ``c * dot^2 / max(|q|^2 + |k|^2 - 2 dot, 0) + eps)``."""
    den = torch.clamp(qq + kk + eps - 2 * dot, min=eps)
    return torch.softmax(c * dot * dot / den, dim=-1)


def attn_epilogue_bwd(dp, p, delta, dot, qq, kk, c, eps: float):
    """``dL/d dot`` and the norm terms from ``dL/dP``, ``P`` and ``dot`` (den and r are
    recomputed in registers)."""
    den = torch.clamp(qq + kk + eps - 2 * dot, min=eps)
    r = dot / den
    ar = p * (dp - delta) * r
    d_c = (ar * dot).sum()
    u = c * ar
    h = torch.where(den > eps, u * r, 0.0)
    s = 2 * (u + h)
    return s, h.sum(-1, keepdim=True), h.sum(-2).unsqueeze(-1), d_c


class CompiledYatAttentionFn(torch.autograd.Function):
    """Attention core with compiled epilogues; saves ``P`` and ``dot`` (two L x L)."""

    @staticmethod
    def forward(ctx, q, k, v, alpha, epsilon: float, scale: float):
        b, h, length, d = q.shape
        q3 = q.reshape(b * h, length, d)
        k3 = k.reshape(b * h, k.shape[2], d)
        v3 = v.reshape(b * h, v.shape[2], v.shape[3])
        c = alpha * scale
        dot = torch.bmm(q3, k3.transpose(1, 2))
        qq = torch.linalg.vector_norm(q3, dim=-1).square_().unsqueeze(-1)
        kk = torch.linalg.vector_norm(k3, dim=-1).square_().unsqueeze(-2)
        p = compiled(attn_epilogue_fwd)(dot, qq, kk, c, epsilon)
        out = torch.bmm(p, v3)
        ctx.save_for_backward(q3, k3, v3, out, p, dot, qq, kk, alpha)
        ctx.params = (epsilon, scale, q.shape, k.shape, v.shape)
        return out.view(b, h, length, v.shape[3])

    @staticmethod
    def backward(ctx, grad):
        q3, k3, v3, out, p, dot, qq, kk, alpha = ctx.saved_tensors
        epsilon, scale, qs, ks, vs = ctx.params
        g3 = grad.reshape(out.shape)
        dv = torch.bmm(p.transpose(1, 2), g3)
        dp = torch.bmm(g3, v3.transpose(1, 2))
        delta = (g3 * out).sum(dim=-1, keepdim=True)
        s, h_rows, h_cols, d_c = compiled(attn_epilogue_bwd)(
            dp, p, delta, dot, qq, kk, alpha * scale, epsilon
        )
        dq = torch.bmm(s, k3).addcmul_(q3, h_rows, value=-2)
        dk = torch.bmm(s.transpose(1, 2), q3).addcmul_(k3, h_cols, value=-2)
        grad_alpha = (scale * d_c).reshape(alpha.shape)
        return dq.view(qs), dk.view(ks), dv.view(vs), grad_alpha, None, None


class CompiledLeanYatAttentionFn(torch.autograd.Function):
    """Compiled epilogues, chunks of (batch*head) slices, nothing L x L saved: the backward
    recomputes ``dot`` and ``P`` chunk by chunk (one extra ``bmm`` per chunk)."""

    @staticmethod
    def forward(ctx, q, k, v, alpha, epsilon: float, scale: float, chunk: int):
        b, h, length, d = q.shape
        q3 = q.reshape(b * h, length, d)
        k3 = k.reshape(b * h, k.shape[2], d)
        v3 = v.reshape(b * h, v.shape[2], v.shape[3])
        c = alpha * scale
        qq = torch.linalg.vector_norm(q3, dim=-1).square_().unsqueeze(-1)
        kk = torch.linalg.vector_norm(k3, dim=-1).square_().unsqueeze(-2)
        out = q3.new_empty((b * h, length, v.shape[3]))
        fwd = compiled(attn_epilogue_fwd)
        for i in range(0, b * h, chunk):
            sl = slice(i, i + chunk)
            dot = torch.bmm(q3[sl], k3[sl].transpose(1, 2))
            torch.bmm(fwd(dot, qq[sl], kk[sl], c, epsilon), v3[sl], out=out[sl])
        ctx.save_for_backward(q3, k3, v3, out, qq, kk, alpha)
        ctx.params = (epsilon, scale, chunk, q.shape, k.shape, v.shape)
        return out.view(b, h, length, v.shape[3])

    @staticmethod
    def backward(ctx, grad):
        q3, k3, v3, out, qq, kk, alpha = ctx.saved_tensors
        epsilon, scale, chunk, qs, ks, vs = ctx.params
        c = alpha * scale
        g3 = grad.reshape(out.shape)
        delta = (g3 * out).sum(dim=-1, keepdim=True)
        dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
        d_c = q3.new_zeros(())
        fwd, bwd = compiled(attn_epilogue_fwd), compiled(attn_epilogue_bwd)
        for i in range(0, q3.shape[0], chunk):
            sl = slice(i, i + chunk)
            qc, kc, vc, gc = q3[sl], k3[sl], v3[sl], g3[sl]
            dot = torch.bmm(qc, kc.transpose(1, 2))
            p = fwd(dot, qq[sl], kk[sl], c, epsilon)
            torch.bmm(p.transpose(1, 2), gc, out=dv[sl])
            dp = torch.bmm(gc, vc.transpose(1, 2))
            s, h_rows, h_cols, dci = bwd(dp, p, delta[sl], dot, qq[sl], kk[sl], c, epsilon)
            d_c += dci
            torch.bmm(s, kc, out=dq[sl]).addcmul_(qc, h_rows, value=-2)
            torch.bmm(s.transpose(1, 2), qc, out=dk[sl]).addcmul_(kc, h_cols, value=-2)
        grad_alpha = (scale * d_c).reshape(alpha.shape)
        return dq.view(qs), dk.view(ks), dv.view(vs), grad_alpha, None, None, None


class CompiledYatAttention(FusedYatAttention):
    """Forward through :class:`CompiledYatAttentionFn`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, E)`` -> ``(B, L, E)``."""
        q, k, v = (
            split_heads(p(x), self.num_heads) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        scale = 1.0 / math.sqrt(q.shape[-1])
        if self.recompute:
            b, h, length, _ = q.shape
            chunk = max(1, (self.chunk_bytes or 2**20) // (length * k.shape[2] * q.element_size()))
            chunk = math.ceil(b * h / math.ceil(b * h / chunk))  # equal chunks: one compilation
            y = CompiledLeanYatAttentionFn.apply(q, k, v, self.alpha, self.epsilon, scale, chunk)
        else:
            y = CompiledYatAttentionFn.apply(q, k, v, self.alpha, self.epsilon, scale)
        return self.out_proj(merge_heads(y))


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
def _x(*shape: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(*shape).requires_grad_(True),)


def conv_fused(sz: Sizes):
    """Proposal 1."""
    m = FusedYatConv2d(sz.conv_in, sz.conv_out, sz.conv_k, padding=sz.conv_k // 2)
    return m, _x(sz.conv_batch, sz.conv_in, sz.conv_hw, sz.conv_hw)


def attn_fused(sz: Sizes):
    """Proposal 2, saving the probabilities (no recompute, no chunking)."""
    m = FusedYatAttention(sz.attn_dim, sz.attn_heads, chunk_bytes=None, recompute=False)
    return m, _x(sz.attn_batch, sz.attn_len, sz.attn_dim)


def attn_lean(sz: Sizes):
    """Proposal 2, memory-lean: chunks of ~1 MiB of scores, recomputed in the backward."""
    m = FusedYatAttention(sz.attn_dim, sz.attn_heads, chunk_bytes=2**20, recompute=True)
    return m, _x(sz.attn_batch, sz.attn_len, sz.attn_dim)


def conv_compiled(sz: Sizes):
    """Proposal 3 for the convolution."""
    m = CompiledYatConv2d(sz.conv_in, sz.conv_out, sz.conv_k, padding=sz.conv_k // 2)
    return m, _x(sz.conv_batch, sz.conv_in, sz.conv_hw, sz.conv_hw)


def attn_compiled(sz: Sizes):
    """Proposal 3 for attention."""
    m = CompiledYatAttention(sz.attn_dim, sz.attn_heads, chunk_bytes=None, recompute=False)
    return m, _x(sz.attn_batch, sz.attn_len, sz.attn_dim)


def attn_compiled_lean(sz: Sizes):
    """Proposal 3 + chunks + recompute (memory-lean)."""
    m = CompiledYatAttention(sz.attn_dim, sz.attn_heads, chunk_bytes=2**20, recompute=True)
    return m, _x(sz.attn_batch, sz.attn_len, sz.attn_dim)


def dense_compiled(sz: Sizes):
    """Proposal 3 for the dense layer."""
    return CompiledYatDense(sz.dense_in, sz.dense_out), _x(sz.dense_batch, sz.dense_in)


TORCH_PROTOTYPES = {
    "dense": {"proto_compiled": ("prototype: compiled epilogues", dense_compiled)},
    "conv": {
        "proto_fused": ("prototype: fused conv autograd.Function", conv_fused),
        "proto_compiled": ("prototype: fused conv, compiled epilogues", conv_compiled),
    },
    "attention": {
        "proto_fused": ("prototype: fused attention core", attn_fused),
        "proto_lean": ("prototype: fused + chunked + recompute", attn_lean),
        "proto_compiled": ("prototype: fused core, compiled epilogues", attn_compiled),
        "proto_compiled_lean": ("prototype: compiled + chunked + recompute", attn_compiled_lean),
    },
}


# --------------------------------------------------------------------------------------
# Correctness check against the real layers
# --------------------------------------------------------------------------------------
def _grads(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads["input"] = x.grad
    return y.detach(), grads


def _compare(name: str, ref: nn.Module, proto: nn.Module, x: torch.Tensor) -> float:
    y0, g0 = _grads(ref, x)
    y1, g1 = _grads(proto, x)
    worst = float((y0 - y1).abs().max() / (y0.abs().max() + 1e-30))
    for key, val in g0.items():
        other = g1.get(key)
        if val is None or other is None:
            continue
        err = float((val - other).abs().max() / (val.abs().max() + 1e-30))
        worst = max(worst, err)
    print(f"{name}: max relative error (output and every gradient) {worst:.2e}")
    return worst


def check(dtype: torch.dtype = torch.float64) -> float:
    """Compare each prototype with the nmn_array framework layer on the same parameters
    (float64, small sizes); returns the largest relative error."""
    from nmn_array.frameworks import torch as fw

    torch.manual_seed(0)
    worst = 0.0
    ref = fw.YatConv2D(5, 7, 3, padding=1).to(dtype)
    proto = FusedYatConv2d(5, 7, 3, padding=1).to(dtype)
    proto.load_state_dict(ref.state_dict(), strict=False)
    with torch.no_grad():
        proto.alpha.fill_(1.3)
        ref.alpha.fill_(1.3)
    worst = max(
        worst, _compare("conv proto_fused", ref, proto, torch.randn(2, 5, 6, 6, dtype=dtype))
    )
    ref = fw.YatNMN(6, 5).to(dtype)
    proto = CompiledYatDense(6, 5).to(dtype)
    proto.load_state_dict(ref.state_dict(), strict=False)
    worst = max(worst, _compare("dense proto_compiled", ref, proto, torch.randn(4, 6, dtype=dtype)))
    ref = fw.YatConv2D(5, 7, 3, padding=1).to(dtype)
    proto = CompiledYatConv2d(5, 7, 3, padding=1).to(dtype)
    proto.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(2, 5, 6, 6, dtype=dtype)
    worst = max(worst, _compare("conv proto_compiled", ref, proto, x))
    ref = fw.MultiHeadYatAttention(12, 3).to(dtype)
    proto = CompiledYatAttention(12, 3, chunk_bytes=None, recompute=False).to(dtype)
    proto.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(2, 5, 12, dtype=dtype)
    worst = max(worst, _compare("attention proto_compiled", ref, proto, x))
    proto = CompiledYatAttention(12, 3, chunk_bytes=2 * 5 * 5 * 8, recompute=True).to(dtype)
    proto.load_state_dict(ref.state_dict(), strict=False)
    worst = max(worst, _compare("attention proto_compiled_lean", ref, proto, x))
    for recompute, chunk in ((False, None), (True, 3 * 5 * 5 * 8)):
        ref = fw.MultiHeadYatAttention(12, 3).to(dtype)
        proto = FusedYatAttention(12, 3, chunk_bytes=chunk, recompute=recompute).to(dtype)
        proto.load_state_dict(ref.state_dict(), strict=False)
        with torch.no_grad():
            proto.alpha.fill_(0.7)
            ref.alpha.fill_(0.7)
        x = torch.randn(2, 5, 12, dtype=dtype)
        worst = max(worst, _compare(f"attention recompute={recompute}", ref, proto, x))
    return worst


if __name__ == "__main__":
    check()
