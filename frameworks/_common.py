"""Configuration shared by every framework module: no framework imports, no yat math.

Each framework module turns constructor arguments into the same small records here, so
the rules for alpha, bias, epsilon and padding are written once for all frameworks.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

SQRT2 = math.sqrt(2.0)

# Which pip extra provides each framework, for the error a user sees when it is missing.
_EXTRAS = {
    "torch": "torch",
    "jax": "nnx",
    "flax": "nnx",
    "keras": "keras",
    "tensorflow": "tensorflow",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the extra to install.

    Examples
    --------
    >>> require("math").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS.get(module.split(".")[0], module.split(".")[0])
        raise ImportError(
            f'{module} is not installed; install it with: pip install "nmn-array[{extra}]"'
        ) from exc


@dataclass(frozen=True)
class AlphaConfig:
    """How a layer scales its output.

    ``mode`` is ``"learnable"`` (a parameter of shape ``(1,)`` initialised to ``init``),
    ``"constant"`` (the float ``value``) or ``"none"``.
    """

    mode: str
    value: float | None = None
    init: float = 1.0


def alpha_config(use_alpha: bool = True, constant_alpha: Any = None) -> AlphaConfig:
    """Resolve nmn's ``use_alpha`` / ``constant_alpha`` pair.

    ``constant_alpha=True`` means sqrt(2); a number means that number; ``None`` or ``False``
    means "no constant": a learnable alpha if ``use_alpha`` else none.

    Examples
    --------
    >>> alpha_config(True, None).mode
    'learnable'
    >>> round(alpha_config(True, True).value, 6)
    1.414214
    >>> alpha_config(False, None).mode
    'none'
    """
    if constant_alpha is True:
        return AlphaConfig("constant", SQRT2)
    if constant_alpha is not None and constant_alpha is not False:
        if isinstance(constant_alpha, bool) or not isinstance(constant_alpha, (int, float)):
            raise TypeError(
                f"constant_alpha must be None, a bool or a number, got {constant_alpha!r}"
            )
        return AlphaConfig("constant", float(constant_alpha))
    return AlphaConfig("learnable") if use_alpha else AlphaConfig("none")


@dataclass(frozen=True)
class BiasConfig:
    """``mode`` is ``"learnable"``, ``"constant"`` (float ``value``) or ``"none"``."""

    mode: str
    value: float | None = None


def bias_config(use_bias: bool = True, constant_bias: Any = None) -> BiasConfig:
    """Resolve nmn's ``use_bias`` / ``constant_bias`` pair (Decision 4: False = no constant).

    Examples
    --------
    >>> bias_config(True, 0.5)
    BiasConfig(mode='constant', value=0.5)
    >>> bias_config(True, False).mode
    'learnable'
    """
    if constant_bias is not None and constant_bias is not False:
        if isinstance(constant_bias, bool) or not isinstance(constant_bias, (int, float)):
            raise TypeError(f"constant_bias must be None or a number, got {constant_bias!r}")
        return BiasConfig("constant", float(constant_bias))
    return BiasConfig("learnable") if use_bias else BiasConfig("none")


def check_epsilon(epsilon: float) -> float:
    """Validate a layer's epsilon (a positive finite float)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a positive float, got {epsilon!r}")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite float, got {epsilon!r}")
    return float(epsilon)


def softplus_inverse(epsilon: float) -> float:
    """The raw value whose softplus is ``epsilon`` (Decision 11), stable for small epsilon.

    Examples
    --------
    >>> eps = 1e-5
    >>> abs(math.log1p(math.exp(softplus_inverse(eps))) - eps) < 1e-18
    True
    """
    epsilon = check_epsilon(epsilon)
    return epsilon + math.log(-math.expm1(-epsilon))


def ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Expand an int to ``n`` ints, or check that a sequence has ``n`` of them.

    Examples
    --------
    >>> ntuple(3, 2, "kernel_size")
    (3, 3)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    values = tuple(value)
    if len(values) != n or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
    return values
