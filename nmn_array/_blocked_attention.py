"""Yat attention evaluated tile by tile, never holding an ``(Lq, Lk)`` array.

The forward keeps, per query, running normalisers over the key blocks it has seen, the way
flash attention does for the softmax; all three normalisations have exact running forms:

- softmax: the running maximum ``m`` and sum ``l`` of ``exp(s - m)``;
- l1 (``S / (eps + sum S)``) and softermax (``S^n / (1e-12 + sum S^n)``), one *power*
  normaliser with exponent ``n`` (1 for l1): the running maximum ``m`` of ``|S|`` and the sum
  of ``(S / m)^n``, rescaled by ``(m_old / m_new)^n`` when ``m`` grows, so ``S^n`` never
  overflows (the same scaling as :func:`nmn_array.squashers.softermax_impl`).

The backward (flash attention 2's) recomputes each tile's scores from the rows of q and k and
keeps only per-query statistics: ``D = rowsum(dO * O)``, and the log-sum-exp (softmax) or
the scale and normaliser (power). With ``P`` a tile of weights and ``dP = dO V^T``:

- softmax: ``dS = P (dP - D)``;
- power: ``dS = n (S/m)^(n-1) (dP - D) / (m Z)``, ``m Z = eps + sum S^n`` the normaliser
  (for l1 also ``d eps = -sum D / (m Z)`` through the normaliser).

``dS`` goes back through the tile's score function by the caller's ``pullback`` (the
framework's own vector-Jacobian product of that small function), so every input the scores
depend on (q, k, alpha, epsilon, a per-score bias, an additive mask) gets its gradient
without a hand-written derivative of the yat formula here. Written once against the array
API standard; :mod:`nmn_array._native.blocked` wraps it as a custom gradient for PyTorch,
JAX and TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from nmn_array._attention_blocks import Blocks
from nmn_array._namespace import clip, device_kw, scalar_like
from nmn_array.squashers import _pow

#: ``tile(q_rows, k_rows, factor, epsilon, bias, amask) -> finite scores`` (see Problem).
TileFn = Callable[..., Any]
#: ``pullback(fn, arrays) -> (fn(*arrays), pull)``, ``pull(cotangent)`` the gradients.
Pullback = Callable[[Callable[..., Any], list], tuple[Any, Callable[[Any], Any]]]


@dataclass(frozen=True)
class Problem:
    """What the tiles need besides q, k and v.

    The tile function is called as ``tile(q_rows, k_rows, factor, epsilon, bias, amask)``:
    ``factor`` and ``epsilon`` (floats or 0-d arrays) are shared by every tile, ``bias`` and
    ``amask`` (None, or arrays broadcastable to ``(..., Lq, Lk)``) are sliced per tile;
    ``amask`` is the additive mask (it also hides where -inf). ``mask``: the boolean mask or
    None. ``lead``: the broadcast leading shape of the output.
    """

    blocks: Blocks
    tile: TileFn
    normalization: str
    power: float
    mask: Any
    lead: tuple[int, ...]


#: factor and epsilon come first among the extras, shared by every tile
_SCALARS = 2


def _exponent(prob: Problem) -> float:
    return 1.0 if prob.normalization == "l1" else float(prob.power)


def is_score_array(a: Any) -> bool:
    """Whether ``a`` (None, a float or an array) is an array with a score axis to tile."""
    return a is not None and not isinstance(a, (int, float)) and a.ndim > 0


def _cut(a: Any, start: int, size: int, axis: int) -> Any:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + size)
    return a[tuple(index)]


def tile_of(a: Any, r0: Any, c0: Any, nr: int, nc: int, cut: Callable = _cut) -> Any:
    """The part of ``a`` (None, a float, or broadcastable to ``(..., Lq, Lk)``) that the tile
    of queries ``r0 + [0, nr)`` and keys ``c0 + [0, nc)`` uses; axes of size 1 are kept
    whole. ``cut(a, start, size, axis)`` slices one axis (a traced start needs the
    backend's dynamic slice)."""
    if not is_score_array(a):
        return a
    if a.shape[-1] != 1:
        a = cut(a, c0, nc, a.ndim - 1)
    if a.ndim >= 2 and a.shape[-2] != 1:
        a = cut(a, r0, nr, a.ndim - 2)
    return a


def seen_in(xp, prob: Problem, extras, r0, c0, nr, nc, like, **options) -> Any:
    """Boolean of the visible pairs of the tile ``r0 + [0, nr)`` x ``c0 + [0, nc)`` (the
    window, the boolean mask, the keys an additive mask keeps), or None when all are;
    ``options``: ``whole`` (the window hides none of the tile), ``cut`` (for
    :func:`tile_of`), ``dtype`` (of the positions)."""
    whole, cut = options.get("whole", False), options.get("cut", _cut)
    seen = None if whole else prob.blocks.visible(xp, r0, c0, nr, nc, like, options.get("dtype"))
    parts = [tile_of(prob.mask, r0, c0, nr, nc, cut)] if prob.mask is not None else []
    if extras[_SCALARS + 1] is not None:
        amask = extras[_SCALARS + 1]
        parts.append(amask > scalar_like(xp, -math.inf, amask))
    for part in parts:
        seen = part if seen is None else xp.logical_and(seen, part)
    return seen


def extras_of(extras, r0, c0, nr, nc, cut: Callable = _cut) -> list:
    """The extras a tile uses: the scalars whole, the per-score arrays' tiles."""
    tiles = [tile_of(a, r0, c0, nr, nc, cut) for a in extras[_SCALARS:]]
    return list(extras[:_SCALARS]) + tiles


def _hide(xp, seen, a, fill):
    return a if seen is None else xp.where(seen, a, scalar_like(xp, fill, a))


# ---------------------------------------------------------------------------- forward


def _softmax_step(xp, state, s, seen, vb):
    s = _hide(xp, seen, s, -math.inf)
    top = xp.max(s, axis=-1, keepdims=True)
    m = top if state is None else xp.maximum(state[0], top)
    # a row that has seen nothing yet has m = -inf; 0 stands in so no inf - inf appears
    base = xp.where(xp.isfinite(m), m, scalar_like(xp, 0.0, m))
    p = xp.exp(s - base)
    total, acc = xp.sum(p, axis=-1, keepdims=True), xp.matmul(p, vb)
    if state is not None:
        corr = xp.exp(state[0] - base)
        total, acc = state[1] * corr + total, state[2] * corr + acc
    return m, total, acc


def _power_step(xp, n, state, s, seen, vb):
    s = _hide(xp, seen, s, 0.0)
    top = xp.max(xp.abs(s), axis=-1, keepdims=True)
    m = top if state is None else xp.maximum(state[0], top)
    base = xp.where(m > 0, m, scalar_like(xp, 1.0, m))
    t = _pow(xp, s / base, n)
    total, acc = xp.sum(t, axis=-1, keepdims=True), xp.matmul(t, vb)
    if state is not None:
        corr = _pow(xp, state[0] / base, n)
        total, acc = state[1] * corr + total, state[2] * corr + acc
    return m, total, acc


def _scaled_epsilon(xp, n: float, eps: Any, base: Any) -> Any:
    """``eps / base^n``, bounded below the dtype's maximum (a tiny ``base`` cannot make it
    inf); for n = 1 a plain division, so a learnable epsilon has its simple gradient."""
    if n == 1.0:
        return eps / base
    log_big = math.log(float(xp.finfo(base.dtype).max)) - 1.0
    return xp.exp(clip(xp, math.log(eps) - n * xp.log(base), max=log_big))


def _finish(xp, prob: Problem, state, eps, shape, like):
    """The block's output and its per-row statistics (two arrays of shape ``(..., bq, 1)``)."""
    kw = {"dtype": like.dtype, **device_kw(xp, like)}
    stat_shape = (*shape[:-1], 1)
    if state is None:  # no key visible to any query of the block
        inf = xp.full(stat_shape, math.inf, **kw)
        return xp.zeros(shape, **kw), inf, inf
    m, total, acc = state
    if prob.normalization == "softmax":
        ok = total > 0
        out = acc / xp.where(ok, total, scalar_like(xp, 1.0, total))
        base = xp.where(xp.isfinite(m), m, scalar_like(xp, 0.0, m))
        lse = xp.where(ok, base + xp.log(xp.where(ok, total, scalar_like(xp, 1.0, total))),
                       scalar_like(xp, math.inf, total))  # fmt: skip
        return out, lse, lse
    base = xp.where(m > 0, m, scalar_like(xp, 1.0, m))
    z = _scaled_epsilon(xp, _exponent(prob), eps, base) + total
    return acc / z, base, z


def _bcast(xp, a, shape):
    return a if tuple(a.shape) == tuple(shape) else xp.broadcast_to(a, shape)


def forward(xp: ModuleType, prob: Problem, q, k, v, extras: list) -> tuple[Any, Any, Any]:
    """``(out, stat1, stat2)``: the attention output ``(*lead, Lq, dv)`` and two per-query
    statistics ``(*lead, Lq, 1)`` (log-sum-exp twice for softmax; scale and normaliser for
    the power normalisations) that :func:`backward` needs."""
    n = _exponent(prob)
    eps = extras[1] if prob.normalization == "l1" else 1e-12
    outs, s1, s2 = [], [], []
    dv = v.shape[-1]
    for r0, r1 in prob.blocks.rows():
        qb, state = q[..., r0:r1, :], None
        for c0, c1, whole in prob.blocks.tiles(r0, r1):
            ex = extras_of(extras, r0, c0, r1 - r0, c1 - c0)
            s = prob.tile(qb, k[..., c0:c1, :], *ex)
            seen = seen_in(xp, prob, ex, r0, c0, r1 - r0, c1 - c0, s, whole=whole)
            vb = v[..., c0:c1, :]
            if prob.normalization == "softmax":
                state = _softmax_step(xp, state, s, seen, vb)
            else:
                state = _power_step(xp, n, state, s, seen, vb)
        shape = (*prob.lead, r1 - r0, dv)
        out, a, b = _finish(xp, prob, state, eps, shape, q)
        outs.append(_bcast(xp, out, shape))
        s1.append(_bcast(xp, a, (*shape[:-1], 1)))
        s2.append(_bcast(xp, b, (*shape[:-1], 1)))
    return tuple(xp.concat(parts, axis=-2) for parts in (outs, s1, s2))


# --------------------------------------------------------------------------- backward


def unbroadcast(xp: ModuleType, g: Any, shape: tuple[int, ...]) -> Any:
    """``g`` summed down to ``shape`` (the reverse of broadcasting ``shape`` up to g's)."""
    extra = g.ndim - len(shape)
    if extra > 0:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g


def _add(a, b):
    if b is None:
        return a
    return b if a is None else a + b


class _Pieces:
    """Gradient of an array assembled from per-tile pieces (a per-score array sliced as
    :func:`tile_of` slices it, or a row/column block of q, k, v)."""

    def __init__(self, xp, like, rows, cols):
        self.xp, self.like, self.parts = xp, like, {}
        self.rows, self.cols = rows, cols  # block bounds, or [None] for a kept axis

    def add(self, key, g):
        self.parts[key] = _add(self.parts.get(key), g)

    def _zeros(self, r, c):
        shape = list(self.like.shape)
        if r is not None:
            shape[-2] = r[1] - r[0]
        if c is not None:
            shape[-1] = c[1] - c[0]
        return self.xp.zeros(tuple(shape), dtype=self.like.dtype, **device_kw(self.xp, self.like))

    def _row(self, r):
        parts = [self.parts.get((r, c)) for c in self.cols]
        parts = [self._zeros(r, c) if p is None else p for p, c in zip(parts, self.cols)]
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=-1)

    def result(self):
        rows = [self._row(r) for r in self.rows]
        return rows[0] if len(rows) == 1 else self.xp.concat(rows, axis=-2)


def _score_pieces(xp, a, blocks: Blocks):
    """Assembler of the gradient of a per-score array ``a`` (None for floats/0-d)."""
    if a is None or isinstance(a, (int, float)) or a.ndim == 0:
        return None
    cols = [None] if a.shape[-1] == 1 else blocks.cols()
    rows = [None] if a.ndim < 2 or a.shape[-2] == 1 else blocks.rows()
    return _Pieces(xp, a, rows, cols)


def _key_of(a, r, c):
    row = None if a.ndim < 2 or a.shape[-2] == 1 else r
    col = None if a.shape[-1] == 1 else c
    return row, col


def _tile_grads(xp, prob, n, s, seen, stats, dout_b, d_b, vb):
    """``(P, dS)`` of one tile, from its finite scores ``s`` and the rows' statistics."""
    a, b = stats
    dp = xp.matmul(dout_b, xp.matrix_transpose(vb))
    if prob.normalization == "softmax":
        # a row with no visible key has lse = +inf, so its weights are exp(-inf) = 0
        p = _hide(xp, seen, xp.exp(s - a), 0.0)
        return p, p * (dp - d_b)
    r = _hide(xp, seen, s, 0.0) / a
    p = _pow(xp, r, n) / b
    scale = (dp - d_b) / (a * b)
    ds = scale if n == 1.0 else (n * _pow(xp, r, n - 1.0)) * scale
    return p, _hide(xp, seen, ds, 0.0)


def l1_epsilon_grad(xp, prob: Problem, epsilon, d_all, st1, st2) -> Any:
    """The part of epsilon's gradient that comes through the l1 normaliser (d/d eps of
    ``S / (eps + sum S)``: ``-sum D / (m Z)``), shaped as ``epsilon``; None when the
    normalisation is not l1 or epsilon is a Python float."""
    if prob.normalization != "l1" or isinstance(epsilon, (int, float)):
        return None
    return xp.reshape(-xp.sum(d_all / (st1 * st2)), tuple(epsilon.shape))


def backward(
    xp: ModuleType,
    prob: Problem,
    q,
    k,
    v,
    extras: list,
    saved: tuple,
    dout,
    pullback: Pullback,
    wanted: list[bool],
) -> list:
    """Gradients of ``(q, k, v, *extras)`` (None where not ``wanted`` or not an array), from
    :func:`forward`'s ``saved = (out, stat1, stat2)`` and the output's cotangent."""
    out, st1, st2 = saved
    n = _exponent(prob)
    blocks = prob.blocks
    d_all = xp.sum(dout * out, axis=-1, keepdims=True)
    kscal = _SCALARS
    dq = _Pieces(xp, q, blocks.rows(), [None])
    dk = _Pieces(xp, k, blocks.cols(), [None])
    dv = _Pieces(xp, v, blocks.cols(), [None])
    dscal: list = [None] * kscal
    dscore = [_score_pieces(xp, a, blocks) for a in extras[kscal:]]
    for r0, r1 in blocks.rows():
        qb = q[..., r0:r1, :]
        dout_b, d_b = dout[..., r0:r1, :], d_all[..., r0:r1, :]
        stats = (st1[..., r0:r1, :], st2[..., r0:r1, :])
        for c0, c1, whole in blocks.tiles(r0, r1):
            kb, vb = k[..., c0:c1, :], v[..., c0:c1, :]
            ex = extras_of(extras, r0, c0, r1 - r0, c1 - c0)
            s, pull = pullback(prob.tile, [qb, kb, *ex])
            seen = seen_in(xp, prob, ex, r0, c0, r1 - r0, c1 - c0, s, whole=whole)
            p, ds = _tile_grads(xp, prob, n, s, seen, stats, dout_b, d_b, vb)
            if wanted[2]:
                g = xp.matmul(xp.matrix_transpose(p), dout_b)
                dv.add(((c0, c1), None), unbroadcast(xp, g, tuple(vb.shape)))
            grads = pull(ds)
            dq.add(((r0, r1), None), grads[0])
            dk.add(((c0, c1), None), grads[1])
            for i in range(kscal):
                dscal[i] = _add(dscal[i], grads[2 + i])
            for i, pieces in enumerate(dscore):
                g = grads[2 + kscal + i]
                if pieces is not None and g is not None:
                    a = extras[kscal + i]
                    pieces.add(_key_of(a, (r0, r1), (c0, c1)), g)
    g = l1_epsilon_grad(xp, prob, extras[1], d_all, st1, st2) if wanted[4] else None
    if g is not None:
        dscal[1] = _add(dscal[1], g)
    result = [dq.result(), dk.result(), dv.result() if wanted[2] else None]
    result += dscal
    result += [None if p is None else p.result() for p in dscore]
    return [g if w else None for g, w in zip(result, wanted)]
