"""nmn's functional attention API, written once over ``nmn_array.yat_attention(_weights)``.

``nmn.<framework>`` exports ``yat_attention``, ``yat_attention_weights``,
``yat_attention_normalized`` and ``normalize_qk`` with queries, keys and values laid out
``(*batch, length, heads, dim)`` and weights ``(*batch, heads, Lq, Lk)``. Each framework
module declares these functions with its nmn signature and supplies its own dropout; what
they share is here: the layout, nmn's ``scale`` (a factor on top of ``1 / sqrt(d)``), NNX's
additive ``bias`` and the one call of the pure function.

Examples
--------
>>> import numpy as np
>>> q = np.ones((2, 5, 3, 4)); v = np.ones((2, 5, 3, 6))
>>> attention(q, q, v, mask=None).shape
(2, 5, 3, 6)
>>> attention_weights(q, q, mask=None).shape
(2, 3, 5, 5)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from nmn_array.frameworks._common import check_rate, combine_masks

import nmn_array
from nmn_array._namespace import array_namespace
from nmn_array._validation import as_compute, shape_of
from nmn_array.attention import normalize_qk as _unit_qk

#: A framework's dropout of attention weights, or None for none.
Dropout = Callable[[Any], Any] | None


def _heads_first(xp: Any, t: Any, name: str) -> Any:
    """``(*batch, L, H, d)`` <-> ``(*batch, H, L, d)`` (the swap is its own inverse)."""
    if t.ndim < 3:
        raise ValueError(f"{name} must have shape (*batch, length, heads, dim), got {shape_of(t)}")
    axes = list(range(t.ndim))
    axes[-3], axes[-2] = axes[-2], axes[-3]
    return xp.permute_dims(t, tuple(axes))


def _inputs(
    query: Any, key: Any, mask: Any, bias: Any, scale: Any
) -> tuple[Any, Any, Any, Any, Any]:
    """The namespace, heads-first q and k, the one mask and nmn_array's scale."""
    xp = array_namespace(query, key)
    q, k = _heads_first(xp, query, "query"), _heads_first(xp, key, "key")
    if bias is not None:
        mask = bias if mask is None else combine_masks(bias, mask)
    d = q.shape[-1]
    root = math.sqrt(d) if d else 1.0
    return xp, q, k, mask, (1.0 if scale is None else scale) / root


def attention_weights(
    query: Any,
    key: Any,
    *,
    mask: Any,
    bias: Any = None,
    dropout: Dropout = None,
    scale: Any = None,
    **options: Any,
) -> Any:
    """Weights ``(*batch, heads, Lq, Lk)`` of queries ``(*batch, Lq, heads, d)`` over keys
    ``(*batch, Lk, heads, d)``; ``options`` go to :func:`nmn_array.yat_attention_weights`.

    ``scale`` multiplies the scores on top of ``1 / sqrt(d)`` (nmn's meaning); ``bias`` is
    an additive logit bias combined with ``mask``; ``dropout`` is applied to the weights.
    """
    _, q, k, mask, factor = _inputs(query, key, mask, bias, scale)
    weights = nmn_array.yat_attention_weights(q, k, mask=mask, scale=factor, **options)
    return weights if dropout is None else dropout(weights)


def attention(
    query: Any,
    key: Any,
    value: Any,
    *,
    mask: Any,
    bias: Any = None,
    dropout: Dropout = None,
    scale: Any = None,
    yat_bias: Any = None,
    **options: Any,
) -> Any:
    """Outputs ``(*batch, Lq, heads, dv)`` for values ``(*batch, Lk, heads, dv)``; the other
    arguments as :func:`attention_weights`. ``yat_bias`` (broadcastable to ``(*batch, heads,
    Lq, Lk)``) is added to ``q.k`` inside the square (nmn NNX's fused L1 attention's
    ``bias``), where ``bias`` is an additive logit. ``options["block_size"]`` is used only
    without ``dropout``."""
    xp, q, k, mask, factor = _inputs(query, key, mask, bias, scale)
    v = _heads_first(xp, value, "value")
    if yat_bias is not None:
        options["bias"] = yat_bias
    block_size = options.pop("block_size", "auto")
    if dropout is None:
        out = nmn_array.yat_attention(
            q, k, v, mask=mask, scale=factor, block_size=block_size, **options
        )
    else:
        # dropout needs the weights themselves: the materialised path whatever block_size
        weights = nmn_array.yat_attention_weights(q, k, mask=mask, scale=factor, **options)
        out = xp.matmul(dropout(weights), as_compute(xp, v, weights.dtype))
    return _heads_first(xp, out, "output")


def normalize_qk(query: Any, key: Any, epsilon: float = 1e-6) -> tuple[Any, Any]:
    """``v / sqrt(|v|^2 + epsilon)`` of queries and keys, as nmn's ``normalize_qk``.

    Examples
    --------
    >>> import numpy as np
    >>> q, k = normalize_qk(np.array([[3.0, 4.0]]), np.array([[0.0, 5.0]]))
    >>> q.round(6).tolist(), k.round(6).tolist()
    ([[0.6, 0.8]], [[0.0, 1.0]])
    """
    return _unit_qk(query, key, epsilon=epsilon)


def rate_dropout(
    drop: Callable[[Any, float], Any], rate: float, active: bool, name: str = "dropout_rate"
) -> Dropout:
    """``drop(weights, rate)`` when ``active`` and ``rate > 0``, else no dropout."""
    check_rate(rate, name)
    return (lambda weights: drop(weights, rate)) if active and rate > 0 else None


def keras_style_api(drop: Callable[[Any, float], Any]) -> tuple[Callable[..., Any], ...]:
    """``yat_attention_weights``, ``yat_attention`` and ``yat_attention_normalized`` with the
    signatures of ``nmn.keras`` and ``nmn.tf`` 0.3.5, over the framework's ``drop(weights,
    rate)``; ``mask`` is boolean (True = attend; a floating mask is additive)."""

    def yat_attention_weights(
        query: Any,
        key: Any,
        mask: Any = None,
        dropout_rate: float = 0.0,
        training: bool = False,
        epsilon: float = 1e-5,
        alpha: Any = None,
        scale: float | None = None,
        spherical: bool = False,
    ) -> Any:
        """Yat attention weights ``(batch, heads, Lq, Lk)`` of ``query (batch, Lq, heads,
        d)`` and ``key (batch, Lk, heads, d)``; ``alpha`` and ``scale`` multiply the scores
        (divided by ``sqrt(d)``); dropout applies when ``training``."""
        return attention_weights(
            query, key, mask=mask, dropout=rate_dropout(drop, dropout_rate, training),
            epsilon=epsilon, alpha=alpha, scale=scale, spherical=spherical,
        )  # fmt: skip

    def yat_attention(
        query: Any,
        key: Any,
        value: Any,
        mask: Any = None,
        dropout_rate: float = 0.0,
        training: bool = False,
        epsilon: float = 1e-5,
        alpha: Any = None,
        scale: float | None = None,
        spherical: bool = False,
    ) -> Any:
        """Yat attention of ``value (batch, Lk, heads, dv)``: ``(batch, Lq, heads, dv)``;
        the other arguments as ``yat_attention_weights``."""
        return attention(
            query, key, value, mask=mask, dropout=rate_dropout(drop, dropout_rate, training),
            epsilon=epsilon, alpha=alpha, scale=scale, spherical=spherical,
        )  # fmt: skip

    def yat_attention_normalized(
        query: Any,
        key: Any,
        value: Any,
        mask: Any = None,
        dropout_rate: float = 0.0,
        training: bool = False,
        epsilon: float = 1e-5,
        alpha: Any = None,
        scale: float | None = None,
    ) -> Any:
        """``yat_attention`` with ``spherical=True``."""
        return yat_attention(
            query, key, value, mask, dropout_rate, training, epsilon, alpha, scale, True
        )

    return yat_attention_weights, yat_attention, yat_attention_normalized
