"""Linear-time (performer) attention in the attention modules (issue 15): the constructor
arguments, the projection draw and the one core call. No parameters, no formulas: the
feature maps and the readout are :func:`nmn_array.linear_attention.performer_attention`.

The arguments are nmn 0.3.5's (``nmn.nnx.RotaryYatAttention``), with its defaults:
``use_performer``, ``performer_kind`` ("slay", "maclaurin" or "radial"), the feature counts
and ``causal``. ``performer_normalize`` (SLAY only, as in nmn): q and k are first scaled
to ``v / sqrt(|v|^2 + epsilon)`` (:func:`nmn_array.attention.normalize_qk`), before the
feature map, which normalises them once more; ``False`` leaves that single normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from nmn_array import _validation as _v
from nmn_array import linear_attention as _la
from nmn_array import random_features as _rf
from nmn_array.attention import normalize_qk

#: The feature-count arguments of the modules and their defaults (nmn's names and values).
COUNTS: dict[str, Any] = {
    "num_anchor_features": 16,
    "num_prf_features": 8,
    "num_quad_nodes": 1,
    "performer_num_features": 256,
    "performer_bias": 1.0,
    "performer_nmax": 40,
    "performer_sketch_m": 128,
    "performer_num_radial": 8,
    "performer_radial_dim": 64,
}
#: The keys of each kind's projection (the arrays a module stores, in this order).
KEYS = _rf.PROJECTION_KEYS


class Performer(NamedTuple):
    """A module's performer settings, validated."""

    use: bool
    kind: str
    causal: bool
    normalize: bool
    #: (name, value) pairs (a tuple: hashable, as JAX's static module attributes must be)
    counts: tuple[tuple[str, Any], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The projection's keys; empty without ``use_performer``."""
        return KEYS[self.kind] if self.use else ()


def settings(args: Mapping[str, Any]) -> Performer:
    """The performer settings of a constructor's arguments ``args`` (absent ones take nmn's
    defaults). ``performer_kind`` is checked always (as nmn does); the counts are checked
    by the projection draw, only with ``use_performer``."""
    for name in ("use_performer", "causal", "performer_normalize"):
        if name in args:
            _v.check_bool(_v.plain(args[name]), name)
    kind = _v.lowered_choice(
        args.get("performer_kind", "slay"), "performer_kind", _la.PERFORMER_KINDS
    )
    use = bool(args.get("use_performer", False))
    counts = {name: args.get(name, default) for name, default in COUNTS.items()}
    if use:  # named as the module names them (the builders' names differ)
        for name, value in counts.items():
            check = _v.check_nonnegative if name == "performer_bias" else _v.check_positive_int
            counts[name] = check(value, name)
    return Performer(
        use=use,
        kind=kind,
        causal=bool(args.get("causal", False)),
        normalize=bool(args.get("performer_normalize", True)),
        counts=tuple(counts.items()),
    )


def draw(config: Performer, head_dim: int, seed: Any, epsilon: float) -> dict[str, Any]:
    """The projection (NumPy arrays, ``config.keys``) drawn by ``numpy.random.default_rng(
    seed)``; ``seed`` (an int or a sequence of ints) comes from the framework's RNG, so the
    framework's seed reproduces it. ``epsilon``: the kernel's ``C = 2 + epsilon``."""
    import numpy as np

    return _la.performer_projection(
        config.kind,
        head_dim,
        rng=np.random.default_rng(seed),
        epsilon=epsilon,
        **dict(config.counts),
    )


def refuse_conflicts(layer: str, config: Performer, **settings: Any) -> None:
    """ValueError for a setting (not None) that the performer cannot honour (``window``:
    local attention needs the scores; a custom ``attention_fn`` replaces the attention)."""
    for name, value in settings.items():
        if config.use and value is not None:
            raise ValueError(
                f"{layer}: use_performer=True cannot be combined with {name}={value!r} "
                "(the performer computes no score matrix)"
            )


def refuse_decode(layer: str) -> None:
    """ValueError: the cache of ``decode=True`` holds keys, not the feature sums."""
    raise ValueError(
        f"{layer}: decode=True cannot be combined with use_performer=True (the key/value "
        "cache serves the exact attention; a performer attends all tokens in one call, "
        "with causal=True for autoregressive order)"
    )


def attention(
    q: Any,
    k: Any,
    v: Any,
    config: Performer,
    projection: Mapping[str, Any],
    *,
    mask: Any,
    epsilon: Any,
    alpha: Any,
) -> Any:
    """The performer attention of heads ``q, k (..., L, d)``, ``v (..., L, dv)`` (after the
    projections, ``normalize_qk`` and RoPE): ``performer_normalize`` (SLAY), then
    :func:`~nmn_array.linear_attention.performer_attention` with the module's ``causal``,
    key-padding ``mask (..., 1, Lk)``, ``epsilon`` and ``alpha`` (on the output, as nmn's
    NNX)."""
    if config.normalize and config.kind == "slay":
        q, k = normalize_qk(q, k, epsilon=epsilon)
    return _la.performer_attention(
        q,
        k,
        v,
        config.kind,
        dict(projection),
        causal=config.causal,
        mask=mask,
        epsilon=epsilon,
        alpha=alpha,
    )
