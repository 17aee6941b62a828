"""The elementwise end of every yat computation: from a dot product and two squared norms
to ``alpha * (dot + bias)^2 / (max(dist, 0) + epsilon)``.

Dense, convolution, transposed convolution, embedding and attention all finish here, so the
clamp, the place of the bias and of alpha are written once.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from nmn_array._namespace import clip


def yat_ratio(
    xp: ModuleType,
    dot: Any,
    dist: Any,
    *,
    bias: Any = None,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    floor: float = 0.0,
) -> Any:
    """``alpha * (dot + bias)^2 / (max(dist, floor) + epsilon)``; ``dist`` may be negative from
    cancellation in the expanded form, hence the clamp."""
    num = dot if bias is None else dot + bias
    num = num * num
    den = clip(xp, dist, min=floor) + epsilon
    out = num / den
    return out if alpha is None else out * alpha


def expanded_distance(dot: Any, sq_a: Any, sq_b: Any) -> Any:
    """``|a|^2 + |b|^2 - 2 a.b`` (clamped later, in :func:`yat_ratio`)."""
    return (sq_a + sq_b) - (dot + dot)
