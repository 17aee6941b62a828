"""A naive float64 NumPy reference of every pure function of ``nmn_array``.

This module is the oracle the test suite compares the real implementation against, so it
is written to be obviously correct rather than fast:

* everything is computed in NumPy float64 (inputs are cast with ``np.asarray(..., float64)``);
* outputs are filled by explicit Python loops over output positions;
* squared distances are computed **directly** as ``sum((a - b) ** 2)``, never through the
  expanded ``|a|^2 + |b|^2 - 2 a.b``, so the reference does not share the cancellation error
  of the implementation it checks;
* nothing here imports ``nmn_array``.

Where nmn 0.3.5 *defines* the distance by a shortcut that is not the true distance of the
vectors it uses (spherical mode: ``2 - 2 x.w``; weight-normalised mode: ``|w|^2`` taken as
exactly 1), the reference adds the exact correction terms to the direct distance, using the
identities

    |x|^2 + |w|^2 - 2 x.w = sum((x - w)^2)                              (always)
    2 - 2 x.w          = sum((x - w)^2) + (1 - |x|^2) + (1 - |w|^2)
    |x|^2 + 1 - 2 x.w  = sum((x - w)^2) + (1 - |w|^2)

so its value is the one nmn defines, while the large terms are still computed without
cancellation (``1 - |v|^2`` is tiny and exact to rounding of a unit-length vector).

Semantics follow ``/work/shared/DESIGN.md`` and nmn 0.3.5 §1-§7 plus its "Decisions".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "yat_ref",
    "yat_conv_ref",
    "yat_conv_transpose_ref",
    "yat_attention_weights_ref",
    "yat_attention_ref",
    "rotary_embedding_ref",
    "softermax_ref",
    "softer_sigmoid_ref",
    "soft_tanh_ref",
    "drop_connect_ref",
    "local_window_mask_ref",
    "slay_features_ref",
    "maclaurin_features_ref",
    "radial_features_ref",
    "yat_linear_attention_ref",
    "numerical_grad",
]

#: guard added to norms by dense / conv / embedding normalisation, ``v / (|v| + 1e-8)``
NORM_GUARD = 1e-8

#: padding_mode -> the ``np.pad`` mode with the same semantics as torch's padding modes
_NP_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _f64(a: Any) -> np.ndarray:
    """``a`` as a float64 NumPy array (the whole reference computes in float64)."""
    return np.asarray(a, dtype=np.float64)


def _scalar(value: Any, default: float, name: str) -> float:
    """A Python float from a float or an array of shape ``()`` or ``(1,)``.

    ``alpha`` and ``epsilon`` may be a module's ``(1,)`` parameter; it acts as a scalar.
    """
    if value is None:
        return default
    a = _f64(value)
    if a.shape not in ((), (1,)):
        raise ValueError(f"{name} must be a float or an array of shape () or (1,), got {a.shape}")
    return float(a.reshape(()))


def _bias_vector(bias: Any, n: int) -> np.ndarray:
    """The bias as one value per output feature (zeros when there is none)."""
    if bias is None:
        return np.zeros(n)
    return np.broadcast_to(_f64(bias), (n,))


def _unit(v: np.ndarray) -> np.ndarray:
    """``v / (|v| + 1e-8)``: nmn's dense/conv/embedding normalisation (Decision 7)."""
    return v / (math.sqrt(float(np.sum(v * v))) + NORM_GUARD)


def _per_dim(value: Any, nd: int, name: str) -> tuple[int, ...]:
    """An int or a sequence of ``nd`` ints, as a tuple of ``nd`` ints."""
    if isinstance(value, int | np.integer):
        return (int(value),) * nd
    values = tuple(int(v) for v in value)
    if len(values) != nd:
        raise ValueError(f"{name} needs {nd} values, got {value!r}")
    return values


def _yat_value(dot: float, dist: float, bias: float, alpha: float, epsilon: float) -> float:
    """``alpha * (dot + bias)^2 / (max(dist, 0) + epsilon)``: bias inside the square (§1.2)."""
    return alpha * (dot + bias) ** 2 / (max(dist, 0.0) + epsilon)


# --------------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------------
def yat_ref(
    x: Any,
    w: Any,
    bias: Any = None,
    *,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    spherical: bool = False,
    weight_normalized: bool = False,
    distance_floor: float = 0.0,
) -> np.ndarray:
    """Naive yat product of every row of ``x`` with every neuron of ``w``.

    Parameters
    ----------
    x : array_like, shape (..., d)
        Inputs.
    w : array_like, shape (n, d) or (d,)
        One neuron per row; a vector ``w`` gives the yat product of two vectors.
    bias : None, float or array_like broadcastable to (n,)
        Added to the dot product inside the square.
    alpha : None, float or array of shape () or (1,)
        Plain multiplier of the ratio; None means 1.
    epsilon : float or array of shape () or (1,)
        Added to the (clamped) squared distance.
    spherical : bool
        Normalise ``x`` and ``w`` with ``v / (|v| + 1e-8)``; the distance is nmn's
        ``max(2 - 2 x.w, 0)`` (Decision 7).
    weight_normalized : bool
        Normalise ``w`` with ``v / (|v| + 1e-8)`` (after the spherical normalisation when
        both are set); unless spherical, the distance is ``max(|x|^2 + 1 - 2 x.w, 0)``, i.e.
        ``|w|^2`` is taken as exactly 1, as nmn defines it.
    distance_floor : float
        The squared distance is at least this (nmn NNX's ``distance_floor``).

    Returns
    -------
    numpy.ndarray
        Shape ``(..., n)``, or ``(...)`` for a vector ``w``.

    Notes
    -----
    The distance is ``sum((x - w)^2)`` computed directly; the spherical and weight-normalised
    shortcuts are reproduced by adding ``1 - |x|^2`` and/or ``1 - |w|^2`` to it (see the
    module docstring), which equals nmn's formula exactly in exact arithmetic.
    """
    x, w = _f64(x), _f64(w)
    vector = w.ndim == 1
    neurons = w[None, :] if vector else w
    if neurons.ndim != 2 or x.shape[-1:] != neurons.shape[1:]:
        raise ValueError(f"x {x.shape} and w {w.shape} do not share the feature axis")
    n, d = neurons.shape
    a = _scalar(alpha, 1.0, "alpha")
    eps = _scalar(epsilon, 1e-5, "epsilon")
    b = _bias_vector(bias, n)

    rows = x.reshape(-1, d)
    out = np.empty((rows.shape[0], n))
    for r in range(rows.shape[0]):
        xv = rows[r]
        if spherical:
            xv = _unit(xv)
        for j in range(n):
            wv = neurons[j]
            if spherical:
                wv = _unit(wv)
            if weight_normalized:
                wv = _unit(wv)
            dot = float(np.sum(xv * wv))
            dist = float(np.sum((xv - wv) ** 2))
            if spherical:
                # 2 - 2 x.w == |x - w|^2 + (1 - |x|^2) + (1 - |w|^2)
                dist += (1.0 - float(np.sum(xv * xv))) + (1.0 - float(np.sum(wv * wv)))
            elif weight_normalized:
                # |x|^2 + 1 - 2 x.w == |x - w|^2 + (1 - |w|^2)
                dist += 1.0 - float(np.sum(wv * wv))
            out[r, j] = _yat_value(dot, max(dist, distance_floor), float(b[j]), a, eps)
    out = out.reshape(x.shape[:-1] + (n,))
    return out[..., 0] if vector else out


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------
def _conv_pads(
    padding: Any,
    sizes: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> list[tuple[int, int]]:
    """Resolve a convolution ``padding`` argument to one ``(lo, hi)`` pair per spatial dim."""
    nd = len(kernel)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return [(0, 0)] * nd
        if mode == "same":
            # XLA/TensorFlow rule for any stride; the odd extra pad goes on the high side
            pairs = []
            for size, k, s, d in zip(sizes, kernel, stride, dilation):
                out = -(-size // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                pairs.append((total // 2, total - total // 2))
            return pairs
        if mode == "causal":
            if nd != 1:
                raise ValueError(f"padding='causal' is 1-D only, got {nd} spatial dims")
            return [(dilation[0] * (kernel[0] - 1), 0)]
        raise ValueError(f"unknown padding {padding!r}")
    if isinstance(padding, int | np.integer):
        return [(int(padding), int(padding))] * nd
    if len(padding) != nd:
        raise ValueError(f"padding needs {nd} entries, got {padding!r}")
    pairs = []
    for p in padding:
        if isinstance(p, int | np.integer):
            pairs.append((int(p), int(p)))
        else:
            lo, hi = p
            pairs.append((int(lo), int(hi)))
    return pairs


def _conv_dot_and_dist(
    x: np.ndarray,
    w: np.ndarray,
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Dot products and direct squared distances of every patch with every filter.

    Parameters
    ----------
    x : numpy.ndarray, shape (N, C, *spatial)
        The input, already padded (channels first).
    w : numpy.ndarray, shape (O, C / groups, *k)
        The filters.
    stride, dilation : sequence of int
        One per spatial dimension.
    groups : int
        Filter ``o`` sees the input channels of group ``o // (O / groups)``.

    Returns
    -------
    dot, dist : numpy.ndarray, shape (N, O, *out)
        ``sum(patch * w_o)`` and ``sum((patch - w_o)^2)`` (the direct distance).
    """
    n_batch, c = x.shape[:2]
    o_total, c_group = w.shape[:2]
    kernel = w.shape[2:]
    if c != c_group * groups or o_total % groups:
        raise ValueError(f"x {x.shape}, w {w.shape} and groups={groups} do not fit")
    o_group = o_total // groups
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    out_sizes = [(size - sp) // s + 1 for size, sp, s in zip(x.shape[2:], span, stride)]
    if any(size < 1 for size in out_sizes):
        raise ValueError(f"kernel span {span} exceeds the padded input {x.shape[2:]}")
    dot = np.empty((n_batch, o_total, *out_sizes))
    dist = np.empty_like(dot)
    for b_i, o in itertools.product(range(n_batch), range(o_total)):
        g = o // o_group
        channels = x[b_i, g * c_group : (g + 1) * c_group]
        for pos in itertools.product(*(range(size) for size in out_sizes)):
            # taps at dilation spacing, starting at the strided output position
            window = tuple(
                slice(p * s, p * s + sp, d) for p, s, sp, d in zip(pos, stride, span, dilation)
            )
            patch = channels[(slice(None),) + window]
            dot[(b_i, o) + pos] = np.sum(patch * w[o])
            dist[(b_i, o) + pos] = np.sum((patch - w[o]) ** 2)
    return dot, dist


def _finish(dot: np.ndarray, dist: np.ndarray, bias: Any, alpha: Any, epsilon: Any) -> np.ndarray:
    """Apply the yat ratio elementwise; the bias runs over axis 1 (output channels)."""
    a = _scalar(alpha, 1.0, "alpha")
    eps = _scalar(epsilon, 1e-5, "epsilon")
    b = _bias_vector(bias, dot.shape[1])
    out = np.empty_like(dot)
    for idx in np.ndindex(dot.shape):
        out[idx] = _yat_value(float(dot[idx]), float(dist[idx]), float(b[idx[1]]), a, eps)
    return out


def _channels_first(x: np.ndarray, data_format: str) -> np.ndarray:
    if data_format == "channels_first":
        return x
    if data_format == "channels_last":
        return np.moveaxis(x, -1, 1)
    raise ValueError(f"unknown data_format {data_format!r}")


def _restore_format(y: np.ndarray, data_format: str) -> np.ndarray:
    return np.moveaxis(y, 1, -1) if data_format == "channels_last" else y


def yat_conv_ref(
    x: Any,
    w: Any,
    bias: Any = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    data_format: str = "channels_first",
    alpha: Any = None,
    epsilon: Any = 1e-5,
    weight_normalized: bool = False,
) -> np.ndarray:
    """Naive 1-D/2-D/3-D yat convolution, one patch at a time.

    Parameters
    ----------
    x : array_like, shape (N, C, *spatial) or (N, *spatial, C)
        Input; the spatial rank is ``x.ndim - 2``.
    w : array_like, shape (O, C / groups, *k)
        Filters (always this layout).
    bias : None, float or array_like broadcastable to (O,)
        Added to the dot product inside the square.
    stride, dilation : int or tuple of int
        One per spatial dimension.
    padding : int, tuple of int, tuple of (lo, hi) pairs, "valid", "same" or "causal"
        "same" follows the XLA rule for any stride; "causal" (1-D) pads
        ``dilation * (k - 1)`` on the low side. Strings are case-insensitive.
    groups : int
        Grouped convolution.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        ``np.pad`` modes "constant", "reflect" (edge not repeated), "edge", "wrap".
    data_format : {"channels_first", "channels_last"}
        Layout of ``x`` and of the output.
    alpha, epsilon : float or array of shape () or (1,)
        As in :func:`yat_ref`.
    weight_normalized : bool
        Each filter becomes ``w_o / (|w_o| + 1e-8)`` (norm over all non-output axes) and
        ``|w_o|^2`` is taken as exactly 1 in the distance, as nmn does.

    Returns
    -------
    numpy.ndarray
        ``(N, O, *out)`` or, channels last, ``(N, *out, O)``.

    Notes
    -----
    For every output position and filter ``o`` the patch of the padded input (the channels of
    ``o``'s group, taps at dilation spacing) gives ``dot = sum(patch * w_o)`` and the direct
    ``dist = sum((patch - w_o)^2)``; padded values take part in both, which is what nmn's
    ``conv(x^2, ones)`` patch norm computes. With ``weight_normalized`` the exact correction
    ``1 - |w_o|^2`` (about ``2e-8 / |w_o|``) is added so the result equals nmn's definition.
    """
    x, w = _f64(x), _f64(w)
    nd = x.ndim - 2
    if nd not in (1, 2, 3) or w.ndim != nd + 2:
        raise ValueError(f"x {x.shape} / w {w.shape}: need 1-3 spatial dims in both")
    mode = padding_mode.lower()
    if mode not in _NP_PAD_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}")
    xc = _channels_first(x, data_format)
    stride_t = _per_dim(stride, nd, "stride")
    dilation_t = _per_dim(dilation, nd, "dilation")
    pads = _conv_pads(padding, xc.shape[2:], w.shape[2:], stride_t, dilation_t)
    xpad = np.pad(xc, [(0, 0), (0, 0), *pads], mode=_NP_PAD_MODES[mode])

    if weight_normalized:
        w = np.stack([_unit(w[o]) for o in range(w.shape[0])])
    dot, dist = _conv_dot_and_dist(xpad, w, stride_t, dilation_t, groups)
    if weight_normalized:
        # |p|^2 + 1 - 2 p.w == |p - w|^2 + (1 - |w|^2), per filter
        for o in range(w.shape[0]):
            dist[:, o] += 1.0 - float(np.sum(w[o] * w[o]))
    y = _finish(dot, dist, bias, alpha, epsilon)
    return _restore_format(y, data_format)


# --------------------------------------------------------------------------------------------
# transposed convolution
# --------------------------------------------------------------------------------------------
def _transpose_pads(
    padding: Any,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    output_padding: Sequence[int],
) -> list[tuple[int, int]]:
    """Padding (negative = crop) of the zero-inserted input for the equivalent direct conv.

    An int ``p`` follows torch (``k_eff - 1 - p`` on each side); "valid" and "same" follow
    ``jax.lax.conv_transpose``. ``output_padding`` is added to the high side in every case.
    """
    nd = len(kernel)
    k_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    pairs = []
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in ("valid", "same"):
            raise ValueError(f"unknown transposed-conv padding {padding!r}")
        for ke, s in zip(k_eff, stride):
            if mode == "same":
                pad_len = ke + s - 2
                lo = ke - 1 if s > ke - 1 else math.ceil(pad_len / 2)
            else:
                pad_len = ke + s - 2 + max(ke - s, 0)
                lo = ke - 1
            pairs.append((lo, pad_len - lo))
    else:
        p = _per_dim(padding, nd, "padding")
        pairs = [(ke - 1 - pi, ke - 1 - pi) for ke, pi in zip(k_eff, p)]
    return [(lo, hi + op) for (lo, hi), op in zip(pairs, output_padding)]


def _conv_transpose_direct(
    x: np.ndarray,
    w: np.ndarray,
    stride: Sequence[int],
    padding: Any,
    output_padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The direct convolution a transposed convolution equals (Decision 9).

    Parameters
    ----------
    x : numpy.ndarray, shape (N, C, *L)
        Channels-first input.
    w : numpy.ndarray, shape (C, O / groups, *k)
        Torch ``ConvTranspose`` layout.
    stride, output_padding, dilation : sequence of int
        One per spatial dimension.
    padding : int, tuple of int, "valid" or "same"
        See :func:`yat_conv_transpose_ref`.
    groups : int
        Number of groups.

    Returns
    -------
    x_direct : numpy.ndarray, shape (N, C, *)
        ``x`` with ``stride - 1`` zeros inserted between neighbours along every spatial
        axis, then zero-padded / cropped by the transposed-conv padding.
    w_direct : numpy.ndarray, shape (O, C / groups, *k)
        ``w_direct[o, c] = flip(w[g * C/G + c, o mod (O/G)])`` with ``g = o // (O/G)``.
    """
    n_batch, c = x.shape[:2]
    nd = x.ndim - 2
    kernel = w.shape[2:]
    if w.shape[0] != c or c % groups:
        raise ValueError(f"x {x.shape}, w {w.shape} and groups={groups} do not fit")
    c_group, o_group = c // groups, w.shape[1]

    dilated = np.zeros((n_batch, c, *[(size - 1) * s + 1 for size, s in zip(x.shape[2:], stride)]))
    dilated[(slice(None), slice(None), *[slice(None, None, s) for s in stride])] = x

    pads = _transpose_pads(padding, kernel, stride, dilation, output_padding)
    # crop the negative sides first, then zero-pad the positive ones
    crop = tuple(
        slice(max(-lo, 0), size - max(-hi, 0)) for (lo, hi), size in zip(pads, dilated.shape[2:])
    )
    cropped = dilated[(slice(None), slice(None), *crop)]
    x_direct = np.pad(cropped, [(0, 0), (0, 0), *[(max(lo, 0), max(hi, 0)) for lo, hi in pads]])

    w_direct = np.empty((o_group * groups, c_group, *kernel))
    flip = (slice(None, None, -1),) * nd
    for o in range(o_group * groups):
        g = o // o_group
        for ci in range(c_group):
            w_direct[o, ci] = w[g * c_group + ci, o % o_group][flip]
    return x_direct, w_direct


def yat_conv_transpose_ref(
    x: Any,
    w: Any,
    bias: Any = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    data_format: str = "channels_first",
    alpha: Any = None,
    epsilon: Any = 1e-5,
    weight_normalized: bool = False,
) -> np.ndarray:
    """Naive yat transposed convolution as a direct yat convolution (nmn Decision 9).

    Parameters
    ----------
    x : array_like, shape (N, C, *L) or (N, *L, C)
        Input.
    w : array_like, shape (C, O / groups, *k)
        Torch ``ConvTranspose`` weight layout.
    bias : None, float or array_like broadcastable to (O,)
        Added to the dot product inside the square.
    stride, output_padding, dilation : int or tuple of int
        One per spatial dimension.
    padding : int, tuple of int, "valid" or "same"
        An int ``p`` gives torch's output size
        ``(L - 1) * stride - 2p + dilation * (k - 1) + output_padding + 1``; "same" gives
        ``L * stride`` and "valid" ``L * stride + max(k_eff - stride, 0)`` with the low/high
        split of ``jax.lax.conv_transpose``; ``output_padding`` adds to the high side.
    groups : int
        Number of groups.
    data_format : {"channels_first", "channels_last"}
        Layout of ``x`` and of the output.
    alpha, epsilon : float or array of shape () or (1,)
        As in :func:`yat_ref`.
    weight_normalized : bool
        As in :func:`yat_conv_ref`, for each filter of the equivalent direct convolution
        (its taps and its group's input channels).

    Returns
    -------
    numpy.ndarray
        ``(N, O, *out)`` or, channels last, ``(N, *out, O)``.

    Notes
    -----
    The input gets ``stride - 1`` zeros between neighbours, is zero-padded (or cropped), and
    is convolved at stride 1 with the spatially flipped kernel, in/out swapped per group.
    Dot and direct distance are taken over every tap of that kernel, so ``|w_o|^2`` counts
    all taps and the inserted zeros, exactly like nmn's ``conv_transpose(x^2, ones)``.
    """
    x, w = _f64(x), _f64(w)
    nd = x.ndim - 2
    if nd not in (1, 2, 3) or w.ndim != nd + 2:
        raise ValueError(f"x {x.shape} / w {w.shape}: need 1-3 spatial dims in both")
    xc = _channels_first(x, data_format)
    stride_t = _per_dim(stride, nd, "stride")
    dilation_t = _per_dim(dilation, nd, "dilation")
    out_pad_t = _per_dim(output_padding, nd, "output_padding")
    x_direct, w_direct = _conv_transpose_direct(
        xc, w, stride_t, padding, out_pad_t, dilation_t, groups
    )
    if weight_normalized:
        w_direct = np.stack([_unit(w_direct[o]) for o in range(w_direct.shape[0])])
    dot, dist = _conv_dot_and_dist(x_direct, w_direct, (1,) * nd, dilation_t, groups)
    if weight_normalized:
        for o in range(w_direct.shape[0]):
            dist[:, o] += 1.0 - float(np.sum(w_direct[o] * w_direct[o]))
    y = _finish(dot, dist, bias, alpha, epsilon)
    return _restore_format(y, data_format)


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
def yat_attention_weights_ref(
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
    bias: Any = None,
) -> np.ndarray:
    """Naive yat attention weights, one (query, key) pair at a time.

    Parameters
    ----------
    q : array_like, shape (..., Lq, d)
        Queries.
    k : array_like, shape (..., Lk, d)
        Keys; leading dims broadcast with ``q``'s and ``mask``'s.
    mask : None or boolean array_like broadcastable to (..., Lq, Lk)
        True = attend.
    causal : bool
        Query ``i`` sees key ``j`` iff ``j <= i + Lk - Lq`` (queries aligned to the end).
    alpha : None, float or array of shape () or (1,)
        Multiplies the scores before normalisation; None means 1.
    epsilon : float or array of shape () or (1,)
        Added to the distance; also used by spherical normalisation and by "l1".
    scale : None or float
        Score multiplier, default ``1 / sqrt(d)``.
    spherical : bool
        ``q <- q / sqrt(|q|^2 + eps)``, likewise ``k``; distance ``max(2 - 2 q.k, 0)``.
    normalization : {"softmax", "l1", "softermax"}
        Over the visible keys of each query.
    power : float
        Exponent of "softermax".
    bias : None, float or array_like broadcastable to (..., Lq, Lk)
        Added to ``q.k`` inside the square.

    Returns
    -------
    numpy.ndarray, shape (..., Lq, Lk)
        Masked entries are exactly 0; a query with no visible key has all-zero weights.
    """
    q, k = _f64(q), _f64(k)
    d = q.shape[-1]
    lq, lk = q.shape[-2], k.shape[-2]
    if k.shape[-1] != d:
        raise ValueError(f"q {q.shape} and k {k.shape} differ in the feature axis")
    a = _scalar(alpha, 1.0, "alpha")
    eps = _scalar(epsilon, 1e-5, "epsilon")
    sc = _scalar(scale, 1.0 / math.sqrt(d), "scale")
    norm = normalization.lower()
    if norm not in ("softmax", "l1", "softermax"):
        raise ValueError(f"unknown normalization {normalization!r}")

    m = np.ones((lq, lk), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    b = np.zeros((1, 1)) if bias is None else _f64(bias)
    full = np.broadcast_shapes(q.shape[:-2] + (lq, lk), k.shape[:-2] + (lq, lk), m.shape, b.shape)
    lead = full[:-2]
    qb = np.broadcast_to(q, lead + (lq, d))
    kb = np.broadcast_to(k, lead + (lk, d))
    mb = np.broadcast_to(m, full)
    bb = np.broadcast_to(b, full)

    out = np.zeros(full)
    for idx in np.ndindex(lead):
        for i in range(lq):
            qi = qb[idx + (i,)]
            if spherical:
                qi = qi / math.sqrt(float(np.sum(qi * qi)) + eps)
            scores, visible = np.zeros(lk), np.zeros(lk, dtype=bool)
            for j in range(lk):
                visible[j] = bool(mb[idx + (i, j)]) and (not causal or j <= i + lk - lq)
                kj = kb[idx + (j,)]
                if spherical:
                    kj = kj / math.sqrt(float(np.sum(kj * kj)) + eps)
                dot = float(np.sum(qi * kj))
                dist = float(np.sum((qi - kj) ** 2))
                if spherical:
                    # 2 - 2 q.k == |q - k|^2 + (1 - |q|^2) + (1 - |k|^2)
                    dist += (1.0 - float(np.sum(qi * qi))) + (1.0 - float(np.sum(kj * kj)))
                num = dot + float(bb[idx + (i, j)])
                scores[j] = a * sc * num**2 / (max(dist, 0.0) + eps)
            if not visible.any():
                continue  # a query that sees no key keeps all-zero weights
            s = scores[visible]
            if norm == "softmax":
                e = np.exp(s - np.max(s))
                wts = e / np.sum(e)
            elif norm == "l1":
                wts = s / (np.sum(s) + eps)
            else:
                p = s**power
                wts = p / (1e-12 + np.sum(p))
            row = np.zeros(lk)
            row[visible] = wts
            out[idx + (i,)] = row
    return out


def yat_attention_ref(q: Any, k: Any, v: Any, **kwargs: Any) -> np.ndarray:
    """Naive yat attention: :func:`yat_attention_weights_ref` ``@ v``.

    Parameters
    ----------
    q : array_like, shape (..., Lq, d)
        Queries.
    k : array_like, shape (..., Lk, d)
        Keys.
    v : array_like, shape (..., Lk, dv)
        Values; leading dims broadcast with the others.
    **kwargs
        The keyword arguments of :func:`yat_attention_weights_ref`.

    Returns
    -------
    numpy.ndarray, shape (..., Lq, dv)
    """
    v = _f64(v)
    weights = yat_attention_weights_ref(q, k, **kwargs)
    if v.shape[-2] != weights.shape[-1]:
        raise ValueError(f"v {v.shape} does not have Lk = {weights.shape[-1]} rows")
    lead = np.broadcast_shapes(weights.shape[:-2], v.shape[:-2])
    wb = np.broadcast_to(weights, lead + weights.shape[-2:])
    vb = np.broadcast_to(v, lead + v.shape[-2:])
    out = np.zeros(lead + (weights.shape[-2], v.shape[-1]))
    for idx in np.ndindex(lead):
        for i in range(weights.shape[-2]):
            for j in range(weights.shape[-1]):
                out[idx + (i,)] += wb[idx + (i, j)] * vb[idx + (j,)]
    return out


# --------------------------------------------------------------------------------------------
# rotary embedding and squashers
# --------------------------------------------------------------------------------------------
def rotary_embedding_ref(x: Any, positions: Any = None, *, theta: float = 10000.0) -> np.ndarray:
    """Naive rotary position embedding on interleaved pairs ``(x[2i], x[2i+1])``.

    Parameters
    ----------
    x : array_like, shape (..., L, d)
        ``d`` even.
    positions : None or array_like of int, shape (L,) or (L, 2)
        Position of each of the ``L`` rows; default ``arange(L)``. With (row, column)
        pairs, pair ``i < d/4`` turns by ``row * theta^(-4i/d)`` and pair ``d/4 + i`` by
        ``column * theta^(-4i/d)`` (axial 2-D rotary).
    theta : float
        Base of the frequencies ``theta^(-2i/d)``.

    Returns
    -------
    numpy.ndarray, shape (..., L, d)
    """
    x = _f64(x)
    length, d = x.shape[-2:]
    if d % 2:
        raise ValueError(f"rotary embedding needs an even feature size, got {d}")
    pos = np.arange(length) if positions is None else np.asarray(positions)
    pairs = d // 2
    out = np.empty_like(x)
    for t in range(length):
        for i in range(pairs):
            if pos.ndim == 1:
                angle = float(pos[t]) * theta ** (-2.0 * i / d)
            else:
                axis, j = divmod(i, pairs // 2)
                angle = float(pos[t, axis]) * theta ** (-2.0 * j / (d // 2))
            c, s = math.cos(angle), math.sin(angle)
            even, odd = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = even * c - odd * s
            out[..., t, 2 * i + 1] = even * s + odd * c
    return out


def softermax_ref(x: Any, n: float = 1.0, *, epsilon: float = 1e-12, axis: int = -1) -> np.ndarray:
    """``x^n / (epsilon + sum_axis x^n)`` (plain float64 formula).

    Parameters
    ----------
    x : array_like
        Input (non-negative for fractional ``n``).
    n : float
        Exponent.
    epsilon : float
        Added to the denominator.
    axis : int
        Axis of the sum.

    Returns
    -------
    numpy.ndarray
    """
    p = np.power(_f64(x), n)
    return p / (epsilon + np.sum(p, axis=axis, keepdims=True))


def softer_sigmoid_ref(x: Any, n: float = 1.0) -> np.ndarray:
    """``x^n / (1 + x^n)`` (plain float64 formula).

    Parameters
    ----------
    x : array_like
        Input.
    n : float
        Exponent.

    Returns
    -------
    numpy.ndarray
    """
    p = np.power(_f64(x), n)
    return p / (1.0 + p)


def soft_tanh_ref(x: Any, n: float = 1.0) -> np.ndarray:
    """``(x^n - 1) / (1 + x^n)`` (plain float64 formula).

    Parameters
    ----------
    x : array_like
        Input.
    n : float
        Exponent.

    Returns
    -------
    numpy.ndarray
    """
    p = np.power(_f64(x), n)
    return (p - 1.0) / (1.0 + p)


# --------------------------------------------------------------------------------------------
# finite differences
# --------------------------------------------------------------------------------------------
def numerical_grad(
    f: Callable[..., Any], arrays: Sequence[Any], eps: float = 1e-6
) -> list[np.ndarray | None]:
    """Central finite differences of ``sum(f(*arrays))`` with respect to each array.

    Parameters
    ----------
    f : callable
        Takes the arrays positionally and returns an array (or a scalar).
    arrays : sequence of array_like or None
        Evaluation point; ``None`` entries are passed through and get a ``None`` gradient.
    eps : float
        Step of the central difference ``(f(a + eps) - f(a - eps)) / (2 eps)``.

    Returns
    -------
    list of numpy.ndarray or None
        One float64 gradient per array, of that array's shape.
    """
    # private float64 copies: perturbed in place one element at a time, then restored
    point = [None if a is None else np.array(a, dtype=np.float64) for a in arrays]
    grads: list[np.ndarray | None] = []
    for a in point:
        if a is None:
            grads.append(None)
            continue
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + eps
            up = float(np.sum(f(*point)))
            a[idx] = orig - eps
            down = float(np.sum(f(*point)))
            a[idx] = orig
            g[idx] = (up - down) / (2.0 * eps)
        grads.append(g)
    return grads


def drop_connect_ref(
    kernel: Any, keep: Any = None, *, rate: float = 0.0, mask: Any = None
) -> np.ndarray:
    """A kept weight scaled by ``1 / (1 - rate)``, a dropped one 0, then times ``mask``.

    Parameters
    ----------
    kernel : array_like
        Any shape.
    keep : None or bool array_like of the kernel's shape
        True where the weight is kept; None: every weight is kept, unscaled.
    rate : float
        The drop probability ``keep`` was drawn with.
    mask : None or array_like of the kernel's shape
        Multiplies the result.

    Returns
    -------
    numpy.ndarray
    """
    out = _f64(kernel)
    if keep is not None:
        out = np.asarray(keep, dtype=bool) * out / (1.0 - rate)
    if mask is not None:
        out = out * _f64(mask)
    return out


def local_window_mask_ref(grid_shape: Sequence[int], radius: Any) -> np.ndarray:
    """Local attention on a grid: token ``a`` sees token ``b`` iff their coordinates differ by
    at most the radius of each axis (Chebyshev distance per axis).

    Parameters
    ----------
    grid_shape : sequence of int
        The grid; its ``N = prod(grid_shape)`` tokens are numbered in row-major order.
    radius : int or sequence of int
        One radius for every axis, or one per axis.

    Returns
    -------
    numpy.ndarray
        Boolean, shape ``(N, N)``.
    """
    shape = tuple(int(s) for s in grid_shape)
    radii = (int(radius),) * len(shape) if np.ndim(radius) == 0 else tuple(radius)
    # itertools.product runs the last axis fastest: row-major numbering
    coords = list(itertools.product(*(range(s) for s in shape)))
    out = np.zeros((len(coords), len(coords)), dtype=bool)
    for a, ca in enumerate(coords):
        for b, cb in enumerate(coords):
            out[a, b] = all(abs(x - y) <= r for x, y, r in zip(ca, cb, radii))
    return out


# --------------------------------------------------------------------------------------------
# random feature maps and linear-time attention (formulas: docs/linear_attention.md)
# --------------------------------------------------------------------------------------------
def _feature_rows(x: Any, normalize: bool, epsilon: float) -> tuple[np.ndarray, tuple]:
    """``x`` as float64 rows ``(N, d)`` (each scaled to ``x / sqrt(|x|^2 + eps)`` if
    ``normalize``) and the leading shape to restore."""
    x = _f64(x)
    rows = x.reshape(-1, x.shape[-1]).copy()
    if normalize:
        for n in range(rows.shape[0]):
            rows[n] = rows[n] / math.sqrt(sum(t * t for t in rows[n]) + epsilon)
    return rows, x.shape[:-1]


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum(float(s) * float(t) for s, t in zip(a, b)))


def slay_features_ref(
    x: Any, projection: dict, *, normalize: bool = True, epsilon: float = 1e-6
) -> np.ndarray:
    """Naive SLAY features, one loop per feature ``(p, m, r)`` (``r`` fastest):
    ``sqrt(w_r) (a_p . x)^2 / sqrt(P) * exp(clip(sqrt(2 s_r) w_rm . x - s_r, +-20)) / sqrt(M)``.
    """
    rows, lead = _feature_rows(x, normalize, epsilon)
    anchors, proj = _f64(projection["anchors"]), _f64(projection["projections"])
    nodes, weights = _f64(projection["quad_nodes"]), _f64(projection["quad_weights"])
    p_count, (r_count, m_count, _) = anchors.shape[0], proj.shape
    out = np.zeros((rows.shape[0], p_count * m_count * r_count))
    for n, row in enumerate(rows):
        f = 0
        for p in range(p_count):
            poly = _dot(anchors[p], row) ** 2 / math.sqrt(p_count)
            for m in range(m_count):
                for r in range(r_count):
                    arg = math.sqrt(2.0 * nodes[r]) * _dot(proj[r, m], row) - nodes[r]
                    prf = math.exp(min(max(arg, -20.0), 20.0)) / math.sqrt(m_count)
                    out[n, f] = math.sqrt(weights[r]) * poly * prf
                    f += 1
    return out.reshape(*lead, out.shape[-1])


def maclaurin_features_ref(
    x: Any, projection: dict, *, normalize: bool = True, epsilon: float = 1e-6
) -> np.ndarray:
    """Naive MAY features: ``sqrt(Z / M) * prod_(l < N_r) omega_rl . x`` per feature ``r``."""
    rows, lead = _feature_rows(x, normalize, epsilon)
    omegas = _f64(projection["omegas"])
    degrees = np.asarray(projection["degrees"]).astype(int)
    z, m_count = float(_f64(projection["Z"])), omegas.shape[0]
    out = np.zeros((rows.shape[0], m_count))
    for n, row in enumerate(rows):
        for r in range(m_count):
            value = math.sqrt(z / m_count)
            for step in range(degrees[r]):
                value *= _dot(omegas[r, step], row)
            out[n, r] = value
    return out.reshape(*lead, m_count)


def radial_features_ref(
    x: Any, projection: dict, *, normalize: bool = True, epsilon: float = 1e-6
) -> np.ndarray:
    """Naive RAY features, feature ``(i, j, t)`` (``t`` fastest) of ``z = [x, sqrt(b)]``:
    ``(W1_i . z)(W2_i . z) / sqrt(m) * sqrt(2 / D) cos(Omega_jt . z + phase_jt) sqrt(coef_j)``.
    """
    rows, lead = _feature_rows(x, normalize, epsilon)
    w1, w2, omegas = _f64(projection["W1"]), _f64(projection["W2"]), _f64(projection["omegas"])
    phases, coef = _f64(projection["phases"]), _f64(projection["coef"])
    root_b = math.sqrt(float(_f64(projection["bias"])))
    m_count, (j_count, d_count, _) = w1.shape[0], omegas.shape
    out = np.zeros((rows.shape[0], m_count * j_count * d_count))
    for n, row in enumerate(rows):
        z = np.append(row, root_b)
        f = 0
        for i in range(m_count):
            psi = _dot(w1[i], z) * _dot(w2[i], z) / math.sqrt(m_count)
            for j in range(j_count):
                for t in range(d_count):
                    wave = math.cos(_dot(omegas[j, t], z) + phases[j, t])
                    weight = math.sqrt(max(coef[j], 0.0)) * math.sqrt(2.0 / d_count)
                    out[n, f] = psi * wave * weight
                    f += 1
    return out.reshape(*lead, out.shape[-1])


def square_features(t: Any) -> Any:
    """A feature map for the readout's tests: ``t * t``, elementwise, on any array type."""
    return t * t


def shifted_square_features(t: Any) -> Any:
    """``t * t + 0.25``: every weight positive (a query that sees keys never divides by 0)."""
    return t * t + 0.25


def yat_linear_attention_ref(
    q: Any,
    k: Any,
    v: Any,
    features: Callable[[Any], Any],
    *,
    causal: bool = False,
    mask: Any = None,
    chunk_size: int = 64,
    epsilon: float = 1e-6,
) -> np.ndarray:
    """Explicit normalised attention with weights ``phi(q_i) . phi(k_j)``, one query at a
    time: key ``j`` counts iff ``mask[..., 0, j]`` and (causal) ``j <= i``; the denominator
    moves ``epsilon`` away from zero keeping its sign. ``chunk_size`` does not change it."""
    del chunk_size
    fq, fk, v = _f64(features(_f64(q))), _f64(features(_f64(k))), _f64(v)
    lead = np.broadcast_shapes(fq.shape[:-2], fk.shape[:-2], v.shape[:-2])
    keep = np.ones(lead + (1, fk.shape[-2]), dtype=bool) if mask is None else mask
    keep = np.broadcast_to(np.asarray(keep, dtype=bool), lead + (1, fk.shape[-2]))
    fq, fk = np.broadcast_to(fq, lead + fq.shape[-2:]), np.broadcast_to(fk, lead + fk.shape[-2:])
    v = np.broadcast_to(v, lead + v.shape[-2:])
    out = np.zeros(lead + (fq.shape[-2], v.shape[-1]))
    for idx in np.ndindex(lead):
        for i in range(fq.shape[-2]):
            num, den = np.zeros(v.shape[-1]), 0.0
            for j in range(fk.shape[-2]):
                if keep[idx + (0, j)] and not (causal and j > i):
                    weight = _dot(fq[idx + (i,)], fk[idx + (j,)])
                    num += weight * v[idx + (j,)]
                    den += weight
            out[idx + (i,)] = num / (den - epsilon if den < 0 else den + epsilon)
    return out


# Error-scale bounds (the spec's tolerance policy "bound"): each returns, per output element,
# a float64 bound of its first-order rounding error in units of k = c (n + 2) u. Absolute
# values of every dot product bound both the dot and its rounding (|fl(a.x) - a.x| <= k
# |a|.|x|); no cancellation can hide behind them.
def _abs_rows(x: Any, normalize: bool, epsilon: float) -> tuple[np.ndarray, tuple]:
    rows, lead = _feature_rows(x, normalize, epsilon)
    return np.abs(rows), lead


def slay_features_bound(
    x: Any, projection: dict, *, normalize: bool = True, epsilon: float = 1e-6
) -> np.ndarray:
    """``sqrt(w_r / M / P) A^2 E (3 + G + s_r)``: ``A = |a_p|.|x|`` bounds the squared anchor
    term (error 2 k A^2), ``E = exp(min(G - s_r, 20))`` with ``G = sqrt(2 s_r) |w_rm|.|x|``
    bounds the positive feature (relative error k (G + s_r + 1))."""
    rows, lead = _abs_rows(x, normalize, epsilon)
    anchors, proj = np.abs(_f64(projection["anchors"])), np.abs(_f64(projection["projections"]))
    nodes, weights = _f64(projection["quad_nodes"]), _f64(projection["quad_weights"])
    p_count, (r_count, m_count, _) = anchors.shape[0], proj.shape
    a2 = (rows @ anchors.T) ** 2 / math.sqrt(p_count)  # (N, P)
    g = np.einsum("nd,rmd->nmr", rows, proj) * np.sqrt(2.0 * nodes)  # (N, M, R)
    e = np.exp(np.minimum(g - nodes, 20.0)) * (3.0 + g + nodes)
    e = e * np.sqrt(weights / m_count)
    out = a2[:, :, None, None] * e[:, None, :, :]
    return out.reshape(*lead, p_count * m_count * r_count)


def maclaurin_features_bound(
    x: Any, projection: dict, *, normalize: bool = True, epsilon: float = 1e-6
) -> np.ndarray:
    """``sqrt(Z / M) (N_r + 2) prod_(l < N_r) |omega_rl|.|x|``."""
    rows, lead = _abs_rows(x, normalize, epsilon)
    omegas = np.abs(_f64(projection["omegas"]))
    degrees = np.asarray(projection["degrees"]).astype(int)
    z, m_count = float(_f64(projection["Z"])), omegas.shape[0]
    dots = np.einsum("nd,rld->nrl", rows, omegas)  # (N, M, rows)
    used = np.arange(omegas.shape[1])[None, :] < degrees[:, None]
    prod = np.prod(np.where(used[None], dots, 1.0), axis=-1)
    out = math.sqrt(z / m_count) * (degrees + 2.0) * prod
    return out.reshape(*lead, m_count)


def radial_features_bound(
    x: Any, projection: dict, *, normalize: bool = True, epsilon: float = 1e-6
) -> np.ndarray:
    """``|W1_i|.|z| |W2_i|.|z| / sqrt(m) * sqrt(2 coef_j / D) (3 + |Omega_jt|.|z| +
    |phase_jt|)``: the sketch's error is 2 k times its bound and the cosine's is the error of
    its angle."""
    rows, lead = _abs_rows(x, normalize, epsilon)
    root_b = math.sqrt(float(_f64(projection["bias"])))
    z = np.concatenate([rows, np.full((rows.shape[0], 1), root_b)], axis=-1)
    w1, w2 = np.abs(_f64(projection["W1"])), np.abs(_f64(projection["W2"]))
    omegas, phases = np.abs(_f64(projection["omegas"])), np.abs(_f64(projection["phases"]))
    coef = np.maximum(_f64(projection["coef"]), 0.0)
    m_count, (j_count, d_count, _) = w1.shape[0], omegas.shape
    psi = (z @ w1.T) * (z @ w2.T) / math.sqrt(m_count)  # (N, m)
    angle = np.einsum("nw,jtw->njt", z, omegas) + phases  # (N, J, D)
    wave = (3.0 + angle) * np.sqrt(2.0 * coef / d_count)[:, None]
    out = psi[:, :, None, None] * wave[:, None, :, :]
    return out.reshape(*lead, m_count * j_count * d_count)


def yat_linear_attention_bound(
    q: Any, k: Any, v: Any, features: Callable[[Any], Any], **kwargs: Any
) -> np.ndarray:
    """For weights ``w_ij >= 0`` (the spec's feature maps are non-negative), each weight has a
    relative error of at most k, so the output (a weighted mean of the visible values) moves by
    at most ``3 sum_j w_ij |v_j| / den_i`` in units of k; ``|v|`` read out with the same
    weights is exactly that mean."""
    absolute = yat_linear_attention_ref(q, k, np.abs(_f64(v)), features, **kwargs)
    return 3.0 * absolute
