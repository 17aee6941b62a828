"""The frameworks the demo and ``nmn-array xor`` can use, found without importing them.

A framework is *installed* when its library can be found by ``importlib.util.find_spec``;
importing TensorFlow or JAX just to test for it would cost seconds and hundreds of MB.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

#: Frameworks with language models (``nmn-array demo lm``).
LM_FRAMEWORKS = ("torch", "nnx")
#: Where ``nmn-array demo lm`` writes its figure; here, not in the NumPy-using module, so
#: that building the command-line parser never needs NumPy.
LM_DEFAULT_OUT = "nmn-array-demo-lm.png"

#: ``nmn-array demo attention``: its tasks and attention variants (printed order) and the
#: defaults its parser shows; here so that building the parser never imports NumPy or torch.
ATTENTION_TASKS = ("copy", "reverse")
ATTENTION_VARIANTS = ("softmax", "yat", "spherical_yat", "slay", "maclaurin", "radial")
ATTENTION_STEPS = 200
ATTENTION_QUICK_STEPS = 4


class MissingFramework(RuntimeError):
    """A requested framework is unknown or not installed; ``str()`` is a one-line message."""


@dataclass(frozen=True)
class Framework:
    """One framework module of ``nmn_array.frameworks``.

    Attributes
    ----------
    name : str
        The module name under ``nmn_array.frameworks`` (``"torch"``, ``"nnx"``, ...).
    library : str
        The top-level package it needs (found with ``find_spec``, never imported here).
    extra : str
        The pip extra of ``nmn-array`` that installs it.
    """

    name: str
    library: str
    extra: str

    def installed(self) -> bool:
        """True if :attr:`library` can be imported (it is not imported here).

        Examples
        --------
        >>> FRAMEWORKS["torch"].installed() in (True, False)
        True
        """
        return importlib.util.find_spec(self.library) is not None

    def install_hint(self) -> str:
        """The one-line message shown when the library is missing.

        Examples
        --------
        >>> FRAMEWORKS["tf"].install_hint()
        'tf needs tensorflow, which is not installed; install it with: pip install "nmn-array[tf]"'
        """
        return (
            f"{self.name} needs {self.library}, which is not installed; "
            f'install it with: pip install "nmn-array[{self.extra}]"'
        )


FRAMEWORKS: dict[str, Framework] = {
    "torch": Framework("torch", "torch", "torch"),
    "nnx": Framework("nnx", "flax", "nnx"),
    "linen": Framework("linen", "flax", "linen"),
    "keras": Framework("keras", "keras", "keras"),
    "tf": Framework("tf", "tensorflow", "tf"),
}

#: Frameworks with demo models (``linen`` is used by ``nmn-array xor`` only).
DEMO_FRAMEWORKS = ("torch", "nnx", "keras", "tf")
#: Order in which a default framework is chosen.
DEFAULT_ORDER = ("torch", "nnx")
#: Frameworks of nmn 0.3.5 that nmn_array does not provide, with what to use instead.
NOT_PORTED = {"mlx": "nmn_array has no MLX layers (nmn's mlx modules are not ported)"}


def resolve(name: str | None, allowed: tuple[str, ...] = DEMO_FRAMEWORKS) -> Framework:
    """The framework called ``name`` (default: the first installed of torch, nnx).

    Raises
    ------
    MissingFramework
        If ``name`` is not one of ``allowed`` or its library is not installed; the message
        is one line and names the pip extra to install.

    Examples
    --------
    >>> resolve("mlx")
    Traceback (most recent call last):
    ...
    nmn_array.demo.registry.MissingFramework: framework 'mlx' is not available: nmn_array has no MLX layers (nmn's mlx modules are not ported); choose one of torch, nnx, keras, tf
    """
    choices = ", ".join(allowed)
    if name is None:
        for candidate in DEFAULT_ORDER:
            if candidate in allowed and FRAMEWORKS[candidate].installed():
                return FRAMEWORKS[candidate]
        raise MissingFramework(
            "no framework installed for the demo; install one with: "
            'pip install "nmn-array[torch]" (or nnx, keras, tf)'
        )
    key = name.lower()
    if key in NOT_PORTED:
        raise MissingFramework(
            f"framework {name!r} is not available: {NOT_PORTED[key]}; choose one of {choices}"
        )
    if key not in allowed:
        raise MissingFramework(f"unknown framework {name!r}; choose one of {choices}")
    fw = FRAMEWORKS[key]
    if not fw.installed():
        raise MissingFramework(fw.install_hint())
    return fw
