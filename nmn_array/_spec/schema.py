"""The schema of a spec file: pydantic models, the schema's single definition.

The models validate a parsed YAML file (strict types, no unknown keys, ranges, enums) and
produce the JSON Schema editors use (:func:`json_schema`). A value's form (the text an error
message and the JSON Schema show) is attached to each type with :class:`Form`; pydantic's
errors are translated into ``<file>: key 'a.b[2].c': expected <form>, got <value>``. The
cross references (names used in shapes and constraints exist, properties suit the family,
skips name real targets, ...) are the model validator of :class:`Spec`.

The loader keeps the parsed YAML mapping as its data; the models only judge it.
"""

import re
from collections.abc import Iterable, Sequence
from types import NoneType, UnionType
from typing import Annotated, Any, ForwardRef, Literal, Union, get_args, get_origin

from annotated_types import Ge, Len
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from nmn_array._spec import expr

__all__ = [
    "BACKENDS",
    "BACKEND_DTYPES",
    "DTYPES",
    "FAMILIES",
    "FRAMEWORKS",
    "INVARIANTS",
    "LOW_PRECISION",
    "LOW_PRECISION_PROPERTIES",
    "PROPERTIES",
    "RESULT_NAME",
    "Spec",
    "SpecError",
    "json_schema",
    "validate",
]

BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "tensorflow", "dask", "cupy", "mlx")
FRAMEWORKS = ("torch", "nnx", "linen", "keras", "tf", "equinox", "mlx")
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: Dtypes the library computes in float32 and casts back (saturating) to; a spec listing
#: one needs a tolerance entry of that name (docs/testing.md, "Low precision").
LOW_PRECISION = ("float16", "bfloat16")
#: The low-precision dtypes each backend has: targets of other combinations are not
#: generated (NumPy, Dask and CuPy have no bfloat16; the array API standard has neither).
BACKEND_DTYPES: dict[str, tuple[str, ...]] = {
    "numpy": ("float16",),
    "array_api_strict": (),
    "torch": ("float16", "bfloat16"),
    "jax": ("float16", "bfloat16"),
    "tensorflow": ("float16", "bfloat16"),
    "dask": ("float16",),
    "cupy": ("float16",),
    "mlx": ("float16", "bfloat16"),
}

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
    "large_inputs_finite",
)

#: Properties that run in the spec's low-precision dtypes unless their ``dtypes`` option
#: says otherwise; every other property runs in float32/float64 only by default.
LOW_PRECISION_PROPERTIES = ("matches_reference", "large_inputs_finite")

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
    "kv_permutation": ("attention", "linear_attention"),
    "causal_prefix": ("attention", "attention_weights", "linear_attention"),
    "blocked_equals_exact": ("attention",),
    "symmetric_reflexive": ("window_mask",),
    "grid_window_contains": ("window_mask",),
    "masked_keys_zero": ("attention_weights",),
    "rotation_preserves_norm": ("rotary",),
    "relative_position": ("rotary",),
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
    "dropconnect",
    "window_mask",
    "random_features",
    "linear_attention",
)

#: Tolerance policies the harness implements (see docs/testing.md).
POLICIES = ("yat_ratio", "attention", "elementwise", "module", "bound")

#: Boundary inputs the harness can force (grad_finite, invariants).
BOUNDARIES = ("x_equals_w", "x_near_w", "zero_x", "zero_w")

#: The name a function call's ``result`` expression reads the function's output from.
RESULT_NAME = "out"

#: Layout helpers a module's weight expressions may call (implemented by the harness).
_LAYOUT_FUNCTIONS = dict.fromkeys(
    (
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
)


class SpecError(ValueError):
    """A spec file that does not follow the schema; the message names file, key and form."""


# --------------------------------------------------------------------------------------
# value types


class Form:
    """``Annotated`` metadata: the form of a value, for error messages and the JSON Schema."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {**handler(core_schema), "description": self.text}


def _form_error(text: str) -> PydanticCustomError:
    # the text travels in the context: a template would read braces in it as placeholders
    return PydanticCustomError("spec_form", "{form}", {"form": text})


#: The YAML kind of a value (the tag of the union member that validates it), by exact type.
_KINDS = {bool: "bool", int: "int", float: "float", str: "str", list: "list", NoneType: "null"}


def _either(form: str, **members: Any) -> Any:
    """A union whose member is chosen by the value's YAML kind (``number``: int or float).

    Choosing by kind reports one error (the chosen member's, or ``form`` when no member
    takes that kind) instead of one per member, and the members' JSON types are disjoint.
    """
    tag_of = {k: tag for tag in members for k in (("int", "float") if tag == "number" else (tag,))}
    union = Union[tuple(Annotated[tp, Tag(tag)] for tag, tp in members.items())]  # noqa: UP007
    pick = Discriminator(
        lambda value: tag_of.get(_KINDS.get(type(value), "")),
        custom_error_type="spec_form",
        custom_error_message=form,
    )
    return Annotated[union, pick, Form(form)]


def _text(pattern: str, form: str) -> Any:
    return Annotated[str, StringConstraints(pattern=f"^(?:{pattern})$"), Form(form)]


def _ordered(pair: list[Any]) -> list[Any]:
    if pair[0] > pair[1]:
        raise _form_error("a range [low, high] with low <= high")
    return pair


def _pair(item: Any, item_form: str) -> Any:
    form = f"a list of two values [low, high], each {item_form}"
    return Annotated[list[item], Len(2, 2), AfterValidator(_ordered), Form(form)]


_EXPR_FORM = "an expression string such as 'C // groups'"
_STAR_FORM = _EXPR_FORM + " (a leading '*' splices a per-dimension tuple)"


def _expression(form: str, star: bool = False) -> Any:
    """A string in the spec expression language (:mod:`~nmn_array._spec.expr`)."""

    def check(text: str) -> str:
        try:
            expr.check_syntax(
                text[1:] if star and text.startswith("*") else text, _LAYOUT_FUNCTIONS
            )
        except expr.ExprError as exc:
            raise _form_error(f"{form} ({exc})") from None
        return text

    return Annotated[str, AfterValidator(check), Form(form)]


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
Ident = _text(_IDENT, "an identifier (letters, digits, underscores)")
Dotted = _text(rf"{_IDENT}(\.{_IDENT})*", "a dotted import path such as 'nmn_array.yat'")
_OBJECT_PATH = rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*"
ObjectPath = _text(
    _OBJECT_PATH,
    "an object path 'module:attribute' such as 'tests.reference:yat_ref'",
)
ClassPath = _text(
    r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_{}][A-Za-z0-9_.{}]*",
    "a class path 'module:Class' (may contain {param} placeholders)",
)
WeightPath = _text(r"[A-Za-z0-9_.]+", "a parameter path such as 'query.kernel'")
Reason = _text(r"\S.*", "a non-empty reason")
Text = str
Flag = bool
Num = float  # strict: an int is a number, a bool is not
Count = Annotated[int, Ge(0)]
Positive = Annotated[int, Ge(1)]
Expr = _either(
    _EXPR_FORM + " or an integer", int=int, str=_expression(_EXPR_FORM + " or an integer")
)
Condition = _expression(_EXPR_FORM)
ShapeEntry = _either(_STAR_FORM + " or an integer", int=int, str=_expression(_STAR_FORM, star=True))
Shape = list[ShapeEntry]
_SCALAR_FORM = "a scalar (string, number, bool or null) or a list of scalars"
Scalar = TypeAliasType(
    "Scalar",
    _either(
        _SCALAR_FORM,
        null=NoneType,
        bool=bool,
        number=float,
        str=str,
        list=list["Scalar"],
    ),
)
#: A constructor or call argument: an expression, or a plain value (strings are not parsed).
Argument = Annotated[Scalar, Form("an expression or " + _SCALAR_FORM)]
Backend = Literal[BACKENDS]
Framework = Literal[FRAMEWORKS]
Dtype = Literal[DTYPES]
Property = Literal[PROPERTIES]
Axes = Annotated[dict[Ident, Expr], Form("a mapping of array name to axis (integer or expression)")]

#: The default of an optional key: absent means None, but the type has no None, so an
#: explicit ``null`` is an error (the loader reads these keys with ``.get``).
_ABSENT: Any = None


def _nonempty(item: Any) -> Any:
    return Annotated[list[item], Len(1)]


# --------------------------------------------------------------------------------------
# the spec models (the first docstring line is the form an error message names)


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    def set_keys(self) -> set[str]:
        """The keys the file sets (aliases, as written)."""
        fields = type(self).model_fields
        return {fields[name].alias or name for name in self.model_fields_set}


class Elements(_Model):
    """an elements mapping {min, max, min_magnitude, min_abs, p_true}"""

    min: Num = _ABSENT
    max: Num = _ABSENT
    min_magnitude: Num = _ABSENT
    min_abs: Num = _ABSENT
    p_true: Num = _ABSENT


class Dim(_Model):
    """a dim mapping {range: [lo, hi] | choices: [...], rank, multiple_of}"""

    range: _pair(Count, "an integer >= 0") = _ABSENT
    choices: _nonempty(Count) = _ABSENT
    rank: _either(
        "an integer >= 0 or a list of two values [low, high] or a parameter name",
        int=Count,
        list=_pair(Count, "an integer >= 0"),
        str=Ident,
    ) = _ABSENT
    multiple_of: Ident = _ABSENT
    note: Text = _ABSENT


class Param(_Model):
    """a parameter strategy {type, range | choices, log, len, when, array_forms, pass, one_of}"""

    # "object": the choices are 'module:attribute' paths and the call receives the objects
    # they name (a callable argument such as a feature map)
    type: Literal["int", "float", "bool", "int_tuple", "pair_tuple", "choice", "object"] = _ABSENT
    range: _pair(Num, "a number") = _ABSENT
    choices: _nonempty(Scalar) = _ABSENT
    log: Flag = _ABSENT
    len: _either("an integer >= 1 or a parameter name", int=Positive, str=Ident) = _ABSENT
    when: Condition = _ABSENT
    array_forms: Flag = _ABSENT
    pass_: Flag = Field(_ABSENT, alias="pass")
    note: Text = _ABSENT
    one_of: _nonempty("Param") = _ABSENT


class ShapeWhen(_Model):
    """a conditional shape {when: <expression>, shape: [...]}"""

    when: Condition
    shape: Shape


class Array(_Model):
    """an array mapping {shape, shape_when, dtype, optional, pack, elements, note}"""

    shape: Shape
    shape_when: _nonempty(ShapeWhen) = _ABSENT
    dtype: Literal["float", "int64", "bool"] = _ABSENT
    optional: Flag = _ABSENT
    # the call passes the array inside a dict argument of this name, under its own name
    pack: Ident = _ABSENT
    elements: Elements = _ABSENT
    note: Text = _ABSENT


class BackendOptions(_Model):
    """a backend mapping {path: native|portable, autodiff, jit, requires_gpu, note}"""

    path: Literal["native", "portable"]
    autodiff: Flag = _ABSENT
    jit: Flag = _ABSENT
    requires_gpu: Flag = _ABSENT
    note: Text = _ABSENT


class Tolerance(_Model):
    """a tolerance mapping {rtol, atol}"""

    rtol: Num
    atol: Num = _ABSENT


class Tolerances(_Model):
    """a tolerances mapping {policy, bound, accumulation, c, float32, float64, float16, bfloat16, grad}"""  # noqa: E501

    policy: Literal[POLICIES]
    # policy "bound": a function of the call's inputs (the reference's signature) returning
    # each output element's rounding-error scale; allowed = k * bound + rtol |y| + atol
    bound: ObjectPath = _ABSENT
    accumulation: Expr = _ABSENT
    c: Num = _ABSENT
    float32: Tolerance
    float64: Tolerance
    # required when the spec (or a property, or a module) lists the dtype
    float16: Tolerance = _ABSENT
    bfloat16: Tolerance = _ABSENT
    grad: Tolerance = _ABSENT
    note: Text = _ABSENT


class Groups(_Model):
    """a groups mapping {param, arrays}"""

    param: Ident
    arrays: Axes


class PropertyOptions(_Model):
    """property options {backends, dtypes, max_examples, backend_examples, override, params, elements, dims, boundaries, require, arrays, output_axis, units, groups, wrt, negate, rotate, frameworks, note}"""  # noqa: E501

    backends: _nonempty(Backend) = _ABSENT
    dtypes: _nonempty(Dtype) = _ABSENT
    max_examples: Positive = _ABSENT
    backend_examples: dict[Backend, Positive] = _ABSENT
    override: dict[Ident, Scalar] = _ABSENT
    params: dict[Ident, Param] = _ABSENT
    elements: dict[Ident, Elements] = _ABSENT
    dims: dict[Ident, Dim] = _ABSENT
    boundaries: list[Literal[BOUNDARIES]] = _ABSENT
    require: _nonempty(Ident) = _ABSENT
    arrays: Axes = _ABSENT
    output_axis: Expr = _ABSENT
    units: Axes = _ABSENT
    groups: Groups = _ABSENT
    wrt: _nonempty(Ident) = _ABSENT
    negate: _nonempty(Ident) = _ABSENT
    rotate: _nonempty(Ident) = _ABSENT
    frameworks: _nonempty(Framework) = _ABSENT
    note: Text = _ABSENT


class Call(_Model):
    """a call mapping {method, args, kwargs, batch_axes, let, result}"""

    method: Ident = _ABSENT
    args: list[Expr] = _ABSENT
    kwargs: dict[Ident, Argument] = _ABSENT
    # module side only: how many leading axes of every array argument ``jax.vmap`` maps
    # (Equinox's modules take one unbatched example)
    batch_axes: Argument = _ABSENT
    # function side only: names computed on the module's backend before the call, in
    # order, and the expression of the call's output ``out`` compared with the module
    let: dict[Ident, Condition] = _ABSENT
    result: Condition = _ABSENT


class Module(_Model):
    """a module mapping {class, init, weights, call, function, dtypes, note}"""

    class_: ClassPath = Field(alias="class")
    init: dict[Ident, Argument] = _ABSENT
    weights: dict[WeightPath, Expr]
    call: Call = _ABSENT
    function: Call = _ABSENT
    dtypes: _nonempty(Dtype) = _ABSENT
    note: Text = _ABSENT


class Skip(_Model):
    """a skip mapping {property, backend, dtype, variant, reason}"""

    property: Property
    backend: Literal[BACKENDS + FRAMEWORKS] = _ABSENT
    dtype: Dtype = _ABSENT
    variant: Ident = _ABSENT
    reason: Reason


class Xfail(Skip):
    """an xfail mapping {property, backend, dtype, variant, reason, issue, strict}"""

    issue: Text = _ABSENT
    strict: Flag = _ABSENT


class Variant(_Model):
    """a variant mapping {name, set, dims, max_examples, summary}"""

    name: Ident
    set: dict[Ident, Scalar]
    dims: dict[Ident, Dim] = _ABSENT
    max_examples: Positive = _ABSENT
    summary: Text = _ABSENT


class Output(_Model):
    """an output mapping {shape, shape_when, dtype}"""

    shape: Shape
    shape_when: _nonempty(ShapeWhen) = _ABSENT
    # an input array's name (the output has its dtype), or 'bool' (a boolean output)
    dtype: Ident


class Hypothesis(_Model):
    """a hypothesis mapping {max_examples, backends, dtypes}"""

    max_examples: Positive = _ABSENT
    backends: dict[Backend, Positive] = _ABSENT
    # a cap on the budget of every target in that dtype (low-precision targets are extra)
    dtypes: dict[Dtype, Positive] = _ABSENT


class Spec(_Model):
    """a spec mapping: one function or layer family and the properties its tests check"""

    name: Ident
    kind: Literal["function", "layer"]
    summary: Text
    function: Dotted
    reference: ObjectPath = _ABSENT
    # the keyword that receives the backend's array namespace (a function without array
    # inputs, such as a mask builder, is told the library to build in)
    namespace: Ident = _ABSENT
    family: Literal[FAMILIES]
    variants: _nonempty(Variant) = []
    dims: dict[Ident, Dim] = {}
    params: dict[Ident, Param] = {}
    arrays: dict[Ident, Array]
    call: list[Ident] = []
    constraints: list[Condition] = []
    output: Output
    elements: Elements = _ABSENT
    dtypes: _nonempty(Dtype)
    backends: dict[Backend, BackendOptions]
    tolerances: Tolerances
    hypothesis: Hypothesis = _ABSENT
    properties: dict[Property, PropertyOptions | None]
    modules: dict[Framework, Module] = {}
    function_call: Call = _ABSENT
    skips: list[Skip] = []
    xfails: list[Xfail] = []
    notes: Text = _ABSENT

    @model_validator(mode="after")
    def _cross_references(self) -> "Spec":
        problems = _Problems()
        _check_references(self, problems)
        if problems:
            raise PydanticCustomError(
                "spec_references",
                "{count} cross-reference problem(s)",
                {"count": len(problems), "problems": list(problems)},
            )
        return self


# --------------------------------------------------------------------------------------
# cross references


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING = _Missing()


class _Problems(list[tuple[str, str, Any]]):
    """``(key path, expected form, got)`` of each cross-reference problem, in order."""

    def add(self, key: str, expected: str, got: Any = _MISSING) -> None:
        self.append((key, expected, got))

    def unknown(self, key: str, names: Iterable[str], known: Iterable[str], what: str) -> None:
        """Report the ``names`` that are not ``known`` (if any) as one problem."""
        unknown = sorted(set(names) - set(known))
        if unknown:
            self.add(key, f"{what} ({sorted(known)})", unknown)


def _shape_names(shape: Sequence[Any]) -> set[str]:
    names: set[str] = set()
    for entry in shape:
        if isinstance(entry, str):
            names |= expr.names_in(entry[1:] if entry.startswith("*") else entry)
    return names


def _param_names(param: Param) -> set[str]:
    names = {param.len} if isinstance(param.len, str) else set()
    if param.when is not None:
        names |= expr.names_in(param.when)
    for alt in param.one_of or ():
        names |= _param_names(alt)
    return names


def _check_param(param: Param, path: str, known: set[str], problems: _Problems) -> None:
    keys = param.set_keys()
    if param.one_of is not None:
        extra = sorted(keys - {"one_of", "array_forms", "pass", "note"})
        if extra:
            problems.add(path, "'one_of' alone (with array_forms, pass, note)", extra)
        for i, alt in enumerate(param.one_of):
            _check_param(alt, f"{path}.one_of[{i}]", known, problems)
        return
    kind = param.type or ("choice" if param.choices is not None else None)
    shown = param.model_dump(by_alias=True, exclude_unset=True)
    if kind is None:
        problems.add(path, "a 'type' or a 'choices' entry", shown)
        return
    if kind in ("int", "float") and not keys & {"range", "choices"}:
        problems.add(path, f"a 'range' or 'choices' for type {kind!r}", shown)
    if kind in ("int_tuple", "pair_tuple") and not keys >= {"len", "range"}:
        problems.add(path, f"'len' and 'range' for type {kind!r}", shown)
    if kind in ("choice", "object") and param.choices is None:
        problems.add(path, f"a 'choices' list for type {kind!r}", shown)
    for choice in param.choices or () if kind == "object" else ():
        if not (isinstance(choice, str) and re.fullmatch(_OBJECT_PATH, choice)):
            problems.add(f"{path}.choices", "object paths 'module:attribute'", choice)
    problems.unknown(path, _param_names(param), known, "names from dims or params")


def _check_references(spec: Spec, problems: _Problems) -> None:
    dims, params, arrays, modules = spec.dims, spec.params, spec.arrays, spec.modules
    known = set(dims) | set(params)
    clash = sorted((set(dims) & set(params)) | (set(arrays) & known))
    if clash:
        problems.add("dims/params/arrays", "distinct names across dims, params and arrays", clash)
    for name, dim in dims.items():
        if dim.range is None and dim.choices is None:
            problems.add(
                f"dims.{name}", "a 'range' or a 'choices' entry", dim.model_dump(exclude_unset=True)
            )
        for key, value in (("multiple_of", dim.multiple_of), ("rank", dim.rank)):
            if isinstance(value, str) and value not in params:
                problems.add(
                    f"dims.{name}.{key}", f"a parameter name (one of {sorted(params)})", value
                )
    for name, param in params.items():
        _check_param(param, f"params.{name}", known, problems)
    from_dims = "names from dims or params"
    for name, array in arrays.items():
        names = _shape_names(array.shape)
        for alt in array.shape_when or ():
            names |= _shape_names(alt.shape) | expr.names_in(alt.when)
        problems.unknown(f"arrays.{name}.shape", names, known, from_dims)
    problems.unknown("output.shape", _shape_names(spec.output.shape), known, from_dims)
    if spec.output.dtype not in arrays and spec.output.dtype != "bool":
        problems.add(
            "output.dtype",
            f"the name of an input array ({sorted(arrays)}) or 'bool'",
            spec.output.dtype,
        )
    if spec.namespace is not None and spec.namespace in known | set(arrays):
        problems.add(
            "namespace", "a keyword that is not a dim, param or array name", spec.namespace
        )
    for i, text in enumerate(spec.constraints):
        problems.unknown(f"constraints[{i}]", expr.names_in(text), known, from_dims)
    packs = {a.pack for a in arrays.values() if a.pack is not None}
    for name in sorted(packs & (known | set(arrays))):
        problems.add("arrays.*.pack", "a name that is not a dim, param or array name", name)
    for i, name in enumerate(spec.call):
        if name not in arrays and name not in params and name not in packs:
            problems.add(
                f"call[{i}]",
                f"an array, parameter or pack name ({sorted(set(arrays) | set(params) | packs)})",
                name,
            )
    if (spec.tolerances.policy == "bound") != (spec.tolerances.bound is not None):
        problems.add("tolerances.bound", "a bound function exactly when the policy is 'bound'")
    if spec.kind == "function" and spec.reference is None:
        problems.add("reference", "a required key for kind 'function' ('module:attribute')")
    if "cross_backend" in spec.properties and "numpy" not in spec.backends:
        problems.add(
            "properties.cross_backend", "a spec whose backends include 'numpy' (the baseline)"
        )
    for prop, options in spec.properties.items():
        _check_property(spec, prop, options or PropertyOptions(), problems)
    _check_low_precision(spec, problems)
    _check_calls(spec, known | set(arrays), problems)
    if spec.kind == "layer" and not modules:
        problems.add("modules", "at least one framework module for kind 'layer'")
    if spec.kind == "layer" and spec.function_call is None:
        problems.add("function_call", "a required key for kind 'layer' ({args, kwargs})")
    variant_names = [v.name for v in spec.variants]
    if len(set(variant_names)) != len(variant_names):
        problems.add("variants", "distinct variant names", variant_names)
    for i, variant in enumerate(spec.variants):
        for name in variant.set:
            if name not in params:
                problems.add(
                    f"variants[{i}].set.{name}", f"a parameter name ({sorted(params)})", name
                )
    for section, items in (("skips", spec.skips), ("xfails", spec.xfails)):
        for i, item in enumerate(items):
            if item.property not in spec.properties:
                problems.add(
                    f"{section}[{i}].property",
                    f"a property of this spec ({sorted(spec.properties)})",
                    item.property,
                )
            b = item.backend
            if b is not None and b not in spec.backends and b not in modules:
                problems.add(
                    f"{section}[{i}].backend",
                    f"a backend of this spec ({sorted(spec.backends)})",
                    b,
                )
            if item.variant is not None and item.variant not in variant_names:
                problems.add(
                    f"{section}[{i}].variant", f"a variant name ({variant_names})", item.variant
                )


def _check_property(spec: Spec, prop: str, options: PropertyOptions, problems: _Problems) -> None:
    path = f"properties.{prop}"
    families = INVARIANTS.get(prop)
    if families is not None and spec.family not in families:
        problems.add(
            path,
            f"a property implemented for family {spec.family!r}; {prop!r} exists for "
            f"{list(families)}",
            prop,
        )
    if prop == "module_equals_function" and spec.kind != "layer":
        problems.add(path, "a property of a spec with kind 'layer'", prop)
    if prop != "module_equals_function" and spec.kind == "layer":
        problems.add(path, "only 'module_equals_function' in a layer spec", prop)
    params, arrays = spec.params, spec.arrays
    for b in options.backends or ():
        if b not in spec.backends:
            problems.add(
                f"{path}.backends", f"backends listed under 'backends' ({sorted(spec.backends)})", b
            )
    for fw in options.frameworks or ():
        if fw not in spec.modules:
            problems.add(
                f"{path}.frameworks",
                f"frameworks listed under 'modules' ({sorted(spec.modules)})",
                fw,
            )
    for name in options.params or {}:
        if name not in params:
            problems.add(f"{path}.params.{name}", f"a parameter name ({sorted(params)})", name)
    for name, value in (options.override or {}).items():
        if name not in params and not (name in arrays and value is None):
            problems.add(
                f"{path}.override.{name}",
                f"a parameter name ({sorted(params)}) or an optional array set to null",
                name,
            )
    for key in ("arrays", "units", "elements"):
        for name in getattr(options, key) or {}:
            if name not in arrays:
                problems.add(f"{path}.{key}.{name}", f"an array name ({sorted(arrays)})", name)
    for key in ("wrt", "negate", "rotate", "require"):
        for name in getattr(options, key) or ():
            if name not in arrays:
                problems.add(f"{path}.{key}", f"array names ({sorted(arrays)})", name)
    for name in options.dims or {}:
        if name not in spec.dims:
            problems.add(f"{path}.dims.{name}", f"a dim name ({sorted(spec.dims)})", name)
    if options.groups is not None and options.groups.param not in params:
        problems.add(
            f"{path}.groups.param", f"a parameter name ({sorted(params)})", options.groups.param
        )


def _check_low_precision(spec: Spec, problems: _Problems) -> None:
    """A float16/bfloat16 listed anywhere needs its own tolerance entry (the float32 one
    would be far too tight for the output's rounding), and a property's low-precision dtype
    must be one of the spec's."""
    listed: dict[str, str] = {}
    for d in spec.dtypes:
        listed.setdefault(d, "dtypes")
    for prop, options in spec.properties.items():
        for d in (options.dtypes if options is not None else None) or ():
            if d in LOW_PRECISION and d not in spec.dtypes:
                problems.add(
                    f"properties.{prop}.dtypes",
                    f"dtypes listed under the spec's 'dtypes' ({list(spec.dtypes)})",
                    d,
                )
            listed.setdefault(d, f"properties.{prop}.dtypes")
    for fw, module in spec.modules.items():
        for d in module.dtypes or ():
            listed.setdefault(d, f"modules.{fw}.dtypes")
    for d, where in listed.items():
        if d in LOW_PRECISION and getattr(spec.tolerances, d) is None:
            problems.add(
                f"tolerances.{d}",
                f"a required key when {where} lists {d!r} ({{rtol, atol}}: the error beyond "
                "the output's rounding to the format and the float32 compute error)",
            )
    if "large_inputs_finite" in spec.properties:
        options = spec.properties["large_inputs_finite"] or PropertyOptions()
        dtypes = [d for d in options.dtypes or spec.dtypes if d in LOW_PRECISION]
        backends = options.backends or list(spec.backends)
        if not any(d in BACKEND_DTYPES[b] for b in backends for d in dtypes):
            problems.add(
                "properties.large_inputs_finite",
                "a spec whose dtypes list float16 or bfloat16 on a backend that has it "
                f"({BACKEND_DTYPES})",
                sorted(dtypes),
            )


def _check_calls(spec: Spec, known: set[str], problems: _Problems) -> None:
    """``let`` / ``result`` belong to the function side; their names must resolve."""
    calls = [("function_call", spec.function_call, True)]
    for fw, module in spec.modules.items():
        calls.append((f"modules.{fw}.call", module.call, False))
        calls.append((f"modules.{fw}.function", module.function, True))
    base_let = dict(spec.function_call.let or {}) if spec.function_call is not None else {}
    for path, call, function_side in calls:
        if call is None or not call.set_keys():
            continue
        if not function_side:
            for key, value in (("let", call.let), ("result", call.result)):
                if value is not None:
                    problems.add(
                        f"{path}.{key}",
                        "no such key on a module call ('let' and 'result' belong to "
                        "function_call or modules.<fw>.function)",
                        value,
                    )
            continue
        visible = set(known)
        lets = {**base_let, **(call.let or {})} if path != "function_call" else base_let
        for name, text in lets.items():
            if name in known or name == RESULT_NAME:
                problems.add(
                    f"{path}.let.{name}",
                    f"a new name (not a dim, param or array, nor {RESULT_NAME!r})",
                    name,
                )
            unknown = sorted(expr.names_in(text) - visible)
            if unknown:
                problems.add(f"{path}.let.{name}", "names defined before this entry", unknown)
            visible.add(name)
        if call.result is not None:
            problems.unknown(
                f"{path}.result",
                expr.names_in(call.result) - {RESULT_NAME},
                visible,
                f"names from dims, params, arrays, 'let' or {RESULT_NAME!r}",
            )


# --------------------------------------------------------------------------------------
# pydantic errors -> "<file>: key '<path>': expected <form>, got <value>"


def _strip(tp: Any) -> tuple[Any, list[Any], bool]:
    """``tp`` without ``Annotated``, ``X | None`` and aliases: (type, metadata, nullable)."""
    meta: list[Any] = []
    nullable = False
    while True:
        if isinstance(tp, ForwardRef):  # "Param" in Param.one_of, "Scalar" in Scalar
            tp = globals()[tp.__forward_arg__]
        elif isinstance(tp, TypeAliasType):
            tp = tp.__value__
        elif get_origin(tp) is Annotated:
            tp, *more = get_args(tp)
            meta = [*more, *meta]
        elif get_origin(tp) in (Union, UnionType) and NoneType in get_args(tp):
            (tp,) = (arg for arg in get_args(tp) if arg is not NoneType)
            nullable = True
        else:
            return tp, meta, nullable


def _members(tp: Any, meta: list[Any]) -> dict[str, Any] | None:
    """The tag -> member map of an :func:`_either` union (None for any other type)."""
    if not any(isinstance(m, Discriminator) for m in meta):
        return None
    return {m.tag: arg for arg in get_args(tp) for m in get_args(arg)[1:] if isinstance(m, Tag)}


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_types(model: type[BaseModel]) -> dict[str, Any]:
    """Key (alias) -> annotated type of each field of ``model``."""
    return {
        info.alias or name: Annotated[(info.annotation, *info.metadata)]
        if info.metadata
        else info.annotation
        for name, info in model.model_fields.items()
    }


def _locate(loc: Sequence[int | str]) -> tuple[str, Any, bool]:
    """The key path, the type at ``loc`` and whether ``loc`` names a mapping's key."""
    if loc and loc[-1] == "[key]":  # (..., mapping, key, "[key]"): the key itself is wrong
        mapping = _strip(_locate(loc[:-2])[1])[0]
        return _locate(loc[:-1])[0], get_args(mapping)[0], True
    tp: Any = Spec
    path = ""
    for item in loc:
        base, meta, _ = _strip(tp)
        members = _members(base, meta)
        if members is not None:  # an _either union: the tag is not part of the file's path
            tp = members[str(item)]
            continue
        if get_origin(base) is list:
            tp = get_args(base)[0]
            path += f"[{item}]"
            continue
        tp = _field_types(base)[str(item)] if _is_model(base) else get_args(base)[1]
        path = f"{path}.{item}" if path else str(item)
    return path, tp, False


_BASIC = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(tp: Any) -> str:
    """The form of values of type ``tp``, as an error message names it."""
    base, meta, nullable = _strip(tp)
    forms = [m.text for m in meta if isinstance(m, Form)]
    if forms:
        text = forms[-1]
    elif _is_model(base):
        text = (base.__doc__ or base.__name__).strip().splitlines()[0]
    elif get_origin(base) is Literal:
        text = "one of " + ", ".join(repr(c) for c in get_args(base))
    elif get_origin(base) is list:
        least = [m.min_length for m in meta if isinstance(m, Len) and m.min_length]
        more = f" (at least {least[0]})" if least else ""
        text = f"a list{more} of {_describe(get_args(base)[0])}"
    elif get_origin(base) is dict:
        key, value = get_args(base)
        text = f"a mapping of {_describe(key)} to {_describe(value)}"
    elif base in _BASIC:
        text = _BASIC[base] + "".join(f" >= {m.ge}" for m in meta if isinstance(m, Ge))
    else:  # pragma: no cover - every type of the schema is handled above
        text = str(base)
    return f"null or {text}" if nullable else text


def _line(source: str, key: str, expected: str, got: Any = _MISSING) -> str:
    got_text = "" if got is _MISSING else f", got {got!r}"
    return f"{source}: key '{key or '<top>'}': expected {expected}{got_text}"


def _messages(error: ValidationError, source: str) -> list[str]:
    lines = []
    for err in error.errors(include_url=False):
        kind, loc, got = err["type"], err["loc"], err["input"]
        if kind == "spec_references":
            lines += [_line(source, *problem) for problem in err["ctx"]["problems"]]
        elif kind == "extra_forbidden":
            path, tp, _ = _locate(loc[:-1])
            allowed = ", ".join(sorted(_field_types(_strip(tp)[0])))
            key = f"{path}.{loc[-1]}" if path else str(loc[-1])
            lines.append(_line(source, key, f"no such key here; allowed keys: {allowed}", loc[-1]))
        else:
            path, tp, is_key = _locate(loc)
            if kind == "missing":
                lines.append(_line(source, path, f"a required key ({_describe(tp)})"))
            elif is_key:
                lines.append(_line(source, path, f"a key that is {_describe(tp)}", got))
            elif kind.startswith("spec_"):
                lines.append(_line(source, path, err["msg"], got))
            else:
                lines.append(_line(source, path, _describe(tp), got))
    return lines


def validate(data: Any, source: str) -> Spec:
    """Check ``data`` (a parsed spec file) against the schema and its cross references.

    Returns
    -------
    Spec
        The validated model (the loader keeps ``data`` itself).

    Raises
    ------
    SpecError
        Listing every problem as ``<source>: key '<path>': expected <form>, got <value>``.
    """
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError("\n".join(_messages(exc, source))) from None


class _SchemaGenerator(GenerateJsonSchema):
    """JSON Schema without pydantic's defaults (absent is not null) and per-field titles,
    and with key patterns that reject other keys."""

    def default_schema(self, schema: Any) -> Any:
        return self.generate_inner(schema["schema"])

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def dict_schema(self, schema: Any) -> Any:
        # pydantic writes a key pattern as patternProperties, which lets any other key
        # through; as propertyNames an editor flags a key that does not match
        out = super().dict_schema(schema)
        for pattern, values in out.pop("patternProperties", {}).items():
            out["additionalProperties"] = values
            out["propertyNames"] = {**out.get("propertyNames", {}), "pattern": pattern}
        return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a spec file, for editors."""
    body = Spec.model_json_schema(schema_generator=_SchemaGenerator)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **body,
        "title": "nmn_array spec file (spec/functions/*.yaml, spec/layers/*.yaml)",
    }
