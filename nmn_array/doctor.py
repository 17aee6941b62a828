"""``nmn-array doctor``: what is installed, and does every backend compute the same yat?

Libraries are found with ``importlib.util.find_spec`` and versioned with
``importlib.metadata``, so listing imports nothing. The agreement check then imports each
installed array library (that is the point of it) and compares ``nmn_array.yat`` and
``nmn_array.yat_conv`` on identical inputs with NumPy in float64.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Array libraries nmn_array runs on: import name -> distribution names to try for a version.
ARRAY_LIBRARIES = {
    "numpy": ("numpy",),
    "array_api_strict": ("array-api-strict",),
    "torch": ("torch",),
    "jax": ("jax",),
    "tensorflow": ("tensorflow-cpu", "tensorflow", "tensorflow-macos", "tf-nightly"),
    "dask": ("dask",),
    "cupy": ("cupy", "cupy-cuda12x", "cupy-cuda11x", "cupy-cuda13x"),
}
#: Framework modules of nmn_array and the library each needs.
FRAMEWORK_LIBRARIES = {
    "torch": "torch",
    "nnx": "flax",
    "linen": "flax",
    "keras": "keras",
    "tf": "tensorflow",
}
OTHER = {
    "array_api_compat": ("array-api-compat",),
    "flax": ("flax",),
    "keras": ("keras",),
    "optax": ("optax",),
    "sklearn": ("scikit-learn",),
    "matplotlib": ("matplotlib",),
    "tqdm": ("tqdm",),
    "yaml": ("pyyaml", "PyYAML"),
    "hypothesis": ("hypothesis",),
    "nmn": ("nmn",),
}
#: Largest allowed difference from the float64 NumPy result, relative to its largest value.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def installed(module: str) -> bool:
    """True if ``module`` can be imported (it is not imported).

    Examples
    --------
    >>> installed("numpy"), installed("surely_not_a_module_name")
    (True, False)
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version(module: str, dists: tuple[str, ...] = ()) -> str | None:
    """The installed version of ``module`` from package metadata, or None if not installed.

    Examples
    --------
    >>> version("numpy", ("numpy",)) == np.__version__
    True
    """
    if not installed(module):
        return None
    for dist in dists or (module,):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "unknown version"


# --- the agreement check ---------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One comparison: backend, function, dtype, max relative difference, verdict."""

    backend: str
    function: str
    dtype: str
    difference: float | None
    status: str  # "OK", "FAIL" or "SKIP"
    note: str = ""


def _inputs() -> dict[str, np.ndarray]:
    """Fixed float64 inputs, well away from the near-collisions where the expanded distance
    loses digits, so any disagreement is a real one."""
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(4, 16)),
        "w": rng.normal(size=(3, 16)),
        "b": rng.normal(size=(3,)),
        "img": rng.normal(size=(2, 3, 7, 7)),
        "k": rng.normal(size=(4, 3, 3, 3)),
        "kb": rng.normal(size=(4,)),
    }


def _converters() -> dict[str, Callable[[], tuple[Callable, Callable, tuple[str, ...]]]]:
    """Per backend: a loader returning (to_backend(array, dtype), to_numpy, dtypes)."""

    def numpy():
        return (lambda a, dt: a.astype(dt)), np.asarray, ("float32", "float64")

    def strict():
        xp = importlib.import_module("array_api_strict")
        return (
            (lambda a, dt: xp.asarray(a.astype(dt))),
            np.from_dlpack,
            ("float32", "float64"),
        )

    def torch():
        t = importlib.import_module("torch")
        return (
            (lambda a, dt: t.from_numpy(a.astype(dt))),
            (lambda a: a.numpy()),
            (
                "float32",
                "float64",
            ),
        )

    def jax():
        j = importlib.import_module("jax")
        jnp = importlib.import_module("jax.numpy")
        # float64 only if the user enabled x64; the doctor does not flip global JAX config.
        dtypes = ("float32", "float64") if j.config.jax_enable_x64 else ("float32",)
        return (lambda a, dt: jnp.asarray(a.astype(dt))), np.asarray, dtypes

    def tensorflow():
        tf = importlib.import_module("tensorflow")
        return (
            (lambda a, dt: tf.constant(a.astype(dt))),
            (lambda a: a.numpy()),
            (
                "float32",
                "float64",
            ),
        )

    def dask():
        da = importlib.import_module("dask.array")
        return (
            (lambda a, dt: da.from_array(a.astype(dt), chunks=2)),
            (lambda a: np.asarray(a.compute())),
            ("float32", "float64"),
        )

    def cupy():
        cp = importlib.import_module("cupy")
        cp.cuda.runtime.getDeviceCount()  # raises without a GPU driver
        return (lambda a, dt: cp.asarray(a.astype(dt))), cp.asnumpy, ("float32", "float64")

    return {
        "numpy": numpy,
        "array_api_strict": strict,
        "torch": torch,
        "jax": jax,
        "tensorflow": tensorflow,
        "dask": dask,
        "cupy": cupy,
    }


def _functions() -> dict[str, Callable[..., Any]]:
    import nmn_array

    return {
        "yat": lambda a: nmn_array.yat(a["x"], a["w"], a["b"], alpha=1.5),
        "yat_conv": lambda a: nmn_array.yat_conv(a["img"], a["k"], a["kb"], padding=1, stride=2),
    }


def agreement(backends: list[str] | None = None) -> list[Check]:
    """Compare every installed backend (or ``backends``) with NumPy float64.

    Examples
    --------
    >>> [c.status for c in agreement(["numpy"])]
    ['OK', 'OK', 'OK', 'OK']
    """
    data = _inputs()
    funcs = _functions()
    reference = {name: np.asarray(f(data), dtype=np.float64) for name, f in funcs.items()}
    loaders = _converters()
    checks: list[Check] = []
    for backend in backends or list(ARRAY_LIBRARIES):
        if not installed(backend):
            continue
        try:
            to_backend, to_numpy, dtypes = loaders[backend]()
        except Exception as exc:  # noqa: BLE001 - e.g. CuPy without a GPU driver
            checks.append(Check(backend, "*", "*", None, "SKIP", _one_line(exc)))
            continue
        for dtype in dtypes:
            args = {k: to_backend(v, np.dtype(dtype)) for k, v in data.items()}
            for name, f in funcs.items():
                try:
                    got = np.asarray(to_numpy(f(args)), dtype=np.float64)
                except Exception as exc:  # noqa: BLE001 - any failure is a FAIL
                    checks.append(Check(backend, name, dtype, None, "FAIL", _one_line(exc)))
                    continue
                ref = reference[name]
                if got.shape != ref.shape:
                    note = f"shape {got.shape} != {ref.shape}"
                    checks.append(Check(backend, name, dtype, None, "FAIL", note))
                    continue
                diff = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
                ok = bool(np.isfinite(diff)) and diff <= TOLERANCE[dtype]
                checks.append(Check(backend, name, dtype, diff, "OK" if ok else "FAIL"))
    return checks


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# --- the command -----------------------------------------------------------------------


def run(check: bool = True, out: Callable[[str], Any] = print) -> int:
    """Print the report; return 1 if any backend disagrees with NumPy, else 0."""
    import nmn_array

    out(f"nmn_array {nmn_array.__version__} on Python {platform.python_version()} ({sys.platform})")
    out("\narray libraries")
    for module, dists in ARRAY_LIBRARIES.items():
        out(f"  {module:<18} {version(module, dists) or '-- not installed'}")
    out("\nframework modules (nmn_array.frameworks.<name>)")
    for name, lib in FRAMEWORK_LIBRARIES.items():
        lib_version = version(lib, ARRAY_LIBRARIES.get(lib) or OTHER.get(lib, ()))
        has_module = installed(f"nmn_array.frameworks.{name}")
        if lib_version is None:
            state = f'-- needs {lib}: pip install "nmn-array[{name}]"'
        elif not has_module:
            state = f"{lib} {lib_version}, but nmn_array.frameworks.{name} is missing"
        else:
            state = f"{lib} {lib_version}"
            if name == "keras":
                state += f" (backend: {os.environ.get('KERAS_BACKEND', 'from keras config')})"
        out(f"  {name:<18} {state}")
    out("\nother packages")
    for module, dists in OTHER.items():
        if module in ("flax", "keras"):
            continue  # shown with the frameworks
        out(f"  {module:<18} {version(module, dists) or '-- not installed'}")
    if not check:
        return 0

    out("\nagreement with NumPy float64 (max |difference| / max |NumPy result|)")
    checks = agreement()
    for c in checks:
        diff = "" if c.difference is None else f"{c.difference:9.2e}"
        line = f"  {c.backend:<18} {c.function:<9} {c.dtype:<8} {diff:>9}  {c.status}"
        out(line + (f"  ({c.note})" if c.note else ""))
    failed = [c for c in checks if c.status == "FAIL"]
    tol = ", ".join(f"{k} {v:g}" for k, v in TOLERANCE.items())
    if failed:
        out(f"\n{len(failed)} check(s) FAILED (tolerance {tol})")
        return 1
    out(f"\nall {sum(c.status == 'OK' for c in checks)} checks OK (tolerance {tol})")
    return 0
