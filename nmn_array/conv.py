"""Yat convolution and transposed convolution (1-D, 2-D and 3-D).

Both are built from one linear primitive (:mod:`nmn_array._correlate`):
``dot = corr(x, w)``, ``|patch|^2 = window_sum(sum of x^2 over a group's channels)``,
``|w|^2`` per filter, then the shared yat epilogue. Padded positions are zeros (or the
padded values, for the other padding modes) in both correlations, so the expanded distance
equals the direct distance between each padded patch and its filter.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from nmn_array import _correlate as corr
from nmn_array import _validation as v
from nmn_array._epilogue import expanded_distance, yat_ratio
from nmn_array._namespace import array_namespace, device_kw, float32_under_autocast, is_torch
from nmn_array._padding import PADDING_MODES, conv_pads, pad, transpose_pads
from nmn_array.dense import NORM_GUARD, safe_norm

DATA_FORMATS = ("channels_first", "channels_last")


class _Layout:
    """Static facts about one convolution call, checked once at the public layer."""

    def __init__(self, xp, x, w, bias, groups, data_format, transposed):
        self.xs, self.ws = v.shape_of(x), v.shape_of(w)
        if len(self.xs) not in (3, 4, 5):
            raise ValueError(
                f"x must have 3, 4 or 5 axes (batch, channels and 1-3 spatial dims), "
                f"got shape {self.xs}"
            )
        if len(self.ws) != len(self.xs):
            raise ValueError(
                f"w must have as many axes as x ({len(self.xs)}), got w shape {self.ws} "
                f"for x shape {self.xs}"
            )
        groups = v.plain(groups)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        self.nd = len(self.xs) - 2
        self.channels_last = v.lowered_choice(data_format, "data_format", DATA_FORMATS) == (
            "channels_last"
        )
        self.c = self.xs[-1] if self.channels_last else self.xs[1]
        self.sizes = self.xs[1:-1] if self.channels_last else self.xs[2:]
        self.kernel = self.ws[2:]
        # An empty window has no patch and torch, JAX and TF refuse it: one error everywhere.
        if 0 in self.sizes:
            raise ValueError(
                f"x must have non-zero spatial sizes, got spatial size {tuple(self.sizes)} "
                f"(x shape {self.xs})"
            )
        if 0 in self.kernel:
            raise ValueError(
                f"w must have a non-zero kernel size in every dimension, got kernel "
                f"{tuple(self.kernel)} (w shape {self.ws})"
            )
        if self.c is None:
            raise ValueError(f"the channel axis of x must have a static size, got shape {self.xs}")
        if self.c % groups:
            raise ValueError(f"in channels ({self.c}) must be divisible by groups ({groups})")
        if transposed:
            if self.ws[0] != self.c:
                raise ValueError(
                    f"w must have shape (C, O/groups, *k) with C = {self.c} input channels, "
                    f"got w shape {self.ws} for x shape {self.xs}"
                )
            self.o = self.ws[1] * groups
        else:
            if self.ws[1] * groups != self.c:
                raise ValueError(
                    f"w must have shape (O, C/groups, *k) with C/groups = {self.c}/{groups} = "
                    f"{self.c // groups}, got w shape {self.ws} for x shape {self.xs}"
                )
            self.o = self.ws[0]
            if self.o % groups:
                raise ValueError(f"out channels ({self.o}) must be divisible by groups ({groups})")
        self.groups = groups
        if bias is not None and not isinstance(bias, (int, float)):
            bs = v.shape_of(bias)
            if bs not in ((), (1,), (self.o,)):
                raise ValueError(f"bias must have shape ({self.o},) or be a scalar, got {bs}")

    def to_channels_first(self, xp: ModuleType, x: Any) -> Any:
        if not self.channels_last:
            return x
        return xp.permute_dims(x, (0, self.nd + 1, *range(1, self.nd + 1)))

    def from_channels_first(self, xp: ModuleType, y: Any) -> Any:
        if not self.channels_last:
            return y
        return xp.permute_dims(y, (0, *range(2, self.nd + 2), 1))


def _common_checks(xp, x, w, bias, epsilon):
    dtype = v.compute_dtype(xp, x, "x")
    v.check_float_array(xp, w, "w")
    v.check_float_array(xp, bias, "bias")
    v.check_epsilon(epsilon, xp, dtype)
    return dtype


def _without_channels(xp, lay: _Layout, x, out, bias, alpha, epsilon, dtype):
    """The result when there are no input or no output channels, of shape (N, O, *out).

    No input channels: every patch and filter is the empty vector, so each output is the
    natural ``alpha * b^2 / epsilon``. No output channels: an empty output. The native
    kernels refuse (or mis-shape) both, so neither reaches them.
    """
    if lay.xs[0] is None:
        raise ValueError(
            f"x without input or output channels needs a static batch size, got x shape "
            f"{lay.xs} and w shape {lay.ws}"
        )
    ones = (1,) * lay.nd
    zeros = xp.zeros((lay.xs[0], lay.o, *out), dtype=dtype, **device_kw(xp, x))
    if bias is not None and not isinstance(bias, (int, float)):
        bias = xp.reshape(bias, (lay.o, *ones) if v.shape_of(bias) == (lay.o,) else ())
    y = yat_ratio(xp, zeros, zeros, bias=bias, alpha=alpha, epsilon=epsilon)
    return lay.from_channels_first(xp, y)


def _group_sq_norms(xp: ModuleType, x: Any, groups: int, last: bool = False) -> Any:
    """``x (N, C, *sp)`` -> sum of squares over each group's channels, ``(N, G, *sp)``.

    With ``last``, ``x (N, *sp, C)`` -> ``(N, *sp, G)``.
    """
    if last:
        c, sp = x.shape[-1], tuple(x.shape[1:-1])
        return xp.sum(xp.reshape(x * x, (-1, *sp, groups, c // groups)), axis=-1)
    c = x.shape[1]
    sp = tuple(x.shape[2:])
    sq = xp.reshape(x * x, (-1, groups, c // groups, *sp))
    return xp.sum(sq, axis=2)


def _finish(xp, lay: _Layout, dot, psq, wsq, bias, alpha, epsilon, last=False, native=True):
    """From dot (N, O, *out), patch norms (N, G, *out), filter norms (G, O/G) to the output.

    With ``last``, dot is ``(N, *out, O)`` and the patch norms ``(N, *out, G)``.
    """
    g, og = lay.groups, lay.o // lay.groups
    ones = (1,) * lay.nd
    if last:
        out = tuple(dot.shape[1:-1])
        group_shape, channel_shape, psq_shape = (g, og), (*out, g, og), (*out, g, 1)
    else:
        out = tuple(dot.shape[2:])
        group_shape, channel_shape, psq_shape = (g, og, *ones), (g, og, *out), (g, 1, *out)
    if g == 1:
        # One group: the patch norms broadcast against dot as they are. The grouped view
        # (N, G, O/G, *out) is 6-D for a 3-D convolution, and inductor fails to lower it once
        # torch.compile traces the sizes symbolically (a second input size).
        group_shape = (lay.o,) if last else (lay.o, *ones)
        dot_g, psq_g = dot, psq
    else:
        dot_g = xp.reshape(dot, (-1, *channel_shape))
        psq_g = xp.reshape(psq, (-1, *psq_shape))
    wsq_g = wsq if isinstance(wsq, float) else xp.reshape(wsq, group_shape)
    if bias is not None and not isinstance(bias, (int, float)):
        bias = (
            xp.reshape(bias, group_shape) if v.shape_of(bias) == (lay.o,) else xp.reshape(bias, ())
        )
    if native and is_torch(xp):
        from nmn_array._native.torch_yat import yat_epilogue

        y = yat_epilogue(dot_g, psq_g, wsq_g, bias, alpha, epsilon)
    else:
        dist = expanded_distance(dot_g, psq_g, wsq_g)
        y = yat_ratio(xp, dot_g, dist, bias=bias, alpha=alpha, epsilon=epsilon)
    if g > 1:
        y = xp.reshape(y, (-1, *out, lay.o) if last else (-1, lay.o, *out))
    return y if last else lay.from_channels_first(xp, y)


@float32_under_autocast
def yat_conv(
    x: Any,
    w: Any,
    bias: Any = None,
    *,
    stride: int | tuple[int, ...] = 1,
    padding: Any = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    data_format: str = "channels_first",
    alpha: Any = None,
    epsilon: Any = 1e-5,
    weight_normalized: bool = False,
    _native: bool = True,
) -> Any:
    """Yat convolution: the yat product of every input patch with every filter.

    ``y[n, o, p] = alpha * (<patch_p, w_o> + bias_o)^2 / (max(|patch_p - w_o|^2, 0) + epsilon)``
    with the distance computed in expanded form from three correlations.

    Parameters
    ----------
    x : array, shape ``(N, C, *spatial)`` or ``(N, *spatial, C)`` for ``data_format="channels_last"``
        1 to 3 spatial dimensions.
    w : array, shape ``(O, C/groups, *kernel)``
        Filters, in this layout for both data formats.
    bias : None, float or array of shape (O,)
        Added to the dot product inside the square.
    stride, dilation : int or tuple of ints, one per spatial dimension
    padding : int, tuple of ints, tuple of (low, high) pairs, "valid", "same" or "causal"
        "same" follows the XLA rule for any stride (output ``ceil(in / stride)``, the odd
        extra on the high side); "causal" pads ``dilation * (k - 1)`` on the low side of a 1-D
        input. Strings are case-insensitive.
    groups : int
        Input and output channels split into ``groups`` independent groups.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
    data_format : {"channels_first", "channels_last"}
    alpha, epsilon : float or array of shape () or (1,)
    weight_normalized : bool
        Normalise each filter to unit length and take ``|w|^2`` as exactly 1.

    Returns
    -------
    array, shape (N, O, *out) or (N, *out, O); same library, dtype and device as ``x``.

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> x = np.ones((1, 1, 5))
    >>> w = np.ones((1, 1, 3))
    >>> nmn_array.yat_conv(x, w, padding="same", epsilon=1.0).tolist()
    [[[2.0, 9.0, 9.0, 9.0, 2.0]]]
    """
    bias, alpha, epsilon, padding = v.plain_all(bias, alpha, epsilon, padding)
    v.check_known_sizes(x=x, w=w, bias=bias, alpha=alpha, epsilon=epsilon)
    xp = array_namespace(x, w, bias, alpha, epsilon)
    dtype = _common_checks(xp, x, w, bias, epsilon)
    lay = _Layout(xp, x, w, bias, groups, data_format, transposed=False)
    v.check_bool(weight_normalized, "weight_normalized")
    stride_t = v.int_tuple(stride, lay.nd, "stride", minimum=1)
    dilation_t = v.int_tuple(dilation, lay.nd, "dilation", minimum=1)
    mode = v.lowered_choice(padding_mode, "padding_mode", PADDING_MODES)
    pads = conv_pads(padding, lay.sizes, lay.kernel, stride_t, dilation_t)
    for n, (lo, hi), k, d in zip(lay.sizes, pads, lay.kernel, dilation_t):
        if n is not None and n + lo + hi < d * (k - 1) + 1:
            raise ValueError(
                f"kernel (size {tuple(lay.kernel)}, dilation {dilation_t}) is larger than the "
                f"padded input (spatial size {tuple(lay.sizes)}, padding {pads})"
            )
    alpha = v.scalar_param(xp, alpha, "alpha", dtype)
    epsilon = v.scalar_param(xp, epsilon, "epsilon", dtype)
    if lay.c == 0 or lay.o == 0:
        out = tuple(
            (n + lo + hi - d * (k - 1) - 1) // s + 1
            for n, (lo, hi), k, s, d in zip(lay.sizes, pads, lay.kernel, stride_t, dilation_t)
        )
        y = _without_channels(xp, lay, x, out, v.as_compute(xp, bias, dtype), alpha, epsilon, dtype)
        return v.cast_back(xp, y, x.dtype)

    # JAX and TensorFlow convolve channels-last inputs in place: no layout transposes.
    last = lay.channels_last and mode == "zeros" and _native and corr.native_channels_last(xp)
    xc = v.as_compute(xp, x, dtype)
    if not last:
        xc = lay.to_channels_first(xp, xc)
    wc = v.as_compute(xp, w, dtype)
    bc = v.as_compute(xp, bias, dtype)
    if weight_normalized:
        axes = tuple(range(1, lay.nd + 2))
        wc = wc / (safe_norm(xp, wc, axis=axes) + NORM_GUARD)
    if mode != "zeros":
        xc = pad(xp, xc, pads, mode)
        pads = ((0, 0),) * lay.nd
    geometry: dict[str, Any] = dict(
        stride=stride_t, pads=pads, dilation=dilation_t, native=_native, channels_last=last
    )
    dot = corr.correlate(xp, xc, wc, groups=groups, **geometry)
    psq = corr.window_sum(xp, _group_sq_norms(xp, xc, groups, last), lay.kernel, **geometry)
    if weight_normalized:
        wsq = 1.0
    else:
        wsq = xp.sum(xp.reshape(wc * wc, (groups, lay.o // groups, -1)), axis=-1)
    y = _finish(xp, lay, dot, psq, wsq, bc, alpha, epsilon, last, _native)
    return v.cast_back(xp, y, x.dtype)


@float32_under_autocast
def yat_conv_transpose(
    x: Any,
    w: Any,
    bias: Any = None,
    *,
    stride: int | tuple[int, ...] = 1,
    padding: Any = 0,
    output_padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    data_format: str = "channels_first",
    alpha: Any = None,
    epsilon: Any = 1e-5,
    weight_normalized: bool = False,
    _native: bool = True,
) -> Any:
    """Yat transposed convolution, with output sizes as ``torch.nn.ConvTranspose*d``.

    ``dot = conv_transpose(x, w)``, ``|patch|^2 = conv_transpose(sum of x^2 over a group's
    channels, ones)`` and ``|w_o|^2`` over all taps and in-group input channels of filter
    ``o``; this is exactly the yat distance of the equivalent direct convolution over the
    zero-inserted, padded input (nmn's definition, Decision 9).

    Parameters
    ----------
    x : array, shape ``(N, C, *spatial)`` or ``(N, *spatial, C)``
    w : array, shape ``(C, O/groups, *kernel)``
        PyTorch's transposed-convolution layout, for both data formats.
    bias : None, float or array of shape (O,)
    stride, dilation, output_padding : int or tuple of ints, one per spatial dimension
        ``output_padding`` must be smaller than ``stride`` or ``dilation``.
    padding : int, tuple of ints, "valid" or "same"
        An int ``p`` gives ``(L - 1) * stride - 2p + dilation * (k - 1) + output_padding + 1``;
        "valid" and "same" follow ``jax.lax.conv_transpose`` (``L * stride + max(k_eff -
        stride, 0)`` and ``L * stride``).
    groups : int
    data_format : {"channels_first", "channels_last"}
    alpha, epsilon : float or array of shape () or (1,)
    weight_normalized : bool
        Normalise each output filter (its taps and its group's input channels) to unit
        length and take ``|w|^2`` as exactly 1. An extension of the contract's signature,
        matching ``yat_conv``; Keras and TF layers need it (nmn 0.3.5 has the flag there).

    Returns
    -------
    array, shape (N, O, *out) or (N, *out, O); same library, dtype and device as ``x``.

    Examples
    --------
    >>> import numpy as np, nmn_array
    >>> x = np.ones((1, 1, 2))
    >>> w = np.ones((1, 1, 2))
    >>> nmn_array.yat_conv_transpose(x, w, stride=2, epsilon=1.0).shape
    (1, 1, 4)
    """
    bias, alpha, epsilon, padding = v.plain_all(bias, alpha, epsilon, padding)
    v.check_known_sizes(x=x, w=w, bias=bias, alpha=alpha, epsilon=epsilon)
    xp = array_namespace(x, w, bias, alpha, epsilon)
    dtype = _common_checks(xp, x, w, bias, epsilon)
    lay = _Layout(xp, x, w, bias, groups, data_format, transposed=True)
    v.check_bool(weight_normalized, "weight_normalized")
    stride_t = v.int_tuple(stride, lay.nd, "stride", minimum=1)
    dilation_t = v.int_tuple(dilation, lay.nd, "dilation", minimum=1)
    out_pad = v.int_tuple(output_padding, lay.nd, "output_padding", minimum=0)
    for op, s, d in zip(out_pad, stride_t, dilation_t):
        if op >= max(s, d):
            raise ValueError(
                f"output_padding {out_pad} must be smaller than stride {stride_t} or dilation "
                f"{dilation_t} in every dimension"
            )
    pads = transpose_pads(padding, lay.kernel, stride_t, dilation_t, out_pad)
    for n, (lo, hi), k, s, d in zip(lay.sizes, pads, lay.kernel, stride_t, dilation_t):
        if n is not None and (n - 1) * s + 1 + lo + hi < d * (k - 1) + 1:
            raise ValueError(
                f"padding {padding!r} crops the output of the transposed convolution to nothing "
                f"(input spatial size {tuple(lay.sizes)}, kernel {tuple(lay.kernel)}, "
                f"stride {stride_t})"
            )
    alpha = v.scalar_param(xp, alpha, "alpha", dtype)
    epsilon = v.scalar_param(xp, epsilon, "epsilon", dtype)
    if lay.c == 0 or lay.o == 0:
        # the direct convolution (stride 1) of the zero-inserted, padded input
        out = tuple(
            (n - 1) * s + 1 + lo + hi - d * (k - 1)
            for n, (lo, hi), k, s, d in zip(lay.sizes, pads, lay.kernel, stride_t, dilation_t)
        )
        y = _without_channels(xp, lay, x, out, v.as_compute(xp, bias, dtype), alpha, epsilon, dtype)
        return v.cast_back(xp, y, x.dtype)

    xc = lay.to_channels_first(xp, v.as_compute(xp, x, dtype))
    wc = v.as_compute(xp, w, dtype)
    bc = v.as_compute(xp, bias, dtype)
    og = lay.o // groups
    # Filter o of group g is w[g*C/G:(g+1)*C/G, o % og, ...]: its norm runs over axes 1 and 3.
    w_groups = xp.reshape(wc, (groups, lay.c // groups, og, -1))
    if weight_normalized:
        w_groups = w_groups / (safe_norm(xp, w_groups, axis=(1, 3)) + NORM_GUARD)
        wc = xp.reshape(w_groups, tuple(wc.shape))
        wsq = 1.0
    else:
        wsq = xp.sum(w_groups * w_groups, axis=(1, 3))
    geometry: dict[str, Any] = dict(stride=stride_t, pads=pads, dilation=dilation_t, native=_native)
    dot = corr.correlate_transpose(xp, xc, wc, groups=groups, **geometry)
    psq = corr.window_sum_transpose(xp, _group_sq_norms(xp, xc, groups), lay.kernel, **geometry)
    y = _finish(xp, lay, dot, psq, wsq, bc, alpha, epsilon, native=_native)
    return v.cast_back(xp, y, x.dtype)
