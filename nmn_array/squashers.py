"""Squashers: smooth, bounded maps for the non-negative scores that yat layers produce.

Each is evaluated in a stable form that equals nmn's formula wherever that formula is finite
(up to rounding) and gives the right limit where the plain formula overflows (Decision 6).
"""

from __future__ import annotations

import math
from typing import Any

from nmn_array import _validation as v
from nmn_array._namespace import array_namespace, clip, scalar_like


def _check_n(n: Any) -> float:
    n = v.plain(n)
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"n must be a positive number, got {n!r}")
    if not (n > 0 and math.isfinite(n)):
        raise ValueError(f"n must be > 0 and finite, got {n!r}")
    return float(n)


def _pow(xp: Any, x: Any, n: float) -> Any:
    if n == 1.0:
        return x
    if n == 2.0:
        return x * x
    return xp.pow(x, scalar_like(xp, n, x))


def softermax_impl(xp: Any, x: Any, n: float, epsilon: float, axis: int) -> Any:
    """``x^n / (epsilon + sum x^n)`` along ``axis``, computed as
    ``(x/m)^n / (epsilon/m^n + sum (x/m)^n)`` with ``m = max |x|`` so ``x^n`` never overflows.

    Where ``m`` is infinite that form is ``inf / inf``; the limit is taken instead: each
    infinite entry counts as ``sign(x)`` and every finite one as 0 (so ``[inf, 1] -> [1, 0]``
    and ``[inf, inf, 1] -> [1/2, 1/2, 0]``). Only finite values reach the divisions, so the
    gradients of finite inputs stay finite.
    """
    if math.prod(x.shape) == 0:  # an empty axis (or batch): nothing to normalise
        return x
    zero, one = scalar_like(xp, 0.0, x), scalar_like(xp, 1.0, x)
    inf_x = xp.logical_and(xp.logical_not(xp.isfinite(x)), x == x)  # +-inf, not NaN
    x_fin = xp.where(inf_x, zero, x)
    m = xp.max(xp.abs(x), axis=axis, keepdims=True)
    inf_m = xp.logical_and(xp.logical_not(xp.isfinite(m)), m == m)
    usable = xp.logical_and(m > 0, xp.isfinite(m))
    m_safe = xp.where(usable, m, scalar_like(xp, 1.0, m))
    ratio = xp.where(inf_m, zero, x_fin / m_safe)
    ratio = xp.where(inf_x, xp.where(x > 0, one, -one), ratio)
    t = _pow(xp, ratio, n)
    # epsilon / m^n, bounded so that a tiny m cannot produce inf (and NaN gradients); it is
    # exactly 0 in the limit m = inf.
    log_big = math.log(float(xp.finfo(x.dtype).max)) - 1.0
    scaled_eps = xp.exp(clip(xp, math.log(epsilon) - n * xp.log(m_safe), max=log_big))
    scaled_eps = xp.where(inf_m, scalar_like(xp, 0.0, m), scaled_eps)
    return t / (scaled_eps + xp.sum(t, axis=axis, keepdims=True))


def softer_sigmoid_impl(xp: Any, x: Any, n: float) -> Any:
    """``x^n / (1 + x^n)``; for ``|x| > 1`` as ``1 / (1 + (1/x)^n)`` so it cannot overflow.
    Each branch only ever sees inputs for which it is safe, which keeps gradients finite."""
    one = scalar_like(xp, 1.0, x)
    small = xp.abs(x) <= 1.0
    x_small = xp.where(small, x, one)
    x_big = xp.where(small, one, x)
    t = _pow(xp, x_small, n)
    r = _pow(xp, one / x_big, n)
    return xp.where(small, t / (1.0 + t), 1.0 / (1.0 + r))


def _prepare(x: Any, n: Any):
    xp = array_namespace(x)
    dtype = v.compute_dtype(xp, x, "x")
    return xp, dtype, _check_n(n), v.as_compute(xp, x, dtype)


def softermax(x: Any, n: float = 1.0, *, epsilon: float = 1e-12, axis: int = -1) -> Any:
    """Softermax: ``x^n / (epsilon + sum_axis x^n)``, a softmax-free normaliser for scores >= 0.

    Parameters
    ----------
    x : array
    n : float > 0
        Power applied to every score.
    epsilon : float > 0
        At least the compute dtype's smallest normal (about 1.2e-38 in float32).
    axis : int

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> nmn_array.softermax(np.array([1.0, 2.0])).round(6).tolist()
    [0.333333, 0.666667]
    """
    epsilon = v.plain(epsilon)
    v.check_known_sizes(x=x)  # the elementwise squashers take unknown sizes; a reduction not
    xp, dtype, n, xc = _prepare(x, n)
    v.check_epsilon(epsilon, xp, dtype)
    axis = v.plain(axis)
    if not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a positive float, got {epsilon!r}")
    rank = len(x.shape)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -rank <= axis < rank:
        raise ValueError(f"axis must be an int in [-{rank}, {rank}), got {axis!r}")
    return v.cast_back(xp, softermax_impl(xp, xc, n, float(epsilon), axis), x.dtype)


def softer_sigmoid(x: Any, n: float = 1.0) -> Any:
    """Softer sigmoid: ``x^n / (1 + x^n)``, mapping scores >= 0 into [0, 1).

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> nmn_array.softer_sigmoid(np.array([0.0, 1.0, 3.0])).tolist()
    [0.0, 0.5, 0.75]
    """
    xp, _, n, xc = _prepare(x, n)
    return v.cast_back(xp, softer_sigmoid_impl(xp, xc, n), x.dtype)


def soft_tanh(x: Any, n: float = 1.0) -> Any:
    """Soft tanh: ``(x^n - 1) / (1 + x^n) = 2 * softer_sigmoid(x, n) - 1``, in [-1, 1).

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> nmn_array.soft_tanh(np.array([0.0, 1.0, 3.0])).tolist()
    [-1.0, 0.0, 0.5]
    """
    xp, _, n, xc = _prepare(x, n)
    return v.cast_back(xp, 2.0 * softer_sigmoid_impl(xp, xc, n) - 1.0, x.dtype)
