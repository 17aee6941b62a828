"""Fused PyTorch autograd functions for yat scores (dense layer, attention) and for the
convolutions' epilogue.

Autograd over the plain formula keeps one temporary per elementwise step and replays each
in the backward; here the forward is one GEMM plus a few in-place passes, and the backward is
written by hand from the closed-form derivatives, so the whole layer costs two GEMMs more than
the forward and a handful of elementwise passes.

With ``n = x.w + b``, ``D = |x|^2 + |w|^2 - 2 x.w``, ``q = max(D, 0) + eps``, ``r = n / q``
and ``y = alpha * n * r``:
``dy/dn = 2 alpha r``, ``dy/dq = -alpha r^2``, ``dq/dD = [D > 0]``, ``dq/deps = 1``.

Both Functions follow the ``torch.func`` protocol (``forward`` without ``ctx``,
``setup_context``, a generated vmap rule), so ``torch.func.grad``, ``vmap``, ``jacrev`` and
``functional_call`` work through them. ``n`` and ``q`` leave ``forward`` as extra
non-differentiable outputs because that protocol saves intermediates only that way.

Higher-order derivatives (``create_graph=True``, Hessian-vector products, nested
``torch.func`` transforms) run the same closed-form backward out of place on ``n`` and ``q``
recomputed from the graph-connected inputs, so autograd can differentiate it.

Under a tracer, an exporter or the compiler (``torch.jit.trace``, ``torch.onnx.export``,
``torch.export``, ``torch.compile``) the entry points below compute the same forward with
plain out-of-place operators instead: a Python ``Function`` would be recorded as an opaque
``PythonOp`` that TorchScript cannot save and ONNX cannot express, while the plain operators
give a graph any runtime can run (and differentiate, since it holds no custom backward) and
that inductor can fuse.
"""

from __future__ import annotations

from typing import Any

import torch

from nmn_array._namespace import float32_under_autocast


class _YatScores(torch.autograd.Function):
    """``x (..., M, d)`` against ``w (..., N, d)`` (same leading dims) -> ``(..., M, N)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, bias, alpha, epsilon, unit_x: bool, unit_w: bool, refine: bool):
        n, q = _scores_n_q(x, w, bias, epsilon, unit_x, unit_w, refine, inplace=True)
        return _ratio(n, q, alpha), n, q

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, bias, alpha, epsilon, unit_x, unit_w, refine = inputs
        _, n, q = output
        ctx.mark_non_differentiable(n, q)
        # no zero-filled gradients for n and q: two score-sized arrays in the backward
        ctx.set_materialize_grads(False)
        # n and q are kept (r = n / q is recomputed): one temporary fewer between the passes
        _save(ctx, (x, w, n, q), (bias, alpha, epsilon))
        ctx.flags = (unit_x, unit_w, refine)

    @staticmethod
    @float32_under_autocast  # backward() called inside an autocast region
    def backward(ctx, grad, _grad_n, _grad_q):
        if grad is None:  # unmaterialised: nothing flows into y
            return (None,) * 8
        (x, w, n, q), (bias, alpha, eps) = _saved(ctx, 4)
        unit_x, unit_w, refine = ctx.flags
        need = ctx.needs_input_grad
        inplace = not torch.is_grad_enabled()
        if not inplace:
            # create_graph: n and q were computed without a graph; recompute them with one
            n, q = _scores_n_q(x, w, bias, eps, unit_x, unit_w, refine, inplace=False)
        g_n, h, grad_alpha, grad_eps = _ratio_backward(
            grad, n, q, alpha, eps, want_alpha=need[3], want_eps=need[4], inplace=inplace
        )
        grad_b = None
        if need[2]:
            flat = g_n.reshape(-1, g_n.shape[-1])
            grad_b = (flat.sum() if bias.numel() == 1 else flat.sum(dim=0)).reshape(bias.shape)
        grad_x, grad_w = _input_grads(g_n, h, x, w, (unit_x, unit_w), need[:2], inplace)
        return grad_x, grad_w, grad_b, grad_alpha, grad_eps, None, None, None


def _argmin(q: torch.Tensor) -> torch.Tensor:
    """``q.argmin(-1, keepdim=True)`` for ``q >= 0``: non-negative floats order like their bit
    patterns read as integers, and torch's integer argmin is about 1.6x faster than its float
    one (which checks for NaN). A negative or NaN ``q`` (an epsilon array below 0, NaN inputs)
    only picks another entry to recompute; each recomputed value is exact either way."""
    if q.dtype in _SAME_WIDTH_INT:
        return q.view(_SAME_WIDTH_INT[q.dtype]).argmin(dim=-1, keepdim=True)
    return q.argmin(dim=-1, keepdim=True)


_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float64: torch.int64}


def _classic(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """``function`` with the classic ``forward(ctx, ...)``, for calls outside ``torch.func``.

    ``apply`` of a Function with ``setup_context`` binds its arguments through
    ``inspect.signature`` on every call (about 0.1 ms, as much as the whole elementwise
    forward of a small layer); the classic form skips that and cannot run under ``torch.func``
    transforms, where the original is used. Same class name, so ``grad_fn`` reads the same.
    """

    def forward(ctx, *args):
        out = function.forward(*args)
        function.setup_context(ctx, args, out)
        return out

    body = {"forward": staticmethod(forward), "backward": staticmethod(function.backward)}
    return type(function.__name__, (torch.autograd.Function,), body)


def _plain_eager() -> bool:
    """Whether this runs outside ``torch.func`` transforms and the compiler: where a Python
    Function's classic form, in-place scatters and dtype views are all allowed."""
    return not (torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling())


def _apply(functions, *args):
    """Apply the ``(torch.func, classic)`` pair of one Function: the classic one in plain
    eager code."""
    return functions[1].apply(*args) if _plain_eager() else functions[0].apply(*args)


def _input_grads(g_n, h, x, w, units, need, inplace: bool):
    """``dL/dx`` and ``dL/dw`` (None where not in ``need``) from :func:`_ratio_backward`'s
    ``g_n`` (overwritten when ``inplace``) and ``h``."""
    # dD/ds = -2; g_n is not needed any more
    g_s = g_n.add_(h, alpha=2) if inplace else g_n + 2 * h
    grad_x = grad_w = None
    if need[0]:
        grad_x = torch.matmul(g_s, w)
        if not units[0]:
            grad_x = _add_scaled(grad_x, x, h.sum(dim=-1, keepdim=True), inplace)
    if need[1]:
        grad_w = torch.matmul(g_s.transpose(-1, -2), x)
        if not units[1]:
            grad_w = _add_scaled(grad_w, w, h.sum(dim=-2).unsqueeze(-1), inplace)
    return grad_x, grad_w


def _scores_n_q(x, w, bias, epsilon, unit_x, unit_w, refine, *, inplace: bool):
    """``n = x.w + b`` and ``q = max(D, 0) + eps`` of :class:`_YatScores`.

    ``q`` is computed from the plain dot product, before the bias is added: folding the bias
    into the distance would cancel it back out and lose precision for large biases.
    """
    dot = torch.matmul(x, w.transpose(-1, -2))
    # q = max(D, 0) + eps = max(D + eps, eps), D = |x|^2 + |w|^2 - 2 x.w: the per-column
    # terms fold into one row, leaving three passes over (..., M, N).
    row = _ones(w) if unit_w else _sq_norms(w).unsqueeze(-2)
    col = _ones(x) if unit_x else _sq_norms(x).unsqueeze(-1)
    if inplace:
        q = torch.add(row + epsilon, dot, alpha=-2)
        q.add_(col).clamp_min_(epsilon)  # clamp_min_ has a vmap batching rule, clamp_ not
    else:
        q = torch.clamp((row + epsilon) - 2 * dot + col, min=epsilon)
    if refine and q.numel() > 0:
        q = _refine(q, x, w, epsilon, unit_x, unit_w, fast=inplace and _plain_eager())
    if bias is None:
        return dot, q
    return (dot.add_(_row(bias, w)) if inplace else dot + _row(bias, w)), q


def _refine(q, x, w, epsilon, unit_x, unit_w, *, fast: bool):
    """Replace each row's smallest ``q`` by the directly computed distance of that pair.

    The expanded distance loses ``~u (|x|^2 + |w|^2)`` to cancellation, which swamps a small
    epsilon exactly where the score is largest (near-collisions); see docs/math.md. The same
    quantity as :func:`nmn_array._distance.nearest_direct`, in torch's own indexing (the
    portable ``take`` costs more than the arithmetic on a small layer). ``fast``: plain eager
    code (no ``torch.func`` transform, tracer or compiler), where ``q`` may be overwritten and
    reinterpreted.
    """
    index = _argmin(q) if fast else q.argmin(dim=-1, keepdim=True)  # (..., M, 1)
    if w.dim() == 2:
        rows = w.index_select(0, index.view(-1)).view(*index.shape[:-1], w.shape[-1])
    else:
        # one bank of keys per leading index
        rows = torch.gather(w, -2, index.expand(*index.shape[:-1], w.shape[-1]))
    direct = _sq_norms(x - rows)
    if unit_x:
        direct = direct + (1.0 - _sq_norms(x))
    if unit_w:
        direct = direct + (1.0 - _sq_norms(rows))
    # clamped like the expanded form: the 1 - |v|^2 terms of unit-length modes can round
    # below 0 at x == w, and q must stay >= epsilon
    value = (direct.clamp_min(0) + epsilon).unsqueeze(-1)
    # (in-place scatter_ has no vmap batching rule)
    return q.scatter_(-1, index, value) if fast else q.scatter(-1, index, value)


class _YatEpilogue(torch.autograd.Function):
    """``alpha (dot + b)^2 / (max(col + row - 2 dot, 0) + eps)`` over broadcast operands.

    The convolutions' end: ``dot`` is the correlation output, ``col`` the patch norms and
    ``row`` the filter norms (a float 1.0 when the filters are unit length). Only ``n`` and
    ``q`` of output size are kept for the backward (autograd over the plain formula keeps
    about five), and the backward is the same closed form as :class:`_YatScores`'.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(dot, col, row, bias, alpha, epsilon):
        n, q = _epilogue_n_q(dot, col, row, bias, epsilon)
        return _ratio(n, q, alpha), n, q

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, n, q = output
        ctx.mark_non_differentiable(n, q)
        # no zero-filled gradients for n and q: two score-sized arrays in the backward
        ctx.set_materialize_grads(False)
        _save(ctx, (n, q), inputs)

    @staticmethod
    @float32_under_autocast  # backward() called inside an autocast region
    def backward(ctx, grad, _grad_n, _grad_q):
        if grad is None:  # unmaterialised: nothing flows into y
            return (None,) * 6
        (n, q), (dot, col, row, bias, alpha, eps) = _saved(ctx, 2)
        need = [kind and wanted for kind, wanted in zip(ctx.inputs_kinds, ctx.needs_input_grad)]
        inplace = not torch.is_grad_enabled()
        if not inplace:
            n, q = _epilogue_n_q(dot, col, row, bias, eps)
        grads: list = [None] * 6
        g_n, h, grads[4], grads[5] = _ratio_backward(
            grad, n, q, alpha, eps, want_alpha=need[4], want_eps=need[5], inplace=inplace
        )
        if need[1]:
            grads[1] = h.sum_to_size(col.shape).neg()
        if need[2]:
            grads[2] = h.sum_to_size(row.shape).neg()
        if need[3]:
            grads[3] = g_n.sum_to_size(bias.shape)
        if need[0]:
            # dD/d dot = -2; g_n may be the bias gradient itself when the shapes agree
            keep = need[3] or not inplace
            grads[0] = torch.add(g_n, h, alpha=2) if keep else g_n.add_(h, alpha=2)
        return tuple(grads)


def _epilogue_n_q(dot, col, row, bias, epsilon):
    """``n`` and ``q`` of :class:`_YatEpilogue`; ``q`` from ``dot`` before the bias (see
    :func:`_scores_n_q`). Out of place: ``dot`` is the caller's tensor."""
    q = torch.add(col + (row + epsilon), dot, alpha=-2).clamp_min(epsilon)
    # a view, not dot itself: an input returned as an output cannot be saved (torch.func)
    return (dot.view_as(dot) if bias is None else dot + bias), q


def _ratio(n, q, alpha):
    """``y = alpha n^2 / q`` in three passes. In this order, as the standard path computes
    it: beyond float32's range ``n^2`` overflows first, so an out-of-range result is ``inf``
    or NaN (docs/math.md, "Range"), where ``n (n / q)`` would give a silent 0."""
    y = n * n
    y.div_(q)
    if alpha is not None:
        y.mul_(alpha)
    return y


def _ratio_backward(grad, n, q, alpha, eps, *, want_alpha: bool, want_eps: bool, inplace: bool):
    """The closed-form backward shared by both Functions, from ``G = dL/dy``.

    Returns ``g_n`` (``dL/dn`` through the numerator, ``2 alpha G r``), ``h`` (``alpha G r^2``
    where ``D > 0``, else 0: ``-dL/dD``), and the alpha and epsilon gradients (None unless
    wanted). ``inplace=False`` uses only out-of-place operations, so that autograd can
    differentiate it (higher-order derivatives).
    """
    r = n / q
    u = grad * r  # G r
    g_n = u * (2.0 if alpha is None else 2 * alpha)
    h = u.mul_(r) if inplace else u * r  # G r^2
    del r  # score-sized temporaries are the peak memory of attention's backward
    grad_alpha = grad_eps = None
    if want_alpha:
        # dL/dalpha = sum G n^2 / q = sum (G r^2) q, taken before h is scaled by alpha
        grad_alpha = torch.vdot(h.reshape(-1), q.reshape(-1)).reshape(alpha.shape)
    if alpha is not None:
        h = h.mul_(alpha) if inplace else h * alpha  # alpha G r^2 = -dL/dq
    if want_eps:
        grad_eps = h.sum().neg().reshape(eps.shape)
    # the clamp: q == eps where D <= 0, and nothing flows through D there
    if not inplace:
        h = h.masked_fill(q <= eps, 0)
    elif isinstance(eps, torch.Tensor):  # (q > eps exactly when q - eps > 0)
        h = torch.ops.aten.threshold_backward(h, q - eps, 0)
    else:
        # ReLU's derivative rule, "0 where q <= eps", in one pass (a comparison and a fill
        # are two, the comparison writing a bool array: four times slower together)
        h = torch.ops.aten.threshold_backward(h, q, eps)
    return g_n, h, grad_alpha, grad_eps


def _add_scaled(out, a, s, inplace: bool):
    """``out - 2 a s`` (the norm terms of the input gradients)."""
    return out.addcmul_(a, s, value=-2) if inplace else torch.addcmul(out, a, s, value=-2)


def _save(ctx, tensors, optional) -> None:
    """Save ``tensors`` and the tensor members of ``optional``; remember the others' values."""
    ctx.inputs_kinds = tuple(isinstance(t, torch.Tensor) for t in optional)
    ctx.values = tuple(None if isinstance(t, torch.Tensor) else t for t in optional)
    ctx.save_for_backward(*tensors, *(t for t in optional if isinstance(t, torch.Tensor)))


def _saved(ctx, count: int):
    saved = ctx.saved_tensors
    rest = iter(saved[count:])
    optional = tuple(next(rest) if kind else v for kind, v in zip(ctx.inputs_kinds, ctx.values))
    return saved[:count], optional


def _exporting() -> bool:
    """Whether a tracer, an exporter or the compiler is recording this call (see the module
    docstring). ``torch.compile`` gets the plain operators too: inductor fuses them (and
    their autograd backward) with the operators around them, which it cannot do across a
    Python Function; compiled attention measured 1.70x the compiled SDPA module through the
    Function and 1.37x through the plain operators, dense and conv the same either way."""
    return bool(
        torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
    )


def _plain_ratio(n, q, alpha):
    """``alpha n^2 / q`` out of place: the Functions' forward for tracers and exporters."""
    y = n * n / q
    return y if alpha is None else y * alpha


_SCORES = (_YatScores, _classic(_YatScores))
_EPILOGUE = (_YatEpilogue, _classic(_YatEpilogue))


def yat_epilogue(dot, col, row, bias, alpha, epsilon):
    """Fused :func:`nmn_array._epilogue.yat_ratio` of :func:`expanded_distance`; the operands
    broadcast against ``dot`` (``row`` may be the float 1.0)."""
    if _exporting():
        return _plain_ratio(*_epilogue_n_q(dot, col, row, bias, epsilon), alpha)
    return _apply(_EPILOGUE, dot, col, row, bias, alpha, epsilon)[0]


def _scores(x, w, bias, alpha, epsilon, unit_x: bool, unit_w: bool, refine: bool):
    """:class:`_YatScores`' ``y``, or its plain-operator forward under a tracer or exporter."""
    if _exporting():
        n, q = _scores_n_q(x, w, bias, epsilon, unit_x, unit_w, refine, inplace=False)
        return _plain_ratio(n, q, alpha)
    return _apply(_SCORES, x, w, bias, alpha, epsilon, unit_x, unit_w, refine)[0]


def _ones(a: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=a.dtype, device=a.device)


def _sq_norms(a: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norms in one fused reduction."""
    return torch.linalg.vector_norm(a, dim=-1).square()


def _row(bias: Any, w: torch.Tensor) -> Any:
    """The bias as a row over the output features (a scalar bias broadcasts)."""
    if not isinstance(bias, torch.Tensor):
        return torch.full((w.shape[-2],), float(bias), dtype=w.dtype, device=w.device)
    return bias.reshape(-1).expand(w.shape[-2]) if bias.numel() == 1 else bias.reshape(-1)


def yat_dense(x, w, bias, alpha, epsilon, *, unit_x: bool, unit_w: bool, refine: bool = True):
    """``x (..., d)``, ``w (n, d)`` -> ``(..., n)``; the arguments are already validated and in
    the compute dtype; ``unit_x``/``unit_w`` take ``|x|^2``/``|w|^2`` as exactly 1."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    y = _scores(x2, w, bias, alpha, epsilon, unit_x, unit_w, refine)
    # a 2-D input's result is returned as it is, not as a view of itself: FSDP2 warns about
    # (and an in-place op on it would bypass) a sharded module's output that is a view
    return y if x.dim() == 2 else y.reshape(*lead, w.shape[0])


def yat_scores(q, k, alpha, epsilon, *, unit: bool, refine: bool = True):
    """Attention scores ``alpha (q.k)^2 / (max(D, 0) + eps)``: ``q (..., Lq, d)``,
    ``k (..., Lk, d)`` (leading dims broadcast) -> ``(..., Lq, Lk)``."""
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    q = q.expand(*lead, *q.shape[-2:])
    k = k.expand(*lead, *k.shape[-2:])
    return _scores(q, k, None, alpha, epsilon, unit, unit, refine)


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


def scores_bounded(q, k, alpha, epsilon) -> bool:
    """Whether no attention score of ``q`` against ``k`` can overflow: ``|alpha| |q|^2 |k|^2
    / epsilon`` bounds ``alpha (q.k)^2 / (max(D, 0) + epsilon)`` (Cauchy-Schwarz), and it is
    below a sixteenth of the dtype's largest value (False for NaN inputs)."""
    with torch.no_grad():
        top = _sq_norms(q).amax() * _sq_norms(k).amax()
        if isinstance(alpha, torch.Tensor):
            top = top * alpha.abs().amax()
        elif alpha is not None:
            top = top * abs(float(alpha))
        floor = epsilon.amin() if isinstance(epsilon, torch.Tensor) else epsilon
        return bool(top / floor < torch.finfo(q.dtype).max / 16)


def tile_scores(q, k, alpha, epsilon, *, unit: bool, refine: bool = True):
    """:func:`yat_scores` of one tile of blocked attention and its pullback in closed form,
    with no autograd graph (the blocked backward recomputes every tile, so a graph per tile
    would be pure overhead).

    Returns ``(y, pull)``; ``pull(G)`` gives ``(dq, dk, dalpha, depsilon)`` for ``G = dL/dy``
    (None for an ``alpha`` or ``epsilon`` that is not a tensor) and may overwrite ``G``.
    """
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    qe, ke = q.expand(*lead, *q.shape[-2:]), k.expand(*lead, *k.shape[-2:])
    with torch.no_grad():
        n, d = _scores_n_q(qe, ke, None, epsilon, unit, unit, refine, inplace=True)
        y = _ratio(n, d, alpha)

    def pull(grad):
        with torch.no_grad():
            g_n, h, grad_alpha, grad_eps = _ratio_backward(
                grad, n, d, alpha, epsilon,
                want_alpha=isinstance(alpha, torch.Tensor),
                want_eps=isinstance(epsilon, torch.Tensor),
                inplace=True,
            )  # fmt: skip
            gq, gk = _input_grads(g_n, h, qe, ke, (unit, unit), (True, True), True)
        return gq.sum_to_size(q.shape), gk.sum_to_size(k.shape), grad_alpha, grad_eps

    return y, pull
