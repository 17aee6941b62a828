"""A small array-API namespace for MLX, written with plain ``mlx.core`` ops.

``mx.array.__array_namespace__()`` returns ``mlx.core`` itself, which has most standard
names but not all of them (no ``bool`` dtype name, no ``linalg.vector_norm``) and several
with different keywords (``sum`` has no ``dtype=``, ``clip`` takes ``a_min``/``a_max``,
``cumsum`` has no ``include_initial=``); array-api-compat has no MLX support. So the core
gets exactly the functions it uses from here, each with the standard's signature.

MLX places arrays on its default device (or a stream), not per array: ``device=`` is
accepted and ignored. float64 exists on the CPU device only. Dtypes never promote
implicitly in the core: callers pass ``dtype=`` for every array they create.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any

import mlx.core as mx

__all__ = [
    "abs",
    "arange",
    "argmin",
    "asarray",
    "astype",
    "bfloat16",
    "bool",
    "broadcast_to",
    "clip",
    "concat",
    "cos",
    "cumulative_sum",
    "e",
    "exp",
    "expand_dims",
    "finfo",
    "flip",
    "float16",
    "float32",
    "float64",
    "full",
    "inf",
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
    "pi",
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
]

bool = mx.bool_
float16 = mx.float16
bfloat16 = mx.bfloat16
float32 = mx.float32
float64 = mx.float64
int32 = mx.int32
int64 = mx.int64
inf = math.inf
e = math.e
pi = math.pi


def isdtype(dtype: mx.Dtype, kind: str | tuple[str, ...]) -> builtins.bool:
    return mx.isdtype(dtype, kind)


def finfo(dtype: mx.Dtype) -> Any:
    # mx.finfo has the standard's fields (bits, eps, max, min, smallest_normal, dtype)
    return mx.finfo(dtype)


def asarray(obj: Any, /, *, dtype: mx.Dtype | None = None, device: Any = None, copy: Any = None):
    if isinstance(obj, mx.array):
        return obj if dtype is None or obj.dtype == dtype else obj.astype(dtype)
    return mx.array(obj, dtype=dtype)


def astype(x, dtype, /, *, copy: builtins.bool = True, device: Any = None):
    return x.astype(dtype)


def zeros(shape, *, dtype=None, device=None):
    return mx.zeros(_shape(shape), dtype=dtype or mx.float32)


def zeros_like(x, /, *, dtype=None, device=None):
    return mx.zeros(x.shape, dtype=dtype or x.dtype)


def ones(shape, *, dtype=None, device=None):
    return mx.ones(_shape(shape), dtype=dtype or mx.float32)


def full(shape, fill_value, *, dtype=None, device=None):
    return mx.full(_shape(shape), fill_value, dtype=dtype)


def _shape(shape: int | Sequence[int]) -> list[int]:
    # mx.zeros((),) is a 0-d array; a list keeps the same meaning for every length
    return [shape] if isinstance(shape, int) else list(shape)


def arange(start, /, stop=None, step=1, *, dtype=None, device=None):
    if stop is None:
        start, stop = 0, start
    # MLX's default integer is int32; the standard's (and the core's index dtype) is int64
    return mx.arange(start, stop, step, dtype=dtype or mx.int64)


def reshape(x, /, shape: Sequence[int], *, copy: Any = None):
    return mx.reshape(x, list(shape))


def permute_dims(x, /, axes: Sequence[int]):
    return mx.transpose(x, list(axes))


def matrix_transpose(x, /):
    return mx.swapaxes(x, -1, -2)


def matmul(x1, x2, /):
    return mx.matmul(x1, x2)


def _axis(axis):
    return list(axis) if isinstance(axis, tuple) else axis


def sum(x, /, *, axis=None, dtype=None, keepdims: builtins.bool = False):
    if dtype is not None and x.dtype != dtype:
        x = x.astype(dtype)
    return mx.sum(x, axis=_axis(axis), keepdims=keepdims)


def max(x, /, *, axis=None, keepdims: builtins.bool = False):
    return mx.max(x, axis=_axis(axis), keepdims=keepdims)


def maximum(x1, x2, /):
    return mx.maximum(x1, x2)


def minimum(x1, x2, /):
    return mx.minimum(x1, x2)


def clip(x, /, min=None, max=None):
    if min is not None:
        x = mx.maximum(x, _like(min, x))
    if max is not None:
        x = mx.minimum(x, _like(max, x))
    return x


def _like(value: Any, x: Any) -> Any:
    # a Python number would be cast by MLX anyway; an explicit array keeps x's dtype
    return value if isinstance(value, mx.array) else mx.array(value, dtype=x.dtype)


def where(condition, x1, x2, /):
    return mx.where(condition, x1, x2)


def stack(arrays, /, *, axis: int = 0):
    return mx.stack(list(arrays), axis=axis)


def concat(arrays, /, *, axis: int = 0):
    return mx.concatenate(list(arrays), axis=axis)


def flip(x, /, *, axis=None):
    if axis is None:
        axis = tuple(range(x.ndim))
    elif isinstance(axis, int):
        axis = (axis,)
    # MLX has no reversed slice with a negative stride on every version: index instead
    for a in axis:
        n = x.shape[a]
        x = mx.take(x, mx.arange(n - 1, -1, -1, dtype=mx.int32), axis=a)
    return x


def expand_dims(x, /, *, axis: int = 0):
    return mx.expand_dims(x, axis)


def squeeze(x, /, axis):
    return mx.squeeze(x, axis=_axis(axis))


def broadcast_to(x, /, shape):
    return mx.broadcast_to(x, list(shape))


def abs(x, /):
    return mx.abs(x)


def sqrt(x, /):
    return mx.sqrt(x)


def exp(x, /):
    return _exp64(x) if x.dtype == mx.float64 else mx.exp(x)


def log(x, /):
    return mx.log(x)


def cos(x, /):
    return _cos64(x) if x.dtype == mx.float64 else mx.cos(x)


def sin(x, /):
    return _sin64(x) if x.dtype == mx.float64 else mx.sin(x)


def pow(x1, x2, /):
    return mx.power(x1, _like(x2, x1))


def isfinite(x, /):
    return mx.isfinite(x)


def logical_and(x1, x2, /):
    return mx.logical_and(x1, x2)


def logical_not(x, /):
    return mx.logical_not(x)


def argmin(x, /, *, axis=None, keepdims: builtins.bool = False):
    # an index has no gradient; without stop_gradient mx.grad tries to differentiate the
    # take() it feeds with respect to it, and raises
    return mx.stop_gradient(mx.argmin(x, axis=axis, keepdims=keepdims).astype(mx.int64))


def cumulative_sum(x, /, *, axis=None, dtype=None, include_initial: builtins.bool = False):
    if axis is None:
        if x.ndim != 1:
            raise ValueError("cumulative_sum needs axis= for arrays of more than one dimension")
        axis = 0
    out = mx.cumsum(x if dtype is None else x.astype(dtype), axis=axis)
    if include_initial:
        shape = list(out.shape)
        shape[axis] = 1
        out = mx.concatenate([mx.zeros(shape, dtype=out.dtype), out], axis=axis)
    return out


def take(x, indices, /, *, axis=None):
    # (indices computed from differentiated arrays would make mx.grad raise: see argmin)
    return mx.take(x, mx.stop_gradient(indices), axis=0 if axis is None else axis)


# -- float64 exp, sin and cos ---------------------------------------------------------------
# MLX 0.32's float64 exp, sin and cos are only float32-accurate (relative errors near 1e-7,
# against ~1e-16 for its float64 log, sqrt, tanh and expm1). These rebuild them from the
# accurate ops: Cody-Waite range reduction (constants split so that k * hi is exact), then
# expm1 on [-ln2/2, ln2/2] and Taylor polynomials on [-pi/4, pi/4]. Each gets its exact
# derivative as a custom VJP, since MLX would differentiate through its own exp otherwise.

_LN2_HI = 6.93147180369123816490e-01  # ln 2 to 32 bits: k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_PIO2_1 = 1.57079632673412561417e00  # pi/2 in three parts (the first 33 bits, ...)
_PIO2_2 = 6.07710050630396597660e-11
_PIO2_3 = 2.02226624879595063154e-21
# |x| beyond these: exp overflows to inf / underflows to 0 in float64
_EXP_MAX = 709.782712893384
_EXP_MIN = -745.1332191019412


def _first(primals: Any) -> Any:
    # mx.custom_function passes a one-argument function's primal bare, not in a tuple
    return primals[0] if isinstance(primals, (tuple, list)) else primals


@mx.custom_function
def _exp64(x):
    # clipped first so that +-inf (and huge values) never reach the reduction as inf - inf
    xc = mx.clip(x, _EXP_MIN - 1.0, _EXP_MAX + 1.0)
    k = mx.round(xc * (1.0 / _LN2_HI))
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    # 2^k in two factors: 2^1024 alone is inf although exp(709.7) = 2^1023.9 is finite
    half = mx.floor(k * 0.5)
    two = mx.array(2.0, dtype=mx.float64)
    out = (mx.expm1(r) + 1.0) * mx.power(two, half) * mx.power(two, k - half)
    out = mx.where(x > _EXP_MAX, mx.array(math.inf, dtype=mx.float64), out)
    return mx.where(x < _EXP_MIN, mx.zeros_like(out), out)


@_exp64.vjp
def _exp64_vjp(primals, cotangent, output):
    return cotangent * output


def _quadrant(x):
    """``x = k pi/2 + r`` with ``|r| <= pi/4``: returns ``(k mod 4, sin r, cos r)``."""
    k = mx.round(x * (2.0 / math.pi))
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    r2 = r * r
    # Taylor series to r^17 / r^18: the next terms are below 1e-19 on |r| <= pi/4
    sin_r = r * _taylor(r2, odd=True)
    cos_r = _taylor(r2, odd=False)
    q = k - 4.0 * mx.floor(k * 0.25)
    return q, sin_r, cos_r


def _taylor(r2, *, odd: builtins.bool):
    """``sum_j (-1)^j r^(2j) / (2j + odd)!`` for ``j`` up to 8 (9 terms), by Horner."""
    out = mx.zeros_like(r2)
    for j in range(8, -1, -1):
        out = out * r2
        out = out + ((-1.0) ** j) / math.factorial(2 * j + (1 if odd else 0))
    return out


def _pick(q, a, b, c, d):
    return mx.where(q == 0, a, mx.where(q == 1, b, mx.where(q == 2, c, d)))


@mx.custom_function
def _sin64(x):
    q, s, c = _quadrant(x)
    return _pick(q, s, c, -s, -c)


@_sin64.vjp
def _sin64_vjp(primals, cotangent, output):
    return cotangent * _cos64(_first(primals))


@mx.custom_function
def _cos64(x):
    q, s, c = _quadrant(x)
    return _pick(q, c, -s, -c, s)


@_cos64.vjp
def _cos64_vjp(primals, cotangent, output):
    return -cotangent * _sin64(_first(primals))
