"""The one linear primitive the yat convolutions need: grouped N-d cross-correlation in
channels-first layout, and its transpose.

PyTorch, JAX and TensorFlow arrays go to their own convolution kernels; every other library
(NumPy, array-api-strict, CuPy, Dask) runs the portable standard-only implementation in
:mod:`nmn_array._correlate_portable`. Both paths are tested against each other.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from nmn_array import _correlate_portable as portable
from nmn_array._namespace import device_kw, is_jax, is_tf, is_torch
from nmn_array._padding import Pairs, pad

_SPATIAL = {1: "H", 2: "HW", 3: "DHW"}


def correlate(
    xp: ModuleType,
    x: Any,
    w: Any,
    *,
    stride: tuple[int, ...],
    pads: Pairs,
    dilation: tuple[int, ...],
    groups: int,
    native: bool = True,
    channels_last: bool = False,
) -> Any:
    """``x (N, C, *sp)`` correlated with ``w (O, C/groups, *k)`` -> ``(N, O, *out)``.

    ``pads`` are non-negative zero paddings, one (low, high) pair per spatial dim.
    ``native=False`` forces the portable path (used by the tests that compare the two).
    ``channels_last`` (only where :func:`native_channels_last`): ``x (N, *sp, C)`` ->
    ``(N, *out, O)``.
    """
    if native:
        if is_torch(xp):
            return _torch(x, w, stride, pads, dilation, groups)
        if is_jax(xp):
            return _jax(x, w, stride, pads, dilation, groups, lhs_dilation=None, last=channels_last)
        if is_tf(xp):
            return _tf(x, w, stride, pads, dilation, groups, last=channels_last)
    return portable.correlate(
        xp, pad(xp, x, pads), w, stride=stride, dilation=dilation, groups=groups
    )


def window_sum(
    xp: ModuleType,
    x: Any,
    kernel: tuple[int, ...],
    *,
    stride: tuple[int, ...],
    pads: Pairs,
    dilation: tuple[int, ...],
    native: bool = True,
    channels_last: bool = False,
) -> Any:
    """Sum of each channel of ``x (N, G, *sp)`` over every kernel window -> ``(N, G, *out)``.

    This is the correlation with an all-ones kernel, one output per channel.
    ``channels_last`` as in :func:`correlate`.
    """
    if native and is_jax(xp):
        return _jax_window_sum(x, kernel, stride, pads, dilation, channels_last)
    if native and all(d == 1 for d in dilation):
        if is_torch(xp):
            return _torch_window_sum(x, kernel, stride, pads)
        if is_tf(xp) and len(kernel) < 3:  # TF's CPU AvgPool3D has no float64 kernel
            return _tf_window_sum(x, kernel, stride, pads, channels_last)
    if native and (is_torch(xp) or is_tf(xp)):
        g = _groups_of(x, -1 if channels_last else 1)
        ones = xp.ones((g, 1, *kernel), dtype=x.dtype, **device_kw(xp, x))
        return correlate(
            xp,
            x,
            ones,
            stride=stride,
            pads=pads,
            dilation=dilation,
            groups=g,
            channels_last=channels_last,
        )
    return portable.window_sum(xp, pad(xp, x, pads), kernel, stride=stride, dilation=dilation)


def correlate_transpose(
    xp: ModuleType,
    x: Any,
    w: Any,
    *,
    stride: tuple[int, ...],
    pads: Pairs,
    dilation: tuple[int, ...],
    groups: int,
    native: bool = True,
) -> Any:
    """Transposed correlation: ``x (N, C, *sp)``, ``w (C, O/groups, *k)`` -> ``(N, O, *out)``.

    ``pads`` pad (or, when negative, crop) the zero-inserted input, so that the result is
    the direct correlation of that input with the flipped, in/out-swapped kernel.
    """
    nd = len(stride)
    kernel = tuple(w.shape[2:])
    if native and is_torch(xp):
        torch_args = _torch_transpose_args(pads, kernel, stride, dilation)
        if torch_args is not None:
            return _torch_transpose(x, w, stride, dilation, groups, *torch_args)
    w_direct = direct_kernel(xp, w, groups)
    if native and is_jax(xp):
        return _jax(x, w_direct, (1,) * nd, pads, dilation, groups, lhs_dilation=stride)
    x_dil = portable.insert_zeros(xp, x, stride)
    crop = tuple((min(lo, 0), min(hi, 0)) for lo, hi in pads)
    x_dil = pad(xp, x_dil, crop)
    grow = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
    return correlate(
        xp,
        x_dil,
        w_direct,
        stride=(1,) * nd,
        pads=grow,
        dilation=dilation,
        groups=groups,
        native=native,
    )


def window_sum_transpose(
    xp: ModuleType,
    x: Any,
    kernel: tuple[int, ...],
    *,
    stride: tuple[int, ...],
    pads: Pairs,
    dilation: tuple[int, ...],
    native: bool = True,
) -> Any:
    """Transposed window sum of ``x (N, G, *sp)`` -> ``(N, G, *out)`` (all-ones kernel)."""
    g = _groups_of(x, 1)
    ones = xp.ones((g, 1, *kernel), dtype=x.dtype, **device_kw(xp, x))
    return correlate_transpose(
        xp, x, ones, stride=stride, pads=pads, dilation=dilation, groups=g, native=native
    )


def _groups_of(x: Any, axis: int) -> int:
    """The channel count of ``x`` at ``axis`` (the group count of an all-ones kernel) as a
    plain int: ``torch.jit.trace`` records sizes as tensors, and an all-ones kernel built from
    one has a shape the TorchScript ONNX exporter cannot see (it refuses the convolution)."""
    return int(x.shape[axis])


def direct_kernel(xp: ModuleType, w: Any, groups: int) -> Any:
    """``w (C, O/G, *k)`` of a transposed conv -> the direct kernel ``(O, C/G, *k)``, flipped."""
    c, og = w.shape[0], w.shape[1]
    kernel = tuple(w.shape[2:])
    nd = len(kernel)
    wg = xp.reshape(w, (groups, c // groups, og, *kernel))
    wg = xp.permute_dims(wg, (0, 2, 1, *range(3, 3 + nd)))
    wd = xp.reshape(wg, (groups * og, c // groups, *kernel))
    return xp.flip(wd, axis=tuple(range(2, 2 + nd)))


def native_channels_last(xp: ModuleType) -> bool:
    """Whether :func:`correlate` and :func:`window_sum` take channels-last inputs natively."""
    return is_jax(xp) or is_tf(xp)


# --- native kernels -------------------------------------------------------------------


def _torch(x, w, stride, pads, dilation, groups):
    import torch.nn.functional as F

    nd = len(stride)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    if all(lo == hi for lo, hi in pads):
        padding = tuple(lo for lo, _ in pads)
    else:
        x = F.pad(x, [v for pair in reversed(pads) for v in pair])
        padding = 0
    return conv(x, w, None, stride, padding, dilation, groups)


def _torch_window_sum(x, kernel, stride, pads):
    # oneDNN runs a convolution with few channels and an all-ones kernel 3-4x slower (forward
    # and backward) than average pooling; the mean times the window size is the sum.
    import torch.nn.functional as F

    nd = len(stride)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    if any(lo or hi for lo, hi in pads):
        x = F.pad(x, [v for pair in reversed(pads) for v in pair])
    return pool(x, kernel, stride, 0) * math.prod(kernel)


def _torch_transpose_args(pads, kernel, stride, dilation):
    """torch's (padding, output_padding) for these pads, or None if torch cannot express them."""
    padding, output_padding = [], []
    for (lo, hi), k, s, d in zip(pads, kernel, stride, dilation):
        p = d * (k - 1) - lo
        op = hi - lo
        if p < 0 or op < 0 or op >= max(s, d):
            return None
        padding.append(p)
        output_padding.append(op)
    return tuple(padding), tuple(output_padding)


def _torch_transpose(x, w, stride, dilation, groups, padding, output_padding):
    import torch.nn.functional as F

    nd = len(stride)
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    return conv_t(x, w, None, stride, padding, output_padding, groups, dilation)


def _jax(x, w, stride, pads, dilation, groups, *, lhs_dilation, last=False):
    from jax import lax

    sp = _SPATIAL[len(stride)]
    layout = "N" + sp + "C" if last else "NC" + sp
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=stride,
        padding=list(pads),
        lhs_dilation=lhs_dilation,
        rhs_dilation=dilation,
        dimension_numbers=(layout, "OI" + sp, layout),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )


def _jax_window_sum(x, kernel, stride, pads, dilation, last):
    # XLA:CPU runs reduce_window about 8x faster than a grouped all-ones convolution.
    from jax import lax

    def spatial(values, fill):
        return (fill, *values, fill) if last else (fill, fill, *values)

    return lax.reduce_window(
        x,
        x.dtype.type(0),
        lax.add,
        spatial(kernel, 1),
        spatial(stride, 1),
        list(spatial(pads, (0, 0))),
        window_dilation=spatial(dilation, 1),
    )


def _tf_window_sum(x, kernel, stride, pads, last):
    # As for torch: average pooling is much cheaper than an all-ones grouped convolution.
    import tensorflow as tf

    nd = len(stride)
    xl = x if last else tf.transpose(x, [0, *range(2, 2 + nd), 1])
    if any(lo or hi for lo, hi in pads):
        xl = tf.pad(xl, [(0, 0), *pads, (0, 0)])
    y = tf.nn.avg_pool(xl, list(kernel), list(stride), "VALID") * math.prod(kernel)
    return y if last else tf.transpose(y, [0, nd + 1, *range(1, nd + 1)])


def _tf(x, w, stride, pads, dilation, groups, last=False):
    import tensorflow as tf

    nd = len(stride)
    to_last = [0, *range(2, 2 + nd), 1]
    to_first = [0, nd + 1, *range(1, nd + 1)]
    xl = x if last else tf.transpose(x, to_last)
    if any(lo or hi for lo, hi in pads):
        xl = tf.pad(xl, [(0, 0), *pads, (0, 0)])
    wl = tf.transpose(w, [*range(2, 2 + nd), 1, 0])  # (*k, C/G, O)
    # TF refuses strides > 1 together with dilation > 1: run stride 1, then subsample.
    both = any(s > 1 for s in stride) and any(d > 1 for d in dilation)
    run_stride = (1,) * nd if both else stride
    # Grouped convolution is not available in TF's CPU kernels: one convolution per group.
    if groups == 1:
        y = _tf_conv(xl, wl, run_stride, dilation)
    else:
        xs = tf.split(xl, groups, axis=-1)
        ws = tf.split(wl, groups, axis=-1)
        y = tf.concat([_tf_conv(a, b, run_stride, dilation) for a, b in zip(xs, ws)], axis=-1)
    if both:
        y = y[(slice(None), *(slice(None, None, s) for s in stride))]
    return y if last else tf.transpose(y, to_first)


def _tf_conv(x, w, stride, dilation):
    import tensorflow as tf

    if len(stride) == 3 and all(d == 1 for d in dilation):
        # tf.nn.convolution's eager gradient of a 5-D input fails (its Conv3D op carries no
        # data_format attribute, which _Conv3DGrad reads); conv3d sets it.
        return tf.nn.conv3d(x, w, (1, *stride, 1), "VALID", data_format="NDHWC")
    return tf.nn.convolution(x, w, strides=stride, padding="VALID", dilations=dilation)
