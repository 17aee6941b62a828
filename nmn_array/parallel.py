"""The yat product with its inputs' features split across devices (tensor parallelism).

Sharding the *neurons* (the rows of ``w``) needs nothing from this module: every output
column depends on one neuron only, so :func:`nmn_array.yat` of the local rows is the local
slice of the output (``docs/scaling.md``). Sharding the *features* (the last axis of ``x``
and of ``w``) is different: the yat ratio is not a sum over features, so summing the
per-shard yat products gives a wrong answer. What is a sum over features are the three
quantities the ratio is built from, the dot product ``x.w`` and the squared norms ``|x|^2``
and ``|w|^2``. :func:`yat_feature_sharded` computes them on the local features, sums them
across the shards with one all-reduce, and finishes with the same code as
:func:`nmn_array.yat` (the expanded distance, its near-collision refinement and the ratio).

This module is not re-exported at the top level: the top-level names are fixed by the
design contract; import it as ``nmn_array.parallel``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any

from nmn_array import _validation as v
from nmn_array._namespace import float32_under_autocast
from nmn_array.dense import dense_args, plain_yat_dense

__all__ = ["yat_feature_sharded"]

#: sums a tuple of arrays over the shards, returning the tuple of sums on every shard
AllSum = Callable[[tuple[Any, ...]], tuple[Any, ...]]


@float32_under_autocast
def yat_feature_sharded(
    x: Any,
    w: Any,
    bias: Any = None,
    *,
    axis_name: Hashable | tuple[Hashable, ...] | None = None,
    all_sum: AllSum | None = None,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    distance: str = "refined",
    distance_floor: float = 0.0,
) -> Any:
    """:func:`nmn_array.yat` of inputs and neurons whose features are split across shards.

    Call it once per shard, inside the parallel region (``jax.shard_map``, or one process
    per shard), with this shard's slice of the features: ``x (..., d_s)`` and
    ``w (n, d_s)``, the same slice of the ``d`` features for both. Every shard returns the
    full result ``(..., n)`` (replicated), equal to ``yat`` of the whole arrays up to the
    order of summation.

    Each shard computes the partial dot products ``x_s . w_s`` and squared norms
    ``|x_s|^2``, ``|w_s|^2``; one all-reduce sums the three; the ratio
    ``alpha * (x.w + bias)^2 / (max(|x|^2 + |w|^2 - 2 x.w, floor) + epsilon)`` then runs on
    the sums through the core's own code. With ``distance="refined"`` (the default, as
    ``yat``) each input's nearest neuron is then re-measured directly, ``sum((x - w)^2)``:
    every shard picks the same neuron from the summed distances, sums its local part of the
    direct distance with a second all-reduce (one value per input), and puts it in. So the
    near-collision accuracy of ``yat`` is kept (docs/scaling.md gives the float32 error
    bound and the figures measured); ``distance="expanded"`` skips the second all-reduce.
    It assumes the all-reduce gives every shard bit-identical sums (ring and tree
    all-reduces compute each sum once and send it to every shard; the tests run XLA's on
    CPU): a shard that saw a different minimum would add another neuron's partial distance.

    Parameters
    ----------
    x : array, shape (..., d_s)
        This shard's features of the inputs.
    w : array, shape (n, d_s) or (d_s,)
        This shard's features of every neuron (one neuron per row, as ``yat``).
    bias, alpha, epsilon, distance, distance_floor
        As :func:`nmn_array.yat`; the same values on every shard (they are applied once,
        after the sums).
    axis_name : hashable or tuple, optional
        JAX: the mesh axis (or axes) the features are split over, inside ``jax.shard_map``;
        the sums are ``jax.lax.psum(..., axis_name)``.
    all_sum : callable, optional
        Any other engine: ``all_sum(arrays)`` takes a tuple of arrays and returns the tuple
        of their sums over all shards (an all-reduce). Give exactly one of ``axis_name``
        and ``all_sum``.

    Returns
    -------
    array, shape (..., n) (or (...) for a vector ``w``), as :func:`nmn_array.yat`.

    Notes
    -----
    ``spherical`` and ``weight_normalized`` are not arguments: they normalise by norms
    that span all shards. Normalise ``w`` before splitting it (its rows are whole then), or
    pass the normalised shards yourself.

    Examples
    --------
    One shard holding all the features is plain ``yat`` (``all_sum`` is then the identity):

    >>> import numpy as np, nmn_array
    >>> from nmn_array.parallel import yat_feature_sharded
    >>> x = np.array([[1.0, 0.0, 2.0, 1.0]])
    >>> w = np.array([[1.0, 1.0, 0.0, 2.0], [0.0, 1.0, 2.0, 1.0]])
    >>> bool(np.allclose(yat_feature_sharded(x, w, all_sum=lambda t: t), nmn_array.yat(x, w)))
    True

    In JAX, inside ``jax.shard_map`` over the mesh axis that splits the features (one device
    here; docs/scaling.md runs four):

    >>> import functools, jax
    >>> from jax.sharding import AxisType, PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ("model",), axis_types=(AxisType.Auto,))
    >>> sharded = jax.shard_map(
    ...     functools.partial(yat_feature_sharded, axis_name="model"), mesh=mesh,
    ...     in_specs=(P(None, "model"), P(None, "model")), out_specs=P(),
    ... )
    >>> bool(np.allclose(sharded(jax.numpy.asarray(x), jax.numpy.asarray(w)), nmn_array.yat(x, w)))
    True
    """
    if (axis_name is None) == (all_sum is None):
        raise ValueError(
            "yat_feature_sharded needs exactly one of axis_name (a JAX mesh axis) and all_sum "
            f"(a callable that sums over the shards), got axis_name={axis_name!r} and "
            f"all_sum={all_sum!r}"
        )
    if all_sum is not None and not callable(all_sum):
        raise TypeError(f"all_sum must be callable, got {type(all_sum).__name__}")
    a = dense_args(x, w, bias, alpha, epsilon, distance, distance_floor)
    reduce = all_sum if all_sum is not None else _psum(axis_name)
    out = plain_yat_dense(
        a.xp, a.x, a.w, a.bias, a.alpha, a.epsilon, unit_x=False, unit_w=False,
        refine=a.refine, floor=a.floor, all_sum=reduce,
    )  # fmt: skip
    if a.vector:
        out = out[..., 0]
    return v.cast_back(a.xp, out, x.dtype)


def _psum(axis_name: Any) -> AllSum:
    """``jax.lax.psum`` over ``axis_name`` (JAX is imported only when it is asked for)."""
    import jax

    return functools.partial(jax.lax.psum, axis_name=axis_name)
