"""Rotary position embedding (RoPE) with interleaved pairs, as nmn's rotary yat attention."""

from __future__ import annotations

import math
from typing import Any

from nmn_array import _validation as v
from nmn_array._namespace import array_namespace, device_kw


def rotary_embedding(x: Any, positions: Any = None, *, theta: float = 10000.0) -> Any:
    """Rotate each pair ``(x[2i], x[2i+1])`` by the angle ``position * theta^(-2i/d)``.

    Parameters
    ----------
    x : array, shape (..., L, d) with even d
    positions : None or integer array of shape (L,), same library as ``x``
        Defaults to ``arange(L)``; pass ``offset + arange(L)`` when decoding with a cache.
    theta : float > 0
        Base of the frequencies.

    Returns
    -------
    array of the shape, library, dtype and device of ``x``.

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> x = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> nmn_array.rotary_embedding(x).round(6).tolist()
    [[1.0, 0.0], [0.540302, 0.841471]]
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
    if d == 0:  # no pairs to rotate; strided slicing of an empty axis is not portable
        return v.cast_back(xp, v.as_compute(xp, x, dtype), x.dtype)
    kw = device_kw(xp, x)
    if positions is None:
        pos = xp.arange(length, dtype=dtype, **kw)
    else:
        ps = v.shape_of(positions)
        if ps != (length,):
            raise ValueError(f"positions must have shape (L,) = ({length},), got {ps}")
        if not xp.isdtype(positions.dtype, "integral"):
            raise TypeError(f"positions must be an integer array, got dtype {positions.dtype}")
        pos = xp.astype(positions, dtype)
    half = d // 2
    inv_freq = xp.exp(xp.arange(half, dtype=dtype, **kw) * (-2.0 * math.log(theta) / d))
    angle = xp.reshape(pos, (length, 1)) * xp.reshape(inv_freq, (1, half))
    cos, sin = xp.cos(angle), xp.sin(angle)
    xc = v.as_compute(xp, x, dtype)
    even, odd = xc[..., 0::2], xc[..., 1::2]
    rotated = xp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    lead = tuple(-1 if s is None else s for s in shape[:-2])
    out = xp.reshape(rotated, (*lead, length, d))
    return v.cast_back(xp, out, x.dtype)
