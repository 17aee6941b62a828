"""``nmn-array doctor``: what is installed, does it import, and does every backend compute yat?

Libraries are found with ``importlib.util.find_spec`` and versioned with
``importlib.metadata``, so the listing (``--no-check``) imports nothing. The check then

- imports each framework module ``nmn_array.frameworks.<name>`` whose library is installed
  (a framework is *available* only if that import succeeds; an installed library is not
  enough) and names the Keras backend in use;
- calls ``nmn_array.yat``, ``nmn_array.yat_conv`` and ``nmn_array.yat_attention`` on every
  installed array library, in each floating dtype it supports, and compares the result with
  a reference written here in plain Python floats (float64) that computes the squared
  distance directly as a sum of squared differences, so it shares no code and no rounding
  pattern with the library under test.

NumPy is not needed: on a core install (nmn_array and array-api-compat only) the listing
works and the check says that there is no array library to check.

Exit codes of :func:`run`: 0 everything checked agrees (or ``--no-check``); 1 a backend
disagrees with the reference or fails, or a framework module does not import although its
library is installed; 2 there is no array library to check.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import math
import os
import platform
import random
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Array libraries nmn_array runs on: import name -> distribution names to try for a version.
ARRAY_LIBRARIES = {
    "numpy": ("numpy",),
    "array_api_strict": ("array-api-strict",),
    "torch": ("torch",),
    "jax": ("jax",),
    "tensorflow": ("tensorflow-cpu", "tensorflow", "tensorflow-macos", "tf-nightly"),
    "dask": ("dask",),
    "cupy": ("cupy", "cupy-cuda12x", "cupy-cuda11x", "cupy-cuda13x"),
    "mlx": ("mlx",),
}
#: Framework modules of nmn_array and the library each needs.
FRAMEWORK_LIBRARIES = {
    "torch": "torch",
    "nnx": "flax",
    "linen": "flax",
    "keras": "keras",
    "tf": "tensorflow",
    "equinox": "equinox",
    "mlx": "mlx",
    "hamux": "hamux",
}
OTHER = {
    "array_api_compat": ("array-api-compat",),
    "flax": ("flax",),
    "keras": ("keras",),
    "equinox": ("equinox",),
    "hamux": ("hamux",),
    "optax": ("optax",),
    "sklearn": ("scikit-learn",),
    "matplotlib": ("matplotlib",),
    "tqdm": ("tqdm",),
    "yaml": ("pyyaml", "PyYAML"),
    "hypothesis": ("hypothesis",),
    "nmn": ("nmn",),
}
#: Machine epsilon of each checked dtype.
EPS = {"float32": 2.0**-23, "float64": 2.0**-52}
#: Largest allowed max |result - reference| / max |reference|, in units of the dtype's
#: epsilon: the inputs are well conditioned (no near-collisions, moderate scores), and the
#: longest reduction has 27 terms; the backends measured 1-7 ulps (float32) and 1-5 ulps
#: (float64) on this check when it was written.
TOLERANCE_ULPS = 64
TOLERANCE = {dtype: TOLERANCE_ULPS * eps for dtype, eps in EPS.items()}

#: Exit codes of :func:`run`.
EXIT_OK, EXIT_FAILED, EXIT_NOTHING_TO_CHECK = 0, 1, 2


def installed(module: str) -> bool:
    """True if ``module`` can be imported (it is not imported).

    Examples
    --------
    >>> installed("array_api_compat"), installed("surely_not_a_module_name")
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
    >>> version("array_api_compat", ("array-api-compat",)) == md.version("array-api-compat")
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# --- framework modules -----------------------------------------------------------------


@dataclass(frozen=True)
class FrameworkStatus:
    """What the doctor found for one framework module ``nmn_array.frameworks.<name>``.

    ``available`` is True only if the module imported, None if it was not tried (library
    missing, or ``--no-check``), False if the import failed.
    """

    name: str
    library: str
    library_version: str | None
    available: bool | None
    detail: str


def keras_backend() -> str:
    """The Keras backend in use: ``keras.backend.backend()`` once Keras is imported,
    otherwise what ``KERAS_BACKEND`` asks for (Keras is not imported here)."""
    keras = sys.modules.get("keras")
    if keras is not None:
        return f"{keras.backend.backend()} (keras.backend.backend())"
    env = os.environ.get("KERAS_BACKEND")
    return f"{env} (KERAS_BACKEND)" if env else "not set: Keras reads ~/.keras/keras.json"


def framework_status(name: str, try_import: bool) -> FrameworkStatus:
    """Look for the library of framework ``name`` and, if ``try_import``, import our module."""
    lib = FRAMEWORK_LIBRARIES[name]
    lib_version = version(lib, ARRAY_LIBRARIES.get(lib) or OTHER.get(lib, ()))
    if lib_version is None:
        hint = f'-- needs {lib}: pip install "nmn-array[{name}]"'
        return FrameworkStatus(name, lib, None, None, hint)
    if not try_import:
        detail = f"{lib} {lib_version} (not imported)"
        if name == "keras":
            detail += f"; backend {keras_backend()}"
        return FrameworkStatus(name, lib, lib_version, None, detail)
    try:
        importlib.import_module(f"nmn_array.frameworks.{name}")
    except Exception as exc:  # noqa: BLE001 - any failure makes the framework unavailable
        detail = f"{lib} {lib_version}, but nmn_array.frameworks.{name} does not import: "
        return FrameworkStatus(name, lib, lib_version, False, detail + _one_line(exc))
    detail = f"{lib} {lib_version}, available"
    if name == "keras":
        detail += f"; backend {keras_backend()}"
    return FrameworkStatus(name, lib, lib_version, True, detail)


# --- the float64 reference, in plain Python --------------------------------------------

Nested = list  # nested lists of Python floats


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b))


def _sqdist(a: list[float], b: list[float]) -> float:
    """The squared distance computed directly, never as |a|^2 + |b|^2 - 2 a.b."""
    return math.fsum((x - y) * (x - y) for x, y in zip(a, b))


def _yat_value(a: list[float], w: list[float], b: float, alpha: float, eps: float) -> float:
    return alpha * (_dot(a, w) + b) ** 2 / (_sqdist(a, w) + eps)


def reference_yat(x: Nested, w: Nested, b: list[float], alpha: float, eps: float) -> Nested:
    """``alpha (x_i.w_j + b_j)^2 / (sum_k (x_ik - w_jk)^2 + eps)`` for 2-D ``x`` and ``w``.

    Examples
    --------
    >>> reference_yat([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], 1.0, 1.0)
    [[1.0, 0.0]]
    """
    return [[_yat_value(xi, wj, bj, alpha, eps) for wj, bj in zip(w, b)] for xi in x]


def reference_yat_conv(
    img: Nested, k: Nested, kb: list[float], padding: int, stride: int, eps: float
) -> Nested:
    """Yat 2-D convolution, channels first, zero padding: every output is the yat value of
    the (zero-padded) input patch and the filter, the patch flattened channel by channel."""
    c, h, wd = len(img[0]), len(img[0][0]), len(img[0][0][0])
    kh, kw = len(k[0][0]), len(k[0][0][0])

    def at(n: int, ch: int, i: int, j: int) -> float:
        i, j = i - padding, j - padding
        return img[n][ch][i][j] if 0 <= i < h and 0 <= j < wd else 0.0

    out_h = (h + 2 * padding - kh) // stride + 1
    out_w = (wd + 2 * padding - kw) // stride + 1
    flat_k = [[v for ch in f for row in ch for v in row] for f in k]
    out = []
    for n in range(len(img)):
        per_filter = []
        for o, fk in enumerate(flat_k):
            rows = []
            for oi in range(out_h):
                row = []
                for oj in range(out_w):
                    patch = [
                        at(n, ch, oi * stride + di, oj * stride + dj)
                        for ch in range(c)
                        for di in range(kh)
                        for dj in range(kw)
                    ]
                    row.append(_yat_value(patch, fk, kb[o], 1.0, eps))
                rows.append(row)
            per_filter.append(rows)
        out.append(per_filter)
    return out


def reference_yat_attention(q: Nested, k: Nested, v: Nested, eps: float) -> Nested:
    """Yat attention on ``(B, H, L, d)``: scores ``(q.k)^2 / (|q - k|^2 + eps) / sqrt(d)``,
    softmax over the keys, times ``v``."""
    out = []
    for qb, kb_, vb in zip(q, k, v):
        heads = []
        for qh, kh, vh in zip(qb, kb_, vb):
            scale = 1.0 / math.sqrt(len(qh[0]))
            rows = []
            for qi in qh:
                s = [scale * _dot(qi, kj) ** 2 / (_sqdist(qi, kj) + eps) for kj in kh]
                top = max(s)
                e = [math.exp(t - top) for t in s]
                total = math.fsum(e)
                p = [t / total for t in e]
                rows.append(
                    [math.fsum(pj * vj[c] for pj, vj in zip(p, vh)) for c in range(len(vh[0]))]
                )
            heads.append(rows)
        out.append(heads)
    return out


def _normal(rng: random.Random, *shape: int) -> Nested:
    if len(shape) == 1:
        return [rng.gauss(0.0, 1.0) for _ in range(shape[0])]
    return [_normal(rng, *shape[1:]) for _ in range(shape[0])]


def _round_to(data: Any, dtype: str) -> Any:
    """``data`` with every float rounded to ``dtype``, so that the reference sees exactly the
    values the backend sees and the comparison measures the computation alone."""
    if isinstance(data, dict):
        return {key: _round_to(d, dtype) for key, d in data.items()}
    if isinstance(data, list):
        return [_round_to(d, dtype) for d in data]
    if dtype == "float32":
        return struct.unpack("f", struct.pack("f", data))[0]
    return data


def _flatten(data: Any) -> list[float]:
    if isinstance(data, (list, tuple)):
        return [v for d in data for v in _flatten(d)]
    return [float(data)]


def _inputs() -> dict[str, Nested]:
    """Fixed inputs, well away from the near-collisions where the expanded distance loses
    digits, so any disagreement is a real one."""
    rng = random.Random(0)
    return {
        "x": _normal(rng, 4, 16),
        "w": _normal(rng, 3, 16),
        "b": _normal(rng, 3),
        "img": _normal(rng, 2, 3, 7, 7),
        "k": _normal(rng, 4, 3, 3, 3),
        "kb": _normal(rng, 4),
        "q": _normal(rng, 1, 2, 3, 4),
        "kk": _normal(rng, 1, 2, 5, 4),
        "v": _normal(rng, 1, 2, 5, 3),
    }


EPSILON = 1e-5
ALPHA = 1.5

#: function name -> (call on backend arrays, reference on nested lists)
FUNCTIONS: dict[str, tuple[Callable[[dict], Any], Callable[[dict], Nested]]] = {
    "yat": (
        lambda a: _nmn().yat(a["x"], a["w"], a["b"], alpha=ALPHA, epsilon=EPSILON),
        lambda a: reference_yat(a["x"], a["w"], a["b"], ALPHA, EPSILON),
    ),
    "yat_conv": (
        lambda a: _nmn().yat_conv(a["img"], a["k"], a["kb"], padding=1, stride=2, epsilon=EPSILON),
        lambda a: reference_yat_conv(a["img"], a["k"], a["kb"], 1, 2, EPSILON),
    ),
    "attention": (
        lambda a: _nmn().yat_attention(a["q"], a["kk"], a["v"], epsilon=EPSILON),
        lambda a: reference_yat_attention(a["q"], a["kk"], a["v"], EPSILON),
    ),
}


def _nmn() -> Any:
    import nmn_array

    return nmn_array


# --- backends --------------------------------------------------------------------------

Converter = tuple[Callable[[Nested, str], Any], Callable[[Any], Any], tuple[str, ...]]


def _numpy() -> Converter:
    np = importlib.import_module("numpy")
    return (lambda a, dt: np.asarray(a, dtype=dt)), (lambda a: a.tolist()), ("float32", "float64")


def _strict() -> Converter:
    xp = importlib.import_module("array_api_strict")
    np = importlib.import_module("numpy")  # array_api_strict is built on NumPy
    return (
        (lambda a, dt: xp.asarray(a, dtype=getattr(xp, dt))),
        (lambda a: np.from_dlpack(a).tolist()),
        ("float32", "float64"),
    )


def _torch() -> Converter:
    t = importlib.import_module("torch")
    return (
        (lambda a, dt: t.tensor(a, dtype=getattr(t, dt))),
        (lambda a: a.detach().cpu().tolist()),
        ("float32", "float64"),
    )


def _jax() -> Converter:
    j = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    # float64 only if the user enabled x64; the doctor does not flip global JAX config.
    dtypes = ("float32", "float64") if j.config.jax_enable_x64 else ("float32",)
    return (lambda a, dt: jnp.asarray(a, dtype=dt)), (lambda a: a.tolist()), dtypes


def _tensorflow() -> Converter:
    tf = importlib.import_module("tensorflow")
    return (
        (lambda a, dt: tf.constant(a, dtype=dt)),
        (lambda a: a.numpy().tolist()),
        ("float32", "float64"),
    )


def _dask() -> Converter:
    da = importlib.import_module("dask.array")
    np = importlib.import_module("numpy")  # dask.array is built on NumPy
    return (
        (lambda a, dt: da.from_array(np.asarray(a, dtype=dt), chunks=2)),
        (lambda a: a.compute().tolist()),
        ("float32", "float64"),
    )


def _cupy() -> Converter:
    cp = importlib.import_module("cupy")
    cp.cuda.runtime.getDeviceCount()  # raises without a GPU driver
    return (
        (lambda a, dt: cp.asarray(a, dtype=dt)),
        (lambda a: a.get().tolist()),
        (
            "float32",
            "float64",
        ),
    )


def _mlx() -> Converter:
    mx = importlib.import_module("mlx.core")
    # float64 exists on MLX's CPU device only (the default device of the CPU build)
    dtypes = ("float32", "float64") if mx.default_device().type == mx.cpu else ("float32",)
    return (
        (lambda a, dt: mx.array(a, dtype=getattr(mx, dt))),
        (lambda a: a.tolist()),
        dtypes,
    )


#: Per array library: a loader returning (to_backend(nested, dtype), to_nested, dtypes).
CONVERTERS: dict[str, Callable[[], Converter]] = {
    "numpy": _numpy,
    "array_api_strict": _strict,
    "torch": _torch,
    "jax": _jax,
    "tensorflow": _tensorflow,
    "dask": _dask,
    "cupy": _cupy,
    "mlx": _mlx,
}


# --- the agreement check ---------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One comparison: backend, function, dtype, max relative error, verdict."""

    backend: str
    function: str
    dtype: str
    error: float | None
    status: str  # "OK", "FAIL" or "SKIP"
    note: str = ""


def relative_error(got: Any, ref: Any) -> float:
    """``max |got - ref| / max |ref|`` over all elements (inf if the shapes differ).

    Examples
    --------
    >>> relative_error([[1.0, 2.0]], [[1.0, 4.0]])
    0.5
    """
    g, r = _flatten(got), _flatten(ref)
    if len(g) != len(r):
        return math.inf
    scale = max((abs(v) for v in r), default=0.0) or 1.0
    worst = max((abs(a - b) for a, b in zip(g, r)), default=0.0)
    return worst / scale if math.isfinite(worst) else math.inf


def agreement(backends: list[str] | None = None) -> list[Check]:
    """Compare every installed array library (or ``backends``) with the float64 reference.

    Examples
    --------
    >>> [(c.function, c.status) for c in agreement(["numpy"]) if c.dtype == "float64"]
    [('yat', 'OK'), ('yat_conv', 'OK'), ('attention', 'OK')]
    """
    data = _inputs()
    references: dict[tuple[str, str], Nested] = {}
    checks: list[Check] = []
    for backend in backends or list(ARRAY_LIBRARIES):
        if not installed(backend):
            continue
        try:
            to_backend, to_nested, dtypes = CONVERTERS[backend]()
        except Exception as exc:  # noqa: BLE001 - e.g. CuPy without a GPU driver
            checks.append(Check(backend, "*", "*", None, "SKIP", _one_line(exc)))
            continue
        for dtype in dtypes:
            rounded = _round_to(data, dtype)
            args = {name: to_backend(value, dtype) for name, value in rounded.items()}
            for name, (call, reference) in FUNCTIONS.items():
                if (name, dtype) not in references:
                    references[name, dtype] = reference(rounded)
                try:
                    got = to_nested(call(args))
                except Exception as exc:  # noqa: BLE001 - any failure is a FAIL
                    checks.append(Check(backend, name, dtype, None, "FAIL", _one_line(exc)))
                    continue
                err = relative_error(got, references[name, dtype])
                ok = err <= TOLERANCE[dtype]
                checks.append(Check(backend, name, dtype, err, "OK" if ok else "FAIL"))
    return checks


# --- the command -----------------------------------------------------------------------


def run(
    check: bool = True, backends: list[str] | None = None, out: Callable[[str], Any] = print
) -> int:
    """Print the report and return the exit code (see the module docstring); ``backends``
    limits the agreement check to those array libraries."""
    import nmn_array

    out(f"nmn_array {nmn_array.__version__} on Python {platform.python_version()} ({sys.platform})")
    out("\narray libraries")
    for module, dists in ARRAY_LIBRARIES.items():
        out(f"  {module:<18} {version(module, dists) or '-- not installed'}")
    out("\nother packages")
    for module, dists in OTHER.items():
        if module in FRAMEWORK_LIBRARIES.values():
            continue  # shown with the frameworks
        out(f"  {module:<18} {version(module, dists) or '-- not installed'}")
    out("\nframework modules (nmn_array.frameworks.<name>)")
    frameworks = [framework_status(name, try_import=check) for name in FRAMEWORK_LIBRARIES]
    for fw in frameworks:
        out(f"  {fw.name:<18} {fw.detail}")
    if not check:
        return EXIT_OK

    broken = [fw for fw in frameworks if fw.available is False]
    tol = ", ".join(f"{k} {v:.1e}" for k, v in TOLERANCE.items())
    out(
        "\nagreement with a float64 reference computing the distance directly "
        f"(max |error| / max |reference|; tolerance {tol})"
    )
    checks = agreement(backends)
    if not checks:
        out(
            "  no array library to check: nmn_array needs one; "
            "install one with: pip install numpy (or torch, jax, tensorflow)"
        )
        return EXIT_FAILED if broken else EXIT_NOTHING_TO_CHECK
    for c in checks:
        err = "" if c.error is None else f"{c.error:9.2e}"
        line = f"  {c.backend:<18} {c.function:<9} {c.dtype:<8} {err:>9}  {c.status}"
        out(line + (f"  ({c.note})" if c.note else ""))
    failed = [c for c in checks if c.status == "FAIL"]
    if failed or broken:
        problems = [f"{len(failed)} check(s) FAILED"] if failed else []
        problems += [f"nmn_array.frameworks.{fw.name} does not import" for fw in broken]
        out("\n" + "; ".join(problems))
        return EXIT_FAILED
    out(f"\nall {sum(c.status == 'OK' for c in checks)} checks OK")
    return EXIT_OK
