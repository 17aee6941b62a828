"""What the performer tests of the Keras layers and the TensorFlow modules share: small
feature counts, the per-kind epsilon, and the reference forward, which applies the core
``performer_attention`` (NumPy, float64) to the q/k/v that the module's own weights give."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nmn_array
from nmn_array.linear_attention import PERFORMER_KINDS, performer_attention

KINDS = PERFORMER_KINDS
# small feature counts: the tests check the plumbing, not the estimator's accuracy
SMALL = dict(
    num_anchor_features=4,
    num_prf_features=3,
    num_quad_nodes=2,
    performer_num_features=16,
    performer_nmax=6,
    performer_sketch_m=6,
    performer_num_radial=2,
    performer_radial_dim=5,
)
# RAY's Gauss-Laguerre frequencies grow as 1/epsilon: with the default 1e-5 its features
# are cosines of arguments in the hundreds and its denominators tiny, so small rounding
# differences between libraries are amplified; the tests use a well-conditioned epsilon.
EPSILON = {"slay": 1e-5, "maclaurin": 1e-5, "radial": 0.5}
E, H, L = 8, 2, 6


def performer_kwargs(kind: str, causal: bool = False) -> dict[str, Any]:
    """Constructor arguments of a small performer module of ``kind``."""
    return dict(
        use_performer=True, performer_kind=kind, causal=causal, epsilon=EPSILON[kind], **SMALL
    )


def key_padding(batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """A bool (batch, 1, 1, length) mask with at least one kept key per sequence."""
    mask = rng.random((batch, 1, 1, length)) < 0.6
    mask[..., 0] = True
    return mask


def _project(x: np.ndarray, weights: dict[str, np.ndarray], name: str) -> np.ndarray:
    y = x @ weights[f"{name}_kernel"]
    bias = weights.get(f"{name}_bias")
    return y if bias is None else y + bias


def reference(
    weights: dict[str, np.ndarray],
    projection: dict[str, np.ndarray],
    x: np.ndarray,
    kind: str,
    *,
    causal: bool = False,
    mask: Any = None,
    normalize_qk: bool = False,
    positions: Any = None,
    theta: float = 10000.0,
    performer_normalize: bool = True,
) -> np.ndarray:
    """The module's performer output of self-attention over ``x (B, L, E)`` from its
    weights (``q_kernel`` ... ``out_bias``, ``alpha`` (absent: none), as NumPy arrays):
    projections, heads, ``unit_heads``, RoPE at ``positions`` (None: none),
    for SLAY with ``performer_normalize`` (the default, as nmn's) ``normalize_qk``,
    ``performer_attention``, merge, output projection."""
    b, length, e = x.shape

    def heads(name: str) -> np.ndarray:
        return _project(x, weights, name).reshape(b, length, H, e // H).transpose(0, 2, 1, 3)

    q, k, v = heads("q"), heads("k"), heads("v")
    if normalize_qk:
        q, k = nmn_array.attention.unit_heads(q), nmn_array.attention.unit_heads(k)
    if positions is not None:
        q, k = (nmn_array.rotary_embedding(t, positions, theta=theta) for t in (q, k))
    if kind == "slay" and performer_normalize:
        q, k = nmn_array.attention.normalize_qk(q, k, epsilon=EPSILON[kind])
    alpha = weights.get("alpha")
    out = performer_attention(
        q, k, v, kind, projection, causal=causal, mask=mask, epsilon=EPSILON[kind],
        alpha=None if alpha is None else float(alpha.reshape(())),
    )  # fmt: skip
    out = out.transpose(0, 2, 1, 3).reshape(b, length, e)
    return _project(out, weights, "out") if "out_kernel" in weights else out


def check_bad_arguments(cls: Any, rotary: bool) -> None:
    """The performer arguments' errors of an attention class: each names the argument."""
    with pytest.raises(ValueError, match="performer_kind"):
        cls(E, H, performer_kind="foo")
    for name in SMALL:
        with pytest.raises(ValueError, match=name):
            cls(E, H, use_performer=True, **{name: 0})
    for bias in (-1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="performer_bias"):
            cls(E, H, use_performer=True, performer_kind="maclaurin", performer_bias=bias)
    with pytest.raises(ValueError, match="window"):
        cls(E, H, use_performer=True, window=(2, 0))
    with pytest.raises(TypeError, match="causal"):
        cls(E, H, causal="yes")
    with pytest.raises(TypeError, match="use_performer"):
        cls(E, H, use_performer=1)
    if rotary:
        with pytest.raises(ValueError, match="learnable_epsilon"):
            cls(E, H, use_performer=True, learnable_epsilon=True)
