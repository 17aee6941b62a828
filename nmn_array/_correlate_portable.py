"""Grouped N-d cross-correlation written with array-API standard functions only.

One strided slice per kernel tap (a Python loop over a static count, so it traces under
``jit``), stacked into patches and contracted with one ``matmul``: grouped im2col without
gathers, ``as_strided`` or item assignment. Serves NumPy, array-api-strict, CuPy and Dask.
"""

from __future__ import annotations

import itertools
import math
from types import ModuleType
from typing import Any


def _out_sizes(sizes, kernel, stride, dilation):
    return tuple(
        (n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(sizes, kernel, stride, dilation)
    )


def _tap_index(kernel, stride, dilation, out):
    """For each kernel tap, the strided slices of the spatial axes that it reads."""
    for offset in itertools.product(*(range(k) for k in kernel)):
        yield tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, n, s in zip(offset, dilation, out, stride)
        )


def _tap_slices(x: Any, kernel, stride, dilation, out):
    """Each kernel tap's strided view of the padded input ``x (N, C, *sp)`` -> ``(N, C, *out)``."""
    for idx in _tap_index(kernel, stride, dilation, out):
        yield x[(slice(None), slice(None), *idx)]


def correlate(
    xp: ModuleType,
    x: Any,
    w: Any,
    *,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> Any:
    """``x (N, C, *sp)`` (already padded) with ``w (O, C/groups, *k)`` -> ``(N, O, *out)``."""
    c = x.shape[1]
    o = w.shape[0]
    kernel = tuple(w.shape[2:])
    sizes = tuple(x.shape[2:])
    out = _out_sizes(sizes, kernel, stride, dilation)
    # Split channels into groups first and only merge axes afterwards: lazy libraries
    # (Dask) reshape by merging or splitting whole axes, not by regrouping them.
    xg = xp.reshape(x, (-1, groups, c // groups, *sizes))
    taps = [
        xg[(slice(None), slice(None), slice(None), *idx)]
        for idx in _tap_index(kernel, stride, dilation, out)
    ]
    patches = xp.stack(taps, axis=3)  # (N, G, C/G, K, *out)
    cg_k = (c // groups) * math.prod(kernel)
    patches = xp.reshape(patches, (-1, groups, cg_k, math.prod(out)))
    wm = xp.reshape(w, (groups, o // groups, cg_k))
    y = xp.matmul(wm, patches)  # (N, G, O/G, P)
    return xp.reshape(y, (-1, o, *out))


def window_sum(
    xp: ModuleType,
    x: Any,
    kernel: tuple[int, ...],
    *,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Any:
    """Per-channel sum of ``x (N, G, *sp)`` (already padded) over each window -> ``(N, G, *out)``."""
    out = _out_sizes(tuple(x.shape[2:]), kernel, stride, dilation)
    total = None
    for tap in _tap_slices(x, kernel, stride, dilation, out):
        total = tap if total is None else total + tap
    return total


def insert_zeros(xp: ModuleType, x: Any, stride: tuple[int, ...]) -> Any:
    """Put ``s - 1`` zeros between neighbours along each spatial axis of ``x (N, C, *sp)``.

    Built from ``stack`` and ``reshape`` (no item assignment), so it works on immutable arrays.
    """
    for i, s in enumerate(stride):
        if s == 1:
            continue
        axis = 2 + i
        n = x.shape[axis]
        zeros = xp.zeros_like(x)
        y = xp.stack([x] + [zeros] * (s - 1), axis=axis + 1)
        shape = list(x.shape)
        shape[axis] = n * s
        y = xp.reshape(y, tuple(-1 if d is None else d for d in shape))
        idx = [slice(None)] * len(y.shape)
        idx[axis] = slice(0, (n - 1) * s + 1)
        x = y[tuple(idx)]
    return x
