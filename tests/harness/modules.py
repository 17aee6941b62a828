"""``module_equals_function``: every framework module listed in a layer spec, with its
weights set from the drawn arrays through the spec's layout expressions, equals the pure
function called on the same backend with the same weights.

A module the spec lists must exist: a missing class fails the test (it does not skip).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from nmn_array._spec import expr
from nmn_array._spec.schema import RESULT_NAME
from tests.backends import Backend
from tests.harness import calls, tolerance
from tests.harness.case import Case, plain
from tests.harness.spec import Spec, resolve

#: Array helpers that weight-layout and argument expressions may call.
LAYOUT_FUNCTIONS: dict[str, Any] = {
    "transpose": lambda a: np.ascontiguousarray(np.asarray(a).T),
    "permute": lambda a, axes: np.ascontiguousarray(np.transpose(a, axes)),
    "flip": lambda a, axes: np.ascontiguousarray(np.flip(a, axes)),
    "reshape": lambda a, shape: np.reshape(a, shape),
    "ravel": lambda a: np.ravel(a),
    "moveaxis": lambda a, src, dst: np.ascontiguousarray(np.moveaxis(a, src, dst)),
    "swap_last": lambda a: np.ascontiguousarray(np.swapaxes(a, -1, -2)),
    "as_float": float,
    # (O, I, *k) -> (*k, I, O): the channels-last kernel layout of flax, keras and tf
    "hwio": lambda a: np.ascontiguousarray(np.moveaxis(np.moveaxis(a, 0, -1), 0, -2)),
    # reverse every spatial axis of a channels-last kernel (*k, I, O)
    "flip_spatial": lambda a: np.ascontiguousarray(np.flip(a, tuple(range(np.ndim(a) - 2)))),
    # the boolean attention mask (True = attend) a module gets for a drawn mask and causal
    "attention_mask": lambda mask, causal, length: _attention_mask(mask, causal, length),
    # a mask with a leading batch axis of ``batch``, for modules jax.vmap maps (Equinox)
    "batched": lambda mask, batch: _batched(mask, batch),
}


def _batched(mask: Any, batch: int) -> np.ndarray | None:
    """``mask`` ``(L, L)`` or ``(B, H or 1, L, L)`` as ``(batch, H or 1, L, L)``; None stays."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None, None]
    return np.ascontiguousarray(np.broadcast_to(mask, (batch, *mask.shape[1:])))


def _attention_mask(mask: Any, causal: bool, length: int) -> np.ndarray | None:
    """``mask`` (or all True) and, if ``causal``, the lower triangle of ``(length, length)``:
    the explicit mask of a self-attention module without a causal flag. None if neither."""
    if mask is None and not causal:
        return None
    visible = np.ones((length, length), bool) if mask is None else np.asarray(mask, bool)
    return np.logical_and(visible, np.tril(np.ones((length, length), bool))) if causal else visible


def _namespace(*arrays: Any) -> Any:
    from nmn_array._namespace import array_namespace

    return array_namespace(*arrays)


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in a.shape)


def _linear(x: Any, w: Any, b: Any = None) -> Any:
    """``x @ w + b`` with ``w (in, out)``: a projection computed on the module's backend."""
    y = _namespace(x, w).matmul(x, w)
    return y if b is None else y + b


def _split_heads(x: Any, heads: int) -> Any:
    """``(..., L, H * d) -> (..., H, L, d)``."""
    xp = _namespace(x)
    *lead, length, width = _shape(x)
    y = xp.reshape(x, (*lead, length, heads, width // heads))
    n = len(lead)
    return xp.permute_dims(y, (*range(n), n + 1, n, n + 2))


def _merge_heads(x: Any) -> Any:
    """``(..., H, L, d) -> (..., L, H * d)``."""
    xp = _namespace(x)
    *lead, heads, length, depth = _shape(x)
    n = len(lead)
    y = xp.permute_dims(x, (*range(n), n + 1, n, n + 2))
    return xp.reshape(y, (*lead, length, heads * depth))


def _rotary(x: Any, theta: float) -> Any:
    """RoPE at positions ``0..L-1`` (the pure function, as the rotary modules call it)."""
    import nmn_array

    return nmn_array.rotary_embedding(x, theta=theta)


def _zero_keyless(y: Any, mask: Any, causal: bool) -> Any:
    """Zero ``y (B, L, E)`` at the queries that see no key in any head under ``mask``
    (``(B, H or 1, L, L)``, True = attend) and ``causal``: the attention modules' rule (nmn
    0.3.5), applied after the output projection's bias."""
    if mask is None:
        return y  # causal alone leaves every query its own key
    visible = _attention_mask(np.asarray(mask), causal, _shape(y)[-2])
    has_key = np.any(visible, axis=(1, 3))[..., None]  # (B, L, 1)
    if has_key.all():
        return y
    xp = _namespace(y)
    return xp.where(xp.asarray(has_key), y, xp.zeros_like(y))


#: Helpers of a layer spec's ``function_call.let`` / ``result`` expressions: they act on the
#: module's backend arrays (in the case's dtype), not on the NumPy float64 inputs.
BACKEND_FUNCTIONS: dict[str, Any] = {
    "linear": _linear,
    "split_heads": _split_heads,
    "merge_heads": _merge_heads,
    "rotary": _rotary,
    "zero_keyless": _zero_keyless,
}


def take_rows(table: Any, ids: Any) -> Any:
    """``table[ids]`` along the first axis, for any backend: what an embedding lookup is."""
    from nmn_array._namespace import is_tf_array

    if is_tf_array(table):
        import tensorflow as tf

        return tf.gather(table, ids)
    xp = _namespace(table, ids)
    rows = xp.take(table, xp.reshape(ids, (-1,)), axis=0)
    return xp.reshape(rows, (*_shape(ids), _shape(table)[-1]))


def framework_backend(framework: str) -> Backend:
    """The array backend a framework's modules compute on."""
    if framework == "keras":
        import keras

        return calls.backend(keras.backend.backend())
    backends = {"torch": "torch", "nnx": "jax", "linen": "jax", "equinox": "jax"}
    return calls.backend({**backends, "tf": "tensorflow", "mlx": "mlx"}[framework])


def _env(case: Case) -> dict[str, Any]:
    return {**case.env(), **case.arrays}


def _value(text: Any, case: Case, extra: Mapping[str, Any] | None = None) -> Any:
    env = _env(case) if not extra else {**_env(case), **extra}
    return plain(expr.evaluate(text, env, LAYOUT_FUNCTIONS))


def _convert(b: Backend, value: Any, dtype: str) -> Any:
    if isinstance(value, np.ndarray):
        return b.from_numpy(value, dtype if value.dtype.kind == "f" else None)
    return value


def _resolve_class(spec: Spec, framework: str, case: Case) -> Any:
    path = spec.data["modules"][framework]["class"].format(**case.env())
    try:
        return resolve(path)
    except (ImportError, AttributeError) as exc:
        raise AssertionError(
            f"{spec.name}: the spec lists the {framework} module {path}, which does not exist "
            f"({type(exc).__name__}: {exc}); write it or remove it from the spec"
        ) from exc


def _accepts(cls: Any, name: str) -> bool:
    """Whether the constructor takes ``name`` (nnx wraps ``__init__``: look at it directly)."""
    for target in (cls, getattr(cls, "__init__", None)):
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue
        if name in params:
            return True
    return False


class _Built:
    """A constructed module plus whatever state its framework keeps outside it (linen)."""

    def __init__(self, module: Any, variables: Any = None) -> None:
        self.module = module
        self.variables = variables


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
    return obj


def _concrete(tree: Any) -> Any:
    """Concrete arrays for the abstract leaves of ``jax.eval_shape`` output: NaN for floats,
    so that a variable the spec's ``weights`` forget to set poisons the output instead of
    passing silently; zeros for integers, a fixed key for PRNG keys."""
    import jax
    import jax.numpy as jnp

    def fill(leaf: Any) -> Any:
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            key = jax.random.key(0)
            return jax.random.split(key, leaf.shape) if leaf.shape else key
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            return jnp.full(leaf.shape, jnp.nan, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map(fill, tree)


def _build(
    framework: str, cls: Any, init: dict[str, Any], dtype: str, args: list, method: str | None
) -> _Built:
    """Construct the module with its variables (values are overwritten by the spec's weights).

    nnx and linen modules are built abstractly (``eval_shape``), their variables filled by
    :func:`_concrete`: eager JAX would compile every initialiser (and every op of linen's
    ``init``) for each new shape, which costs seconds per example.
    """
    if framework == "torch":
        import torch

        return _Built(cls(**init).to(getattr(torch, dtype)))
    if framework == "nnx":
        import jax.numpy as jnp
        from flax import nnx

        extra = {}
        if _accepts(cls, "param_dtype"):
            extra["param_dtype"] = getattr(jnp, dtype)
        abstract = nnx.eval_shape(lambda: cls(**init, **extra, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract)
        return _Built(nnx.merge(graphdef, _concrete(state)))
    if framework == "equinox":
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        extra = {"dtype": getattr(jnp, dtype)} if _accepts(cls, "dtype") else {}
        abstract = eqx.filter_eval_shape(lambda: cls(**init, **extra, key=jax.random.key(0)))
        return _Built(_concrete(abstract))
    if framework == "linen":
        import jax
        import jax.numpy as jnp

        fields = getattr(cls, "__dataclass_fields__", {})
        extra = {"param_dtype": getattr(jnp, dtype)} if "param_dtype" in fields else {}
        module = cls(**init, **extra)
        shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, method=method), *args)
        return _Built(module, _concrete(dict(shapes)))
    if framework == "mlx":
        return _Built(_mlx_module(cls, init, dtype, args, method))
    # keras and tf: construct in the dtype, then call once to create the variables
    module = cls(**init, dtype=dtype)
    getattr(module, method or "__call__")(*args)
    return _Built(module)


def _mlx_module(cls: Any, init: dict[str, Any], dtype: str, args: list, method: str | None) -> Any:
    """An MLX module in ``dtype``, called once to create its parameters, then with every
    floating parameter NaN: a weight the spec does not set poisons the output (as the JAX
    modules' :func:`_concrete` does) instead of passing with its random initial value."""
    import mlx.core as mx
    from mlx.utils import tree_map

    module = cls(**init, dtype=getattr(mx, dtype))
    getattr(module, method or "__call__")(*args)

    def poison(a: Any) -> Any:
        return mx.full(a.shape, np.nan, a.dtype) if mx.issubdtype(a.dtype, mx.floating) else a

    module.update(tree_map(poison, module.parameters()))
    return module


def _call(
    framework: str,
    built: _Built,
    method: str | None,
    args: list,
    kwargs: dict,
    batch_axes: int = 0,
) -> Any:
    """The module's output, computed eagerly like the function it is compared with.

    (Under ``jax.jit`` XLA fuses the module's graph and the function's graph differently,
    and ill-conditioned cases such as a spherical ``x`` parallel to ``w`` then differ by far
    more than rounding; eager runs execute the same kernels on both sides.)
    """
    if framework == "linen":
        return built.module.apply(built.variables, *args, method=method, **kwargs)
    if batch_axes:  # Equinox: the module takes one example, jax.vmap maps the batch axes
        import jax

        def one(*a: Any, **kw: Any) -> Any:
            return getattr(built.module, method or "__call__")(*a, **kw)

        for _ in range(batch_axes):
            one = jax.vmap(one)
        return one(*args, **kwargs)
    return getattr(built.module, method or "__call__")(*args, **kwargs)


def _set_weight(framework: str, built: _Built, path: str, value: np.ndarray, dtype: str) -> None:
    where = f"{framework} parameter {path!r}"
    if framework == "linen":
        import jax.numpy as jnp

        parts = path.split(".")
        tree = built.variables["params"]
        parent = tree
        for part in parts[:-1]:
            parent = parent[part]
        current = parent[parts[-1]]
        assert tuple(current.shape) == value.shape, (
            f"{where}: shape {current.shape}, spec gives {value.shape}"
        )
        parent[parts[-1]] = jnp.asarray(value, dtype=dtype)
        return
    target = _get_path(built.module, path)
    assert target is not None, f"{where} does not exist on {type(built.module).__name__}"
    shape = tuple(int(d) for d in target.shape)
    assert shape == value.shape, f"{where}: shape {shape}, spec gives {value.shape}"
    if framework == "torch":
        import torch

        with torch.no_grad():
            target.copy_(torch.as_tensor(value, dtype=target.dtype))
    elif framework == "nnx":
        import jax.numpy as jnp

        target[...] = jnp.asarray(value, dtype=target[...].dtype)
    elif framework == "equinox":  # an immutable pytree: a new module with the leaf replaced
        import equinox as eqx
        import jax.numpy as jnp

        new = jnp.asarray(value, dtype=target.dtype)
        built.module = eqx.tree_at(lambda m: _get_path(m, path), built.module, new)
    elif framework == "mlx":  # an nn.Module holds its arrays as dict entries
        import mlx.core as mx

        parent_path, _, name = path.rpartition(".")
        parent = _get_path(built.module, parent_path) if parent_path else built.module
        parent[name] = mx.array(value, dtype=target.dtype)
    else:  # keras / tf variables
        target.assign(np.asarray(value).astype(dtype))


def _unfreeze(variables: Any) -> Any:
    def thaw(tree: Any) -> Any:
        return {k: thaw(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree

    return thaw(variables)


def module_equals_function(spec: Spec, framework: str, dtype: str, case: Case) -> None:
    """Build the module, load the case's weights, compare with the pure function."""
    module_spec = spec.data["modules"][framework]
    what = f"{spec.name} module_equals_function on {framework}:{dtype}"
    cls = _resolve_class(spec, framework, case)
    b = framework_backend(framework)
    call_spec = module_spec.get("call", {})
    method = call_spec.get("method")
    args = [_convert(b, _value(a, case), dtype) for a in call_spec.get("args", ["x"])]
    kwargs = {
        k: _convert(b, _value(v, case), dtype) for k, v in call_spec.get("kwargs", {}).items()
    }
    init = {k: _value(v, case) for k, v in module_spec.get("init", {}).items()}
    built = _build(framework, cls, init, dtype, args, method)
    if built.variables is not None:
        built.variables = _unfreeze(built.variables)
    for path, text in module_spec["weights"].items():
        value = _value(text, case)
        if value is None:
            continue  # the configuration has no such parameter
        _set_weight(framework, built, path, np.asarray(value, dtype=np.float64), dtype)
    batch_axes = int(_value(call_spec.get("batch_axes", 0), case))
    output = _call(framework, built, method, args, kwargs, batch_axes)
    got = np.asarray(b.to_numpy(output), np.float64)

    want = np.asarray(b.to_numpy(function_output(spec, framework, b, dtype, case)), np.float64)
    tol = spec.tolerances[dtype]
    rtol, atol = float(tol["rtol"]), float(tol.get("atol", 0.0))
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    tolerance.assert_close(got, want, atol + rtol * (np.abs(want) + scale), what)


def function_output(spec: Spec, framework: str, b: Backend, dtype: str, case: Case) -> Any:
    """What the module should return: the spec's ``function_call`` on backend ``b``.

    The module's ``function`` entry overrides the spec's ``args`` and ``result``, and its
    ``kwargs`` and ``let`` entries one by one. ``let`` entries are computed in order on the
    backend arrays (the case's arrays in ``dtype``) with :data:`BACKEND_FUNCTIONS`; the
    arguments may name them. ``result`` maps the function's output ``out`` to the module's.
    """
    base = spec.data["function_call"]
    override = spec.data["modules"][framework].get("function", {})
    let_texts = {**base.get("let", {}), **override.get("let", {})}
    arg_texts = override.get("args", base.get("args", ()))
    kwarg_texts = {**base.get("kwargs", {}), **override.get("kwargs", {})}
    result = override.get("result", base.get("result"))

    backend_env = {
        **case.env(),
        **{name: _convert(b, a, dtype) for name, a in case.arrays.items()},
    }
    lets: dict[str, Any] = {}
    for name, text in let_texts.items():
        lets[name] = backend_env[name] = expr.evaluate(text, backend_env, BACKEND_FUNCTIONS)
    fargs = [_convert(b, _value(a, case, lets), dtype) for a in arg_texts]
    fkwargs = {k: _convert(b, _value(v, case, lets), dtype) for k, v in kwarg_texts.items()}
    out = spec.fn(*fargs, **fkwargs)
    if result is None:
        return out
    return expr.evaluate(result, {**backend_env, RESULT_NAME: out}, BACKEND_FUNCTIONS)
