"""Calling the function under test on a backend, and the float64 reference, for one case.

JAX runs under ``jax.jit`` of the whole call (eager JAX dispatches op by op and is slow);
TensorFlow runs eagerly; ``jit_equals_eager`` compares the two modes explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tests.backends import Backend
from tests.harness.case import ArrayParam, Case, plain
from tests.harness.spec import Spec, resolve

#: jitted JAX callables, keyed by (function, static arguments, argument layout)
_JIT_CACHE: dict[Any, Callable[..., Any]] = {}


def backend(name: str) -> Backend:
    """The Backend object of ``name``; imports it (error if required, skip if optional)."""
    b = Backend(name)
    b.module()
    return b


def _passed_params(spec: Spec) -> list[str]:
    return [n for n, p in spec.params.items() if p.get("pass", True)]


def layout(spec: Spec, case: Case, extra: Mapping[str, Any] | None = None) -> tuple[list, dict]:
    """The call ``fn(*positional, **keyword)`` with NumPy / Python values (backend-free)."""
    values: dict[str, Any] = {}
    for name in spec.arrays:
        values[name] = case.arrays.get(name)
    for name in _passed_params(spec):
        if name in case.params:
            values[name] = case.params[name]
    values.update(extra or {})
    for name, param in spec.params.items():
        if param.get("type") == "object" and isinstance(values.get(name), str):
            values[name] = resolve(values[name])
    for name, array in spec.arrays.items():
        pack = array.get("pack")
        if pack is not None:
            values.setdefault(pack, {})[name] = values.pop(name)
    positional = [values.pop(n) if n in values else None for n in spec.call]
    keyword = {k: v for k, v in values.items() if not (k in spec.arrays and v is None)}
    return positional, keyword


def _is_array(v: Any) -> bool:
    return isinstance(v, (np.ndarray, ArrayParam))


#: float16 and bfloat16: the library computes them in float32 and casts back (saturating).
LOW_PRECISION = ("float16", "bfloat16")


def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype of ``dtype`` (bfloat16 is ml_dtypes', which JAX and TF share)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def compute_dtype(dtype: str) -> str:
    """The dtype the library computes ``dtype`` inputs in (docs/math.md, "Dtypes")."""
    return "float32" if dtype in LOW_PRECISION else dtype


def finfo(dtype: str) -> Any:
    """``np.finfo`` of ``dtype``, bfloat16 included."""
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(ml_dtypes.bfloat16)
    return np.finfo(dtype)


def to_backend(b: Backend, v: Any, dtype: str) -> Any:
    """A NumPy float array (or a Python scalar) on ``b`` in ``dtype``.

    bfloat16 goes through float32 on torch, TensorFlow and MLX (none reads ml_dtypes' NumPy
    bfloat16); the values are rounded to bfloat16 first, so the last cast is exact.
    """
    if dtype != "bfloat16" or not isinstance(v, np.ndarray) or v.dtype.kind != "f":
        return b.from_numpy(v, dtype)
    exact = v.astype(numpy_dtype(dtype)).astype(np.float32)
    if b.name == "torch":
        return b.from_numpy(exact).to(b.module().bfloat16)
    if b.name == "tensorflow":
        tf = b.module()
        return tf.cast(b.from_numpy(exact), tf.bfloat16)
    if b.name == "jax":
        return b.module().numpy.asarray(exact.astype(numpy_dtype(dtype)))
    if b.name == "mlx":
        return b.from_numpy(exact).astype(b.module().bfloat16)
    raise AssertionError(f"backend {b.name!r} has no bfloat16 (schema.BACKEND_DTYPES)")


def to_float64(b: Backend, out: Any) -> np.ndarray:
    """A backend array as NumPy float64 (bfloat16 read through float32, exactly)."""
    if b.name == "torch" and out.dtype == b.module().bfloat16:
        out = out.float()
    elif b.name == "tensorflow" and out.dtype.name == "bfloat16":
        out = b.module().cast(out, b.module().float32)
    elif b.name == "mlx" and out.dtype == b.module().bfloat16:
        out = out.astype(b.module().float32)
    return np.asarray(b.to_numpy(out), dtype=np.float64)


def _to_backend(b: Backend, v: Any, dtype: str) -> Any:
    if isinstance(v, ArrayParam):
        return to_backend(b, np.full(v.shape, v.value), dtype)
    return to_backend(b, v, dtype)


def call(
    spec: Spec,
    b: Backend,
    case: Case,
    dtype: str,
    *,
    fn: Callable[..., Any] | None = None,
    jit: bool | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """``fn`` on backend ``b`` with the case's inputs cast to ``dtype``; returns the raw output.

    Arrays (and array-form parameters) are the traced arguments; everything else is static.
    """
    fn = fn or spec.fn
    positional, keyword = layout(spec, case, extra)
    if "namespace" in spec.data:
        keyword[spec.data["namespace"]] = namespace(b, dtype)
    dynamic: list[Any] = []
    slots_pos: list[tuple[str, Any]] = []
    slots_kw: list[tuple[str, str, Any]] = []

    def slot(v: Any) -> tuple[str, Any]:
        if isinstance(v, dict):  # a pack: each of its arrays is traced
            return ("pack", {key: slot(item) for key, item in v.items()})
        if _is_array(v):
            dynamic.append(_to_backend(b, v, dtype))
            return ("dyn", len(dynamic) - 1)
        return ("static", v)

    def unslot(dyn: tuple, kind: str, v: Any) -> Any:
        if kind == "pack":
            return {key: unslot(dyn, *item) for key, item in v.items()}
        return dyn[v] if kind == "dyn" else v

    for v in positional:
        slots_pos.append(slot(v))
    for k, v in keyword.items():
        slots_kw.append((k, *slot(v)))

    def bound(*dyn: Any) -> Any:
        args = [unslot(dyn, kind, v) for kind, v in slots_pos]
        kwargs = {k: unslot(dyn, kind, v) for k, kind, v in slots_kw}
        return fn(*args, **kwargs)

    if jit is None:
        jit = b.name == "jax"
    if jit and b.name == "jax":
        key = (fn, repr(slots_pos), repr(slots_kw))
        compiled = _JIT_CACHE.get(key)
        if compiled is None:
            compiled = _JIT_CACHE[key] = b.jit(bound)
        return compiled(*dynamic)
    if jit:
        return b.jit(bound)(*dynamic)
    return bound(*dynamic)


def namespace(b: Backend, dtype: str) -> Any:
    """The array namespace of ``b`` as nmn_array resolves it from the backend's arrays
    (array-api-compat's, or nmn_array's TensorFlow adapter)."""
    from nmn_array._namespace import array_namespace

    return array_namespace(to_backend(b, np.zeros((1,)), dtype))


def output_dtype(b: Backend, out: Any) -> str:
    """The name of ``out``'s dtype as the backend holds it (``float16``, ``bfloat16``, ...)."""
    if b.name == "torch":
        return str(out.dtype).removeprefix("torch.")
    if b.name == "tensorflow":
        return out.dtype.name
    if b.name == "jax":
        return np.dtype(out.dtype).name
    if b.name == "mlx":
        return str(out.dtype).removeprefix("mlx.core.")
    return np.asarray(b.to_numpy(out)).dtype.name


def run(
    spec: Spec,
    b: Backend,
    case: Case,
    dtype: str,
    *,
    fn: Callable[..., Any] | None = None,
    jit: bool | None = None,
    extra: Mapping[str, Any] | None = None,
    expect_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """:func:`call`, checked for array type and dtype (and shape, when given), as float64."""
    out = call(spec, b, case, dtype, fn=fn, jit=jit, extra=extra)
    kind = b.array_type()
    assert isinstance(out, kind), (
        f"{spec.name} on {b.name}: returned {type(out).__module__}.{type(out).__name__}, "
        f"expected {kind.__module__}.{kind.__name__} (array type in == array type out)"
    )
    got_dtype = output_dtype(b, out)
    if spec.data["output"]["dtype"] == "bool":
        assert got_dtype == "bool", f"{spec.name} on {b.name}: output dtype {got_dtype}, not bool"
    else:
        assert got_dtype == dtype, (
            f"{spec.name} on {b.name}: output dtype {got_dtype}, input {dtype}"
        )
    value = to_float64(b, out)
    if expect_shape is not None:
        assert value.shape == tuple(expect_shape), (
            f"{spec.name} on {b.name}: output shape {value.shape}, the spec says {expect_shape}"
        )
    return value


def baseline(spec: Spec, case: Case, dtype: str) -> np.ndarray:
    """The NumPy backend's output (cached: every target of a test compares with it)."""
    key = ("numpy", spec.name, spec.fn, case.digest(), dtype)
    value = SHARED.get(key)
    if value is None:
        value = SHARED.put(key, run(spec, backend("numpy"), case, dtype))
    return value


def rounded(value: Any, dtype: str) -> Any:
    """What a backend sees of an input, back in float64: float arrays (and array-form
    parameters) rounded to ``dtype``; Python floats to the compute dtype, which the library
    converts them to (float32 for float16 and bfloat16 inputs)."""
    if isinstance(value, ArrayParam):
        return float(np.asarray(value.value).astype(numpy_dtype(dtype)).astype(np.float64))
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(numpy_dtype(dtype)).astype(np.float64)
    if isinstance(value, float):
        return float(np.asarray(value, dtype=compute_dtype(dtype)))
    if isinstance(value, dict):
        return {key: rounded(item, dtype) for key, item in value.items()}
    return value


def reference(
    spec: Spec, case: Case, dtype: str, extra: Mapping[str, Any] | None = None
) -> np.ndarray:
    """The naive float64 reference on the dtype-rounded inputs (cached on the case)."""
    return evaluate(spec, case, dtype, spec.ref, extra)


def evaluate(
    spec: Spec,
    case: Case,
    dtype: str,
    fn: Callable[..., Any],
    extra: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """``fn`` (a float64 NumPy function with the call's signature) on the dtype-rounded
    inputs, cached on the case."""
    key = ("ref", spec.name, fn, case.digest(), dtype, repr(sorted((extra or {}).items())))
    value = SHARED.get(key)
    if value is None:
        positional, keyword = layout(spec, case, extra)
        args = [rounded(v, dtype) for v in positional]
        kwargs = {k: rounded(v, dtype) for k, v in keyword.items()}
        value = SHARED.put(key, np.asarray(fn(*args, **kwargs), dtype=np.float64))
    return value


class _SharedCache:
    """A bounded process-wide cache of reference-side results, keyed by case content."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.data: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        return self.data.get(key)

    def put(self, key: Any, value: Any) -> Any:
        if len(self.data) >= self.size:
            self.data.pop(next(iter(self.data)))
        if isinstance(value, np.ndarray):
            value.setflags(write=False)  # shared between tests: nobody may modify it
        self.data[key] = value
        return value


SHARED = _SharedCache()


def plain_call(positional: list, keyword: dict) -> tuple[list, dict]:
    """Array-form parameters as Python floats (for the reference, which takes floats)."""
    return [plain(v) for v in positional], {k: plain(v) for k, v in keyword.items()}


def param(case: Case, name: str, default: Any = None) -> Any:
    """A parameter's plain value."""
    return plain(case.params.get(name, default))
