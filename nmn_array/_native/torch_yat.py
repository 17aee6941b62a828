"""A fused PyTorch autograd function for yat scores: the dense layer and attention.

Autograd over the plain formula keeps one temporary per elementwise step and replays each
in the backward; here the forward is one GEMM plus four in-place passes, and the backward is
written by hand from the closed-form derivatives, so the whole layer costs two GEMMs more than
the forward and a handful of elementwise passes.

With ``n = x.w + b``, ``D = |x|^2 + |w|^2 - 2 x.w``, ``q = max(D, 0) + eps``, ``r = n / q``
and ``y = alpha * n * r``:
``dy/dn = 2 alpha r``, ``dy/dq = -alpha r^2``, ``dq/dD = [D > 0]``, ``dq/deps = 1``.
"""

from __future__ import annotations

from typing import Any

import torch


class _YatScores(torch.autograd.Function):
    """``x (..., M, d)`` against ``w (..., N, d)`` (same leading dims) -> ``(..., M, N)``."""

    @staticmethod
    def forward(ctx, x, w, bias, alpha, epsilon, unit_x: bool, unit_w: bool):
        wt = w.transpose(-1, -2)
        if bias is not None and x.dim() == 2:
            n = torch.addmm(_row(bias, w), x, wt)
        else:
            n = torch.matmul(x, wt)
            if bias is not None:
                n.add_(_row(bias, w))
        # q = max(D, 0) + eps = max(D + eps, eps), with D = |x|^2 + |w|^2 - 2 (n - b):
        # the per-column terms fold into one row, leaving three passes over (..., M, N).
        row = _ones(w) if unit_w else _sq_norms(w).unsqueeze(-2)
        if bias is not None:
            row = row + 2 * _row(bias, w)
        q = torch.add(row + epsilon, n, alpha=-2)
        q.add_(1.0 if unit_x else _sq_norms(x).unsqueeze(-1))
        q.clamp_(min=epsilon)
        y = n * n
        y.div_(q)
        if alpha is not None:
            y.mul_(alpha)
        # n and q are kept (r = n / q is recomputed): one temporary fewer between the passes
        tensors = [t for t in (bias, alpha, epsilon) if isinstance(t, torch.Tensor)]
        ctx.save_for_backward(x, w, n, q, *tensors)
        ctx.flags = (unit_x, unit_w)
        ctx.kinds = tuple(isinstance(t, torch.Tensor) for t in (bias, alpha, epsilon))
        ctx.alpha = alpha if not isinstance(alpha, torch.Tensor) else None
        ctx.epsilon = epsilon if not isinstance(epsilon, torch.Tensor) else None
        ctx.bias_value = bias if not isinstance(bias, torch.Tensor) else None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w, n, q, *params = ctx.saved_tensors
        params = iter(params)
        has_bias, has_alpha, has_eps = ctx.kinds
        bias = next(params) if has_bias else None
        alpha = next(params) if has_alpha else ctx.alpha
        eps = next(params) if has_eps else ctx.epsilon
        unit_x, unit_w = ctx.flags
        if torch.is_grad_enabled():
            # create_graph=True (higher-order derivatives): the values saved by the forward
            # are detached from the graph, so differentiate the plain formula instead.
            return _plain_backward(ctx, grad, x, w, bias, alpha, eps, unit_x, unit_w)
        need = ctx.needs_input_grad
        g_n, h, grad_alpha, grad_eps = _ratio_backward(
            grad, n, q, alpha, eps, want_alpha=has_alpha and need[3], want_eps=has_eps and need[4]
        )
        grad_b = None
        if has_bias and need[2]:
            flat = g_n.reshape(-1, g_n.shape[-1])
            grad_b = (flat.sum() if bias.numel() == 1 else flat.sum(dim=0)).reshape(bias.shape)
        g_s = g_n.add_(h, alpha=2)  # dD/ds = -2; g_n is not needed any more
        grad_x = grad_w = None
        if need[0]:
            grad_x = torch.matmul(g_s, w)
            if not unit_x:
                grad_x.addcmul_(x, h.sum(dim=-1, keepdim=True), value=-2)
        if need[1]:
            grad_w = torch.matmul(g_s.transpose(-1, -2), x)
            if not unit_w:
                grad_w.addcmul_(w, h.sum(dim=-2).unsqueeze(-1), value=-2)
        return grad_x, grad_w, grad_b, grad_alpha, grad_eps, None, None


class _YatEpilogue(torch.autograd.Function):
    """``alpha (dot + b)^2 / (max(col + row - 2 dot, 0) + eps)`` over broadcast operands.

    The convolutions' end: ``dot`` is the correlation output, ``col`` the patch norms and
    ``row`` the filter norms (a float 1.0 when the filters are unit length). Only ``n`` and
    ``q`` of output size are kept for the backward (autograd over the plain formula keeps
    about five), and the backward is the same closed form as :class:`_YatScores`'.
    """

    @staticmethod
    def forward(ctx, dot, col, row, bias, alpha, epsilon):
        n = dot if bias is None else dot + bias
        # q = max(D, 0) + eps = max(D + eps, eps) with D = col + row + 2 b - 2 n
        offset = row + epsilon if bias is None else row + 2 * bias + epsilon
        q = torch.add(col + offset, n, alpha=-2)
        q.clamp_(min=epsilon)
        y = n * n
        y.div_(q)
        if alpha is not None:
            y.mul_(alpha)
        inputs = (dot, col, row, bias, alpha, epsilon)
        ctx.kinds = tuple(isinstance(t, torch.Tensor) for t in inputs)
        ctx.values = tuple(None if isinstance(t, torch.Tensor) else t for t in inputs)
        ctx.save_for_backward(n, q, *(t for t in inputs if isinstance(t, torch.Tensor)))
        return y

    @staticmethod
    def backward(ctx, grad):
        n, q, *saved = ctx.saved_tensors
        saved = iter(saved)
        dot, col, row, bias, alpha, eps = (
            next(saved) if kind else value for kind, value in zip(ctx.kinds, ctx.values)
        )
        need = [k and w for k, w in zip(ctx.kinds, ctx.needs_input_grad)]
        if torch.is_grad_enabled():
            # create_graph=True: n and q are detached; differentiate the plain formula of the
            # (graph-connected) inputs instead.
            return _plain_epilogue_backward(grad, need, dot, col, row, bias, alpha, eps)
        grads: list = [None] * 6
        g_n, h, grads[4], grads[5] = _ratio_backward(
            grad, n, q, alpha, eps, want_alpha=need[4], want_eps=need[5]
        )
        if need[1]:
            grads[1] = h.sum_to_size(col.shape).neg()
        if need[2]:
            grads[2] = h.sum_to_size(row.shape).neg()
        if need[3]:
            grads[3] = g_n.sum_to_size(bias.shape)
        if need[0]:
            # dD/d dot = -2; g_n may be the bias gradient itself when the shapes agree
            grads[0] = torch.add(g_n, h, alpha=2) if need[3] else g_n.add_(h, alpha=2)
        return tuple(grads)


def _ratio_backward(grad, n, q, alpha, eps, *, want_alpha: bool, want_eps: bool):
    """The closed-form backward shared by both Functions, from ``G = dL/dy``.

    Returns ``g_n`` (``dL/dn`` through the numerator, ``2 alpha G r``), ``h`` (``alpha G r^2``
    where ``D > 0``, else 0: ``-dL/dD``), and the alpha and epsilon gradients (None unless
    wanted).
    """
    r = n / q
    u = grad * r  # G r
    g_n = u * (2.0 if alpha is None else 2 * alpha)
    h = u.mul_(r)  # G r^2 (u is not needed any more)
    del r  # score-sized temporaries are the peak memory of attention's backward
    grad_alpha = grad_eps = None
    if want_alpha:
        # dL/dalpha = sum G n^2 / q = sum (G r^2) q, taken before h is scaled by alpha
        grad_alpha = torch.vdot(h.reshape(-1), q.reshape(-1)).reshape(alpha.shape)
    if alpha is not None:
        h.mul_(alpha)  # alpha G r^2 = -dL/dq
    if want_eps:
        grad_eps = h.sum().neg().reshape(eps.shape)
    h.masked_fill_(q <= eps, 0)  # the clamp: q == eps where D <= 0
    return g_n, h, grad_alpha, grad_eps


def _grads_of(y, grad, inputs, need) -> tuple:
    """``create_graph`` gradients of ``y`` for the ``inputs`` flagged in ``need`` (None for the
    others): the higher-order path of both Functions, through the plain formula."""
    wanted = [i for i, t in enumerate(inputs) if need[i] and isinstance(t, torch.Tensor)]
    grads = torch.autograd.grad(y, [inputs[i] for i in wanted], grad, create_graph=True)
    out: list = [None] * len(need)
    for i, g in zip(wanted, grads, strict=True):
        out[i] = g
    return tuple(out)


def _plain_epilogue_backward(grad, need, *inputs):
    from nmn_array._epilogue import expanded_distance, yat_ratio
    from nmn_array._namespace import array_namespace

    dot, col, row, bias, alpha, eps = inputs
    xp = array_namespace(dot)
    y = yat_ratio(xp, dot, expanded_distance(dot, col, row), bias=bias, alpha=alpha, epsilon=eps)
    return _grads_of(y, grad, inputs, need)


def yat_epilogue(dot, col, row, bias, alpha, epsilon):
    """Fused :func:`nmn_array._epilogue.yat_ratio` of :func:`expanded_distance`; the operands
    broadcast against ``dot`` (``row`` may be the float 1.0)."""
    return _YatEpilogue.apply(dot, col, row, bias, alpha, epsilon)


def _ones(w: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=w.dtype, device=w.device)


def _sq_norms(a: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norms in one fused reduction."""
    return torch.linalg.vector_norm(a, dim=-1).square_()


def _plain_backward(ctx, grad, x, w, bias, alpha, eps, unit_x, unit_w):
    from nmn_array._namespace import array_namespace
    from nmn_array.dense import plain_yat_dense

    bias = bias if bias is not None else ctx.bias_value
    xp = array_namespace(x)
    y = plain_yat_dense(xp, x, w, bias, alpha, eps, unit_x=unit_x, unit_w=unit_w)
    # seven outputs: the two flags of forward get None
    return _grads_of(y, grad, (x, w, bias, alpha, eps, None, None), ctx.needs_input_grad)


def _row(bias: Any, w: torch.Tensor) -> Any:
    """The bias as a row over the output features (a scalar bias broadcasts)."""
    if not isinstance(bias, torch.Tensor):
        return torch.full((w.shape[0],), float(bias), dtype=w.dtype, device=w.device)
    return bias.reshape(-1).expand(w.shape[0]) if bias.numel() == 1 else bias.reshape(-1)


def yat_dense(x, w, bias, alpha, epsilon, *, unit_x: bool, unit_w: bool):
    """``x (..., d)``, ``w (n, d)`` -> ``(..., n)``; the arguments are already validated and in
    the compute dtype; ``unit_x``/``unit_w`` take ``|x|^2``/``|w|^2`` as exactly 1."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    y = _YatScores.apply(x2, w, bias, alpha, epsilon, unit_x, unit_w)
    return y.reshape(*lead, w.shape[0])


def yat_scores(q, k, alpha, epsilon, *, unit: bool):
    """Attention scores ``alpha (q.k)^2 / (max(D, 0) + eps)``: ``q (..., Lq, d)``,
    ``k (..., Lk, d)`` (leading dims broadcast) -> ``(..., Lq, Lk)``."""
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    q = q.expand(*lead, *q.shape[-2:])
    k = k.expand(*lead, *k.shape[-2:])
    return _YatScores.apply(q, k, None, alpha, epsilon, unit, unit)


def masked_softmax(scores, visible):
    """Softmax over the last axis of the visible entries; a row with none gets zeros.

    ``visible`` is None (all keys), boolean (True = attend) or additive (floating, added to
    the scores; -inf hides a key). The scores are clipped to the dtype's finite range first,
    so a score that overflowed to +inf wins instead of giving inf - inf = NaN. Hidden entries
    are filled with the dtype's lowest finite value rather than -inf, so a fully hidden row
    stays finite (and so does its gradient) before it is zeroed.
    """
    info = torch.finfo(scores.dtype)
    scores = scores.clamp(info.min, info.max)
    if visible is None:
        return torch.softmax(scores, dim=-1)
    if visible.dtype != torch.bool:
        shown = visible > float("-inf")
        # clipped again: a large finite mask entry must not overflow the sum either
        scores = (scores + visible).clamp(info.min, info.max)
    else:
        shown = visible
    hidden = ~shown
    weights = torch.softmax(scores.masked_fill(hidden, info.min), dim=-1)
    return weights.masked_fill(hidden, 0.0)
