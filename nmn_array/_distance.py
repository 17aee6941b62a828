"""Near-collision refinement of the expanded squared distance.

The expanded form ``|x|^2 + |w|^2 - 2 x.w`` needs only one matrix product, but in floating
point it carries an absolute error of about ``u (|x|^2 + |w|^2)`` (``u`` the unit roundoff).
Where ``x`` is close to ``w`` that error swamps the true distance and a small epsilon, and the
yat product, whose value is largest exactly there, comes out wrong by large factors (in
float32 with ``d = 64`` and ``epsilon = 1e-5``: a quarter of the true ``yat(w, w)``).

The remedy keeps the one GEMM: for each row (each input, each query) the pair with the
smallest expanded distance, its nearest neighbour and the only place where a collision can
hide unless two neurons are themselves within the error of each other, is recomputed
directly as ``sum((x - w)^2)``. That costs one pass to find the minimum, ``O(M d)`` for the
direct distances and one pass to put them in, with static shapes (jit-friendly). See
docs/math.md, "Accuracy".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

from nmn_array._namespace import device_kw
from nmn_array._validation import shape_of


def nearest_direct(
    xp: ModuleType,
    dist: Any,
    x: Any,
    w: Any,
    *,
    in_out: bool = False,
    unit_x: bool = False,
    unit_w: bool = False,
) -> tuple[Any, Any]:
    """The column of each row's smallest ``dist`` and the direct squared distance there.

    ``dist (..., M, N)`` (or ``(..., N)`` for a dense layer with any leading axes), ``x``
    broadcastable to ``(..., M, d)``, ``w (N, d)`` or ``(..., N, d)`` (``(d, N)`` if
    ``in_out``). Returns ``index`` and ``direct`` of shape ``dist.shape[:-1]``.

    ``unit_x``/``unit_w``: the distance is *defined* with ``|x|^2``/``|w|^2`` taken as 1
    (spherical and weight-normalised modes), so ``1 - |v|^2`` is added to the direct value:
    the same quantity as the expanded form, with the same derivatives, only without its
    cancellation.
    """
    index = xp.argmin(dist, axis=-1)
    rows = _rows_at(xp, w, index, in_out=in_out)
    diff = x - rows
    direct = xp.sum(diff * diff, axis=-1)
    if unit_x:
        direct = direct + (1.0 - xp.sum(x * x, axis=-1))
    if unit_w:
        direct = direct + (1.0 - xp.sum(rows * rows, axis=-1))
    return index, direct


def refine_distance(
    xp: ModuleType,
    dist: Any,
    x: Any,
    w: Any,
    *,
    all_sum: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None,
    **modes: bool,
) -> Any:
    """``dist`` with each row's smallest entry replaced by the direct squared distance;
    ``modes`` (``in_out``, ``unit_x``, ``unit_w``) as in :func:`nearest_direct`.

    ``all_sum``: ``x`` and ``w`` are one shard of the features and ``dist`` is already
    summed over the shards (so every shard picks the same nearest column, provided the
    all-reduce gives every shard the same values); the direct distances, partial sums over
    this shard's features, are summed with it before they are put in.
    """
    if 0 in tuple(dist.shape):
        return dist  # no rows or no columns: nothing to refine (Dask cannot reduce empties)
    if len(w.shape) > 2 and None in shape_of(dist)[:-1]:
        # one bank of keys per leading position, and their number unknown (symbolic TF
        # shapes, e.g. a SavedModel signature with a None batch): left unrefined
        return dist
    index, direct = nearest_direct(xp, dist, x, w, **modes)
    if all_sum is not None:
        (direct,) = all_sum((direct,))
    n = dist.shape[-1]
    cols = xp.arange(n, dtype=index.dtype, **device_kw(xp, index))
    hit = cols == xp.expand_dims(index, axis=-1)
    return xp.where(hit, xp.expand_dims(direct, axis=-1), dist)


def _rows_at(xp: ModuleType, w: Any, index: Any, *, in_out: bool) -> Any:
    """``w``'s rows picked by ``index``: shape ``index.shape + (d,)``.

    A 2-D ``w`` is shared by every row; a batched ``w (..., N, d)`` has one bank per leading
    position of ``index (..., M)``.
    """
    lead = shape_of(index)
    flat = xp.reshape(index, (-1,))
    if len(w.shape) == 2:
        if in_out:
            picked = xp.matrix_transpose(xp.take(w, flat, axis=1))
        else:
            picked = xp.take(w, flat, axis=0)
        # one unknown size (a symbolic TF batch) is left for reshape to infer
        return xp.reshape(picked, (*(-1 if s is None else s for s in lead), picked.shape[-1]))
    n, d = w.shape[-2], w.shape[-1]
    # known (refine_distance checked it); symbolic sizes when torch exports
    banks: tuple[Any, ...] = shape_of(index)[:-1]
    count = math.prod(banks)
    w_flat = xp.reshape(xp.broadcast_to(w, (*banks, n, d)), (count * n, d))
    offsets = xp.arange(count, dtype=index.dtype, **device_kw(xp, index)) * n
    offsets = xp.reshape(offsets, (*banks, 1))
    picked = xp.take(w_flat, xp.reshape(index + offsets, (-1,)), axis=0)
    return xp.reshape(picked, (*lead, d))
