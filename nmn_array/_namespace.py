"""Resolving the array namespace of the arguments, once per public function.

array-api-compat serves every library it supports; TensorFlow and MLX, which it does not
support, go through the in-house adapters in :mod:`nmn_array._tf_namespace` and
:mod:`nmn_array._mlx_namespace`. Frameworks are never
imported here to test for them: a library can only own an array if it is already imported.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import array_api_compat

_F = TypeVar("_F", bound=Callable[..., Any])


def is_tf_array(x: Any) -> bool:
    """True for a ``tf.Tensor`` or ``tf.Variable`` (eager or symbolic), without importing TF."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    return isinstance(x, (tf.Tensor, tf.Variable))


def is_mlx_array(x: Any) -> bool:
    """True for an ``mlx.core.array``, without importing MLX (an MLX array can only exist
    once ``mlx.core`` is imported)."""
    mx = sys.modules.get("mlx.core")
    return mx is not None and isinstance(x, mx.array)


def is_numpy_scalar(x: Any) -> bool:
    """True for a NumPy scalar (``np.float32(1e-3)``, ``np.int64(2)``, ``np.True_``), without
    importing NumPy. A 0-d ``ndarray`` is an array, not a scalar."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.generic)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (bool, int, float, complex)) or is_numpy_scalar(x)


def array_namespace(*args: Any) -> ModuleType:
    """The namespace shared by the array arguments (``None``, Python scalars and NumPy
    scalars are ignored, so ``epsilon=np.float32(1e-3)`` goes with any library's arrays).

    Raises
    ------
    TypeError
        If there is no array, if an argument is not a supported array, or if the arrays
        come from different libraries.

    Examples
    --------
    >>> import numpy as np
    >>> array_namespace(np.ones(2), None, 1.0).__name__
    'array_api_compat.numpy'
    """
    arrays = [a for a in args if a is not None and not _is_scalar(a)]
    if not arrays:
        raise TypeError(
            "expected at least one array argument, got only None, Python or NumPy scalars"
        )
    for is_own, adapter in ((is_tf_array, "_tf_namespace"), (is_mlx_array, "_mlx_namespace")):
        flags = [is_own(a) for a in arrays]
        if any(flags):
            if not all(flags):
                kinds = sorted(
                    {type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrays}
                )
                raise TypeError(f"arrays from different libraries cannot be mixed: {kinds}")
            return importlib.import_module("nmn_array." + adapter)
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrays})
        if len(kinds) > 1:
            raise TypeError(f"arrays from different libraries cannot be mixed: {kinds}") from exc
        raise TypeError(
            f"unsupported array type {kinds[0]}; expected a NumPy, PyTorch, JAX, TensorFlow, "
            "MLX, CuPy, Dask or array-api-strict array"
        ) from exc


def is_torch(xp: ModuleType) -> bool:
    """True if ``xp`` is PyTorch's namespace."""
    return array_api_compat.is_torch_namespace(xp)


def is_jax(xp: ModuleType) -> bool:
    """True if ``xp`` is JAX's namespace."""
    return array_api_compat.is_jax_namespace(xp)


def is_tf(xp: ModuleType) -> bool:
    """True if ``xp`` is the in-house TensorFlow adapter."""
    return getattr(xp, "__name__", "") == "nmn_array._tf_namespace"


def is_mlx(xp: ModuleType) -> bool:
    """True if ``xp`` is the in-house MLX adapter."""
    return getattr(xp, "__name__", "") == "nmn_array._mlx_namespace"


def clip(xp: ModuleType, x: Any, /, min: Any = None, max: Any = None) -> Any:
    """``xp.clip(x, min=min, max=max)``, with the dtype of ``x``; on Dask through Dask's own
    elementwise clip. array-api-compat's Dask ``clip`` broadcasts a scalar bound to one chunk
    of ``x``'s full shape, on which every block then depends: the threaded scheduler then
    keeps every block of a chunked computation in memory at once (a yat of 600,000 rows in
    blocks of 10,000 grew the process by 1.3 GB instead of 0.15 GB).

    >>> import numpy as np
    >>> clip(array_namespace(np.ones(2)), np.array([-1.0, 2.0]), min=0.0).tolist()
    [0.0, 2.0]
    """
    if array_api_compat.is_dask_namespace(xp):
        out = sys.modules["dask.array"].clip(x, min, max)
        return out if out.dtype == x.dtype else out.astype(x.dtype)
    return xp.clip(x, min=min, max=max)


def device_of(xp: ModuleType, x: Any) -> Any:
    """The device of ``x`` (``None`` for TensorFlow and MLX, whose adapters let the library
    place arrays itself, and for a JAX array spread over several devices).

    A sharded JAX array's ``device`` is its ``Sharding``, which fits only arrays of its own
    rank and divisible sizes (``P("batch")`` cannot place a scalar or an index vector). The
    arrays built from it (constants, indices, padding) are therefore left uncommitted:
    JAX places them next to the sharded operands they meet (docs/scaling.md).
    """
    if is_tf(xp) or is_mlx(xp):
        return None
    dev = array_api_compat.device(x)
    if is_jax(xp) and not isinstance(dev, sys.modules["jax"].Device):
        return None
    return dev


def device_kw(xp: ModuleType, x: Any) -> dict:
    """``{"device": device of x}`` for array creation, or ``{}`` where the library places
    arrays itself (TensorFlow, MLX)."""
    dev = device_of(xp, x)
    return {} if dev is None else {"device": dev}


def index_dtype(xp: ModuleType) -> Any:
    """The namespace's default integer dtype for indices and positions: int64, or int32
    where the library defaults to it (JAX without x64, which warns for int64 requests)."""
    info = getattr(xp, "__array_namespace_info__", None)
    return xp.int64 if info is None else info().default_dtypes()["indexing"]


def scalar_like(xp: ModuleType, value: float, like: Any) -> Any:
    """A 0-d array holding ``value`` with the dtype and device of ``like``."""
    return xp.asarray(value, dtype=like.dtype, **device_kw(xp, like))


def _torch_autocast_device(torch: ModuleType, args: tuple, kwargs: dict) -> str | None:
    """The device type of the first tensor argument if autocast is on for it, else None."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            device = a.device.type
            # is_autocast_enabled raises for device types autocast does not know (meta)
            if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
                return device
            return None
    return None


def float32_under_autocast(fn: _F) -> _F:
    """Run ``fn`` with ``torch.autocast`` disabled when it is active for its tensors' device.

    Autocast lowers every matmul and convolution to float16/bfloat16, whatever its inputs'
    dtype: the yat product's distances ``|x|^2 + |w|^2 - 2 x.w`` would then cancel in 8 bits
    of mantissa, against the dtype contract (docs/math.md, "Dtypes"; docs/mixed_precision.md).
    Torch itself keeps distance-like ops (``cdist``, norms) in float32 under autocast; the yat
    functions do the same: they compute in float32 (or the inputs' wider dtype) and return
    the input's dtype, as without autocast. The test is one C call when torch is imported
    and nothing when it is not (torch is never imported here); dynamo traces it, so
    ``torch.compile(fullgraph=True)`` keeps one graph.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and torch._C._is_any_autocast_enabled():
            device = _torch_autocast_device(torch, args, kwargs)
            if device is not None:
                with torch.autocast(device, enabled=False):
                    return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
