"""Rotary position embedding (RoPE) with interleaved pairs, as nmn's rotary yat attention."""

from __future__ import annotations

import math
from typing import Any

from nmn_array import _validation as v
from nmn_array._namespace import array_namespace, device_kw


def rotary_embedding(x: Any, positions: Any = None, *, theta: float = 10000.0) -> Any:
    """Rotate each pair ``(x[2i], x[2i+1])`` by the angle ``position * theta^(-2i/d)``.

    With 2-D positions ``(row, column)`` the rotation is axial: the first ``d/4`` pairs turn
    with the row and the last ``d/4`` with the column, each half with the frequencies of a
    ``d/2``-wide 1-D embedding, ``theta^(-4i/d)``. A query at ``p`` and a key at ``r`` then
    meet at an angle that depends only on ``p - r``, in 1-D and in 2-D.

    Parameters
    ----------
    x : array, shape (..., L, d) with even d (a multiple of 4 for 2-D positions)
    positions : None or integer array, same library as ``x``
        Shape ``(L,)``: one position per row; ``(..., L, 2)``: the (row, column) of each
        row, the leading axes broadcasting against those of ``x``. Defaults to
        ``arange(L)``; pass ``offset + arange(L)`` when decoding with a cache.
    theta : float > 0
        Base of the frequencies.

    Returns
    -------
    array of the shape, library, dtype and device of ``x`` (the broadcast shape when 2-D
    positions carry leading axes that ``x`` lacks).

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> x = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> nmn_array.rotary_embedding(x).round(6).tolist()
    [[1.0, 0.0], [0.540302, 0.841471]]
    >>> grid = np.array([[0, 0], [0, 1], [1, 0]])  # (row, column) of three tokens
    >>> nmn_array.rotary_embedding(np.ones((3, 4)), grid).round(3).tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -0.301, 1.382], [-0.301, 1.382, 1.0, 1.0]]
    """
    theta = v.plain(theta)
    v.check_known_sizes(x=x, positions=positions)
    xp = array_namespace(x, positions)
    dtype = v.compute_dtype(xp, x, "x")
    shape = v.shape_of(x)
    if len(shape) < 2 or shape[-1] is None or shape[-1] % 2 or shape[-2] is None:
        raise ValueError(f"x must have shape (..., L, d) with static L and even d, got {shape}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < math.inf:
        raise ValueError(f"theta must be a positive finite number, got {theta!r}")
    length, d = shape[-2], shape[-1]
    axes = 1 if positions is None else _position_axes(positions, length, d)
    if d == 0:  # no pairs to rotate; strided slicing of an empty axis is not portable
        return v.cast_back(xp, v.as_compute(xp, x, dtype), x.dtype)
    kw = device_kw(xp, x)
    if positions is None:
        pos = xp.reshape(xp.arange(length, dtype=dtype, **kw), (length, 1))
    else:
        pos = xp.astype(positions, dtype)
        pos = xp.reshape(pos, (length, 1)) if axes == 1 else pos
    # each of the ``axes`` position coordinates turns its own d / (2 axes) pairs
    width = d // (2 * axes)
    inv_freq = xp.exp(xp.arange(width, dtype=dtype, **kw) * (-2.0 * axes * math.log(theta) / d))
    angle = pos[..., 0:1] * inv_freq
    if axes == 2:
        angle = xp.concat([angle, pos[..., 1:2] * inv_freq], axis=-1)
    cos, sin = xp.cos(angle), xp.sin(angle)
    xc = v.as_compute(xp, x, dtype)
    even, odd = xc[..., 0::2], xc[..., 1::2]
    rotated = xp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    lead = tuple(-1 if s is None else s for s in v.shape_of(rotated)[:-3])
    out = xp.reshape(rotated, (*lead, length, d))
    return v.cast_back(xp, out, x.dtype)


def _position_axes(positions: Any, length: int, d: int) -> int:
    """1 for positions of shape ``(L,)``, 2 for ``(..., L, 2)``; errors name the shapes."""
    ps = v.shape_of(positions)
    if not array_namespace(positions).isdtype(positions.dtype, "integral"):
        raise TypeError(f"positions must be an integer array, got dtype {positions.dtype}")
    if ps == (length,):
        return 1
    if len(ps) >= 2 and ps[-2:] == (length, 2):
        if d % 4:
            raise ValueError(
                f"2-D positions of shape {ps} need a feature size d divisible by 4, got d={d}"
            )
        return 2
    raise ValueError(
        f"positions must have shape (L,) = ({length},) or (..., L, 2) = (..., {length}, 2), "
        f"got {ps}"
    )
