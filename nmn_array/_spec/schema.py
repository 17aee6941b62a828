"""The schema of a spec file, as a small hand-written validator.

Every node knows how to check a YAML value and how to describe the form it expects, so a
wrong key or type is reported as ``<file>: key 'a.b.c': expected <form>, got <value>``.
After the structural pass, :func:`validate` checks the cross references (names used in
shapes and constraints exist, properties suit the family, skips name real targets, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nmn_array._spec import expr

__all__ = [
    "BACKENDS",
    "DTYPES",
    "FAMILIES",
    "FRAMEWORKS",
    "INVARIANTS",
    "PROPERTIES",
    "SpecError",
    "validate",
]

BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "tensorflow", "dask", "cupy")
FRAMEWORKS = ("torch", "nnx", "linen", "keras", "tf")
DTYPES = ("float32", "float64")

#: Checks that apply to any function (the harness has one generic implementation of each).
GENERIC_PROPERTIES = (
    "matches_reference",
    "cross_backend",
    "portable_equals_native",
    "batch_consistency",
    "output_slicing",
    "jit_equals_eager",
    "grad_finite",
    "grad_matches_finite_differences",
    "module_equals_function",
)

#: Invariants and the families the harness implements them for.
INVARIANTS: dict[str, tuple[str, ...]] = {
    "nonnegative": ("dense", "conv", "conv_transpose", "attention_weights"),
    "self_response": ("dense",),
    "orthogonal_zero": ("dense",),
    "joint_sign_flip": ("dense", "conv", "conv_transpose", "attention", "attention_weights"),
    "joint_rotation": ("dense", "attention_weights"),
    "kernel1_equals_dense": ("conv",),
    "eps_monotone": ("dense", "conv", "conv_transpose"),
    "rows_normalized": ("attention_weights",),
    "kv_permutation": ("attention",),
    "causal_prefix": ("attention", "attention_weights"),
    "masked_keys_zero": ("attention_weights",),
    "rotation_preserves_norm": ("rotary",),
    "squasher_range": ("softermax", "softer_sigmoid", "soft_tanh"),
    "soft_tanh_identity": ("soft_tanh",),
    "nonpositive_n_raises": ("softermax", "softer_sigmoid", "soft_tanh"),
}

PROPERTIES = (*GENERIC_PROPERTIES, *INVARIANTS)

FAMILIES = (
    "dense",
    "conv",
    "conv_transpose",
    "attention",
    "attention_weights",
    "rotary",
    "softermax",
    "softer_sigmoid",
    "soft_tanh",
    "embed",
)

#: Tolerance policies the harness implements (see docs/testing.md).
POLICIES = ("yat_ratio", "attention", "elementwise", "module")

#: Boundary inputs the harness can force (grad_finite, invariants).
BOUNDARIES = ("x_equals_w", "x_near_w", "zero_x", "zero_w")

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


class SpecError(ValueError):
    """A spec file that does not follow the schema; the message names file, key and form."""


# --------------------------------------------------------------------------------------
# schema nodes


class Node:
    """One expected form of a YAML value."""

    def describe(self) -> str:  # pragma: no cover - every node overrides it
        raise NotImplementedError

    def check(self, value: Any, path: str, errors: list[tuple[str, str, Any]]) -> None:
        if not self.accepts(value):
            errors.append((path, self.describe(), value))

    def accepts(self, value: Any) -> bool:  # pragma: no cover - overridden
        return True


class Str(Node):
    def __init__(self, pattern: str | None = None, what: str = "a string") -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.what = what

    def describe(self) -> str:
        return self.what

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (
            self.pattern is None or self.pattern.fullmatch(value) is not None
        )


class Enum(Node):
    def __init__(self, *choices: Any) -> None:
        self.choices = choices

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, (str, int, float))
            and not isinstance(value, bool)
            and (value in self.choices)
        )


class Int(Node):
    def __init__(self, minimum: int | None = None) -> None:
        self.minimum = minimum

    def describe(self) -> str:
        return "an integer" + ("" if self.minimum is None else f" >= {self.minimum}")

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and (self.minimum is None or value >= self.minimum)
        )


class Num(Node):
    def describe(self) -> str:
        return "a number"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)


class Bool(Node):
    def describe(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Scalar(Node):
    """Any YAML scalar (string, number, bool, null) or a (nested) list of scalars."""

    def describe(self) -> str:
        return "a scalar (string, number, bool or null) or a list of scalars"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, list):
            return all(self.accepts(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))


class ExprNode(Node):
    """A string in the spec expression language, or a plain integer."""

    def __init__(self, allow_int: bool = True, star: bool = False) -> None:
        self.allow_int = allow_int
        self.star = star

    def describe(self) -> str:
        form = "an expression string such as 'C // groups'"
        if self.star:
            form += " (a leading '*' splices a per-dimension tuple)"
        return form + (" or an integer" if self.allow_int else "")

    def check(self, value: Any, path: str, errors: list[tuple[str, str, Any]]) -> None:
        if self.allow_int and isinstance(value, int) and not isinstance(value, bool):
            return
        if not isinstance(value, str):
            errors.append((path, self.describe(), value))
            return
        text = value[1:] if (self.star and value.startswith("*")) else value
        try:
            expr.check_syntax(text, _LAYOUT_FUNCTIONS)
        except expr.ExprError as exc:
            errors.append((path, f"{self.describe()} ({exc})", value))


class Pair(Node):
    def __init__(self, item: Node) -> None:
        self.item = item

    def describe(self) -> str:
        return f"a list of two values [low, high], each {self.item.describe()}"

    def check(self, value: Any, path: str, errors: list[tuple[str, str, Any]]) -> None:
        if not (isinstance(value, list) and len(value) == 2):
            errors.append((path, self.describe(), value))
            return
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]", errors)
        if all(self.item.accepts(v) for v in value) and value[0] > value[1]:
            errors.append((path, "a range [low, high] with low <= high", value))


class ListOf(Node):
    def __init__(self, item: Node, min_len: int = 0) -> None:
        self.item = item
        self.min_len = min_len

    def describe(self) -> str:
        more = f" (at least {self.min_len})" if self.min_len else ""
        return f"a list{more} of {self.item.describe()}"

    def check(self, value: Any, path: str, errors: list[tuple[str, str, Any]]) -> None:
        if not isinstance(value, list) or len(value) < self.min_len:
            errors.append((path, self.describe(), value))
            return
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]", errors)


class MapOf(Node):
    """A mapping with free keys (validated by ``key``) and values of one form."""

    def __init__(self, key: Node, value: Node, what: str = "") -> None:
        self.key = key
        self.value = value
        self.what = what

    def describe(self) -> str:
        return self.what or f"a mapping of {self.key.describe()} to {self.value.describe()}"

    def check(self, value: Any, path: str, errors: list[tuple[str, str, Any]]) -> None:
        if not isinstance(value, dict):
            errors.append((path, self.describe(), value))
            return
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if not self.key.accepts(k):
                errors.append((sub, f"a key that is {self.key.describe()}", k))
                continue
            self.value.check(v, sub, errors)


class Record(Node):
    """A mapping with known keys; ``fields`` maps key -> (node, required)."""

    def __init__(self, what: str, fields: Mapping[str, tuple[Node, bool]]) -> None:
        self.what = what
        self.fields = dict(fields)

    def describe(self) -> str:
        return self.what

    def check(self, value: Any, path: str, errors: list[tuple[str, str, Any]]) -> None:
        if not isinstance(value, dict):
            errors.append((path or "<top>", self.describe(), value))
            return
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if k not in self.fields:
                errors.append(
                    (sub, f"no such key here; allowed keys: {', '.join(sorted(self.fields))}", k)
                )
                continue
            self.fields[k][0].check(v, sub, errors)
        for k, (_, required) in self.fields.items():
            if required and k not in value:
                sub = f"{path}.{k}" if path else k
                errors.append((sub, f"a required key ({self.fields[k][0].describe()})", _MISSING))


class Nullable(Node):
    def __init__(self, inner: Node) -> None:
        self.inner = inner

    def describe(self) -> str:
        return f"null or {self.inner.describe()}"

    def check(self, value: Any, path: str, errors: list[tuple[str, str, Any]]) -> None:
        if value is not None:
            self.inner.check(value, path, errors)


class Either(Node):
    """The first alternative whose ``accepts`` matches decides; otherwise all are listed."""

    def __init__(self, *options: Node) -> None:
        self.options = options

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)

    def check(self, value: Any, path: str, errors: list[tuple[str, str, Any]]) -> None:
        for option in self.options:
            trial: list[tuple[str, str, Any]] = []
            option.check(value, path, trial)
            if not trial:
                return
        errors.append((path, self.describe(), value))


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING = _Missing()

# --------------------------------------------------------------------------------------
# the spec schema

#: Layout helpers a module's weight expressions may call (implemented by the harness).
_LAYOUT_FUNCTIONS = {
    name: None
    for name in (
        "transpose",
        "permute",
        "flip",
        "reshape",
        "ravel",
        "moveaxis",
        "swap_last",
        "as_float",
        "hwio",
        "flip_spatial",
        "attention_mask",
        # backend-side helpers for a layer's function_call 'let' / 'result' expressions
        "linear",
        "split_heads",
        "merge_heads",
        "rotary",
        "zero_keyless",
    )
}

IDENT = Str(_IDENT, "an identifier (letters, digits, underscores)")
DOTTED = Str(rf"{_IDENT}(\.{_IDENT})*", "a dotted import path such as 'nmn_array.yat'")
OBJECT = Str(
    rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*",
    "an object path 'module:attribute' such as 'tests.reference:yat_ref'",
)
BACKEND_NAME = Enum(*BACKENDS)
FRAMEWORK_NAME = Enum(*FRAMEWORKS)
DTYPE_NAME = Enum(*DTYPES)
PROPERTY_NAME = Enum(*PROPERTIES)
SHAPE = ListOf(ExprNode(star=True))
SHAPE_WHEN = ListOf(
    Record(
        "a conditional shape {when: <expression>, shape: [...]}",
        {"when": (ExprNode(allow_int=False), True), "shape": (SHAPE, True)},
    ),
    min_len=1,
)

ELEMENTS = Record(
    "an elements mapping {min, max, min_magnitude, min_abs, p_true}",
    {
        "min": (Num(), False),
        "max": (Num(), False),
        "min_magnitude": (Num(), False),
        "min_abs": (Num(), False),
        "p_true": (Num(), False),
    },
)

DIM = Record(
    "a dim mapping {range: [lo, hi] | choices: [...], rank, multiple_of}",
    {
        "range": (Pair(Int(minimum=0)), False),
        "choices": (ListOf(Int(minimum=0), min_len=1), False),
        "rank": (Either(Int(minimum=0), Pair(Int(minimum=0)), IDENT), False),
        "multiple_of": (IDENT, False),
        "note": (Str(), False),
    },
)

_PARAM_FIELDS: dict[str, tuple[Node, bool]] = {
    "type": (Enum("int", "float", "bool", "int_tuple", "pair_tuple", "choice"), False),
    "range": (Pair(Num()), False),
    "choices": (ListOf(Scalar(), min_len=1), False),
    "log": (Bool(), False),
    "len": (Either(Int(minimum=1), IDENT), False),
    "when": (ExprNode(allow_int=False), False),
    "array_forms": (Bool(), False),
    "pass": (Bool(), False),
    "note": (Str(), False),
}
PARAM = Record(
    "a parameter strategy {type, range | choices, log, len, when, array_forms, pass, one_of}",
    _PARAM_FIELDS,
)
PARAM.fields["one_of"] = (ListOf(PARAM, min_len=1), False)

ARRAY = Record(
    "an array mapping {shape, shape_when, dtype, optional, elements, note}",
    {
        "shape": (SHAPE, True),
        "shape_when": (SHAPE_WHEN, False),
        "dtype": (Enum("float", "int64", "bool"), False),
        "optional": (Bool(), False),
        "elements": (ELEMENTS, False),
        "note": (Str(), False),
    },
)

BACKEND = Record(
    "a backend mapping {path: native|portable, autodiff, jit, requires_gpu, note}",
    {
        "path": (Enum("native", "portable"), True),
        "autodiff": (Bool(), False),
        "jit": (Bool(), False),
        "requires_gpu": (Bool(), False),
        "note": (Str(), False),
    },
)

TOL_DTYPE = Record(
    "a tolerance mapping {rtol, atol}", {"rtol": (Num(), True), "atol": (Num(), False)}
)
TOLERANCES = Record(
    "a tolerances mapping {policy, accumulation, c, float32, float64, grad}",
    {
        "policy": (Enum(*POLICIES), True),
        "accumulation": (ExprNode(), False),
        "c": (Num(), False),
        "float32": (TOL_DTYPE, True),
        "float64": (TOL_DTYPE, True),
        "grad": (TOL_DTYPE, False),
        "note": (Str(), False),
    },
)

_AXES = MapOf(IDENT, ExprNode(), "a mapping of array name to axis (integer or expression)")

PROPERTY_OPTIONS = Record(
    "property options {backends, dtypes, max_examples, backend_examples, override, params, "
    "elements, dims, boundaries, require, arrays, output_axis, units, groups, wrt, negate, rotate, "
    "frameworks, note}",
    {
        "backends": (ListOf(BACKEND_NAME, min_len=1), False),
        "dtypes": (ListOf(DTYPE_NAME, min_len=1), False),
        "max_examples": (Int(minimum=1), False),
        "backend_examples": (MapOf(BACKEND_NAME, Int(minimum=1)), False),
        "override": (MapOf(IDENT, Scalar()), False),
        "params": (MapOf(IDENT, PARAM), False),
        "elements": (MapOf(IDENT, ELEMENTS), False),
        "dims": (MapOf(IDENT, DIM), False),
        "boundaries": (ListOf(Enum(*BOUNDARIES)), False),
        "require": (ListOf(IDENT, min_len=1), False),
        "arrays": (_AXES, False),
        "output_axis": (ExprNode(), False),
        "units": (_AXES, False),
        "groups": (
            Record(
                "a groups mapping {param, arrays}",
                {"param": (IDENT, True), "arrays": (_AXES, True)},
            ),
            False,
        ),
        "wrt": (ListOf(IDENT, min_len=1), False),
        "negate": (ListOf(IDENT, min_len=1), False),
        "rotate": (ListOf(IDENT, min_len=1), False),
        "frameworks": (ListOf(FRAMEWORK_NAME, min_len=1), False),
        "note": (Str(), False),
    },
)

CALL = Record(
    "a call mapping {method, args, kwargs, let, result}",
    {
        "method": (IDENT, False),
        "args": (ListOf(ExprNode()), False),
        "kwargs": (MapOf(IDENT, Either(ExprNode(), Scalar())), False),
        # function side only: names computed on the module's backend before the call, in
        # order, and the expression of the call's output ``out`` compared with the module
        "let": (MapOf(IDENT, ExprNode(allow_int=False)), False),
        "result": (ExprNode(allow_int=False), False),
    },
)

#: The name a function call's ``result`` expression reads the function's output from.
RESULT_NAME = "out"

MODULE = Record(
    "a module mapping {class, init, weights, call, function, dtypes, note}",
    {
        "class": (
            Str(
                r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_{}][A-Za-z0-9_.{}]*",
                "a class path 'module:Class' (may contain {param} placeholders)",
            ),
            True,
        ),
        "init": (MapOf(IDENT, Either(ExprNode(), Scalar())), False),
        "weights": (
            MapOf(Str(r"[A-Za-z0-9_.]+", "a parameter path such as 'query.kernel'"), ExprNode()),
            True,
        ),
        "call": (CALL, False),
        "function": (CALL, False),
        "dtypes": (ListOf(DTYPE_NAME, min_len=1), False),
        "note": (Str(), False),
    },
)

_TARGET_FIELDS: dict[str, tuple[Node, bool]] = {
    "property": (PROPERTY_NAME, True),
    "backend": (Either(BACKEND_NAME, FRAMEWORK_NAME), False),
    "dtype": (DTYPE_NAME, False),
    "variant": (IDENT, False),
    "reason": (Str(r"\S.*", "a non-empty reason"), True),
}
SKIP = Record("a skip mapping {property, backend, dtype, variant, reason}", _TARGET_FIELDS)
XFAIL = Record(
    "an xfail mapping {property, backend, dtype, variant, reason, issue, strict}",
    {**_TARGET_FIELDS, "issue": (Str(), False), "strict": (Bool(), False)},
)

VARIANT = Record(
    "a variant mapping {name, set, dims, max_examples, summary}",
    {
        "name": (IDENT, True),
        "set": (MapOf(IDENT, Scalar()), True),
        "dims": (MapOf(IDENT, DIM), False),
        "max_examples": (Int(minimum=1), False),
        "summary": (Str(), False),
    },
)

SPEC = Record(
    "a spec mapping",
    {
        "name": (IDENT, True),
        "kind": (Enum("function", "layer"), True),
        "summary": (Str(), True),
        "function": (DOTTED, True),
        "reference": (OBJECT, False),
        "family": (Enum(*FAMILIES), True),
        "variants": (ListOf(VARIANT, min_len=1), False),
        "dims": (MapOf(IDENT, DIM), False),
        "params": (MapOf(IDENT, PARAM), False),
        "arrays": (MapOf(IDENT, ARRAY), True),
        "call": (ListOf(IDENT), False),
        "constraints": (ListOf(ExprNode(allow_int=False)), False),
        "output": (
            Record(
                "an output mapping {shape, shape_when, dtype}",
                {"shape": (SHAPE, True), "shape_when": (SHAPE_WHEN, False), "dtype": (IDENT, True)},
            ),
            True,
        ),
        "elements": (ELEMENTS, False),
        "dtypes": (ListOf(DTYPE_NAME, min_len=1), True),
        "backends": (MapOf(BACKEND_NAME, BACKEND), True),
        "tolerances": (TOLERANCES, True),
        "hypothesis": (
            Record(
                "a hypothesis mapping {max_examples, backends}",
                {
                    "max_examples": (Int(minimum=1), False),
                    "backends": (MapOf(BACKEND_NAME, Int(minimum=1)), False),
                },
            ),
            False,
        ),
        "properties": (MapOf(PROPERTY_NAME, Nullable(PROPERTY_OPTIONS)), True),
        "modules": (MapOf(FRAMEWORK_NAME, MODULE), False),
        "function_call": (CALL, False),
        "skips": (ListOf(SKIP), False),
        "xfails": (ListOf(XFAIL), False),
        "notes": (Str(), False),
    },
)


# --------------------------------------------------------------------------------------
# validation


@dataclass
class _Report:
    source: str
    errors: list[str] = field(default_factory=list)

    def add(self, key: str, expected: str, got: Any = _MISSING) -> None:
        got_text = "" if got is _MISSING else f", got {got!r}"
        self.errors.append(f"{self.source}: key '{key}': expected {expected}{got_text}")


def validate(data: Any, source: str) -> None:
    """Check ``data`` (a parsed spec file) against the schema and its cross references.

    Raises
    ------
    SpecError
        Listing every problem as ``<source>: key '<path>': expected <form>, got <value>``.
    """
    raw: list[tuple[str, str, Any]] = []
    SPEC.check(data, "", raw)
    report = _Report(source)
    for path, expected, got in raw:
        report.add(path, expected, got)
    if not report.errors:
        _cross_references(data, report)
    if report.errors:
        raise SpecError("\n".join(report.errors))


def _shape_names(shape: Sequence[Any]) -> set[str]:
    names: set[str] = set()
    for entry in shape:
        if isinstance(entry, str):
            names |= expr.names_in(entry[1:] if entry.startswith("*") else entry)
    return names


def _param_names(param: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    if isinstance(param.get("len"), str):
        names.add(param["len"])
    if "when" in param:
        names |= expr.names_in(param["when"])
    for alt in param.get("one_of", ()):
        names |= _param_names(alt)
    return names


def _cross_references(data: Mapping[str, Any], report: _Report) -> None:
    dims = data.get("dims", {})
    params = data.get("params", {})
    arrays = data["arrays"]
    known = set(dims) | set(params)
    family = data["family"]
    clash = sorted((set(dims) & set(params)) | (set(arrays) & known))
    if clash:
        report.add("dims/params/arrays", "distinct names across dims, params and arrays", clash)
    for name, dim in dims.items():
        if "range" not in dim and "choices" not in dim:
            report.add(f"dims.{name}", "a 'range' or a 'choices' entry", dim)
        for key in ("multiple_of",):
            if key in dim and dim[key] not in params:
                report.add(
                    f"dims.{name}.{key}", f"a parameter name (one of {sorted(params)})", dim[key]
                )
        if isinstance(dim.get("rank"), str) and dim["rank"] not in params:
            report.add(
                f"dims.{name}.rank", f"a parameter name (one of {sorted(params)})", dim["rank"]
            )
    for name, param in params.items():
        _check_param(param, f"params.{name}", known, report)
    for name, array in arrays.items():
        unknown = sorted(_shape_names(array["shape"]) - known)
        for alt in array.get("shape_when", ()):
            unknown = sorted(set(unknown) | (_shape_names(alt["shape"]) - known))
            unknown = sorted(set(unknown) | (expr.names_in(alt["when"]) - known))
        if unknown:
            report.add(
                f"arrays.{name}.shape", f"names from dims or params ({sorted(known)})", unknown
            )
    unknown = sorted(_shape_names(data["output"]["shape"]) - known)
    if unknown:
        report.add("output.shape", f"names from dims or params ({sorted(known)})", unknown)
    if data["output"]["dtype"] not in arrays:
        report.add(
            "output.dtype",
            f"the name of an input array ({sorted(arrays)})",
            data["output"]["dtype"],
        )
    for i, text in enumerate(data.get("constraints", ())):
        unknown = sorted(expr.names_in(text) - known)
        if unknown:
            report.add(f"constraints[{i}]", f"names from dims or params ({sorted(known)})", unknown)
    for i, name in enumerate(data.get("call", ())):
        if name not in arrays and name not in params:
            report.add(
                f"call[{i}]",
                f"an array or parameter name ({sorted(set(arrays) | set(params))})",
                name,
            )
    backends = data["backends"]
    props = data["properties"]
    if data["kind"] == "function" and "reference" not in data:
        report.add("reference", "a required key for kind 'function' ('module:attribute')")
    if "cross_backend" in props and "numpy" not in backends:
        report.add(
            "properties.cross_backend", "a spec whose backends include 'numpy' (the baseline)"
        )
    for prop, options in props.items():
        options = options or {}
        families = INVARIANTS.get(prop)
        if families is not None and family not in families:
            report.add(
                f"properties.{prop}",
                f"a property implemented for family {family!r}; {prop!r} exists for {list(families)}",
                prop,
            )
        if prop == "module_equals_function" and data["kind"] != "layer":
            report.add(f"properties.{prop}", "a property of a spec with kind 'layer'", prop)
        if prop != "module_equals_function" and data["kind"] == "layer":
            report.add(f"properties.{prop}", "only 'module_equals_function' in a layer spec", prop)
        for b in options.get("backends", ()):
            if b not in backends:
                report.add(
                    f"properties.{prop}.backends",
                    f"backends listed under 'backends' ({sorted(backends)})",
                    b,
                )
        for fw in options.get("frameworks", ()):
            if fw not in data.get("modules", {}):
                report.add(
                    f"properties.{prop}.frameworks",
                    f"frameworks listed under 'modules' ({sorted(data.get('modules', {}))})",
                    fw,
                )
        for name in options.get("params", {}):
            if name not in params:
                report.add(
                    f"properties.{prop}.params.{name}", f"a parameter name ({sorted(params)})", name
                )
        for name, value in options.get("override", {}).items():
            if name not in params and not (name in arrays and value is None):
                report.add(
                    f"properties.{prop}.override.{name}",
                    f"a parameter name ({sorted(params)}) or an optional array set to null",
                    name,
                )
        for key in ("arrays", "units", "elements"):
            for name in options.get(key, {}):
                if name not in arrays:
                    report.add(
                        f"properties.{prop}.{key}.{name}", f"an array name ({sorted(arrays)})", name
                    )
        for key in ("wrt", "negate", "rotate", "require"):
            for name in options.get(key, ()):
                if name not in arrays:
                    report.add(f"properties.{prop}.{key}", f"array names ({sorted(arrays)})", name)
        for name in options.get("dims", {}):
            if name not in dims:
                report.add(f"properties.{prop}.dims.{name}", f"a dim name ({sorted(dims)})", name)
        groups = options.get("groups")
        if groups and groups["param"] not in params:
            report.add(
                f"properties.{prop}.groups.param",
                f"a parameter name ({sorted(params)})",
                groups["param"],
            )
    _check_calls(data, known | set(arrays), report)
    if data["kind"] == "layer" and not data.get("modules"):
        report.add("modules", "at least one framework module for kind 'layer'")
    if data["kind"] == "layer" and "function_call" not in data:
        report.add("function_call", "a required key for kind 'layer' ({args, kwargs})")
    variant_names = [v["name"] for v in data.get("variants", ())]
    if len(set(variant_names)) != len(variant_names):
        report.add("variants", "distinct variant names", variant_names)
    for i, variant in enumerate(data.get("variants", ())):
        for name in variant["set"]:
            if name not in params:
                report.add(
                    f"variants[{i}].set.{name}", f"a parameter name ({sorted(params)})", name
                )
    for section in ("skips", "xfails"):
        for i, item in enumerate(data.get(section, ())):
            if item["property"] not in props:
                report.add(
                    f"{section}[{i}].property",
                    f"a property of this spec ({sorted(props)})",
                    item["property"],
                )
            b = item.get("backend")
            if b is not None and b not in backends and b not in data.get("modules", {}):
                report.add(
                    f"{section}[{i}].backend", f"a backend of this spec ({sorted(backends)})", b
                )
            v = item.get("variant")
            if v is not None and v not in variant_names:
                report.add(f"{section}[{i}].variant", f"a variant name ({variant_names})", v)


def _check_calls(data: Mapping[str, Any], known: set[str], report: _Report) -> None:
    """``let`` / ``result`` belong to the function side; their names must resolve."""
    calls = [("function_call", data.get("function_call"), True)]
    for fw, module in data.get("modules", {}).items():
        calls.append((f"modules.{fw}.call", module.get("call"), False))
        calls.append((f"modules.{fw}.function", module.get("function"), True))
    base_let = dict((data.get("function_call") or {}).get("let", {}))
    for path, call, function_side in calls:
        if not call:
            continue
        if not function_side:
            for key in ("let", "result"):
                if key in call:
                    report.add(
                        f"{path}.{key}",
                        "no such key on a module call ('let' and 'result' belong to "
                        "function_call or modules.<fw>.function)",
                        call[key],
                    )
            continue
        visible = set(known)
        lets = {**base_let, **call.get("let", {})} if path != "function_call" else base_let
        for name, text in lets.items():
            if name in known or name == RESULT_NAME:
                report.add(
                    f"{path}.let.{name}",
                    f"a new name (not a dim, param or array, nor {RESULT_NAME!r})",
                    name,
                )
            unknown = sorted(expr.names_in(text) - visible)
            if unknown:
                report.add(f"{path}.let.{name}", "names defined before this entry", unknown)
            visible.add(name)
        if "result" in call:
            unknown = sorted(expr.names_in(call["result"]) - visible - {RESULT_NAME})
            if unknown:
                report.add(
                    f"{path}.result",
                    f"names from dims, params, arrays, 'let' or {RESULT_NAME!r}",
                    unknown,
                )


def _check_param(param: Mapping[str, Any], path: str, known: set[str], report: _Report) -> None:
    if "one_of" in param:
        extra = sorted(set(param) - {"one_of", "array_forms", "pass", "note"})
        if extra:
            report.add(path, "'one_of' alone (with array_forms, pass, note)", extra)
        for i, alt in enumerate(param["one_of"]):
            _check_param(alt, f"{path}.one_of[{i}]", known, report)
        return
    kind = param.get("type", "choice" if "choices" in param else None)
    if kind is None:
        report.add(path, "a 'type' or a 'choices' entry", param)
        return
    if kind in ("int", "float") and "range" not in param and "choices" not in param:
        report.add(path, f"a 'range' or 'choices' for type {kind!r}", param)
    if kind in ("int_tuple", "pair_tuple") and ("len" not in param or "range" not in param):
        report.add(path, f"'len' and 'range' for type {kind!r}", param)
    if kind == "choice" and "choices" not in param:
        report.add(path, "a 'choices' list for type 'choice'", param)
    unknown = sorted(_param_names(param) - known)
    if unknown:
        report.add(path, f"names from dims or params ({sorted(known)})", unknown)
