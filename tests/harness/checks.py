"""The generic property checks. Each takes (spec, backend, dtype, case) and raises
AssertionError with a message naming the function, property, target and worst element.

Generated tests call :func:`run` with the target id (``"torch:float32"``); meta-tests call
the individual checks with a broken function swapped into the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nmn_array._spec import expr
from tests.backends import Backend
from tests.harness import calls, invariants, tolerance
from tests.harness.case import Case
from tests.harness.spec import Spec
from tests.harness.strategies import select_shape, shape_of

Check = Callable[[Spec, Backend, str, Case], None]


def _what(spec: Spec, prop: str, b: Backend | str, dtype: str) -> str:
    return f"{spec.name} {prop} on {b}:{dtype}"


def output_shape(spec: Spec, case: Case) -> tuple[int, ...]:
    """The output shape the spec's formula gives for ``case``."""
    env = case.env()
    return shape_of(select_shape(spec.data["output"], env), env)


def matches_reference(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Output type, dtype and shape as the spec says; values within tolerance of the naive
    float64 reference computed from the dtype-rounded inputs."""
    got = calls.run(spec, b, case, dtype, expect_shape=output_shape(spec, case))
    # float16 / bfloat16: the reference clipped to the format's range (a saturating cast)
    want, allowed = tolerance.saturated(
        calls.reference(spec, case, dtype), tolerance.allowed(spec, case, dtype), dtype
    )
    tolerance.assert_close(got, want, allowed, _what(spec, "matches_reference", b, dtype))


def cross_backend(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Same output as the NumPy backend on identical inputs (star topology)."""
    base = calls.baseline(spec, case, dtype)
    got = calls.run(spec, b, case, dtype, expect_shape=output_shape(spec, case))
    tolerance.assert_close(
        got,
        base,
        2.0 * tolerance.allowed(spec, case, dtype),
        _what(spec, "cross_backend", b, dtype) + " vs numpy",
    )


def portable_equals_native(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """The backend's own kernel and the standard-only path (``_native=False``) agree."""
    native = calls.run(spec, b, case, dtype)
    portable = calls.run(spec, b, case, dtype, extra={"_native": False})
    tolerance.assert_close(
        portable,
        native,
        2.0 * tolerance.allowed(spec, case, dtype),
        _what(spec, "portable_equals_native", b, dtype) + " (portable vs native)",
    )


def _axis(text: Any, case: Case) -> int:
    return int(expr.evaluate(text, case.env()))


def _take(a: np.ndarray, index: Any, axis: int) -> np.ndarray:
    sl = [slice(None)] * a.ndim
    sl[axis] = index
    return a[tuple(sl)]


def batch_consistency(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``f(batch)[i] == f(batch[i])``: batch entries are computed independently."""
    opts = spec.options("batch_consistency")
    full = calls.run(spec, b, case, dtype)
    out_axis = _axis(opts.get("output_axis", 0), case)
    assert full.ndim > (out_axis if out_axis >= 0 else -out_axis - 1), (
        f"{spec}: batch_consistency output_axis {out_axis} does not exist in shape "
        f"{full.shape}; restrict the property's dims so the batch axis is there"
    )
    n = full.shape[out_axis]
    allowed = 2.0 * np.broadcast_to(tolerance.allowed(spec, case, dtype), full.shape)
    for i in sorted({0, n - 1, n // 2}):
        arrays, sliced = {}, []
        for name, ax in opts["arrays"].items():
            a = case.arrays.get(name)
            axis = _axis(ax, case)
            if a is None or a.ndim == 0 or a.shape[axis] != n:
                continue  # absent, or broadcast along the batch axis
            arrays[name] = _take(a, slice(i, i + 1), axis)
            sliced.append(name)
        assert sliced, f"{spec}: batch_consistency sliced no array (batch size {n})"
        got = calls.run(spec, b, case.replace(arrays=arrays), dtype)
        tolerance.assert_close(
            got,
            _take(full, slice(i, i + 1), out_axis),
            _take(allowed, slice(i, i + 1), out_axis),
            _what(spec, "batch_consistency", b, dtype) + f" (batch entry {i} of {n})",
        )


def output_slicing(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Units are independent: computing the first ``k`` units (or the first group) alone
    gives the first ``k`` outputs."""
    opts = spec.options("output_slicing")
    full = calls.run(spec, b, case, dtype)
    out_axis = _axis(opts.get("output_axis", -1), case)
    n = full.shape[out_axis]
    groups_opt = opts.get("groups")
    n_groups = int(calls.param(case, groups_opt["param"], 1)) if groups_opt else 1
    arrays, params = {}, {}
    if n_groups > 1:
        # keep the first group: a fraction 1/groups of every grouped axis
        for name, ax in groups_opt["arrays"].items():
            a = case.arrays.get(name)
            if a is None or a.ndim == 0:
                continue
            axis = _axis(ax, case)
            arrays[name] = _take(a, slice(0, a.shape[axis] // n_groups), axis)
        params[groups_opt["param"]] = 1
        keep = n // n_groups
    else:
        if n < 2:
            return  # a single unit: nothing to slice
        keep = (n + 1) // 2
        for name, ax in opts["units"].items():
            a = case.arrays.get(name)
            if a is None or a.ndim == 0:
                continue
            axis = _axis(ax, case)
            if a.shape[axis] == n:
                arrays[name] = _take(a, slice(0, keep), axis)
        assert arrays, f"{spec}: output_slicing sliced no array ({n} units)"
    got = calls.run(spec, b, case.replace(arrays=arrays, params=params), dtype)
    allowed = 2.0 * np.broadcast_to(tolerance.allowed(spec, case, dtype), full.shape)
    tolerance.assert_close(
        got,
        _take(full, slice(0, keep), out_axis),
        _take(allowed, slice(0, keep), out_axis),
        _what(spec, "output_slicing", b, dtype) + f" (first {keep} of {n} units)",
    )


def jit_equals_eager(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``jax.jit`` / ``tf.function`` of the whole call equals the eager call."""
    jitted = calls.run(spec, b, case, dtype, jit=True)
    eager = calls.run(spec, b, case, dtype, jit=False)
    tolerance.assert_close(
        jitted,
        eager,
        2.0 * tolerance.allowed(spec, case, dtype),
        _what(spec, "jit_equals_eager", b, dtype) + " (compiled vs eager)",
    )


def _wrt(spec: Spec, prop: str, case: Case) -> list[str]:
    names = spec.options(prop).get("wrt") or [
        n for n, a in spec.arrays.items() if a.get("dtype", "float") == "float"
    ]
    return [n for n in names if case.arrays.get(n) is not None]


def gradients(
    spec: Spec,
    b: Backend,
    case: Case,
    dtype: str,
    names: list[str],
    *,
    extra: dict | None = None,
) -> list[np.ndarray]:
    """Gradients of ``sum(f)`` on ``b`` with respect to the arrays ``names`` (``extra``:
    more keyword arguments of the call)."""

    def f(*wrt: Any) -> Any:
        replaced = {**(extra or {}), **dict(zip(names, wrt))}
        return calls.call(
            spec,
            b,
            case,
            dtype,
            jit=False,
            extra=replaced,
        )

    args = [np.asarray(case.arrays[n]).astype(dtype) for n in names]
    return b.grad(f, args, jit=b.name == "jax")


def grad_finite(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Gradients of ``sum(f)`` are finite everywhere, including at ``x == w`` and ``x == 0``."""
    names = _wrt(spec, "grad_finite", case)
    for name, g in zip(names, gradients(spec, b, case, dtype, names)):
        assert g.shape == case.arrays[name].shape, (
            f"{_what(spec, 'grad_finite', b, dtype)}: d/d{name} has shape {g.shape}, "
            f"expected {case.arrays[name].shape}"
        )
        bad = ~np.isfinite(g)
        assert not bad.any(), (
            f"{_what(spec, 'grad_finite', b, dtype)}: d/d{name} has {int(bad.sum())} "
            f"non-finite entries (first at {tuple(int(i) for i in np.argwhere(bad)[0])}); "
            f"boundary={case.boundary!r}"
        )


def grad_matches_finite_differences(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """float64 gradients equal central finite differences of the naive reference."""
    from tests.reference import numerical_grad

    names = _wrt(spec, "grad_matches_finite_differences", case)
    grads = gradients(spec, b, case, dtype, names)

    def ref(*arrays: Any) -> np.ndarray:
        positional, keyword = calls.plain_call(*calls.layout(spec, case, dict(zip(names, arrays))))
        return spec.ref(*positional, **keyword)

    fd = numerical_grad(ref, [case.arrays[n] for n in names])
    tol = spec.tolerances.get("grad", {"rtol": 1e-5, "atol": 1e-6})
    rtol, atol = float(tol["rtol"]), float(tol.get("atol", 0.0))
    for name, g, g_fd in zip(names, grads, fd):
        scale = float(np.max(np.abs(g_fd))) if g_fd.size else 0.0
        tolerance.assert_close(
            g,
            g_fd,
            rtol * (np.abs(g_fd) + scale) + atol * (1.0 + scale),
            _what(spec, "grad_matches_finite_differences", b, dtype) + f" d/d{name}",
        )


def _low_precision_gradients(
    spec: Spec, b: Backend, case: Case, dtype: str, names: list[str]
) -> list[tuple[np.ndarray, str]]:
    """Gradients of ``sum(f)`` with respect to ``names`` held in ``dtype`` itself (float16,
    bfloat16), each with the dtype the backend returned it in."""
    mod = b.module()
    leaves = [calls.to_backend(b, np.asarray(case.arrays[n]), dtype) for n in names]

    def f(*wrt: Any) -> Any:
        return calls.call(spec, b, case, dtype, jit=False, extra=dict(zip(names, wrt)))

    if b.name == "torch":
        leaves = [t.requires_grad_() for t in leaves]
        mod.sum(f(*leaves)).backward()
        grads = [t.grad if t.grad is not None else mod.zeros_like(t) for t in leaves]
    elif b.name == "jax":
        jnp = mod.numpy
        g = mod.jit(mod.grad(lambda *a: jnp.sum(f(*a)), argnums=tuple(range(len(names)))))
        grads = list(g(*leaves))
    elif b.name == "tensorflow":
        variables = [mod.Variable(t) for t in leaves]
        with mod.GradientTape() as tape:
            total = mod.reduce_sum(f(*variables))
        grads = [
            mod.zeros_like(v) if g is None else mod.convert_to_tensor(g)
            for v, g in zip(variables, tape.gradient(total, variables))
        ]
    elif b.name == "mlx":
        g = mod.grad(lambda *a: mod.sum(f(*a)), argnums=list(range(len(names))))(*leaves)
        # mx.grad returns a bare array, not a tuple, for a single argument
        grads = [g] if isinstance(g, mod.array) else list(g)
    else:
        raise AssertionError(f"{b.name} has no autodiff")
    return [(calls.to_float64(b, g), calls.output_dtype(b, g)) for g in grads]


def large_inputs_finite(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """float16 / bfloat16 inputs of magnitude up to 1e3 give finite outputs of the input
    dtype (squares and distances are computed in float32, the cast back saturates), and
    finite gradients of the input dtype on autodiff backends."""
    what = _what(spec, "large_inputs_finite", b, dtype)
    got = calls.run(spec, b, case, dtype, expect_shape=output_shape(spec, case))
    bad = ~np.isfinite(got)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        largest = max(
            (float(np.max(np.abs(a), initial=0.0)) for a in case.arrays.values() if a is not None),
            default=0.0,
        )
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.size} outputs are not finite (first "
            f"{got[first]!r} at {first}); largest |input| {largest:.3g}"
        )
    if spec.data["output"]["dtype"] != "bool":
        # where the float64 reference is beyond the format's range (by more than the
        # tolerance), the saturating cast must give exactly +-max
        want, allowed = tolerance.saturated(
            calls.reference(spec, case, dtype), tolerance.allowed(spec, case, dtype), dtype
        )
        exact = allowed == 0.0
        tolerance.assert_close(
            np.where(exact, got, want), want, np.where(exact, 0.0, np.inf), what + " (saturation)"
        )
    if not spec.data["backends"][b.name].get("autodiff"):
        return
    names = _wrt(spec, "large_inputs_finite", case)
    for name, (g, g_dtype) in zip(names, _low_precision_gradients(spec, b, case, dtype, names)):
        assert g_dtype == dtype, f"{what}: d/d{name} has dtype {g_dtype}, the input {dtype}"
        assert g.shape == case.arrays[name].shape, (
            f"{what}: d/d{name} has shape {g.shape}, expected {case.arrays[name].shape}"
        )
        bad = ~np.isfinite(g)
        assert not bad.any(), (
            f"{what}: d/d{name} has {int(bad.sum())} non-finite entries (first at "
            f"{tuple(int(i) for i in np.argwhere(bad)[0])})"
        )


CHECKS: dict[str, Check] = {
    "matches_reference": matches_reference,
    "cross_backend": cross_backend,
    "portable_equals_native": portable_equals_native,
    "batch_consistency": batch_consistency,
    "output_slicing": output_slicing,
    "jit_equals_eager": jit_equals_eager,
    "grad_finite": grad_finite,
    "grad_matches_finite_differences": grad_matches_finite_differences,
    "large_inputs_finite": large_inputs_finite,
    **invariants.INVARIANTS,
}


def run(spec: Spec, prop: str, target: str, case: Case) -> None:
    """Entry point of every generated test: check ``prop`` of ``spec`` on ``target``."""
    name, dtype = target.split(":")
    if prop == "module_equals_function":
        from tests.harness import modules

        modules.module_equals_function(spec, name, dtype, case)
        return
    CHECKS[prop](spec, calls.backend(name), dtype, case)
