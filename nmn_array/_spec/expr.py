"""A tiny, safe expression language for the spec: shapes, constraints and layouts.

Spec files hold expressions such as ``"C // groups"``, ``"conv_out(S, K, stride, padding,
dilation)"`` or ``"permute(w, [2, 3, 1, 0])"``. They are parsed with :mod:`ast` and only a
whitelist of node types and functions is evaluated, so a spec can never run arbitrary code.

Names bound to tuples (a dim with a rank, such as the spatial sizes ``S``, or a per-dimension
parameter such as ``stride``) *broadcast*: an expression that mentions them is evaluated once
per index, with the i-th element substituted, which is how one formula describes every spatial
dimension. Python scalars and strings do not broadcast.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "FUNCTIONS",
    "ExprError",
    "broadcast_names",
    "check_syntax",
    "evaluate",
    "evaluate_each",
    "names_in",
]


class ExprError(ValueError):
    """An expression that does not parse, uses a forbidden construct, or fails to evaluate."""


def _resolve_pad(size: int, k: int, stride: int, padding: Any, dilation: int) -> tuple[int, int]:
    """(low, high) padding of one spatial dim, for every padding form a spec may draw."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0)
        if mode == "causal":
            return (dilation * (k - 1), 0)
        if mode == "same":
            out = -(-size // stride)
            total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
            return (total // 2, total - total // 2)
        raise ExprError(f"unknown padding string {padding!r}")
    if isinstance(padding, (tuple, list)):
        lo, hi = padding
        return (int(lo), int(hi))
    return (int(padding), int(padding))


def conv_padded(size: int, k: int, stride: int, padding: Any, dilation: int) -> int:
    """Spatial size after padding."""
    lo, hi = _resolve_pad(size, k, stride, padding, dilation)
    return size + lo + hi


def conv_pad_max(size: int, k: int, stride: int, padding: Any, dilation: int) -> int:
    """The larger of the two paddings of one dim (reflect/circular modes bound it by size)."""
    return max(_resolve_pad(size, k, stride, padding, dilation))


def conv_out(size: int, k: int, stride: int, padding: Any, dilation: int) -> int:
    """Output size of a direct convolution along one dim."""
    padded = conv_padded(size, k, stride, padding, dilation)
    return (padded - dilation * (k - 1) - 1) // stride + 1


def conv_transpose_out(
    size: int, k: int, stride: int, padding: Any, output_padding: int, dilation: int
) -> int:
    """Output size of a transposed convolution along one dim (torch rule for ints,
    ``jax.lax.conv_transpose`` rule for "valid" and "same")."""
    k_eff = dilation * (k - 1) + 1
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return size * stride + max(k_eff - stride, 0) + output_padding
        if mode == "same":
            return size * stride + output_padding
        raise ExprError(f"unknown transposed-conv padding string {padding!r}")
    return (size - 1) * stride - 2 * int(padding) + k_eff + output_padding


def _prod(values: Any) -> int:
    return math.prod(values)


#: Functions a spec expression may call. Array layout helpers (``permute``, ``flip``, ...)
#: are added by the test harness, which passes them in ``extra_functions``.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "all": all,
    "any": any,
    "ceil": math.ceil,
    "conv_out": conv_out,
    "conv_pad_max": conv_pad_max,
    "conv_padded": conv_padded,
    "conv_transpose_out": conv_transpose_out,
    "floor": math.floor,
    "int": int,
    "is_str": lambda v: isinstance(v, str),
    "len": len,
    "lower": lambda v: v.lower() if isinstance(v, str) else v,
    "upper": lambda v: v.upper() if isinstance(v, str) else v,
    "max": max,
    "min": min,
    "prod": _prod,
    "sqrt": math.sqrt,
    "tuple": tuple,
}

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"cannot parse expression {text!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        allowed = (
            ast.Expression,
            ast.BinOp,
            ast.UnaryOp,
            ast.BoolOp,
            ast.Compare,
            ast.IfExp,
            ast.Name,
            ast.Load,
            ast.Constant,
            ast.Call,
            ast.Tuple,
            ast.List,
            ast.Subscript,
            ast.Slice,
            ast.And,
            ast.Or,
            *_BINOPS,
            *_UNARY,
            *_COMPARE,
        )
        if not isinstance(node, allowed):
            raise ExprError(
                f"expression {text!r} uses a forbidden construct ({type(node).__name__})"
            )
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            raise ExprError(f"expression {text!r}: only plain function names may be called")
        if isinstance(node, ast.Call) and node.keywords:
            raise ExprError(f"expression {text!r}: keyword arguments are not supported")
    return tree


# The default of ``extra_functions``: an empty read-only mapping.
_NO_FUNCTIONS: Mapping[str, Any] = MappingProxyType({})


def check_syntax(text: str, extra_functions: Mapping[str, Any] = _NO_FUNCTIONS) -> set[str]:
    """Parse ``text`` and return the variable names it reads (raises :class:`ExprError`).

    Examples
    --------
    >>> sorted(check_syntax("conv_out(S, K, stride, padding, dilation) >= 1"))
    ['K', 'S', 'dilation', 'padding', 'stride']
    """
    tree = _parse(text)
    functions = {**FUNCTIONS, **dict(extra_functions)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fname = node.func.id  # type: ignore[attr-defined]
            if fname not in functions:
                raise ExprError(
                    f"expression {text!r} calls unknown function {fname!r}; "
                    f"known: {sorted(functions)}"
                )
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}  # type: ignore[attr-defined]
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in called:
            names.add(node.id)
    return names - {"True", "False", "None"}


def names_in(text: str) -> set[str]:
    """Variable names read by ``text`` (function names excluded)."""
    tree = _parse(text)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}  # type: ignore[attr-defined]
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in called}


def _eval(node: ast.AST, env: Mapping[str, Any], functions: Mapping[str, Any], text: str) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env, functions, text)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        raise ExprError(f"expression {text!r}: unknown name {node.id!r}; known: {sorted(env)}")
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](
            _eval(node.left, env, functions, text), _eval(node.right, env, functions, text)
        )
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env, functions, text))
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result: Any = True
            for value in node.values:
                result = _eval(value, env, functions, text)
                if not result:
                    return result
            return result
        result = False
        for value in node.values:
            result = _eval(value, env, functions, text)
            if result:
                return result
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env, functions, text)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env, functions, text)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        if _eval(node.test, env, functions, text):
            return _eval(node.body, env, functions, text)
        return _eval(node.orelse, env, functions, text)
    if isinstance(node, ast.Call):
        fn = functions[node.func.id]  # type: ignore[attr-defined]
        return fn(*(_eval(a, env, functions, text) for a in node.args))
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, env, functions, text) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e, env, functions, text) for e in node.elts]
    if isinstance(node, ast.Subscript):
        return _eval(node.value, env, functions, text)[_eval(node.slice, env, functions, text)]
    if isinstance(node, ast.Slice):
        part = [
            None if p is None else _eval(p, env, functions, text)
            for p in (node.lower, node.upper, node.step)
        ]
        return slice(*part)
    raise ExprError(f"expression {text!r}: cannot evaluate {type(node).__name__}")


def evaluate(
    text: Any, env: Mapping[str, Any], extra_functions: Mapping[str, Any] = _NO_FUNCTIONS
) -> Any:
    """Evaluate ``text`` in ``env`` (no broadcasting); non-strings are returned as they are.

    Examples
    --------
    >>> evaluate("C // groups", {"C": 4, "groups": 2})
    2
    """
    if not isinstance(text, str):
        return text
    tree = _parse(text)
    functions = {**FUNCTIONS, **dict(extra_functions)}
    try:
        return _eval(tree, env, functions, text)
    except ExprError:
        raise
    except Exception as exc:  # noqa: BLE001 - report any evaluation failure with the expression
        raise ExprError(f"expression {text!r} failed: {type(exc).__name__}: {exc}") from exc


def broadcast_names(text: str, env: Mapping[str, Any]) -> list[str]:
    """The names in ``text`` bound to tuples in ``env`` (those broadcast per index)."""
    return sorted(n for n in names_in(text) if isinstance(env.get(n), tuple))


def evaluate_each(
    text: Any, env: Mapping[str, Any], extra_functions: Mapping[str, Any] = _NO_FUNCTIONS
) -> tuple[Any, ...]:
    """Evaluate ``text`` once per index of the tuples it mentions, returning a tuple.

    Every tuple-valued name must have the same length; an expression without one evaluates
    to a 1-tuple.

    Examples
    --------
    >>> evaluate_each("(S - K) // stride + 1", {"S": (5, 6), "K": (3, 3), "stride": (1, 2)})
    (3, 2)
    """
    if not isinstance(text, str):
        return (text,)
    names = broadcast_names(text, env)
    if not names:
        return (evaluate(text, env, extra_functions),)
    lengths = {n: len(env[n]) for n in names}
    if len(set(lengths.values())) != 1:
        raise ExprError(
            f"expression {text!r}: per-dimension names have different lengths {lengths}"
        )
    count = next(iter(lengths.values()))
    out = []
    for i in range(count):
        local = dict(env)
        local.update({n: env[n][i] for n in names})
        out.append(evaluate(text, local, extra_functions))
    return tuple(out)
