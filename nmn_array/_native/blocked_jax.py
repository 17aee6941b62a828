"""Blocked attention for JAX as loops: one compiled tile body, one tile alive at a time.

The array-API form in :mod:`nmn_array._blocked_attention` unrolls the tiles in Python; under
``jax.jit`` XLA then sees every tile at once, schedules them freely and keeps most of their
temporaries alive (at 2048 tokens the forward held 385 MiB, about the materialised path's
share), and compiles for a minute. Here the query blocks run in ``lax.map`` and the key
blocks each query block sees in a ``lax.fori_loop`` with bounds per query block (hidden tiles
are still skipped), on q, k, v and the per-score arrays padded to whole blocks; padded keys
are hidden, padded queries dropped. The tile steps (running normalisers, the gradients of a
tile) are the array-API ones; only the slicing and the loops are JAX's.

The loops have traced bounds, so they are not differentiable themselves: they run inside the
``jax.custom_vjp`` of :mod:`nmn_array._native.blocked`, whose backward is :func:`backward`.
"""

from __future__ import annotations

import dataclasses
import math
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nmn_array import _blocked_attention as blocked

_SCALARS = blocked._SCALARS


def _dynamic_cut(a: Any, start: Any, size: int, axis: int) -> Any:
    return lax.dynamic_slice_in_dim(a, start, size, axis=axis)


class _Grid:
    """The padded tiling of a problem: block sizes, counts and each query block's key blocks."""

    def __init__(self, prob: blocked.Problem) -> None:
        b = prob.blocks
        self.bq, self.bk, self.lq, self.lk = b.bq, b.bk, b.lq, b.lk
        self.nq, self.nk = -(-b.lq // b.bq), -(-b.lk // b.bk)
        lo, hi = [], []
        for r0, r1 in b.rows():
            first, last = b.key_span(r0, r1)
            start = max(first, 0) // b.bk
            lo.append(start)
            hi.append(max(start, -(-min(last, b.lk) // b.bk)) if last > first else start)
        self.lo, self.hi = jnp.asarray(lo, dtype=jnp.int32), jnp.asarray(hi, dtype=jnp.int32)

    def pad(self, a: Any, fill: float = 0.0) -> Any:
        """``a`` padded to whole blocks on its query (-2) and key (-1) axes where not 1."""
        if not blocked.is_score_array(a):
            return a
        widths = [(0, 0)] * a.ndim
        if a.shape[-1] != 1:
            widths[-1] = (0, self.nk * self.bk - a.shape[-1])
        if a.ndim >= 2 and a.shape[-2] != 1:
            widths[-2] = (0, self.nq * self.bq - a.shape[-2])
        return jnp.pad(a, widths, constant_values=fill)

    def rows(self, a: Any, length: int, fill: float = 0.0) -> Any:
        """``a (..., length, d)`` padded on axis -2 to ``length`` (whole blocks)."""
        widths = [(0, 0)] * a.ndim
        widths[-2] = (0, length - a.shape[-2])
        return jnp.pad(a, widths, constant_values=fill)

    def tile(self, a: Any, r0: Any, c0: Any) -> Any:
        """The tile of a padded per-score array (floats and 0-d arrays as they are)."""
        return blocked.tile_of(a, r0, c0, self.bq, self.bk, _dynamic_cut)

    def seen(self, xp: ModuleType, prob: blocked.Problem, ex: list, r0: Any, c0: Any) -> Any:
        """Boolean of the tile's visible pairs: real keys, the window, the masks."""
        real = c0 + jnp.arange(self.bk, dtype=jnp.int32)[None, :] < self.lk
        options = dict(cut=_dynamic_cut, dtype=jnp.int32)
        seen = blocked.seen_in(xp, prob, ex, r0, c0, self.bq, self.bk, real, **options)
        return real if seen is None else seen & real


def _padded_mask(grid: _Grid, prob: blocked.Problem) -> blocked.Problem:
    """``prob`` with its boolean mask padded like the scores (padded pairs hidden): a
    dynamic slice past the end would clamp its start instead."""
    if prob.mask is None:
        return prob
    return dataclasses.replace(prob, mask=grid.pad(prob.mask, False))


def _unblock(stacked: Any, length: int) -> Any:
    """``(nblocks, ..., b, d)`` from ``lax.map`` -> ``(..., length, d)``."""
    moved = jnp.moveaxis(stacked, 0, -3)
    merged = jnp.reshape(moved, (*moved.shape[:-3], -1, moved.shape[-1]))
    return merged[..., :length, :]


def forward(xp: ModuleType, prob: blocked.Problem, q, k, v, extras: list):
    """As :func:`nmn_array._blocked_attention.forward`."""
    grid = _Grid(prob)
    n = blocked._exponent(prob)
    eps = extras[1] if prob.normalization == "l1" else 1e-12
    qp = grid.rows(q, grid.nq * grid.bq)
    kp, vp = grid.rows(k, grid.nk * grid.bk), grid.rows(v, grid.nk * grid.bk)
    ex_p = [grid.pad(a) for a in extras]
    prob = _padded_mask(grid, prob)
    dv = v.shape[-1]
    dtype = jnp.result_type(q, k, v)
    stat = (*prob.lead, grid.bq, 1)
    softmax = prob.normalization == "softmax"
    init = (
        jnp.full(stat, -jnp.inf if softmax else 0.0, dtype=dtype),
        jnp.zeros(stat, dtype=dtype),
        jnp.zeros((*prob.lead, grid.bq, dv), dtype=dtype),
    )

    def query_block(i):
        r0 = (i * grid.bq).astype(jnp.int32)
        qb = lax.dynamic_slice_in_dim(qp, r0, grid.bq, axis=qp.ndim - 2)

        def body(j, state):
            c0 = (j * grid.bk).astype(jnp.int32)
            kb = lax.dynamic_slice_in_dim(kp, c0, grid.bk, axis=kp.ndim - 2)
            vb = lax.dynamic_slice_in_dim(vp, c0, grid.bk, axis=vp.ndim - 2)
            ex = blocked.extras_of(ex_p, r0, c0, grid.bq, grid.bk, _dynamic_cut)
            s = prob.tile(qb, kb, *ex)
            seen = grid.seen(xp, prob, ex, r0, c0)
            if softmax:
                new = blocked._softmax_step(xp, state, s, seen, vb)
            else:
                new = blocked._power_step(xp, n, state, s, seen, vb)
            return tuple(jnp.broadcast_to(a, b.shape).astype(b.dtype) for a, b in zip(new, state))

        state = lax.fori_loop(grid.lo[i], grid.hi[i], body, init)
        return blocked._finish(xp, prob, state, eps, init[2].shape, q)

    outs = lax.map(query_block, jnp.arange(grid.nq, dtype=jnp.int32))
    return tuple(_unblock(o, grid.lq) for o in outs)


def _accumulate(full: Any, g: Any, start: Any, axis: int, size: int) -> Any:
    """``full`` with ``g`` added to its ``size`` entries from ``start`` along ``axis``."""
    old = lax.dynamic_slice_in_dim(full, start, size, axis=axis)
    return lax.dynamic_update_slice_in_dim(full, old + g.astype(full.dtype), start, axis=axis)


def _add_score(grid: _Grid, full: Any, g: Any, r0: Any, c0: Any) -> Any:
    """A per-score array's gradient buffer with a tile's gradient added (axes of size 1 whole)."""
    if full.shape[-1] != 1:
        if full.ndim >= 2 and full.shape[-2] != 1:
            old = grid.tile(full, r0, c0)
            starts = [jnp.zeros((), jnp.int32)] * (full.ndim - 2) + [r0, c0]
            return lax.dynamic_update_slice(full, old + g, starts)
        return _accumulate(full, g, c0, full.ndim - 1, grid.bk)
    if full.ndim >= 2 and full.shape[-2] != 1:
        return _accumulate(full, g, r0, full.ndim - 2, grid.bq)
    return full + g


def backward(xp, prob, q, k, v, extras, saved, dout, pullback, wanted) -> list:
    """As :func:`nmn_array._blocked_attention.backward` (the gradients of every input;
    ``wanted`` selects which are returned)."""
    grid = _Grid(prob)
    n = blocked._exponent(prob)
    out, st1, st2 = saved
    softmax = prob.normalization == "softmax"
    d_all = jnp.sum(dout * out, axis=-1, keepdims=True)
    lq_p, lk_p = grid.nq * grid.bq, grid.nk * grid.bk
    # padded queries: no cotangent, and statistics that make their weights 0 (or finite)
    dout_p, d_p = grid.rows(dout, lq_p), grid.rows(d_all, lq_p)
    st1_p = grid.rows(st1, lq_p, math.inf if softmax else 1.0)
    st2_p = grid.rows(st2, lq_p, math.inf if softmax else 1.0)
    qp = grid.rows(q, lq_p)
    kp, vp = grid.rows(k, lk_p), grid.rows(v, lk_p)
    ex_p = [grid.pad(a) for a in extras]
    prob = _padded_mask(grid, prob)
    arrays = [i for i, a in enumerate(extras) if isinstance(a, jax.Array)]
    init = (jnp.zeros_like(qp), jnp.zeros_like(kp), jnp.zeros_like(vp),
            tuple(jnp.zeros_like(ex_p[i]) for i in arrays))  # fmt: skip

    def query_block(i, carry):
        r0 = (i * grid.bq).astype(jnp.int32)
        qb = lax.dynamic_slice_in_dim(qp, r0, grid.bq, axis=qp.ndim - 2)
        rows = [lax.dynamic_slice_in_dim(a, r0, grid.bq, axis=a.ndim - 2)
                for a in (dout_p, d_p, st1_p, st2_p)]  # fmt: skip
        dout_b, d_b, stats = rows[0], rows[1], (rows[2], rows[3])

        def body(j, carry):
            dq, dk, dv, dex = carry
            c0 = (j * grid.bk).astype(jnp.int32)
            kb = lax.dynamic_slice_in_dim(kp, c0, grid.bk, axis=kp.ndim - 2)
            vb = lax.dynamic_slice_in_dim(vp, c0, grid.bk, axis=vp.ndim - 2)
            ex = blocked.extras_of(ex_p, r0, c0, grid.bq, grid.bk, _dynamic_cut)
            s, pull = pullback(prob.tile, [qb, kb, *ex])
            seen = grid.seen(xp, prob, ex, r0, c0)
            p, ds = blocked._tile_grads(xp, prob, n, s, seen, stats, dout_b, d_b, vb)
            g_v = jnp.matmul(jnp.swapaxes(p, -1, -2), dout_b)
            dv = _accumulate(dv, blocked.unbroadcast(xp, g_v, vb.shape), c0, dv.ndim - 2, grid.bk)
            grads = pull(ds)
            dq = _accumulate(dq, grads[0], r0, dq.ndim - 2, grid.bq)
            dk = _accumulate(dk, grads[1], c0, dk.ndim - 2, grid.bk)
            dex = list(dex)
            for slot, i_ex in enumerate(arrays):
                g = grads[2 + i_ex]
                if g is None:
                    continue
                if i_ex < _SCALARS:
                    dex[slot] = dex[slot] + jnp.reshape(g, dex[slot].shape)
                else:
                    dex[slot] = _add_score(grid, dex[slot], g, r0, c0)
            return dq, dk, dv, tuple(dex)

        return lax.fori_loop(grid.lo[i], grid.hi[i], body, carry)

    dq, dk, dv, dex = lax.fori_loop(jnp.int32(0), jnp.int32(grid.nq), query_block, init)
    result: list = [dq[..., : grid.lq, :], dk[..., : grid.lk, :], dv[..., : grid.lk, :]]
    result += [None] * len(extras)
    for slot, i_ex in enumerate(arrays):
        g = dex[slot]
        if blocked.is_score_array(extras[i_ex]) and i_ex >= _SCALARS:
            g = g[tuple(slice(0, s) for s in extras[i_ex].shape)]
        result[3 + i_ex] = g
    g = blocked.l1_epsilon_grad(xp, prob, extras[1], d_all, st1, st2)
    if g is not None:
        result[4] = result[4] + g
    return [g if w else None for g, w in zip(result, wanted)]
