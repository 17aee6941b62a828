"""What the harness knows about each family of functions beyond the spec's generic fields:
which arrays play the roles of ``x`` and ``w``, where the bias broadcasts, and how to force
the boundary inputs (``x == w``, ``x == 0``, ``w == 0``)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from tests.harness.case import Case, plain

#: (input, weight) roles per family; squashers and rotary have a single input.
ROLES = {
    "dense": ("x", "w"),
    "conv": ("x", "w"),
    "conv_transpose": ("x", "w"),
    "attention": ("q", "k"),
    "attention_weights": ("q", "k"),
    "rotary": ("x", None),
    "softermax": ("x", None),
    "softer_sigmoid": ("x", None),
    "soft_tanh": ("x", None),
    "dropconnect": ("kernel", None),
    "random_features": ("x", None),
    "linear_attention": ("q", "k"),
}


def channel_axis(case: Case) -> int:
    """The channel axis of a convolution's input and output."""
    return -1 if case.params.get("data_format") == "channels_last" else 1


def feature_axis(spec: Any, case: Case) -> int:
    """The output axis that indexes units (neurons / output channels)."""
    if spec.family in ("conv", "conv_transpose"):
        return channel_axis(case)
    return -1


def bias_broadcast(spec: Any, case: Case, shape: tuple[int, ...]) -> np.ndarray:
    """``|bias|`` broadcast to the output shape (zeros without a bias)."""
    bias = case.arrays.get("bias")
    if bias is None:
        return np.zeros(shape)
    b = np.abs(np.asarray(bias, dtype=np.float64))
    if spec.family in ("conv", "conv_transpose") and b.ndim == 1 and channel_axis(case) == 1:
        b = b.reshape((-1,) + (1,) * (len(shape) - 2))
    return np.broadcast_to(b, shape)


def apply_boundary(spec: Any, case: Case, boundary: str) -> Case:
    """``case`` with a boundary input forced (the hardest points for gradients and clamps)."""
    x_name, w_name = ROLES[spec.family]
    arrays = dict(case.arrays)
    x = np.array(arrays[x_name], dtype=np.float64)
    w = None if w_name is None else np.array(arrays[w_name], dtype=np.float64)
    if boundary == "zero_x":
        arrays[x_name] = np.zeros_like(x)
    elif boundary == "zero_w" and w is not None:
        w.reshape(-1)[: (w.shape[-1] if w.ndim == 1 else w[0].size)] = 0.0
        arrays[w_name] = w
    elif boundary in ("x_equals_w", "x_near_w") and w is not None:
        x, w = _x_equals_w(spec.family, case, x, w)
        if boundary == "x_near_w":
            # a relative 1e-6 perturbation: the true distance (~1e-12 |w|^2) is far below the
            # expanded form's rounding error, so the computed distance has a random sign
            seed = zlib.crc32(np.ascontiguousarray(x).tobytes())
            x = x * (1.0 + 1e-6 * np.random.default_rng(seed).uniform(-1.0, 1.0, x.shape))
        arrays[x_name], arrays[w_name] = x, w
    return case.replace(arrays=arrays) if arrays is not case.arrays else case


def _x_equals_w(family: str, case: Case, x: np.ndarray, w: np.ndarray) -> tuple[Any, Any]:
    if family == "dense":
        target = w if w.ndim == 1 else w[0]
        # every row of x equals neuron 0 (many chances for a negative expanded distance)
        return np.broadcast_to(target, x.shape).copy(), w
    if family in ("attention", "attention_weights"):
        # the first key equals the first query (in every batch position)
        x0 = np.broadcast_to(x[..., :1, :], w[..., :1, :].shape)
        w = w.copy()
        w[..., :1, :] = x0
        return x, w
    if family in ("conv", "conv_transpose"):
        # x constant over space per channel, and one filter equal to that constant patch:
        # every interior patch then equals the filter exactly (distance 0).
        axis = channel_axis(case)
        xc = np.moveaxis(x, axis, 1)
        values = xc[:, :, *([0] * (xc.ndim - 2))]  # (N, C)
        xc = np.broadcast_to(values.reshape(values.shape + (1,) * (xc.ndim - 2)), xc.shape)
        x = np.ascontiguousarray(np.moveaxis(xc, 1, axis))
        groups = int(plain(case.params.get("groups", 1)))
        c = values.shape[1]
        w = w.copy()
        if family == "conv":
            # filter 0 belongs to group 0: it sees channels [0, C/groups)
            w[0] = values[0, : c // groups].reshape((-1,) + (1,) * (w.ndim - 2))
        else:
            # w (C, O/groups, *k): output channel 0 of each group reads every input channel
            w[:, 0] = values[0].reshape((-1,) + (1,) * (w.ndim - 2))
        return x, w
    return x, w
