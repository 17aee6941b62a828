"""Which (query block, key block) tiles of an attention matrix a query can see.

Query ``i`` sits at position ``p = i + Lk - Lq`` among the keys (queries aligned to the end of
the keys, as ``causal`` and decoding with a cache have them). A window ``(left, right)`` lets
it see key ``j`` iff ``p - left <= j <= p + right``; ``None`` leaves that side unlimited, so
``causal`` is the window ``(None, 0)``. A tile none of whose pairs is visible is never
computed; a tile all of whose pairs are visible needs no position mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from nmn_array._namespace import device_kw, index_dtype

Window = tuple[int | None, int | None]


def merge_windows(causal: bool, window: Window | None) -> Window | None:
    """The one window ``causal`` and ``window`` allow together (None: every key)."""
    if not causal:
        return window
    if window is None:
        return (None, 0)
    left, right = window
    return (left, 0 if right is None else min(right, 0))


@dataclass(frozen=True)
class Blocks:
    """The tiling of an ``(lq, lk)`` attention matrix in ``bq x bk`` tiles under ``window``."""

    lq: int
    lk: int
    bq: int
    bk: int
    window: Window | None

    @property
    def offset(self) -> int:
        return self.lk - self.lq

    def rows(self) -> list[tuple[int, int]]:
        """The query blocks, in order."""
        return [(r, min(r + self.bq, self.lq)) for r in range(0, self.lq, self.bq)]

    def cols(self) -> list[tuple[int, int]]:
        """The key blocks, in order."""
        return [(c, min(c + self.bk, self.lk)) for c in range(0, self.lk, self.bk)]

    def key_span(self, r0: int, r1: int) -> tuple[int, int]:
        """The keys ``[lo, hi)`` that some query of ``[r0, r1)`` sees (``lo >= hi``: none)."""
        lo, hi = 0, self.lk
        if self.window is not None:
            left, right = self.window
            if left is not None:
                lo = max(lo, r0 + self.offset - left)
            if right is not None:
                hi = min(hi, r1 - 1 + self.offset + right + 1)
        return lo, hi

    def tiles(self, r0: int, r1: int) -> Iterator[tuple[int, int, bool]]:
        """The key blocks ``(c0, c1, whole)`` queries ``[r0, r1)`` see; ``whole``: every pair
        of the tile is visible."""
        lo, hi = self.key_span(r0, r1)
        for c0, c1 in self.cols():
            if c1 <= lo or c0 >= hi:
                continue
            yield c0, c1, self._whole(r0, r1, c0, c1)

    def _whole(self, r0: int, r1: int, c0: int, c1: int) -> bool:
        if self.window is None:
            return True
        left, right = self.window
        first, last = r0 + self.offset, r1 - 1 + self.offset
        return (left is None or c0 >= last - left) and (right is None or c1 - 1 <= first + right)

    def visible(
        self, xp: ModuleType, r0: Any, c0: Any, nr: int, nc: int, like: Any, dtype: Any = None
    ) -> Any:
        """Boolean ``(nr, nc)``: which pairs of the tile of queries ``r0 + [0, nr)`` and keys
        ``c0 + [0, nc)`` the window lets through. ``r0`` and ``c0`` may be traced scalars;
        the positions are ``dtype`` integers (default: the namespace's index dtype)."""
        kw = device_kw(xp, like)
        dtype = index_dtype(xp) if dtype is None else dtype
        rows = xp.reshape(xp.arange(nr, dtype=dtype, **kw), (-1, 1)) + (r0 + self.offset)
        cols = xp.reshape(xp.arange(nc, dtype=dtype, **kw), (1, -1)) + c0
        seen = None
        if self.window is not None:
            # a side wider than both sequences hides nothing; clamping keeps it in range
            left, right = (None if w is None else min(w, self.lq + self.lk) for w in self.window)
            if left is not None:
                seen = cols >= rows - left
            if right is not None:
                upper = cols <= rows + right
                seen = upper if seen is None else xp.logical_and(seen, upper)
        if seen is None:
            return xp.ones((nr, nc), dtype=xp.bool, **kw)
        return seen


def local_window_mask(
    grid_shape: Sequence[int],
    radius: int | Sequence[int],
    *,
    xp: ModuleType | None = None,
    device: Any = None,
) -> Any:
    """Boolean ``(N, N)`` mask of local attention over an N-D grid of ``N = prod(grid_shape)``
    tokens in row-major order: token ``a`` sees token ``b`` iff their grid coordinates differ
    by at most ``radius`` along every axis (a square/cube neighbourhood).

    Pass it as ``mask`` of :func:`nmn_array.yat_attention`. With the blocked path also pass
    ``window=nmn_array.attention.grid_window(grid_shape, radius)`` (the largest row-major
    offset inside the neighbourhood, on both sides): the window lets whole tiles of far-away
    tokens be skipped, the mask keeps the exact neighbourhood inside the others.

    Parameters
    ----------
    grid_shape : sequence of int >= 1
    radius : int >= 0 or one per axis
    xp : array namespace (array-api-compat's or the library's own), default NumPy
        (TensorFlow has no array-API namespace of its own: build with NumPy and convert)
    device : device for the result, default the namespace's

    Returns
    -------
    boolean array of shape (N, N)

    Examples
    --------
    >>> from nmn_array.attention import local_window_mask
    >>> local_window_mask((2, 3), 1).astype(int).tolist()[0]
    [1, 1, 0, 1, 1, 0]
    """
    shape, radii = _grid_args(grid_shape, radius)
    if xp is None:
        import array_api_compat.numpy as default_xp

        xp = default_xp
    kw = {} if device is None else {"device": device}
    n = math.prod(shape)
    index = xp.arange(n, dtype=index_dtype(xp), **kw)
    seen = xp.ones((n, n), dtype=xp.bool, **kw)
    stride = n
    for size, r in zip(shape, radii):
        stride //= size
        coord = (index // stride) % size
        diff = xp.abs(xp.reshape(coord, (-1, 1)) - xp.reshape(coord, (1, -1)))
        seen = xp.logical_and(seen, diff <= r)
    return seen


def grid_window(grid_shape: Sequence[int], radius: int | Sequence[int]) -> tuple[int, int]:
    """The smallest symmetric 1-D ``window`` that contains the neighbourhood of
    :func:`~nmn_array.local_window_mask` in row-major order (for skipping far tiles in the
    blocked path): ``w = sum(min(r, n - 1) * stride)`` over the grid's axes.

    Examples
    --------
    >>> from nmn_array.attention import grid_window
    >>> grid_window((4, 5), 1)
    (6, 6)
    """
    shape, radii = _grid_args(grid_shape, radius)
    w, stride = 0, math.prod(shape)
    for size, r in zip(shape, radii):
        stride //= size
        w += min(r, size - 1) * stride
    return (w, w)


def _grid_args(grid_shape, radius) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = tuple(grid_shape) if isinstance(grid_shape, (tuple, list)) else None
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"grid_shape must be a non-empty sequence of ints >= 1, got {grid_shape!r}"
        )
    radii = tuple(radius) if isinstance(radius, (tuple, list)) else (radius,) * len(shape)
    if len(radii) != len(shape) or any(
        isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in radii
    ):
        raise ValueError(
            f"radius must be an int >= 0 or one per axis of grid_shape {shape}, got {radius!r}"
        )
    return shape, radii
