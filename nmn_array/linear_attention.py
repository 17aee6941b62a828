"""Linear-time attention: a feature map's inner products in place of the score matrix.

With features ``phi`` whose inner products ``phi(q) . phi(k)`` estimate the yat kernel,
attention ``sum_k kappa(q, k) v_k / sum_k kappa(q, k)`` is read out by associativity:
``phi(q) (sum_k phi(k) v_k^T) / phi(q) (sum_k phi(k))``, so time and memory grow with the
sequence length ``L``, not ``L^2``. The feature maps are in :mod:`nmn_array.random_features`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from nmn_array import _validation as _v
from nmn_array import random_features as _rf
from nmn_array._namespace import array_namespace, device_kw, float32_under_autocast

__all__ = [
    "PERFORMER_KINDS",
    "performer_attention",
    "performer_features",
    "performer_projection",
    "yat_linear_attention",
]

#: The feature maps a module's ``performer_kind`` may name.
PERFORMER_KINDS = ("slay", "maclaurin", "radial")
#: Default chunk length of the causal readout.
DEFAULT_CHUNK = 64


@float32_under_autocast
def performer_features(
    kind: str, projection: Any, *, epsilon: float = 1e-5
) -> Callable[[Any], Any]:
    """The feature map of a performer module, nmn's conventions included.

    ``"slay"`` normalises with ``epsilon`` inside the square root and adds ``epsilon`` to
    every feature (nmn's NNX ``yat_tp_attention``); ``"maclaurin"`` and ``"radial"``
    normalise with 1e-6 and add nothing (their features are sign-indefinite, and a shift
    would bias them).

    Parameters
    ----------
    kind : {"slay", "maclaurin", "radial"}
    projection : dict
        From the matching builder in :mod:`nmn_array.random_features`.
    epsilon : float > 0
        The SLAY feature shift and normalisation constant.

    Returns
    -------
    callable
        ``phi(x (..., d)) -> (..., F)``, for :func:`yat_linear_attention`.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.linear_attention import performer_features
    >>> from nmn_array.random_features import maclaurin_projection
    >>> phi = performer_features("maclaurin", maclaurin_projection(4, num_features=8, rng=0))
    >>> phi(np.ones((2, 4))).shape
    (2, 8)
    """
    kind = _v.lowered_choice(kind, "performer_kind", PERFORMER_KINDS)
    if kind == "maclaurin":
        return partial(_rf.maclaurin_features, projection=projection)
    if kind == "radial":
        return partial(_rf.radial_features, projection=projection)
    epsilon = _v.plain(epsilon)
    _v.check_epsilon(epsilon)

    def slay(x: Any) -> Any:
        return _rf.slay_features(x, projection, epsilon=epsilon) + epsilon

    return slay


def _check(q, k, v, mask, causal, chunk_size, epsilon):
    _v.check_bool(causal, "causal")
    chunk_size = _v.plain(chunk_size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    sq, sk, sv = _v.shape_of(q), _v.shape_of(k), _v.shape_of(v)
    for name, shape in (("q", sq), ("k", sk), ("v", sv)):
        if len(shape) < 2:
            raise ValueError(f"{name} must have shape (..., L, d), got {shape}")
    if sq[-1] is not None and sk[-1] is not None and sq[-1] != sk[-1]:
        raise ValueError(f"q and k must have the same last axis, got q {sq} and k {sk}")
    if sk[-2] is not None and sv[-2] is not None and sk[-2] != sv[-2]:
        raise ValueError(f"k and v must have the same number of keys, got k {sk} and v {sv}")
    if causal and (sq[-2] is None or sk[-2] is None):
        raise ValueError(f"causal needs static sequence lengths, got q {sq} and k {sk}")
    if causal and sq[-2] != sk[-2]:
        raise ValueError(
            f"causal linear attention needs as many queries as keys, got q {sq} and k {sk}"
        )
    if mask is not None:
        sm = _v.shape_of(mask)
        if len(sm) < 2 or sm[-2] not in (1, None) or sm[-1] not in (1, sk[-2], None):
            raise ValueError(
                "linear attention takes only key-padding masks, of shape (..., 1, Lk) with "
                f"Lk = {sk[-2]} keys (a query-dependent mask cannot be factored; use "
                f"causal=True for causal masking), got mask of shape {sm}"
            )
    epsilon = _v.plain(epsilon)
    _v.check_epsilon(epsilon)
    return chunk_size, epsilon


def _safe_denominator(xp, den, epsilon):
    """``den`` moved ``epsilon`` away from zero, keeping its sign (0 goes to +epsilon):
    the MAY/RAY features are sign-indefinite, so ``den + epsilon`` alone could hit 0."""
    return xp.where(den < 0, den - epsilon, den + epsilon)


def _pad_rows(xp, a, rows):
    if rows == 0:
        return a
    zeros = xp.zeros((*a.shape[:-2], rows, a.shape[-1]), dtype=a.dtype, **device_kw(xp, a))
    return xp.concat([a, zeros], axis=-2)


def _chunks(xp, a, n, size):
    """(..., n * size, f) -> (..., n, size, f)."""
    return xp.reshape(a, (*a.shape[:-2], n, size, a.shape[-1]))


def _causal(xp, fq, fk, v, size):
    """Chunked prefix sums: exact products inside each chunk of ``size`` tokens, running
    sums of ``phi(k) v^T`` across chunks (one cumulative sum, no loop over tokens)."""
    length = fq.shape[-2]
    size = max(min(size, length), 1)
    n = -(-length // size)
    pad = n * size - length
    ones = xp.ones((*fk.shape[:-1], 1), dtype=v.dtype, **device_kw(xp, v))
    # The extra column of ones carries the denominator through the same products.
    vv = xp.concat([v, ones], axis=-1)
    if length == 0:  # no token, no chunk: the (..., 0, dv + 1) result of the plain products
        return xp.matmul(fq, xp.matmul(xp.matrix_transpose(fk), vv))
    cq, ck, cv = (_chunks(xp, _pad_rows(xp, t, pad), n, size) for t in (fq, fk, vv))
    states = xp.matmul(xp.matrix_transpose(ck), cv)  # (..., n, F, dv + 1)
    before = xp.cumulative_sum(states, axis=-3, include_initial=True)[..., :-1, :, :]
    idx = xp.arange(size, **device_kw(xp, v))
    lower = idx[:, None] >= idx[None, :]
    scores = xp.matmul(cq, xp.matrix_transpose(ck))
    scores = xp.where(lower, scores, xp.zeros((), dtype=scores.dtype, **device_kw(xp, v)))
    out = xp.matmul(scores, cv) + xp.matmul(cq, before)  # (..., n, size, dv + 1)
    out = xp.reshape(out, (*out.shape[:-3], n * size, out.shape[-1]))
    return out[..., :length, :]


@float32_under_autocast
def yat_linear_attention(
    q: Any,
    k: Any,
    v: Any,
    features: Callable[[Any], Any],
    *,
    causal: bool = False,
    mask: Any = None,
    chunk_size: int = DEFAULT_CHUNK,
    epsilon: float = 1e-6,
) -> Any:
    """Attention with weights ``phi(q) . phi(k)`` normalised over the keys, in O(L) memory.

    ``out_i = sum_j (phi(q_i) . phi(k_j)) v_j / den_i`` with ``den_i = sum_j phi(q_i) .
    phi(k_j)`` moved ``epsilon`` away from zero with its sign kept (nmn's NNX rule; the MAY
    and RAY features can make it negative). Non-causal: two matrix products. Causal (key
    ``j`` visible to query ``i`` iff ``j <= i``): chunks of ``chunk_size`` tokens, exact
    products inside each chunk and running sums across chunks.

    Parameters
    ----------
    q : array (..., Lq, d)
    k : array (..., Lk, d)
    v : array (..., Lk, dv)
    features : callable
        ``phi``, mapping ``(..., d)`` to ``(..., F)``: :func:`performer_features`, a
        feature function of :mod:`nmn_array.random_features` with its projection bound,
        or any map of the arrays' library.
    causal : bool
        Needs ``Lq == Lk`` (self-attention order).
    mask : bool array of shape (..., 1, Lk), optional
        Key padding: ``False`` keys get zero features, so no query sees them. Masks that
        depend on the query cannot be factored and are refused.
    chunk_size : int >= 1
    epsilon : float > 0

    Returns
    -------
    array (..., Lq, dv), the dtype of ``q``

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> q = np.ones((2, 5, 4)); v = np.arange(10.0).reshape(2, 5, 1)
    >>> out = nmn_array.yat_linear_attention(q, q, v, lambda x: x * x, causal=True)
    >>> out[0, :, 0].round(4).tolist()  # equal weights: the running mean of v
    [0.0, 0.5, 1.0, 1.5, 2.0]
    """
    chunk_size, epsilon = _check(q, k, v, mask, causal, chunk_size, epsilon)
    _v.check_known_sizes(q=q, k=k, v=v, mask=mask)
    xp = array_namespace(q, k, v, mask)
    dtype = _v.compute_dtype(xp, q, "q")
    _v.check_float_array(xp, k, "k")
    _v.check_float_array(xp, v, "v")
    # The map sees the compute dtype: float16 inputs of size 1e3 squared would overflow.
    fq = _v.as_compute(xp, features(_v.as_compute(xp, q, dtype)), dtype)
    fk = _v.as_compute(xp, features(_v.as_compute(xp, k, dtype)), dtype)
    vc = _v.as_compute(xp, v, dtype)
    if mask is not None:
        if not xp.isdtype(mask.dtype, "bool"):
            raise TypeError(f"mask must be a bool array, got dtype {mask.dtype}")
        keep = xp.matrix_transpose(mask)  # (..., Lk, 1)
        fk = xp.where(keep, fk, xp.zeros((), dtype=fk.dtype, **device_kw(xp, fk)))
    if causal:
        out = _causal(xp, fq, fk, vc, chunk_size)
    else:
        ones = xp.ones((*vc.shape[:-1], 1), dtype=dtype, **device_kw(xp, vc))
        state = xp.matmul(xp.matrix_transpose(fk), xp.concat([vc, ones], axis=-1))
        out = xp.matmul(fq, state)
    num, den = out[..., :-1], out[..., -1:]
    return _v.cast_back(xp, num / _safe_denominator(xp, den, epsilon), q.dtype)


def performer_projection(
    kind: str,
    head_dim: int,
    *,
    rng: Any = None,
    epsilon: float = 1e-5,
    num_anchor_features: int = 16,
    num_prf_features: int = 8,
    num_quad_nodes: int = 1,
    performer_num_features: int = 256,
    performer_bias: float = 1.0,
    performer_nmax: int = 40,
    performer_sketch_m: int = 128,
    performer_num_radial: int = 8,
    performer_radial_dim: int = 64,
) -> dict[str, Any]:
    """The projection of a performer module, from nmn's argument names and defaults.

    Dispatches to :func:`~nmn_array.random_features.slay_projection`,
    :func:`~nmn_array.random_features.maclaurin_projection` or
    :func:`~nmn_array.random_features.radial_projection`; the arguments of the other kinds
    are ignored, as nmn's NNX ``RotaryYatAttention`` ignores them.

    Examples
    --------
    >>> from nmn_array.linear_attention import performer_projection
    >>> sorted(performer_projection("maclaurin", 8, rng=0))
    ['Z', 'degrees', 'omegas']
    """
    kind = _v.lowered_choice(kind, "performer_kind", PERFORMER_KINDS)
    if kind == "slay":
        return _rf.slay_projection(
            head_dim,
            num_anchor_features=num_anchor_features,
            num_prf_features=num_prf_features,
            num_quad_nodes=num_quad_nodes,
            epsilon=epsilon,
            rng=rng,
        )
    if kind == "maclaurin":
        return _rf.maclaurin_projection(
            head_dim,
            num_features=performer_num_features,
            bias=performer_bias,
            epsilon=epsilon,
            nmax=performer_nmax,
            rng=rng,
        )
    return _rf.radial_projection(
        head_dim,
        sketch_m=performer_sketch_m,
        num_radial=performer_num_radial,
        radial_dim=performer_radial_dim,
        bias=performer_bias,
        epsilon=epsilon,
        rng=rng,
    )


#: The readout's denominator shift for MAY and RAY (nmn's NNX value); SLAY uses the layer's
#: epsilon for both its feature shift and its denominator.
SIGNED_FEATURES_EPSILON = 1e-6


@float32_under_autocast
def performer_attention(
    q: Any,
    k: Any,
    v: Any,
    kind: str,
    projection: Any,
    *,
    causal: bool = False,
    mask: Any = None,
    epsilon: float = 1e-5,
    alpha: Any = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> Any:
    """What a module's ``use_performer=True`` computes for heads ``q, k (..., L, d)``,
    ``v (..., L, dv)``: :func:`yat_linear_attention` with :func:`performer_features`, the
    denominator shift nmn's NNX uses for ``kind`` (``epsilon`` for SLAY, 1e-6 for MAY/RAY),
    and the output times ``alpha`` when given (after normalisation a score multiplier would
    cancel, so nmn's NNX scales the output).

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.linear_attention import performer_attention, performer_projection
    >>> x = np.ones((2, 6, 8))
    >>> performer_attention(x, x, x, "slay", performer_projection("slay", 8, rng=0)).shape
    (2, 6, 8)
    """
    kind = _v.lowered_choice(kind, "performer_kind", PERFORMER_KINDS)
    out = yat_linear_attention(
        q,
        k,
        v,
        performer_features(kind, projection, epsilon=epsilon),
        causal=causal,
        mask=mask,
        chunk_size=chunk_size,
        epsilon=epsilon if kind == "slay" else SIGNED_FEATURES_EPSILON,
    )
    if alpha is None:
        return out
    xp = array_namespace(out)
    return out * _v.scalar_param(xp, _v.plain(alpha), "alpha", out.dtype)
