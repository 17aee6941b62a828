"""Yat attention: the yat product of queries with keys as attention scores."""

from __future__ import annotations

import math
from functools import partial
from types import ModuleType
from typing import Any, NamedTuple

from nmn_array import _blocked_attention as blocked
from nmn_array import _validation as _v
from nmn_array._attention_blocks import (  # noqa: F401  (public here)
    Blocks,
    Window,
    grid_window,
    local_window_mask,
    merge_windows,
)
from nmn_array._distance import refine_distance
from nmn_array._epilogue import expanded_distance, yat_ratio
from nmn_array._namespace import (
    array_namespace,
    clip,
    device_kw,
    float32_under_autocast,
    index_dtype,
    is_torch,
    scalar_like,
)
from nmn_array._native import blocked as native_blocked
from nmn_array.dense import DISTANCES, safe_norm
from nmn_array.squashers import softermax_impl

NORMALIZATIONS = ("softmax", "softermax", "l1")
#: epsilon of the softermax normalisation (nmn's value)
SOFTERMAX_EPSILON = 1e-12


def _check(q, k, v_, mask, causal, alpha, epsilon, scale, spherical, normalization, power, bias):
    """Validated options; ``alpha, epsilon, scale, power, bias`` are already plain."""
    _v.check_known_sizes(
        q=q, k=k, v=v_, mask=mask, alpha=alpha, epsilon=epsilon, scale=scale, bias=bias
    )
    xp = array_namespace(q, k, v_, mask, alpha, epsilon, scale, bias)
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
        if _is_additive(xp, mask) and normalization != "softmax":
            raise ValueError(
                f"a floating mask is additive, which is defined only for normalization="
                f"'softmax'; got mask of dtype {mask.dtype} with normalization="
                f"{normalization!r}: pass a boolean mask (True = attend) instead"
            )
        ms = _v.shape_of(mask)
        lq, lk = qs[-2], ks[-2]
        if len(ms) < 2 or ms[-2] not in (1, lq, None) or ms[-1] not in (1, lk, None):
            raise ValueError(
                f"mask must broadcast to (..., Lq, Lk) = (..., {lq}, {lk}), got shape {ms}"
            )
    if bias is not None and not isinstance(bias, (int, float)):
        _v.check_float_array(xp, bias, "bias")
        bs, lq, lk = _v.shape_of(bias), qs[-2], ks[-2]
        if len(bs) >= 1 and (bs[-1] not in (1, lk) or (len(bs) >= 2 and bs[-2] not in (1, lq))):
            raise ValueError(
                f"bias must broadcast to (..., Lq, Lk) = (..., {lq}, {lk}), got shape {bs}"
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


def _unit_rows(xp, v, epsilon):
    """``v / sqrt(|v|^2 + epsilon)`` along the last axis (the spherical normalisation)."""
    return v / xp.sqrt(xp.sum(v * v, axis=-1, keepdims=True) + epsilon)


def normalize_qk(q: Any, k: Any, *, epsilon: Any = 1e-6) -> tuple[Any, Any]:
    """Queries and keys as the spherical mode normalises them: ``v / sqrt(|v|^2 + epsilon)``.

    Parameters
    ----------
    q, k : arrays of shape (..., d)
    epsilon : float > 0 or array of shape () or (1,)

    Returns
    -------
    tuple of two arrays, the shapes and dtypes of ``q`` and ``k``

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.attention import normalize_qk
    >>> qn, kn = normalize_qk(np.array([[3.0, 4.0]]), np.array([[0.0, 2.0]]))
    >>> qn.round(6).tolist(), kn.round(6).tolist()
    ([[0.6, 0.8]], [[0.0, 1.0]])
    """
    epsilon = _v.plain(epsilon)
    _v.check_known_sizes(q=q, k=k, epsilon=epsilon)
    xp = array_namespace(q, k, epsilon)
    dtype = _v.compute_dtype(xp, q, "q")
    _v.check_float_array(xp, k, "k")
    _v.check_epsilon(epsilon, xp, dtype)
    eps = _v.scalar_param(xp, epsilon, "epsilon", dtype)
    return tuple(
        _v.cast_back(xp, _unit_rows(xp, _v.as_compute(xp, t, dtype), eps), t.dtype) for t in (q, k)
    )


def unit_heads(x: Any, *, floor: float = 1e-12) -> Any:
    """``x / max(|x|, floor)`` along the last axis: the multi-head modules' ``normalize_qk``
    of each head's queries and keys (Decision 2; ``torch.nn.functional.normalize``'s rule).

    The norm's derivative is taken as 0 at ``x = 0``, so a zero head has finite gradients.

    Parameters
    ----------
    x : array of shape (..., d)
    floor : float > 0
        The smallest norm divided by.

    Returns
    -------
    array, the shape and dtype of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.attention import unit_heads
    >>> unit_heads(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    floor = _v.plain(floor)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0:
        raise ValueError(f"floor must be a positive float, got {floor!r}")
    xp = array_namespace(x)
    dtype = _v.compute_dtype(xp, x)
    xc = _v.as_compute(xp, x, dtype)
    norm = safe_norm(xp, xc)
    out = xc / xp.maximum(norm, scalar_like(xp, float(floor), norm))
    return _v.cast_back(xp, out, x.dtype)


def _pair_scores(xp, q, k, factor, epsilon, unit, native, refine, bias=None):
    """Scores of queries against keys already normalised when ``unit`` (spherical)."""
    if native and is_torch(xp) and bias is None:
        from nmn_array._native.torch_yat import yat_scores

        return yat_scores(q, k, factor, epsilon, unit=unit, refine=refine)
    dot = xp.matmul(q, xp.matrix_transpose(k))
    if unit:
        dist = 2.0 - (dot + dot)
    else:
        q_sq = xp.sum(q * q, axis=-1, keepdims=True)
        k_sq = xp.matrix_transpose(xp.sum(k * k, axis=-1, keepdims=True))
        dist = expanded_distance(dot, q_sq, k_sq)
    if refine:
        dist = refine_distance(xp, dist, q, k, unit_x=unit, unit_w=unit)
    return yat_ratio(xp, dot, dist, bias=bias, alpha=factor, epsilon=epsilon)


class _Tile:
    """The blocked path's score function of one tile: finite scores, the additive mask added.

    ``vjp(qb, kb, factor, epsilon)``, when not None, gives the scores without bias or additive
    mask and their closed-form pullback (PyTorch, when no score can overflow, so the clip to
    the finite range is the identity).
    """

    def __init__(self, xp, unit: bool, native: bool, refine: bool, bounded: bool) -> None:
        self.xp, self.unit, self.native, self.refine = xp, unit, native, refine
        self.vjp = None
        if bounded:
            from nmn_array._native.torch_yat import tile_scores

            self.vjp = partial(tile_scores, unit=unit, refine=refine)

    def closed_form(self, bias, amask):
        """``vjp`` when it serves a tile with this ``bias`` and additive mask ``amask`` (it
        knows neither), else None."""
        return self.vjp if bias is None and amask is None else None

    def __call__(self, qb, kb, factor, epsilon, bias, amask):
        vjp = self.closed_form(bias, amask)
        if vjp is not None:
            return vjp(qb, kb, factor, epsilon)[0]
        xp = self.xp
        s = _pair_scores(xp, qb, kb, factor, epsilon, self.unit, self.native, self.refine, bias)
        s = _finite(xp, s)
        return s if amask is None else _finite(xp, s + amask)


def _tile_function(a: _Inputs, native: bool, additive: bool) -> _Tile:
    bounded = False
    # the closed form serves only tiles without bias or additive mask: check only then
    if native and is_torch(a.xp) and a.bias is None and not additive:
        from nmn_array._native.torch_yat import scores_bounded

        bounded = scores_bounded(a.q, a.k, a.factor, a.epsilon)
    return _Tile(a.xp, a.unit, native, a.refine, bounded)


def _is_additive(xp, mask) -> bool:
    """The mask rule: False for a boolean mask (True = attend), True for a floating one
    (added to the scores); any other dtype raises TypeError."""
    if mask.dtype == xp.bool:
        return False
    if _v.is_low_precision(xp, mask.dtype) or xp.isdtype(mask.dtype, "real floating"):
        return True
    raise TypeError(
        "mask must be a boolean array (True = attend) or a floating array (additive, "
        f"-inf hides a key), got dtype {mask.dtype}"
    )


def _shown(xp, mask):
    """Boolean of the keys ``mask`` lets a query see: a boolean mask itself, the entries
    above -inf of an additive one."""
    if not _is_additive(xp, mask):
        return mask
    return mask > scalar_like(xp, -math.inf, mask)


def _restrict(xp, mask, allowed):
    """``mask`` (boolean, additive or None) further limited to the keys ``allowed`` (boolean)
    lets through, keeping its kind: an additive mask gets -inf where ``allowed`` is False."""
    if mask is None:
        return allowed
    if not _is_additive(xp, mask):
        return xp.logical_and(mask, allowed)
    return xp.where(allowed, mask, scalar_like(xp, -math.inf, mask))


def _visible(xp, mask, window, lq, lk, like):
    """The mask to normalise with, or None when every key is visible: boolean (True = attend)
    or additive, with the window (causal included) folded in."""
    if window is None:
        return mask
    return _restrict(xp, mask, Blocks(lq, lk, lq, lk, window).visible(xp, 0, 0, lq, lk, like))


def keyed_queries(mask: Any, window: Any, lq: int, lk: int, like: Any) -> Any:
    """Which queries see a key under ``mask (..., H, Lq, Lk)`` (or None) and ``window``: a
    boolean whose any() over its head and key axes (-3, -1) is False for a query that sees
    none (the framework modules zero its output, as nmn does); None when every query sees
    a key. ``like``: an array of the backend and device when ``mask`` is None.

    >>> import numpy as np
    >>> keyed_queries(None, (0, 0), 3, 2, np.zeros(1)).ravel().tolist()
    [False, True, True]
    """
    lq, lk = int(lq), int(lk)  # static (the window needs them), maybe as backend scalars
    xp = array_namespace(like if mask is None else mask)
    if mask is not None:
        return _shown(xp, _visible(xp, mask, window, lq, lk, mask))
    # query i sits at p = i + lk - lq and sees keys up to p + right; p <= lk - 1 always
    right = None if window is None else window[1]
    if right is None or lk - lq + right >= 0:
        return None
    rows = xp.arange(lq, dtype=index_dtype(xp), **device_kw(xp, like))
    return xp.reshape(rows >= lq - lk - right, (1, 1, lq, 1))


def _finite(xp, scores):
    """Scores clipped to the dtype's finite range: a score that overflowed to +inf (huge
    inputs) becomes the largest finite value, so it wins the normalisation instead of
    producing inf - inf = NaN."""
    big = float(xp.finfo(scores.dtype).max)
    return clip(xp, scores, min=-big, max=big)


def _normalize(xp, scores, visible, normalization, epsilon, power, native):
    if scores.shape[-1] == 0:
        # no keys: every query sees nothing, so its (empty) row of weights is already right;
        # the reductions below have no identity over an empty axis on NumPy and JAX
        return scores
    zero = scalar_like(xp, 0.0, scores)
    if normalization == "softmax" and native and is_torch(xp):
        from nmn_array._native.torch_yat import masked_softmax

        return masked_softmax(scores, visible)
    scores = _finite(xp, scores)
    shown = None
    if visible is not None and _is_additive(xp, visible):
        # the additive mask: hidden where -inf, otherwise added to the scores (softmax only,
        # as checked), clipped again so a large finite entry cannot overflow the sum
        shown = _shown(xp, visible)
        scores = _finite(xp, scores + visible)
    elif visible is not None:
        shown = visible
    if normalization == "softmax":
        if shown is None:
            e = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
            return e / xp.sum(e, axis=-1, keepdims=True)
        top = xp.max(
            xp.where(shown, scores, scalar_like(xp, -math.inf, scores)), axis=-1, keepdims=True
        )
        top = xp.where(xp.isfinite(top), top, zero)
        # masked entries are replaced before exp so they can never overflow (nor poison grads)
        e = xp.where(shown, xp.exp(xp.where(shown, scores, top) - top), zero)
        total = xp.sum(e, axis=-1, keepdims=True)
        return e / xp.where(total > 0, total, scalar_like(xp, 1.0, total))
    if shown is not None:
        scores = xp.where(shown, scores, zero)
    # A row whose largest score is huge (above 2**96, e.g. +inf clipped to the dtype's max) is
    # scaled by 2**-64, exactly: l1 and softermax are ratios, so neither a sum nor a reciprocal
    # of the row maximum can then leave the normal range (XLA on CPU flushes subnormals to 0,
    # which turned max / max into 0 / 0). l1 scales its epsilon too; softermax's 1e-12 weighs
    # 2**(64 power) more against a sum above 2**(96 power), a relative 1e-12 / 2**(32 power).
    m = xp.max(xp.abs(scores), axis=-1, keepdims=True)
    c = xp.where(m > 2.0**96, scalar_like(xp, 2.0**-64, m), scalar_like(xp, 1.0, m))
    scores = scores * c
    if normalization == "l1":
        return scores / (xp.sum(scores, axis=-1, keepdims=True) + epsilon * c)
    return softermax_impl(xp, scores, float(power), SOFTERMAX_EPSILON, -1)


#: The keyword arguments both public functions pass on to :func:`_prepare`, in order.
_OPTIONS = (
    "mask", "causal", "window", "alpha", "epsilon", "scale", "spherical", "normalization",
    "power", "distance", "bias",
)  # fmt: skip


def _options(args: dict) -> tuple:
    """The options out of a public function's ``locals()`` (taken before any assignment)."""
    return tuple(args[name] for name in _OPTIONS)


class _Inputs(NamedTuple):
    """Validated attention inputs in the compute dtype (q and k unit rows when spherical)."""

    xp: ModuleType
    dtype: Any
    q: Any
    k: Any
    factor: Any
    epsilon: Any
    bias: Any
    mask: Any
    window: Window | None
    normalization: str
    power: float
    unit: bool
    refine: bool


def _prepare(q, k, v_, options) -> _Inputs:
    mask, causal, window, alpha, epsilon, scale, spherical, normalization, power, distance, bias = (
        options
    )
    alpha, epsilon, scale, power, bias = _v.plain_all(alpha, epsilon, scale, power, bias)
    xp, dtype, normalization, factor, epsilon = _check(
        q, k, v_, mask, causal, alpha, epsilon, scale, spherical, normalization, power, bias
    )
    window = merge_windows(causal, _v.check_window(window))
    if window is not None and (q.shape[-2] is None or k.shape[-2] is None):
        raise ValueError(
            f"window needs static sequence lengths, got q {_v.shape_of(q)} and k {_v.shape_of(k)}"
        )
    refine = _v.lowered_choice(distance, "distance", DISTANCES) == "refined"
    qc, kc = _v.as_compute(xp, q, dtype), _v.as_compute(xp, k, dtype)
    if spherical:
        qc, kc = _unit_rows(xp, qc, epsilon), _unit_rows(xp, kc, epsilon)
    if mask is not None and _is_additive(xp, mask) and mask.dtype != dtype:
        mask = xp.astype(mask, dtype)
    return _Inputs(
        xp, dtype, qc, kc, factor, epsilon, _v.as_compute(xp, bias, dtype), mask, window,
        normalization, float(power), spherical, refine,
    )  # fmt: skip


def _dense_weights(a: _Inputs, native: bool) -> Any:
    """The whole ``(..., Lq, Lk)`` matrix of attention weights."""
    xp = a.xp
    scores = _pair_scores(xp, a.q, a.k, a.factor, a.epsilon, a.unit, native, a.refine, a.bias)
    if 0 in _v.shape_of(scores)[:-1]:
        # empty batch or no queries: nothing to normalise (and Dask cannot reduce empty arrays)
        return scores
    visible = _visible(xp, a.mask, a.window, a.q.shape[-2], a.k.shape[-2], a.q)
    return _normalize(xp, scores, visible, a.normalization, a.epsilon, a.power, native)


#: ``block_size="auto"`` evaluates in blocks of this many queries and keys ...
AUTO_BLOCK = 256
#: ... when there are at least this many keys (measured: docs/performance.md) ...
AUTO_MIN_KEYS = 1024
#: ... and in tiles down to this size for a window bounded on both sides.
AUTO_MIN_WINDOW_BLOCK = 128


def _lead(*shapes: tuple) -> tuple[int, ...]:
    """The broadcast of leading shapes (NumPy's rule)."""
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        sizes = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ValueError(f"leading axes do not broadcast: {shapes}")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _block(block_size: Any, a: _Inputs, v: Any, native: bool) -> int | None:
    """The block size to evaluate with, or None for the materialised path."""
    if _v.check_block_size(block_size) is None:
        return None
    auto = isinstance(block_size, str)
    shapes = [_v.shape_of(t) for t in (a.q, a.k, v, a.mask, a.bias) if hasattr(t, "shape")]
    if any(None in s for s in shapes) or any(0 in s for s in shapes[:3]):
        return None  # symbolic or empty sizes: the materialised path handles them
    if is_torch(a.xp):
        from nmn_array._native.blocked import torch_transforms_active
        from nmn_array._native.torch_yat import _exporting

        if torch_transforms_active() or _exporting():
            return None
    if auto:
        return _auto_block(a.window) if a.k.shape[-2] >= AUTO_MIN_KEYS else None
    return block_size


def _auto_block(window: Window | None) -> int:
    """``"auto"``'s tile: :data:`AUTO_BLOCK`, or for a window bounded on both sides the largest
    power of two within its span, from 128 on (measured at 4096 tokens, window (128, 0): 128
    computes half the keys of 256 per query; 64 costs more in per-tile overhead than it saves,
    docs/performance.md)."""
    if window is None or window[0] is None or window[1] is None:
        return AUTO_BLOCK
    span = window[0] + window[1] + 1
    return max(AUTO_MIN_WINDOW_BLOCK, min(AUTO_BLOCK, 1 << (span.bit_length() - 1)))


def _blocked_output(a: _Inputs, v: Any, size: int, native: bool) -> Any:
    xp = a.xp
    lq, lk = a.q.shape[-2], a.k.shape[-2]
    additive = a.mask is not None and _is_additive(xp, a.mask)
    amask = a.mask if additive else None
    per_score = [t.shape[:-2] for t in (a.mask, a.bias) if hasattr(t, "ndim") and t.ndim > 2]
    prob = blocked.Problem(
        blocks=Blocks(lq, lk, min(size, lq), min(size, lk), a.window),
        tile=_tile_function(a, native, additive),
        normalization=a.normalization,
        power=a.power,
        mask=None if additive else a.mask,
        lead=_lead(a.q.shape[:-2], a.k.shape[:-2], v.shape[:-2], *per_score),
    )

    def materialised(q, k, v, factor, epsilon, bias, amask_):
        b = a._replace(q=q, k=k, factor=factor, epsilon=epsilon, bias=bias)
        b = b._replace(mask=amask_ if additive else a.mask)
        return xp.matmul(_dense_weights(b, native), v)

    extras = [a.factor, a.epsilon, a.bias, amask]
    return native_blocked.run(xp, prob, a.q, a.k, v, extras, materialised)


@float32_under_autocast
def yat_attention_weights(
    q: Any,
    k: Any,
    *,
    mask: Any = None,
    causal: bool = False,
    window: Any = None,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    scale: Any = None,
    spherical: bool = False,
    normalization: str = "softmax",
    power: float = 1.0,
    distance: str = "refined",
    bias: Any = None,
    _native: bool = True,
) -> Any:
    """Attention weights from yat scores.

    ``score = alpha * scale * (q.k + bias)^2 / (max(|q|^2 + |k|^2 - 2 q.k, 0) + epsilon)``,
    normalised over the keys each query may see.

    Parameters
    ----------
    q : array, shape (..., Lq, d)
    k : array, shape (..., Lk, d)
        Leading axes (batch, heads) broadcast against ``q``'s and ``mask``'s.
    mask : None, bool or floating array broadcastable to (..., Lq, Lk)
        Boolean: True = attend. Floating: additive, added to the scores before the softmax
        (-inf hides a key), for ``normalization="softmax"`` only (ValueError otherwise);
        other dtypes raise TypeError. A query that sees no key gets all-zero weights.
    causal : bool
        Query ``i`` sees key ``j`` iff ``j <= i + Lk - Lq`` (queries aligned to the end of
        the keys, as when decoding with a cache).
    window : None or (left, right), each None or an int >= 0
        Local attention: query ``i`` sees key ``j`` iff ``p - left <= j <= p + right``,
        ``p = i + Lk - Lq`` (end-aligned like ``causal``; None = unlimited on that side).
        Combines with ``causal`` and ``mask`` (a key must pass all three). For a window over
        an N-D grid of tokens, pass :func:`local_window_mask` as ``mask``.
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
    distance : {"refined", "expanded"}
        As in :func:`nmn_array.yat`: ``"refined"`` recomputes each query's distance to its
        nearest key directly, so ``q == k`` gets its exact score.
    bias : None, float or floating array broadcastable to (..., Lq, Lk)
        Added to ``q.k`` inside the square, not to the distance (the yat bias of the dense
        layer, per score; nmn NNX's fused L1 attention has it). Default: none.

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
    a = _prepare(q, k, None, _options(locals()))
    return _v.cast_back(a.xp, _dense_weights(a, _native), q.dtype)


@float32_under_autocast
def yat_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    mask: Any = None,
    causal: bool = False,
    window: Any = None,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    scale: Any = None,
    spherical: bool = False,
    normalization: str = "softmax",
    power: float = 1.0,
    distance: str = "refined",
    bias: Any = None,
    block_size: Any = "auto",
    _native: bool = True,
) -> Any:
    """Yat attention: :func:`yat_attention_weights` applied to the values ``v (..., Lk, dv)``.

    Returns an array of shape (..., Lq, dv). See :func:`yat_attention_weights` for the
    arguments; one more:

    block_size : None, "auto" or int >= 1
        ``None`` computes the whole ``(Lq, Lk)`` score matrix. An int evaluates tile by tile
        (``block_size`` queries by ``block_size`` keys) with running normalisers, so neither
        the forward nor the backward (PyTorch, JAX, TensorFlow: a custom gradient that
        recomputes tiles) holds an ``(Lq, Lk)`` array, and tiles that ``causal``/``window``
        hide entirely are skipped. The result equals the materialised one up to rounding.
        ``"auto"`` (default) uses blocks of :data:`AUTO_BLOCK` from :data:`AUTO_MIN_KEYS`
        keys on (for a window bounded on both sides, the largest power of two within its
        span, at least :data:`AUTO_MIN_WINDOW_BLOCK`). Symbolic or empty sizes,
        ``torch.func`` transforms and PyTorch exporters always use the materialised path; PyTorch's double backward differentiates the
        materialised path (exact, not O(L) in memory).

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> q = np.ones((2, 3, 4)); k = np.ones((2, 5, 4)); v = np.ones((2, 5, 6))
    >>> nmn_array.yat_attention(q, k, v, causal=True).shape
    (2, 3, 6)
    """
    a = _prepare(q, k, v, _options(locals()))
    vc = _v.as_compute(a.xp, v, a.dtype)
    size = _block(block_size, a, vc, _native)
    if size is None:
        out = a.xp.matmul(_dense_weights(a, _native), vc)
    else:
        out = _blocked_output(a, vc, size, _native)
    return _v.cast_back(a.xp, out, q.dtype)
