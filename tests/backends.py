"""The array libraries the tests run on, behind one small interface.

Inputs are drawn once in NumPy float64 and converted with :meth:`Backend.from_numpy`, so
every backend sees identical data. ``NMN_ARRAY_BACKENDS`` (comma-separated) names the
backends that must run: one of them failing to import is an error, not a skip. Backends not
named there run if they import and are skipped otherwise.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

ALL = ("numpy", "array_api_strict", "torch", "jax", "tensorflow", "dask", "cupy", "mlx")
AUTODIFF = ("torch", "jax", "tensorflow", "mlx")
JIT = ("jax", "tensorflow", "mlx")
NATIVE_CONV = ("torch", "jax", "tensorflow")


def required() -> tuple[str, ...]:
    names = tuple(
        n.strip() for n in os.environ.get("NMN_ARRAY_BACKENDS", "").split(",") if n.strip()
    )
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        raise ValueError(f"NMN_ARRAY_BACKENDS names unknown backends {unknown}; known: {ALL}")
    return names


@dataclass(frozen=True)
class Backend:
    """One array library as the tests see it."""

    name: str

    def __str__(self) -> str:
        return self.name

    # -- availability -------------------------------------------------------------
    def module(self) -> Any:
        """Import the library, failing (required) or skipping (optional) when it cannot."""
        modname = {"dask": "dask.array", "mlx": "mlx.core"}.get(self.name, self.name)
        try:
            mod = importlib.import_module(modname)
        except Exception as exc:  # noqa: BLE001 - any import failure counts
            if self.name in required():
                raise RuntimeError(
                    f"backend {self.name!r} is required but failed to import: {exc}"
                ) from exc
            pytest.skip(f"{self.name} is not installed")
        if self.name == "cupy":
            try:
                mod.cuda.runtime.getDeviceCount()
            except Exception as exc:  # noqa: BLE001
                pytest.skip(f"cupy needs a GPU, none usable here: {exc}")
        if self.name == "jax":
            mod.config.update("jax_enable_x64", True)
        return mod

    @property
    def autodiff(self) -> bool:
        return self.name in AUTODIFF

    # -- conversion ---------------------------------------------------------------
    def from_numpy(self, a: Any, dtype: str | None = None) -> Any:
        """Convert a NumPy array (or None / Python scalar) to this backend, optionally casting."""
        if a is None or isinstance(a, (bool, int, float)):
            return a
        a = np.asarray(a)
        if dtype is not None and a.dtype.kind == "f":
            a = a.astype(dtype)
        mod = self.module()
        if self.name == "numpy":
            return a.copy()
        if self.name == "array_api_strict":
            return mod.asarray(a)
        if self.name == "torch":
            return mod.asarray(a.copy())
        if self.name == "jax":
            return mod.numpy.asarray(a)
        if self.name == "tensorflow":
            return mod.constant(a)
        if self.name == "dask":
            # chunk the batch axis so that the functions prove they work chunked
            chunks = tuple(max(1, (s + 1) // 2) if i == 0 else s for i, s in enumerate(a.shape))
            return mod.from_array(a, chunks=chunks or ())
        if self.name == "cupy":
            return mod.asarray(a)
        if self.name == "mlx":
            # explicit dtype: MLX would otherwise keep NumPy's dtype, which is what is
            # wanted, but says so; float64 arrays live on the CPU device only
            name = "bool_" if a.dtype == np.bool_ else a.dtype.name  # mx.bool_, like NumPy's
            return mod.array(a, dtype=getattr(mod, name))
        raise AssertionError(self.name)

    def to_numpy(self, a: Any) -> np.ndarray:
        if self.name == "dask":
            a = a.compute()
        if self.name == "array_api_strict":
            return np.asarray(a.__array__() if hasattr(a, "__array__") else a)
        if self.name == "torch":
            return a.detach().cpu().numpy()
        if self.name == "tensorflow":
            return a.numpy()
        if self.name == "cupy":
            return a.get()
        if self.name == "mlx":
            mx = self.module()
            # NumPy has no bfloat16: read it through float32, which holds it exactly
            return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)
        return np.asarray(a)

    def array_type(self) -> type:
        """The array class this backend's functions must return."""
        mod = self.module()
        if self.name == "numpy":
            return np.ndarray
        if self.name == "array_api_strict":
            return type(mod.asarray(0.0))
        attr = {
            "torch": "Tensor",
            "jax": "Array",
            "tensorflow": "Tensor",
            "dask": "Array",
            "cupy": "ndarray",
            "mlx": "array",
        }
        return getattr(mod, attr[self.name])

    # -- autodiff and compilation ---------------------------------------------------
    def grad(
        self, f: Callable[..., Any], args: Sequence[np.ndarray], *, jit: bool = False
    ) -> list[np.ndarray]:
        """Gradients of ``sum(f(*args))`` with respect to every arg, as NumPy arrays.

        ``jit=True`` compiles the gradient on JAX (eager JAX dispatches op by op, which is
        slow for convolutions); other backends ignore it. An argument the output does not
        depend on gets a zero gradient.
        """
        mod = self.module()
        if self.name == "torch":
            ts = [mod.tensor(np.asarray(a), requires_grad=True) for a in args]
            mod.sum(f(*ts)).backward()
            return [
                np.zeros(np.shape(a), np.asarray(a).dtype) if t.grad is None else t.grad.numpy()
                for a, t in zip(args, ts)
            ]
        if self.name == "jax":
            jnp = mod.numpy
            # jitted: eager JAX compiles every op separately, which costs seconds per call
            g = mod.jit(mod.grad(lambda *a: jnp.sum(f(*a)), argnums=tuple(range(len(args)))))
            if jit:
                g = mod.jit(g)
            return [np.asarray(x) for x in g(*[jnp.asarray(a) for a in args])]
        if self.name == "tensorflow":
            ts = [mod.Variable(np.asarray(a)) for a in args]
            with mod.GradientTape() as tape:
                total = mod.reduce_sum(f(*ts))
            return [
                np.zeros(np.shape(a), np.asarray(a).dtype) if g is None else g.numpy()
                for a, g in zip(args, tape.gradient(total, ts))
            ]
        if self.name == "mlx":
            # mx.grad differentiates a function of arrays; eager, like torch
            xs = [self.from_numpy(np.asarray(a)) for a in args]
            g = mod.grad(lambda *a: mod.sum(f(*a)), argnums=list(range(len(args))))(*xs)
            # a bare array, not a tuple, for a single argument
            return [self.to_numpy(x) for x in ([g] if isinstance(g, mod.array) else g)]
        raise ValueError(f"{self.name} has no autodiff")

    def jit(self, f: Callable[..., Any]) -> Callable[..., Any]:
        """``f`` compiled by the backend (jax.jit, tf.function, mx.compile)."""
        mod = self.module()
        if self.name == "mlx":
            return mod.compile(f)
        if self.name == "jax":
            return mod.jit(f)
        if self.name == "tensorflow":
            return mod.function(f)
        raise ValueError(f"{self.name} has no jit")


BACKENDS = tuple(Backend(n) for n in ALL)
