"""Yat attention: the yat product of queries with keys as attention scores."""

from __future__ import annotations

import math
from typing import Any

from nmn_array import _validation as _v
from nmn_array._epilogue import expanded_distance, yat_ratio
from nmn_array._namespace import array_namespace, device_kw, is_torch, scalar_like
from nmn_array.squashers import softermax_impl

NORMALIZATIONS = ("softmax", "softermax", "l1")
#: epsilon of the softermax normalisation (nmn's value)
SOFTERMAX_EPSILON = 1e-12


def _check(q, k, v_, mask, causal, alpha, epsilon, scale, spherical, normalization, power):
    alpha, epsilon, scale, power = _v.plain_all(alpha, epsilon, scale, power)
    _v.check_known_sizes(q=q, k=k, v=v_, mask=mask, alpha=alpha, epsilon=epsilon, scale=scale)
    xp = array_namespace(q, k, v_, mask, alpha, epsilon, scale)
    dtype = _v.compute_dtype(xp, q, "q")
    _v.check_float_array(xp, k, "k")
    _v.check_float_array(xp, v_, "v")
    _v.check_epsilon(epsilon, xp, dtype)
    _v.check_bool(causal, "causal")
    _v.check_bool(spherical, "spherical")
    normalization = _v.lowered_choice(normalization, "normalization", NORMALIZATIONS)
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
        raise ValueError(f"power must be a positive number, got {power!r}")
    qs, ks = _v.shape_of(q), _v.shape_of(k)
    if len(qs) < 2 or len(ks) < 2:
        raise ValueError(f"q and k must have shape (..., L, d), got {qs} and {ks}")
    if qs[-1] != ks[-1]:
        raise ValueError(f"q and k must have the same feature size d, got q {qs} and k {ks}")
    if v_ is not None:
        vs = _v.shape_of(v_)
        if len(vs) < 2 or (vs[-2] is not None and ks[-2] is not None and vs[-2] != ks[-2]):
            raise ValueError(
                f"v must have shape (..., Lk, dv) with Lk = {ks[-2]} keys, got v {vs} and k {ks}"
            )
    if mask is not None:
        if mask.dtype != xp.bool:
            raise TypeError(f"mask must be a boolean array (True = attend), got dtype {mask.dtype}")
        ms = _v.shape_of(mask)
        lq, lk = qs[-2], ks[-2]
        if len(ms) < 2 or ms[-2] not in (1, lq, None) or ms[-1] not in (1, lk, None):
            raise ValueError(
                f"mask must broadcast to (..., Lq, Lk) = (..., {lq}, {lk}), got shape {ms}"
            )
    if causal and (qs[-2] is None or ks[-2] is None):
        raise ValueError(f"causal=True needs static sequence lengths, got q {qs} and k {ks}")
    d = qs[-1]
    if scale is None:
        # d = 0: every score is alpha * scale * 0 / epsilon = 0 whatever the scale, so any
        # finite default gives the natural result (uniform weights over the visible keys).
        scale = 1.0 / math.sqrt(d) if d != 0 else 1.0
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        scale = _v.scalar_param(xp, scale, "scale", dtype)
    alpha = _v.scalar_param(xp, alpha, "alpha", dtype)
    epsilon = _v.scalar_param(xp, epsilon, "epsilon", dtype)
    factor = scale if alpha is None else alpha * scale
    return xp, dtype, normalization, factor, epsilon


def _scores(xp, q, k, factor, epsilon, spherical, native):
    if spherical:
        q = q / xp.sqrt(xp.sum(q * q, axis=-1, keepdims=True) + epsilon)
        k = k / xp.sqrt(xp.sum(k * k, axis=-1, keepdims=True) + epsilon)
    if native and is_torch(xp):
        from nmn_array._native.torch_yat import yat_scores

        return yat_scores(q, k, factor, epsilon, unit=spherical)
    dot = xp.matmul(q, xp.matrix_transpose(k))
    if spherical:
        dist = 2.0 - (dot + dot)
    else:
        q_sq = xp.sum(q * q, axis=-1, keepdims=True)
        k_sq = xp.matrix_transpose(xp.sum(k * k, axis=-1, keepdims=True))
        dist = expanded_distance(dot, q_sq, k_sq)
    return yat_ratio(xp, dot, dist, alpha=factor, epsilon=epsilon)


def _visible(xp, mask, causal, lq, lk, like):
    """Boolean (..., Lq, Lk) of the keys each query may see, or None when all are visible."""
    if causal:
        kw = device_kw(xp, like)
        rows = xp.reshape(xp.arange(lq, dtype=xp.int64, **kw), (lq, 1))
        cols = xp.reshape(xp.arange(lk, dtype=xp.int64, **kw), (1, lk))
        allowed = cols <= rows + (lk - lq)
        return allowed if mask is None else xp.logical_and(mask, allowed)
    return mask


def _normalize(xp, scores, visible, normalization, epsilon, power, native):
    zero = scalar_like(xp, 0.0, scores)
    if normalization == "softmax" and native and is_torch(xp):
        from nmn_array._native.torch_yat import masked_softmax

        return masked_softmax(scores, visible)
    if normalization == "softmax":
        if visible is None:
            e = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
            return e / xp.sum(e, axis=-1, keepdims=True)
        top = xp.max(
            xp.where(visible, scores, scalar_like(xp, -math.inf, scores)), axis=-1, keepdims=True
        )
        top = xp.where(xp.isfinite(top), top, zero)
        # masked entries are replaced before exp so they can never overflow (nor poison grads)
        e = xp.where(visible, xp.exp(xp.where(visible, scores, top) - top), zero)
        total = xp.sum(e, axis=-1, keepdims=True)
        return e / xp.where(total > 0, total, scalar_like(xp, 1.0, total))
    if visible is not None:
        scores = xp.where(visible, scores, zero)
    if normalization == "l1":
        return scores / (xp.sum(scores, axis=-1, keepdims=True) + epsilon)
    return softermax_impl(xp, scores, float(power), SOFTERMAX_EPSILON, -1)


def _weights(
    q, k, v_, mask, causal, alpha, epsilon, scale, spherical, normalization, power, native
):
    xp, dtype, normalization, factor, epsilon = _check(
        q, k, v_, mask, causal, alpha, epsilon, scale, spherical, normalization, power
    )
    qc, kc = _v.as_compute(xp, q, dtype), _v.as_compute(xp, k, dtype)
    scores = _scores(xp, qc, kc, factor, epsilon, spherical, native)
    if 0 in _v.shape_of(scores)[:-1]:
        # empty batch or no queries: nothing to normalise (and Dask cannot reduce empty arrays)
        return xp, dtype, scores
    visible = _visible(xp, mask, causal, q.shape[-2], k.shape[-2], qc)
    return xp, dtype, _normalize(xp, scores, visible, normalization, epsilon, power, native)


def yat_attention_weights(
    q: Any,
    k: Any,
    *,
    mask: Any = None,
    causal: bool = False,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    scale: Any = None,
    spherical: bool = False,
    normalization: str = "softmax",
    power: float = 1.0,
    _native: bool = True,
) -> Any:
    """Attention weights from yat scores.

    ``score = alpha * scale * (q.k)^2 / (max(|q|^2 + |k|^2 - 2 q.k, 0) + epsilon)``,
    normalised over the keys each query may see.

    Parameters
    ----------
    q : array, shape (..., Lq, d)
    k : array, shape (..., Lk, d)
        Leading axes (batch, heads) broadcast against ``q``'s and ``mask``'s.
    mask : None or bool array broadcastable to (..., Lq, Lk)
        True = attend. A query that sees no key gets all-zero weights.
    causal : bool
        Query ``i`` sees key ``j`` iff ``j <= i + Lk - Lq`` (queries aligned to the end of
        the keys, as when decoding with a cache).
    alpha : None, float or array of shape () or (1,)
        Multiplies the scores before normalisation.
    epsilon : float or array of shape () or (1,)
    scale : None, float or array
        Defaults to ``1 / sqrt(d)``.
    spherical : bool
        Normalise q and k as ``v / sqrt(|v|^2 + epsilon)`` and use ``max(2 - 2 q.k, 0)``.
    normalization : {"softmax", "softermax", "l1"}
        ``"l1"`` is ``S / (sum S + epsilon)``; ``"softermax"`` is
        ``S^power / (1e-12 + sum S^power)``.
    power : float > 0
        Used by ``"softermax"`` only.

    Returns
    -------
    array, shape (..., Lq, Lk)

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> q = np.array([[1.0, 0.0]]); k = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> nmn_array.yat_attention_weights(q, k).sum(axis=-1).round(12).tolist()
    [1.0]
    """
    xp, _, weights = _weights(
        q, k, None, mask, causal, alpha, epsilon, scale, spherical, normalization, power, _native
    )
    return _v.cast_back(xp, weights, q.dtype)


def yat_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    mask: Any = None,
    causal: bool = False,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    scale: Any = None,
    spherical: bool = False,
    normalization: str = "softmax",
    power: float = 1.0,
    _native: bool = True,
) -> Any:
    """Yat attention: :func:`yat_attention_weights` applied to the values ``v (..., Lk, dv)``.

    Returns an array of shape (..., Lq, dv). See :func:`yat_attention_weights` for the
    arguments.

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> q = np.ones((2, 3, 4)); k = np.ones((2, 5, 4)); v = np.ones((2, 5, 6))
    >>> nmn_array.yat_attention(q, k, v, causal=True).shape
    (2, 3, 6)
    """
    xp, dtype, weights = _weights(
        q, k, v, mask, causal, alpha, epsilon, scale, spherical, normalization, power, _native
    )
    out = xp.matmul(weights, _v.as_compute(xp, v, dtype))
    return _v.cast_back(xp, out, q.dtype)
