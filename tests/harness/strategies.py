"""Hypothesis strategies built from a spec: params -> dims -> constraints -> arrays.

Inputs are drawn once, in NumPy float64 (bounded, no NaN/inf/subnormals), and every backend
receives the same data through ``Backend.from_numpy``. Dim sizes come from small ranges so
that JAX compiles a bounded number of shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nmn_array._spec import expr
from tests.harness import families
from tests.harness.case import ArrayParam, Case
from tests.harness.spec import Spec

#: Arrays up to this many elements are drawn element by element by hypothesis (so it can
#: shrink them); larger ones are filled from a NumPy generator seeded by hypothesis, which
#: keeps every draw within hypothesis' 8 KiB buffer.
MAX_DRAWN_ELEMENTS = 400

_DEFAULT_ELEMENTS = {"min": -3.0, "max": 3.0, "min_magnitude": 1e-6}


def _param_order(params: Mapping[str, Any]) -> list[str]:
    """Parameters ordered so that ``len``/``when`` references are drawn first."""

    def refs(p: Mapping[str, Any]) -> set[str]:
        out = set()
        if isinstance(p.get("len"), str):
            out.add(p["len"])
        if "when" in p:
            out |= expr.names_in(p["when"])
        for alt in p.get("one_of", ()):
            out |= refs(alt)
        return out

    order: list[str] = []
    pending = list(params)
    while pending:
        progressed = False
        for name in list(pending):
            if refs(params[name]) & set(pending) - {name}:
                continue
            order.append(name)
            pending.remove(name)
            progressed = True
        if not progressed:  # a cycle or a dim reference: keep the spec's order
            order.extend(pending)
            break
    return order


def tupled(value: Any) -> Any:
    """YAML lists as tuples (recursively): per-dimension parameters are tuples."""
    if isinstance(value, list):
        return tuple(tupled(v) for v in value)
    return value


def _draw_param(draw: Any, p: Mapping[str, Any], env: Mapping[str, Any], label: str) -> Any:
    if "one_of" in p:
        options = [a for a in p["one_of"] if "when" not in a or expr.evaluate(a["when"], env)]
        assume(options)
        index = draw(st.integers(0, len(options) - 1), label=f"{label}.form")
        return _draw_param(draw, options[index], env, label)
    kind = p.get("type", "choice" if "choices" in p else None)
    if "choices" in p:
        return tupled(draw(st.sampled_from(list(p["choices"])), label=label))
    lo, hi = p.get("range", (0, 0))
    if kind == "bool":
        return draw(st.booleans(), label=label)
    if kind == "int":
        return draw(st.integers(int(lo), int(hi)), label=label)
    if kind == "float":
        if p.get("log"):
            exponent = draw(st.floats(math.log10(lo), math.log10(hi)), label=label)
            return float(10.0**exponent)
        return draw(st.floats(float(lo), float(hi), allow_nan=False), label=label)
    n = p["len"] if isinstance(p["len"], int) else int(env[p["len"]])
    ints = st.integers(int(lo), int(hi))
    if kind == "int_tuple":
        return tuple(draw(st.lists(ints, min_size=n, max_size=n), label=label))
    if kind == "pair_tuple":
        pairs = st.tuples(ints, ints)
        return tuple(draw(st.lists(pairs, min_size=n, max_size=n), label=label))
    raise AssertionError(f"unknown parameter type {kind!r}")


def _draw_dim(draw: Any, d: Mapping[str, Any], env: Mapping[str, Any], label: str) -> Any:
    rank_spec = d.get("rank")
    if rank_spec is None:
        rank = None
    elif isinstance(rank_spec, int):
        rank = rank_spec
    elif isinstance(rank_spec, list):
        rank = draw(st.integers(rank_spec[0], rank_spec[1]), label=f"{label}.rank")
    else:
        rank = int(env[rank_spec])
    multiple = int(env[d["multiple_of"]]) if "multiple_of" in d else 1

    def one(i: int) -> int:
        if "choices" in d:
            options = [c for c in d["choices"] if c % multiple == 0]
            assume(options)
            return draw(st.sampled_from(options), label=f"{label}[{i}]")
        lo, hi = d["range"]
        lo_m, hi_m = -(-lo // multiple), hi // multiple
        assume(lo_m <= hi_m)
        return multiple * draw(st.integers(lo_m, hi_m), label=f"{label}[{i}]")

    if rank is None:
        return one(0)
    return tuple(one(i) for i in range(rank))


def shape_of(entries: list[Any], env: Mapping[str, Any]) -> tuple[int, ...]:
    """Evaluate a spec shape (ints, expressions, ``*`` splices of per-dimension tuples)."""
    shape: list[int] = []
    for entry in entries:
        if isinstance(entry, str) and entry.startswith("*"):
            shape.extend(int(v) for v in expr.evaluate_each(entry[1:], env))
        else:
            value = expr.evaluate(entry, env)
            if isinstance(value, tuple):
                raise expr.ExprError(f"shape entry {entry!r} is a tuple {value}; write '*{entry}'")
            shape.append(int(value))
    return tuple(shape)


def select_shape(entry: Mapping[str, Any], env: Mapping[str, Any]) -> list[Any]:
    """The first ``shape_when`` alternative whose condition holds, else ``shape``."""
    for alt in entry.get("shape_when", ()):
        if expr.evaluate(alt["when"], env):
            return alt["shape"]
    return entry["shape"]


#: The input magnitude ``large_inputs_finite`` draws up to (float16's largest is 65504).
LARGE_MAGNITUDE = 1e3


def _elements(spec: Spec, prop: str, name: str) -> dict[str, Any]:
    out = dict(_DEFAULT_ELEMENTS)
    out.update(spec.data.get("elements", {}))
    own = spec.arrays[name].get("elements", {})
    if prop == "large_inputs_finite" and not {"min", "max"} & set(own):
        # the data inputs (arrays without a range of their own, such as a projection's
        # nodes in [0, 1]) span +-1e3, or [0, 1e3] where the spec's range is non-negative
        out["min"] = 0.0 if out["min"] >= 0 else -LARGE_MAGNITUDE
        out["max"] = LARGE_MAGNITUDE
    out.update(own)
    out.update(spec.options(prop).get("elements", {}).get(name, {}))
    return out


def _draw_array(
    draw: Any, kind: str, shape: tuple[int, ...], el: Mapping[str, Any], label: str
) -> np.ndarray:
    size = math.prod(shape)
    if kind == "bool":
        p_true = float(el.get("p_true", 0.7))
        weights = [True] * round(10 * p_true) + [False] * (10 - round(10 * p_true))
        return draw(hnp.arrays(np.bool_, shape, elements=st.sampled_from(weights)), label=label)
    lo, hi = el["min"], el["max"]
    if kind == "int64":
        return draw(
            hnp.arrays(np.int64, shape, elements=st.integers(int(lo), int(hi))), label=label
        )
    if size > MAX_DRAWN_ELEMENTS:
        seed = draw(st.integers(0, 2**32 - 1), label=f"{label}.seed")
        a = np.random.default_rng(seed).uniform(lo, hi, size=shape)
    else:
        floats = st.floats(
            lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64
        )
        # fill=nothing: draw every element (hypothesis' default fill repeats one value)
        a = draw(hnp.arrays(np.float64, shape, elements=floats, fill=st.nothing()), label=label)
    tiny = float(el.get("min_magnitude", 0.0))
    # values below min_magnitude become 0, so no float32 product of inputs is subnormal
    a = np.where(np.abs(a) < tiny, 0.0, a)
    if "min_abs" in el:
        # keep away from 0 (kinks of |v| in normalisations defeat finite differences)
        m = float(el["min_abs"])
        a = np.where(np.abs(a) < m, np.where(a < 0, -m, m), a)
    return a


def _fixed_values(spec: Spec, prop: str, fixed: Mapping[str, Any] | None) -> dict[str, Any]:
    values = dict(spec.unit.fixed)
    values.update({k: v for k, v in spec.options(prop).get("override", {}).items()})
    values.update(fixed or {})
    return {k: tupled(v) for k, v in values.items()}


def cases(
    spec: Spec, prop: str, *, present: tuple[str, ...] = (), **fixed: Any
) -> st.SearchStrategy[Case]:
    """The composite strategy of ``spec`` for property ``prop``.

    ``fixed`` pins parameters (or, with ``None``, removes optional arrays); the spec's
    variant and the property's ``override`` pin them too. ``present`` names optional arrays
    that must be drawn (as the property option ``require`` does).
    """
    options = spec.options(prop)
    params_spec = {**spec.params, **options.get("params", {})}
    variant_dims = spec.unit.variant.get("dims", {}) if spec.unit.variant else {}
    dims_spec = {**spec.data.get("dims", {}), **variant_dims, **options.get("dims", {})}
    pinned = _fixed_values(spec, prop, fixed)
    required = set(options.get("require", ())) | set(present)
    boundaries = list(options.get("boundaries", ()))

    @st.composite
    def draw_case(draw: Any) -> Case:
        env: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for name in _param_order(params_spec):
            p = params_spec[name]
            if name in pinned:
                value = pinned[name]
            else:
                value = _draw_param(draw, p, env, name)
            env[name] = value
            if p.get("array_forms") and isinstance(value, float) and name not in pinned:
                form = draw(st.sampled_from(["float", "()", "(1,)"]), label=f"{name}.form")
                if form != "float":
                    value = ArrayParam(value, () if form == "()" else (1,))
            params[name] = value
        dims: dict[str, Any] = {}
        for name, d in dims_spec.items():
            dims[name] = _draw_dim(draw, d, {**env, **dims}, name)
        env.update(dims)
        for text in spec.data.get("constraints", ()):
            assume(all(expr.evaluate_each(text, env)))
        arrays: dict[str, np.ndarray | None] = {}
        for name, a in spec.arrays.items():
            if name in pinned and pinned[name] is None:
                arrays[name] = None
                continue
            if a.get("optional") and name not in required:
                if not draw(st.booleans(), label=f"{name}.present"):
                    arrays[name] = None
                    continue
            shape = shape_of(select_shape(a, env), env)
            arrays[name] = _draw_array(
                draw, a.get("dtype", "float"), shape, _elements(spec, prop, name), name
            )
        case = Case(params=params, dims=dims, arrays=arrays)
        if boundaries:
            boundary = draw(st.sampled_from([None, *boundaries]), label="boundary")
            if boundary is not None:
                case = families.apply_boundary(spec, case, boundary)
        return case

    return draw_case()
