"""Specs as the harness sees them: a loaded unit plus its resolved callables.

Generated files call :func:`load` once at import; the result is cached per (file, variant).
Meta-tests swap the function under test with :meth:`Spec.with_function`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hypothesis import settings

from nmn_array._spec.load import DEFAULT_EXAMPLES, Unit, find_root, load_file

#: The repository this harness belongs to (spec/ lives there).
ROOT = find_root(Path(__file__).resolve().parent)


def resolve(path: str) -> Any:
    """Import ``"pkg.mod:attr"`` or ``"pkg.mod.attr"``."""
    if ":" in path:
        module, attr = path.split(":", 1)
    else:
        module, attr = path.rsplit(".", 1)
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Spec:
    """One unit of a spec file (a function, a conv variant, a layer family)."""

    unit: Unit
    function_override: Callable[..., Any] | None = None
    reference_override: Callable[..., Any] | None = None

    # -- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.unit.name

    @property
    def data(self) -> Mapping[str, Any]:
        return self.unit.data

    @property
    def family(self) -> str:
        return self.data["family"]

    def __repr__(self) -> str:
        return f"Spec({self.unit.file.relpath}, {self.name})"

    # -- callables ------------------------------------------------------------------------
    @property
    def fn(self) -> Callable[..., Any]:
        return self.function_override or resolve(self.data["function"])

    @property
    def ref(self) -> Callable[..., Any]:
        if self.reference_override is not None:
            return self.reference_override
        if "reference" not in self.data:
            raise AssertionError(f"{self}: the spec names no reference")
        return resolve(self.data["reference"])

    def with_function(self, fn: Callable[..., Any]) -> Spec:
        """The same spec checking ``fn`` instead of the spec's function (meta-tests)."""
        return replace(self, function_override=fn)

    def with_reference(self, fn: Callable[..., Any]) -> Spec:
        return replace(self, reference_override=fn)

    # -- shortcuts ------------------------------------------------------------------------
    def options(self, prop: str) -> Mapping[str, Any]:
        return self.unit.options(prop)

    @property
    def params(self) -> Mapping[str, Any]:
        return self.data.get("params", {})

    @property
    def arrays(self) -> Mapping[str, Any]:
        return self.data["arrays"]

    @property
    def call(self) -> list[str]:
        return list(self.data.get("call", ()))

    @property
    def tolerances(self) -> Mapping[str, Any]:
        return self.data["tolerances"]


@functools.cache
def _load(key: str, variant: str | None) -> Spec:
    spec_dir = ROOT / "spec"
    file = load_file(spec_dir / key, ROOT, spec_dir)
    for unit in file.units():
        if unit.variant_name == variant:
            return Spec(unit)
    raise KeyError(f"spec/{key} has no variant {variant!r}")


def load(key: str, variant: str | None = None) -> Spec:
    """The spec ``spec/<key>`` (one of its variants when it has several)."""
    return _load(key, variant)


def examples(n: int) -> int:
    """A spec's example budget scaled by the active hypothesis profile.

    Budgets in the spec are written for the ``ci`` profile (25 examples by default); the
    ``thorough`` profile (500) multiplies every budget by 20.
    """
    scale = settings.default.max_examples / DEFAULT_EXAMPLES
    return max(1, round(n * scale))
