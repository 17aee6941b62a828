"""A small array-API namespace for TensorFlow, written with plain ``tf`` ops.

array-api-compat has no TensorFlow support, and ``tf.experimental.numpy`` lacks several
standard names and needs a global behaviour switch, so the core gets exactly the functions
it uses from here. Every function accepts eager or symbolic tensors (inside ``tf.function``),
so results stay differentiable under ``GradientTape``. Dtypes never promote implicitly:
callers pass ``dtype=`` for every array they create. ``device=`` is accepted and ignored
(TensorFlow places tensors by its own device scope).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any

import numpy as _np
import tensorflow as tf

__all__ = [
    "abs",
    "arange",
    "argmin",
    "asarray",
    "astype",
    "bool",
    "broadcast_to",
    "concat",
    "cos",
    "cumulative_sum",
    "exp",
    "expand_dims",
    "finfo",
    "flip",
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "full",
    "int32",
    "int64",
    "isdtype",
    "isfinite",
    "log",
    "logical_and",
    "logical_not",
    "matmul",
    "matrix_transpose",
    "max",
    "maximum",
    "minimum",
    "ones",
    "permute_dims",
    "pow",
    "reshape",
    "sin",
    "sqrt",
    "squeeze",
    "stack",
    "sum",
    "take",
    "where",
    "zeros",
    "zeros_like",
    "clip",
    "inf",
    "e",
    "pi",
]

bool = tf.bool
float16 = tf.float16
bfloat16 = tf.bfloat16
float32 = tf.float32
float64 = tf.float64
int32 = tf.int32
int64 = tf.int64
inf = math.inf
e = math.e
pi = math.pi


def isdtype(dtype: tf.DType, kind: str | tuple[str, ...]) -> builtins.bool:
    if isinstance(kind, tuple):
        return any(isdtype(dtype, k) for k in kind)
    dtype = tf.as_dtype(dtype)
    if kind == "real floating":
        return dtype.is_floating
    if kind == "integral":
        return dtype.is_integer
    if kind == "bool":
        return dtype == tf.bool
    if kind == "complex floating":
        return dtype.is_complex
    if kind == "numeric":
        return (dtype.is_floating or dtype.is_integer or dtype.is_complex) and dtype != tf.bool
    return dtype == tf.as_dtype(kind)


class _FInfo:
    def __init__(self, dtype: tf.DType):
        dtype = tf.as_dtype(dtype)
        self.dtype = dtype
        self.max = float(dtype.max)
        self.min = float(dtype.min)
        try:
            info = _np.finfo(dtype.as_numpy_dtype)
        except (TypeError, ValueError):  # bfloat16 is not a NumPy float type
            import ml_dtypes

            info = ml_dtypes.finfo(dtype.as_numpy_dtype)
        self.eps = float(info.eps)
        self.smallest_normal = float(info.tiny)
        self.bits = int(info.bits)


def finfo(dtype: tf.DType) -> _FInfo:
    return _FInfo(dtype)


def asarray(obj: Any, /, *, dtype: tf.DType | None = None, device: Any = None, copy: Any = None):
    if isinstance(obj, (tf.Tensor, tf.Variable)):
        return (
            tf.cast(obj, dtype)
            if dtype is not None and obj.dtype != dtype
            else tf.convert_to_tensor(obj)
        )
    return tf.convert_to_tensor(obj, dtype=dtype)


def astype(x, dtype, /, *, copy: builtins.bool = True, device: Any = None):
    return tf.cast(x, dtype)


def zeros(shape, *, dtype=None, device=None):
    return tf.zeros(shape, dtype=dtype or tf.float32)


def zeros_like(x, /, *, dtype=None, device=None):
    return tf.zeros_like(x, dtype=dtype)


def ones(shape, *, dtype=None, device=None):
    return tf.ones(shape, dtype=dtype or tf.float32)


def full(shape, fill_value, *, dtype=None, device=None):
    return tf.fill(shape, tf.constant(fill_value, dtype=dtype))


def arange(start, /, stop=None, step=1, *, dtype=None, device=None):
    if stop is None:
        start, stop = 0, start
    return tf.range(start, stop, step, dtype=dtype or tf.int64)


def reshape(x, /, shape: Sequence[int], *, copy: Any = None):
    return tf.reshape(x, shape)


def permute_dims(x, /, axes: Sequence[int]):
    return tf.transpose(x, perm=axes)


def matrix_transpose(x, /):
    rank = len(x.shape)
    return tf.transpose(x, perm=[*range(rank - 2), rank - 1, rank - 2])


def matmul(x1, x2, /):
    if len(x1.shape) == 1:
        return tf.squeeze(tf.linalg.matmul(x1[None, :], x2), axis=-2)
    if len(x2.shape) == 1:
        return tf.squeeze(tf.linalg.matmul(x1, x2[:, None]), axis=-1)
    return tf.linalg.matmul(x1, x2)


def _axis(axis):
    return list(axis) if isinstance(axis, tuple) else axis


def sum(x, /, *, axis=None, dtype=None, keepdims: builtins.bool = False):
    out = tf.reduce_sum(x, axis=_axis(axis), keepdims=keepdims)
    return tf.cast(out, dtype) if dtype is not None else out


def max(x, /, *, axis=None, keepdims: builtins.bool = False):
    return tf.reduce_max(x, axis=_axis(axis), keepdims=keepdims)


def maximum(x1, x2, /):
    return tf.maximum(x1, x2)


def minimum(x1, x2, /):
    return tf.minimum(x1, x2)


def clip(x, /, min=None, max=None):
    if min is not None:
        x = tf.maximum(x, min)
    if max is not None:
        x = tf.minimum(x, max)
    return x


def where(condition, x1, x2, /):
    return tf.where(condition, x1, x2)


def stack(arrays, /, *, axis: int = 0):
    return tf.stack(list(arrays), axis=axis)


def concat(arrays, /, *, axis: int = 0):
    return tf.concat(list(arrays), axis=axis)


def flip(x, /, *, axis=None):
    if axis is None:
        axis = list(range(len(x.shape)))
    elif isinstance(axis, int):
        axis = [axis]
    return tf.reverse(x, axis=list(axis))


def expand_dims(x, /, *, axis: int = 0):
    return tf.expand_dims(x, axis)


def squeeze(x, /, axis):
    return tf.squeeze(x, axis=axis)


def broadcast_to(x, /, shape):
    return tf.broadcast_to(x, shape)


def abs(x, /):
    return tf.abs(x)


def sqrt(x, /):
    return tf.sqrt(x)


def exp(x, /):
    return tf.exp(x)


def log(x, /):
    return tf.math.log(x)


def cos(x, /):
    return tf.cos(x)


def sin(x, /):
    return tf.sin(x)


def pow(x1, x2, /):
    if not isinstance(x2, (tf.Tensor, tf.Variable)):
        x2 = tf.constant(x2, dtype=x1.dtype)
    return tf.pow(x1, x2)


def isfinite(x, /):
    return tf.math.is_finite(x)


def logical_and(x1, x2, /):
    return tf.logical_and(x1, x2)


def logical_not(x, /):
    return tf.logical_not(x)


def argmin(x, /, *, axis=None, keepdims: builtins.bool = False):
    out = tf.math.argmin(x, axis=-1 if axis is None else axis, output_type=tf.int64)
    if keepdims:
        out = tf.expand_dims(out, axis=-1 if axis is None else axis)
    return out


def cumulative_sum(x, /, *, axis=None, dtype=None, include_initial: builtins.bool = False):
    if axis is None:
        if x.shape.rank != 1:
            raise ValueError("cumulative_sum needs axis= for arrays of more than one dimension")
        axis = 0
    out = tf.math.cumsum(x if dtype is None else tf.cast(x, dtype), axis=axis)
    if include_initial:
        first = tf.zeros_like(tf.gather(out, [0], axis=axis))
        out = tf.concat([first, out], axis=axis)
    return out


def take(x, indices, /, *, axis=None):
    return tf.gather(x, indices, axis=0 if axis is None else axis)
