"""The yat product of inputs with a bank of neurons: the dense layer's function."""

from __future__ import annotations

from typing import Any, NamedTuple

from nmn_array import _validation as v
from nmn_array._distance import refine_distance
from nmn_array._epilogue import expanded_distance, yat_ratio
from nmn_array._namespace import array_namespace, float32_under_autocast, is_torch, scalar_like

#: Guard added to norms when normalising vectors (nmn's constant, Decision 7).
NORM_GUARD = 1e-8
#: How the squared distance is computed: "refined" (default) recomputes each row's nearest
#: pair directly after the one GEMM; "expanded" is the GEMM alone (nmn's form). docs/math.md.
DISTANCES = ("refined", "expanded")


def safe_norm(xp: Any, a: Any, axis: Any = -1) -> Any:
    """``|a|`` along ``axis`` (kept), with a finite gradient (zero) at ``a = 0``.

    The square root's derivative is infinite at 0, so it only ever sees positive inputs.
    """
    sq = xp.sum(a * a, axis=axis, keepdims=True)
    positive = sq > 0
    safe = xp.where(positive, sq, scalar_like(xp, 1.0, sq))
    return xp.where(positive, xp.sqrt(safe), scalar_like(xp, 0.0, sq))


def normalize(xp: Any, a: Any, guard: float = NORM_GUARD, axis: Any = -1) -> Any:
    """``a / (|a| + guard)`` along ``axis``."""
    return a / (safe_norm(xp, a, axis=axis) + guard)


@float32_under_autocast
def yat(
    x: Any,
    w: Any,
    bias: Any = None,
    *,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    spherical: bool = False,
    weight_normalized: bool = False,
    distance: str = "refined",
    distance_floor: float = 0.0,
    _native: bool = True,
    _w_in_out: bool = False,
) -> Any:
    """The yat product ⵟ of inputs ``x`` with neurons ``w``.

    ``y = alpha * (x.w + bias)^2 / (max(|x|^2 + |w|^2 - 2 x.w, 0) + epsilon)``

    Parameters
    ----------
    x : array, shape (..., d)
        Inputs; any number of leading axes.
    w : array, shape (n, d) or (d,)
        One neuron per row (PyTorch's ``(out, in)`` layout). A vector gives the yat
        product of two vectors, with output shape ``x.shape[:-1]``.
    bias : None, float or array broadcastable to (n,)
        Added to the dot product inside the square; it does not enter the distance.
    alpha : None, float or array of shape () or (1,)
        Multiplies the result; None means 1.
    epsilon : float or array of shape () or (1,)
        Added to the clamped squared distance. A float (Python or NumPy) must be > 0 and a
        normal number of the compute dtype (at least its smallest normal, e.g. about
        1.2e-38 in float32); an array's value is not checked.
    spherical : bool
        Normalise ``x`` and ``w`` to unit length (``v / (|v| + 1e-8)``) and use the
        distance ``max(2 - 2 x.w, 0)``.
    weight_normalized : bool
        Normalise each neuron to unit length and take ``|w|^2`` as exactly 1.
    distance : {"refined", "expanded"}
        ``"expanded"`` takes the squared distance from the one matrix product,
        ``|x|^2 + |w|^2 - 2 x.w``, whose rounding error swamps epsilon where ``x`` is close
        to a neuron. ``"refined"`` (the default) also recomputes, for each input, the
        distance to its nearest neuron directly: accurate near collisions for one extra pass
        (docs/math.md, "Accuracy"). Like ``torch.cdist``'s ``compute_mode``.
    distance_floor : float >= 0
        The clamp of the squared distance, ``max(distance, distance_floor)``: a positive
        floor bounds the response near a neuron by ``(x.w + bias)^2 / (floor + epsilon)``
        (nmn NNX's ``distance_floor``). Default 0.

    Returns
    -------
    array, shape (..., n) (or (...) for a vector ``w``), same library, dtype and device as ``x``.

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> w = np.array([[1.0, 0.0]])
    >>> nmn_array.yat(x, w, epsilon=1.0).round(6).tolist()
    [[1.0], [0.0]]
    """
    v.check_bool(spherical, "spherical")
    v.check_bool(weight_normalized, "weight_normalized")
    a = dense_args(x, w, bias, alpha, epsilon, distance, distance_floor, w_in_out=_w_in_out)
    xp, wc, in_out = a.xp, a.w, a.in_out
    # d = 0 (empty vectors: y = alpha * b^2 / epsilon) takes the standard path, which handles
    # empty axes on every library; the fused torch kernel does not.
    native = _native and a.d != 0 and a.floor == 0.0  # the fused kernel clamps at 0
    if in_out and native and is_torch(xp):
        wc, in_out = xp.matrix_transpose(wc), False  # a free view; the fused path wants (n, d)
    out = _yat_dense(
        xp, a.x, wc, a.bias, a.alpha, a.epsilon, spherical, weight_normalized, native, in_out,
        a.refine, a.floor,
    )  # fmt: skip
    if a.vector:
        out = out[..., 0]
    return v.cast_back(xp, out, x.dtype)


class DenseArgs(NamedTuple):
    """The validated arguments of a dense yat, in the compute dtype (see :func:`dense_args`)."""

    xp: Any
    x: Any
    w: Any  #: (n, d), or (d, n) if ``in_out``; a vector ``w`` as one row
    bias: Any
    alpha: Any
    epsilon: Any
    in_out: bool
    vector: bool  #: ``w`` was a vector: the caller drops the output's last axis
    d: int | None
    refine: bool
    floor: float


def dense_args(
    x: Any,
    w: Any,
    bias: Any,
    alpha: Any,
    epsilon: Any,
    distance: str,
    distance_floor: float,
    *,
    w_in_out: bool = False,
) -> DenseArgs:
    """Validate the arguments :func:`yat` shares with :mod:`nmn_array.parallel` (shapes,
    dtypes, ``epsilon``, ``distance``, ``distance_floor``) and convert the arrays to the
    compute dtype. ``w_in_out``: ``w`` is a framework's ``(d, n)`` kernel."""
    bias, alpha, epsilon = v.plain_all(bias, alpha, epsilon)
    v.check_known_sizes(x=x, w=w, bias=bias, alpha=alpha, epsilon=epsilon)
    xp = array_namespace(x, w, bias, alpha, epsilon)
    dtype = v.compute_dtype(xp, x, "x")
    v.check_float_array(xp, w, "w")
    v.check_float_array(xp, bias, "bias")
    v.check_epsilon(epsilon, xp, dtype)
    refine = v.lowered_choice(distance, "distance", DISTANCES) == "refined"
    floor = v.check_floor(distance_floor, "distance_floor")
    xs, ws = v.shape_of(x), v.shape_of(w)
    # w_in_out: a framework's (d, n) kernel, used as it is stored; XLA otherwise materialises
    # the transposes to and from (n, d) in every step.
    in_out = w_in_out and len(ws) == 2
    if in_out:
        ws = (ws[1], ws[0])
    if len(xs) < 1:
        raise ValueError(f"x must have at least one axis (..., d), got shape {xs}")
    if len(ws) not in (1, 2):
        raise ValueError(f"w must have shape (n, d) or (d,), got shape {ws}")
    if xs[-1] is not None and ws[-1] != xs[-1]:
        raise ValueError(
            f"feature sizes differ: x has shape {xs} (d={xs[-1]}) but w has shape {ws} (d={ws[-1]})"
        )
    vector = len(ws) == 1
    if bias is not None and not isinstance(bias, (int, float)):
        bs = v.shape_of(bias)
        n = 1 if vector else ws[0]
        if vector and bs not in ((), (1,)):
            raise ValueError(f"with a vector w, bias must be a scalar or shape (), got shape {bs}")
        if not vector and (len(bs) > 1 or (len(bs) == 1 and bs[0] not in (1, n))):
            raise ValueError(f"bias must broadcast to the {n} output features, got shape {bs}")
        if vector:
            bias = xp.reshape(bias, ())
    alpha = v.scalar_param(xp, alpha, "alpha", dtype)
    epsilon = v.scalar_param(xp, epsilon, "epsilon", dtype)

    xc = v.as_compute(xp, x, dtype)
    wc = v.as_compute(xp, w, dtype)
    bc = v.as_compute(xp, bias, dtype)
    if vector:
        wc = xp.reshape(wc, (1, ws[0]))
    return DenseArgs(xp, xc, wc, bc, alpha, epsilon, in_out, vector, ws[-1], refine, floor)


def _yat_dense(
    xp, x, w, bias, alpha, epsilon, spherical, weight_normalized, native, in_out, refine, floor
):
    feature_axis = 0 if in_out else -1
    if spherical:
        x = normalize(xp, x)
        w = normalize(xp, w, axis=feature_axis)
    if weight_normalized:
        w = normalize(xp, w, axis=feature_axis)
    unit_x, unit_w = spherical, spherical or weight_normalized
    if native and is_torch(xp):
        from nmn_array._native.torch_yat import yat_dense

        return yat_dense(x, w, bias, alpha, epsilon, unit_x=unit_x, unit_w=unit_w, refine=refine)
    return plain_yat_dense(
        xp,
        x,
        w,
        bias,
        alpha,
        epsilon,
        unit_x=unit_x,
        unit_w=unit_w,
        in_out=in_out,
        refine=refine,
        floor=floor,
    )


def plain_yat_dense(
    xp,
    x,
    w,
    bias,
    alpha,
    epsilon,
    *,
    unit_x: bool,
    unit_w: bool,
    in_out=False,
    refine=True,
    floor=0.0,
    all_sum=None,
):
    """The standard-only dense yat; ``unit_x``/``unit_w`` take ``|x|^2``/``|w|^2`` as 1
    (spherical mode's distance ``2 - 2 x.w`` is the expanded one with both norms 1);
    ``in_out``: ``w`` is ``(d, n)``; ``refine``: see :mod:`nmn_array._distance`.

    ``all_sum``: ``x`` and ``w`` hold one shard of the features, and ``all_sum`` sums a tuple
    of arrays over the shards (:mod:`nmn_array.parallel`); the dot product and both squared
    norms are summed before the distance, the refined distance before it is put in. Only
    without ``unit_x``/``unit_w``, whose constant norms are not per-shard quantities.
    """
    dot = xp.matmul(x, w if in_out else xp.matrix_transpose(w))
    x_sq = 1.0 if unit_x else xp.sum(x * x, axis=-1, keepdims=True)
    w_sq = 1.0 if unit_w else xp.sum(w * w, axis=0 if in_out else -1)
    if all_sum is not None:
        dot, x_sq, w_sq = all_sum((dot, x_sq, w_sq))
    dist = expanded_distance(dot, x_sq, w_sq)
    if refine:
        dist = refine_distance(
            xp, dist, x, w, in_out=in_out, unit_x=unit_x, unit_w=unit_w, all_sum=all_sum
        )
    return yat_ratio(xp, dot, dist, bias=bias, alpha=alpha, epsilon=epsilon, floor=floor)
