"""Padding: resolving every padding form to per-dimension (low, high) pairs, and padding
arrays with zeros, reflection, replication or wrap-around using only slicing and concat."""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from nmn_array._namespace import device_kw, is_jax, is_tf, is_torch

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

Pairs = tuple[tuple[int, int], ...]


def same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """The XLA/TensorFlow "same" rule: output ``ceil(size / stride)``, extra on the high side."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv_pads(
    padding: Any,
    sizes: Sequence[int | None],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> Pairs:
    """Resolve a convolution's ``padding`` argument to one (low, high) pair per spatial dim."""
    nd = len(kernel)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * nd
        if mode == "same":
            static = [s for s in sizes if s is not None]
            if len(static) != len(sizes):
                raise ValueError(f"padding='same' needs static spatial sizes, got {tuple(sizes)}")
            return tuple(
                same_pads(s, k, st, d) for s, k, st, d in zip(static, kernel, stride, dilation)
            )
        if mode == "causal":
            if nd != 1:
                raise ValueError(f"padding='causal' is for 1-D convolution, got {nd} spatial dims")
            return ((dilation[0] * (kernel[0] - 1), 0),)
        raise ValueError(
            f"padding must be an int, a tuple, 'valid', 'same' or 'causal', got {padding!r}"
        )
    if isinstance(padding, bool):
        raise TypeError(f"padding must be an int, a tuple or a string, got {padding!r}")
    if isinstance(padding, int):
        pairs = ((padding, padding),) * nd
    elif isinstance(padding, Sequence) and len(padding) == nd:
        pairs = tuple(_pair(p, padding) for p in padding)
    else:
        raise ValueError(
            f"padding must be an int, {nd} ints, or {nd} (low, high) pairs, got {padding!r}"
        )
    if any(lo < 0 or hi < 0 for lo, hi in pairs):
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pairs


def _pair(p: Any, whole: Any) -> tuple[int, int]:
    if isinstance(p, int) and not isinstance(p, bool):
        return (p, p)
    if (
        isinstance(p, Sequence)
        and len(p) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
    ):
        return (p[0], p[1])
    raise ValueError(f"each padding entry must be an int or a (low, high) pair, got {whole!r}")


def transpose_pads(
    padding: Any,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    output_padding: Sequence[int],
) -> Pairs:
    """Padding of the zero-inserted input that turns a transposed convolution into a direct one.

    An int ``p`` follows ``torch.nn.ConvTranspose``; ``"valid"`` and ``"same"`` follow
    ``jax.lax.conv_transpose``. Negative values crop. ``output_padding`` adds to the high side.
    """
    nd = len(kernel)
    k_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if isinstance(padding, str):
        mode = padding.lower()
        pairs = []
        for ke, s in zip(k_eff, stride):
            if mode == "valid":
                total = ke + s - 2 + max(ke - s, 0)
                lo = ke - 1
            elif mode == "same":
                total = ke + s - 2
                lo = ke - 1 if s > ke - 1 else math.ceil(total / 2)
            else:
                raise ValueError(
                    f"padding of a transposed convolution must be an int, {nd} ints, "
                    f"'valid' or 'same', got {padding!r}"
                )
            pairs.append((lo, total - lo))
    else:
        from nmn_array._validation import int_tuple

        p = int_tuple(padding, nd, "padding", minimum=0)
        pairs = [(ke - 1 - pi, ke - 1 - pi) for ke, pi in zip(k_eff, p)]
    return tuple((lo, hi + op) for (lo, hi), op in zip(pairs, output_padding))


def pad(xp: ModuleType, x: Any, pads: Pairs, mode: str = "zeros", *, first_axis: int = 2) -> Any:
    """Pad the axes ``first_axis, first_axis + 1, ...`` of ``x``; negative pads crop (zeros mode)."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    if mode == "zeros" and all(lo >= 0 and hi >= 0 for lo, hi in pads):
        native = _native_zero_pad(xp, x, pads, first_axis)
        if native is not None:
            return native
    for i, (lo, hi) in enumerate(pads):
        x = _pad_axis(xp, x, first_axis + i, lo, hi, mode)
    return x


def _native_zero_pad(xp: ModuleType, x: Any, pads: Pairs, first_axis: int) -> Any:
    full = [(0, 0)] * first_axis + list(pads) + [(0, 0)] * (len(x.shape) - first_axis - len(pads))
    if is_torch(xp):
        import torch.nn.functional as F

        flat = [v for pair in reversed(full) for v in pair]
        return F.pad(x, flat)
    if is_jax(xp):
        import jax.numpy as jnp

        return jnp.pad(x, full)
    if is_tf(xp):
        import tensorflow as tf

        return tf.pad(x, full)
    return None


def _take(x: Any, axis: int, start: int, stop: int) -> Any:
    idx = [slice(None)] * len(x.shape)
    idx[axis] = slice(start, stop)
    return x[tuple(idx)]


def _pad_axis(xp: ModuleType, x: Any, axis: int, lo: int, hi: int, mode: str) -> Any:
    n = x.shape[axis]
    if lo < 0:
        x, n, lo = _take(x, axis, -lo, n), n + lo, 0
    if hi < 0:
        x, n, hi = _take(x, axis, 0, n + hi), n + hi, 0
    if lo == 0 and hi == 0:
        return x
    if mode == "reflect" and (lo >= n or hi >= n):
        raise ValueError(
            f"reflect padding ({lo}, {hi}) must be smaller than the input size {n} on axis {axis}"
        )
    if mode == "circular" and (lo > n or hi > n):
        raise ValueError(
            f"circular padding ({lo}, {hi}) must not exceed the input size {n} on axis {axis}"
        )
    parts = []
    if lo:
        parts.append(_edge(xp, x, axis, n, lo, mode, low=True))
    parts.append(x)
    if hi:
        parts.append(_edge(xp, x, axis, n, hi, mode, low=False))
    return xp.concat(parts, axis=axis)


def _edge(xp: ModuleType, x: Any, axis: int, n: int, width: int, mode: str, *, low: bool) -> Any:
    if mode == "zeros":
        shape = list(x.shape)
        shape[axis] = width
        return xp.zeros(tuple(shape), dtype=x.dtype, **device_kw(xp, x))
    if mode == "reflect":
        part = _take(x, axis, 1, width + 1) if low else _take(x, axis, n - 1 - width, n - 1)
        return xp.flip(part, axis=axis)
    if mode == "replicate":
        one = _take(x, axis, 0, 1) if low else _take(x, axis, n - 1, n)
        return xp.concat([one] * width, axis=axis)
    if mode == "circular":
        return _take(x, axis, n - width, n) if low else _take(x, axis, 0, width)
    raise ValueError(f"padding_mode must be one of {list(PADDING_MODES)}, got {mode!r}")
