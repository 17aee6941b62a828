"""Argument checks shared by the public functions.

Only non-array arguments and static shapes are inspected: array values are never read,
so the checks run at call time under ``jax.jit``, ``tf.function`` and on lazy Dask arrays.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from nmn_array._namespace import clip, is_jax, is_mlx, is_numpy_scalar, is_tf, is_torch
from nmn_array._native import saturating_cast


def shape_of(x: Any) -> tuple[int | None, ...]:
    """Static shape as a tuple; unknown sizes (symbolic TF dims, Dask nan chunks) are None.

    A PyTorch size being recorded (a ``SymInt`` under ``torch.export``, a traced 0-d tensor
    under ``torch.jit.trace``) is kept as it is: ``int()`` would fix the exported graph to the
    example's size, so a dynamic batch axis would be lost.
    """
    torch = sys.modules.get("torch")
    recorded = (torch.SymInt, torch.Tensor) if torch is not None else ()
    dims: list[Any] = []
    for d in tuple(x.shape):
        # Recorded sizes first: torch.compile cannot trace getattr on a SymInt (with
        # dynamic shapes, after a second input size, fullgraph=True would fail).
        if isinstance(d, int) or (recorded and isinstance(d, recorded)):
            dims.append(d)
            continue
        d = getattr(d, "value", d)  # TF1-style Dimension objects
        if d is None or (isinstance(d, float) and math.isnan(d)):
            dims.append(None)
        else:
            dims.append(int(d))
    return tuple(dims)


def check_known_sizes(**arrays: Any) -> None:
    """Refuse Dask arrays whose chunk sizes are unknown (shape with NaN, e.g. after boolean
    indexing): the standard's reshapes, clips and stacks need the sizes. TensorFlow's
    symbolic ``None`` dimensions are not affected."""
    for name, a in arrays.items():
        shape = getattr(a, "shape", None)
        if shape is None or isinstance(a, (int, float)):
            continue
        if any(isinstance(d, float) and math.isnan(d) for d in tuple(shape)):
            raise ValueError(
                f"{name} has unknown sizes (shape {tuple(shape)}): a Dask array with unknown "
                f"chunk sizes (from boolean indexing, for example) needs "
                f"{name}.compute_chunk_sizes() first"
            )


def is_low_precision(xp: ModuleType, dtype: Any) -> bool:
    """float16 and bfloat16 are computed in float32."""
    # str() covers every library's spelling (numpy, torch.float16, tf's <dtype: 'bfloat16'>),
    # and namespaces without a float16 (dask, array-api-strict) need no attribute lookup.
    return "float16" in str(dtype)


def compute_dtype(xp: ModuleType, x: Any, name: str = "x") -> Any:
    """The dtype the math runs in for input ``x``; integer, bool and complex raise TypeError."""
    dtype = x.dtype
    if is_low_precision(xp, dtype):
        return xp.float32
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {dtype}")
    return dtype


def check_float_array(xp: ModuleType, a: Any, name: str) -> None:
    """Reject integer, bool and complex arrays named ``name`` (and a bool used as a number)."""
    if isinstance(a, bool):
        raise TypeError(f"{name} must be a float or a floating array, got {a!r}")
    if a is None or isinstance(a, (int, float)):
        return
    if not (is_low_precision(xp, a.dtype) or xp.isdtype(a.dtype, "real floating")):
        raise TypeError(f"{name} must have a real floating dtype, got {a.dtype}")


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars turned into Python ones, also inside a tuple or list.

    Every public function passes its number arguments through this first, so a NumPy
    scalar is accepted wherever a Python number is, next to any library's arrays, and the
    checks below only ever see Python numbers. ``np.bool_`` becomes ``bool``, so it is
    refused wherever a bool is. Anything else (arrays included, 0-d ones too) is unchanged.
    """
    if is_numpy_scalar(value):
        kind = value.dtype.kind
        if kind == "f":
            return float(value)  # also float16 and longdouble, whose .item() may not be a float
        return value.item() if kind in "biuc" else value
    if isinstance(value, (tuple, list)) and any(is_numpy_scalar(x) for x in value):
        return type(value)(plain(x) for x in value)
    return value


def plain_all(*values: Any) -> tuple[Any, ...]:
    """:func:`plain` applied to each argument."""
    return tuple(plain(x) for x in values)


def check_epsilon(
    epsilon: Any, xp: ModuleType | None = None, dtype: Any = None, name: str = "epsilon"
) -> None:
    """A Python epsilon must be a positive number representable in the compute dtype.

    With ``dtype``, a float below the dtype's smallest normal (which flushes to zero, or
    loses its precision, and turns ``0 / epsilon`` into NaN) or above its largest value
    (inf) is refused. Arrays are trusted: their values are never read (see the module doc).
    """
    if isinstance(epsilon, bool):
        raise TypeError(f"{name} must be a positive float or an array, got {epsilon!r}")
    if isinstance(epsilon, (int, float)):
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(f"{name} must be > 0 and finite, got {epsilon!r}")
        if dtype is not None and xp is not None:
            info = xp.finfo(dtype)
            tiny, big = float(info.smallest_normal), float(info.max)
            if not tiny <= epsilon <= big:
                raise ValueError(
                    f"{name}={epsilon!r} is not a normal number in the compute dtype {dtype}: "
                    f"it must lie between the dtype's smallest normal {tiny!r} and its "
                    f"largest value {big!r}"
                )
    elif not hasattr(epsilon, "shape"):
        raise TypeError(f"{name} must be a positive float or an array, got {epsilon!r}")


def check_rate(rate: Any, name: str = "dropout_rate") -> float:
    """A drop probability in ``[0, 1)`` (NaN, 1 and bools refused), as a Python float."""
    rate = plain(rate)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in the half-open interval [0, 1), got {rate!r}")
    return float(rate)


def check_floor(value: Any, name: str) -> float:
    """A non-negative finite float (a clamp's lower bound)."""
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a non-negative float, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a non-negative finite float, got {value!r}")
    return float(value)


def check_positive_int(value: Any, name: str) -> int:
    """An int >= 1 (bools refused), as a Python int."""
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_nonnegative(value: Any, name: str) -> float:
    """A finite float >= 0 (bools refused), as a Python float."""
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a float >= 0, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_positive(value: Any, name: str) -> float:
    """A finite float > 0 (bools refused), as a Python float."""
    value = check_nonnegative(value, name)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_window(window: Any) -> tuple[int | None, int | None] | None:
    """``window``: None or a pair ``(left, right)``, each None or an int >= 0."""
    if window is None:
        return None
    ok = isinstance(window, (tuple, list)) and len(window) == 2
    ok = ok and all(
        w is None or (isinstance(w, int) and not isinstance(w, bool) and w >= 0) for w in window
    )
    if not ok:
        raise ValueError(
            f"window must be None or (left, right), each None or an int >= 0, got {window!r}"
        )
    return (window[0], window[1])


def check_block_size(block_size: Any) -> Any:
    """``block_size``: None, ``"auto"`` or an int >= 1 (returned as given)."""
    auto = isinstance(block_size, str) and block_size == "auto"
    if (
        block_size is not None
        and not auto
        and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1)
    ):
        raise ValueError(f"block_size must be None, 'auto' or an int >= 1, got {block_size!r}")
    return block_size


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def scalar_param(xp: ModuleType, value: Any, name: str, dtype: Any) -> Any:
    """Cast a float or an array of shape () / (1,) (alpha, epsilon) to a compute-dtype scalar.

    A shape-(1,) array is reshaped to () so it never adds an axis to the output.
    """
    if value is None or isinstance(value, (int, float)):
        if isinstance(value, bool):
            raise TypeError(
                f"{name} must be a float or an array of shape () or (1,), got {value!r}"
            )
        return value
    shape = shape_of(value)
    if shape not in ((), (1,)):
        raise ValueError(
            f"{name} must be a float or an array of shape () or (1,), got shape {shape}"
        )
    check_float_array(xp, value, name)
    value = xp.reshape(value, ())
    if value.dtype != dtype:
        value = xp.astype(value, dtype)
    return value


def as_compute(xp: ModuleType, a: Any, dtype: Any) -> Any:
    """Cast an array to the compute dtype (no-op when it already has it); float16 arrays of
    autodiff libraries get a cast whose gradient saturates at float16's range."""
    if a is None or isinstance(a, (int, float)) or a.dtype == dtype:
        return a
    # (the standard has no float16: only the autodiff libraries are asked for theirs)
    if (is_torch(xp) or is_jax(xp) or is_tf(xp) or is_mlx(xp)) and a.dtype == xp.float16:
        return saturating_cast.upcast(xp, a, dtype)
    return xp.astype(a, dtype)


def cast_back(xp: ModuleType, y: Any, dtype: Any) -> Any:
    """Return ``y`` in the caller's dtype; float16 saturates rather than overflowing to inf."""
    if y.dtype == dtype:
        return y
    if "float16" in str(dtype):
        big = float(xp.finfo(dtype).max)
        y = clip(xp, y, min=-big, max=big)
        if is_numpy_scalar(y):
            # NumPy's clip of a 0-d array returns a scalar: keep returning an array
            y = sys.modules["numpy"].asarray(y)
    return xp.astype(y, dtype)


def int_tuple(value: Any, n: int, name: str, *, minimum: int = 0) -> tuple[int, ...]:
    """An int or a sequence of ``n`` ints, each >= ``minimum``."""
    value = plain(value)
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    # No annotated assignment here: AutoGraph (tf.function) cannot convert one in a branch.
    if isinstance(value, int):
        values = (value,) * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(
                f"{name} must be an int or a tuple of {n} ints (one per spatial dimension), "
                f"got {value!r}"
            )
    else:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    return values


def lowered_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """A case-insensitive string argument that must be one of ``choices``."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value.lower()
