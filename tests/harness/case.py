"""One drawn example: parameter values, dim sizes and NumPy float64 input arrays."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArrayParam:
    """A float parameter (alpha, epsilon) passed as an array of shape ``()`` or ``(1,)``."""

    value: float
    shape: tuple[int, ...]

    def __repr__(self) -> str:
        return f"ArrayParam({self.value!r}, shape={self.shape})"


def plain(value: Any) -> Any:
    """The Python value of a parameter (the float inside an :class:`ArrayParam`)."""
    return value.value if isinstance(value, ArrayParam) else value


@dataclass(eq=False)
class Case:
    """Inputs of one call, identical for every backend (arrays are NumPy float64/int/bool)."""

    params: dict[str, Any]
    dims: dict[str, Any]
    arrays: dict[str, np.ndarray | None]
    boundary: str | None = None
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def digest(self) -> str:
        """A content hash: equal for equal inputs, whichever test drew them.

        Derandomized tests draw the same cases for every target of a test function, so
        references cached under this key are computed once per case, not once per target.
        """
        if "digest" not in self.cache:
            h = hashlib.sha1(repr((self.params, self.dims, self.boundary)).encode())
            for name in sorted(self.arrays):
                a = self.arrays[name]
                h.update(name.encode())
                if a is not None:
                    h.update(f"{a.dtype}{a.shape}".encode())
                    h.update(np.ascontiguousarray(a).tobytes())
            self.cache["digest"] = h.hexdigest()
        return self.cache["digest"]

    def env(self) -> dict[str, Any]:
        """Names visible to spec expressions: dims and (plain) parameter values."""
        return {**self.dims, **{k: plain(v) for k, v in self.params.items()}}

    def replace(
        self,
        *,
        params: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray | None] | None = None,
        dims: dict[str, Any] | None = None,
    ) -> Case:
        """A new case with some parameters, arrays or dims changed (no shared cache)."""
        return Case(
            params={**self.params, **(params or {})},
            dims={**self.dims, **(dims or {})},
            arrays={**self.arrays, **(arrays or {})},
            boundary=self.boundary,
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis' pretty printer: use the exact repr below, not a field-by-field one."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        # full precision, so that a failure printed by hypothesis can be replayed exactly
        with np.printoptions(precision=17, threshold=1_000_000, linewidth=100):
            parts = [f"params={self.params!r}", f"dims={self.dims!r}"]
            if self.boundary:
                parts.append(f"boundary={self.boundary!r}")
            arrays = ", ".join(f"{name!r}: {a!r}" for name, a in self.arrays.items())
            parts.append(f"arrays={{{arrays}}}")
        return "Case(" + ", ".join(parts) + ")"
