"""Configuration shared by every framework module: no framework imports, no yat math.

Each framework module turns constructor arguments into the same small records here, so
the rules for alpha, bias, epsilon and padding are written once for all frameworks.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
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


def unit_normalized(a: Any, keep_axis: int) -> Any:
    """``a`` with each slice along ``keep_axis`` scaled to unit length, ``v / (|v| + 1e-8)``.

    nmn's ``weight_normalized`` re-parameterisation of a stored kernel or table (Decision 7),
    computed by :func:`nmn_array.dense.normalize` on the framework's own array.

    Examples
    --------
    >>> import numpy as np
    >>> unit_normalized(np.array([[3.0, 0.0], [4.0, 1.0]]), 1).round(6).tolist()
    [[0.6, 0.0], [0.8, 1.0]]
    """
    from nmn_array._namespace import array_namespace
    from nmn_array.dense import normalize

    axes = tuple(i for i in range(a.ndim) if i != keep_axis % a.ndim)
    return normalize(array_namespace(a), a, axis=axes)


def mask_visibility(mask: Any) -> Any:
    """Boolean of the keys an attention ``mask`` lets each query see, under the one mask rule
    of :func:`nmn_array.yat_attention`: a boolean mask is its own visibility (True = attend),
    a floating mask is additive and hides exactly its -inf entries; other dtypes raise
    TypeError. The modules zero the output of a query that sees no key with it.

    Examples
    --------
    >>> import numpy as np
    >>> mask_visibility(np.array([0.0, -np.inf, -3.0])).tolist()
    [True, False, True]
    """
    from nmn_array._namespace import array_namespace
    from nmn_array.attention import _shown

    return _shown(array_namespace(mask), mask)


def restrict_mask(mask: Any, allowed: Any) -> Any:
    """``mask`` (boolean, additive or None) further limited to the keys the boolean ``allowed``
    lets through, keeping its kind (an additive mask gets -inf where ``allowed`` is False).

    Examples
    --------
    >>> import numpy as np
    >>> restrict_mask(np.array([0.0, -1.0]), np.array([True, False])).tolist()
    [0.0, -inf]
    """
    from nmn_array._namespace import array_namespace
    from nmn_array.attention import _restrict

    return _restrict(array_namespace(mask, allowed), mask, allowed)


def combine_masks(a: Any, b: Any) -> Any:
    """Two attention masks applied together: boolean ones are and-ed, additive ones added,
    and a boolean one limits an additive one (see :func:`restrict_mask`).

    Examples
    --------
    >>> import numpy as np
    >>> combine_masks(np.array([0.0, -1.0]), np.array([False, True])).tolist()
    [-inf, -1.0]
    """
    from nmn_array._namespace import array_namespace
    from nmn_array.attention import _is_additive, _restrict

    xp = array_namespace(a, b)
    if not _is_additive(xp, b):
        return _restrict(xp, a, b)
    if not _is_additive(xp, a):
        return _restrict(xp, b, a)
    return a + b


def require(module: str) -> ModuleType:
    """Import ``module``, or raise an ImportError that says why it failed.

    "not installed" (and the extra to install) only when the top-level package is absent;
    when it is installed but fails to import (Keras without its backend, a broken install,
    a too old version), the message carries the original error, and for Keras the backend
    in use (``KERAS_BACKEND``).

    Examples
    --------
    >>> require("math").sqrt(4.0)
    2.0
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except (ImportError, ValueError) as exc:
        # Keras raises ValueError for a backend it does not know (e.g. KERAS_BACKEND=mlx)
        extra = _EXTRAS.get(top, top)
        if importlib.util.find_spec(top) is None:
            raise ImportError(
                f'{module} is not installed; install it with: pip install "nmn-array[{extra}]"'
            ) from exc
        detail = f"{type(exc).__name__}: {exc}"
        if top == "keras":
            raise ImportError(
                f"keras is installed but failed to import with backend {_keras_backend()!r} "
                f"({detail}). Keras needs its backend installed: pip install "
                '"nmn-array[keras]" brings the default, tensorflow; "nmn-array[keras-jax]" '
                "brings jax (set KERAS_BACKEND=jax); for torch install torch and set "
                "KERAS_BACKEND=torch"
            ) from exc
        what = f"{top} is installed but" if module == top else f"{top} is installed but {module}"
        raise ImportError(
            f'{what} failed to import ({detail}); reinstall with: pip install "nmn-array[{extra}]"'
        ) from exc


def _keras_backend() -> str:
    """The backend Keras will load: ``KERAS_BACKEND``, else ``keras.json``, else tensorflow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError):
        return "tensorflow"


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
    """Validate a layer's epsilon (a positive finite float; a NumPy scalar is a float)."""
    from nmn_array._validation import plain

    epsilon = plain(epsilon)
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


#: Largest finite value and smallest normal of the floating dtypes a parameter can have.
_FLOAT_RANGES = {
    "float16": (6.103515625e-05, 65504.0),
    "bfloat16": (1.1754943508222875e-38, 3.3895313892515355e38),
    "float32": (1.1754943508222875e-38, 3.4028234663852886e38),
    "float64": (2.2250738585072014e-308, 1.7976931348623157e308),
}


def dtype_name(dtype: Any) -> str:
    """The name of a floating dtype of any framework (``None`` is float32), e.g. "float64".

    Examples
    --------
    >>> dtype_name("float64"), dtype_name(None)
    ('float64', 'float32')
    """
    if dtype is None:
        return "float32"
    name = getattr(dtype, "name", None)  # NumPy, TensorFlow and Keras dtypes
    if not isinstance(name, str):
        name = getattr(dtype, "__name__", None) or str(dtype)  # jnp.float32, torch.float32
    name = name.rsplit(".", 1)[-1]
    if name not in _FLOAT_RANGES:
        raise TypeError(f"expected a floating dtype (float16 ... float64), got {dtype!r}")
    return name


def learnable_epsilon(epsilon: float, dtype: Any) -> tuple[float, str]:
    """The raw value of a learnable epsilon (``epsilon = softplus(raw)``, Decision 11) and
    the dtype it is stored in: float32 for float16/bfloat16 layers (as nmn: the raw value of
    a small epsilon is far outside float16's range), else the layer's dtype.

    An epsilon the storage dtype cannot hold as a normal number (below its smallest normal,
    where softplus underflows to 0, or above its largest value) raises ValueError here,
    instead of an inf or an unrelated error at the first call.

    Examples
    --------
    >>> raw, storage = learnable_epsilon(1e-5, "float16")
    >>> storage, round(raw, 4)
    ('float32', -11.5129)
    >>> learnable_epsilon(1e-46, "float32")
    Traceback (most recent call last):
    ...
    ValueError: learnable epsilon=1e-46 cannot be stored in float32: it must lie between float32's smallest normal 1.1754943508222875e-38 and its largest value 3.4028234663852886e+38
    """
    epsilon = check_epsilon(epsilon)
    name = dtype_name(dtype)
    storage = "float32" if name in ("float16", "bfloat16") else name
    tiny, big = _FLOAT_RANGES[storage]
    if not tiny <= epsilon <= big:
        raise ValueError(
            f"learnable epsilon={epsilon!r} cannot be stored in {storage}: it must lie between "
            f"{storage}'s smallest normal {tiny!r} and its largest value {big!r}"
        )
    return softplus_inverse(epsilon), storage


def known_size(size: int | None, what: str) -> int:
    """``size`` as an int; a ValueError naming ``what`` when it is unknown (None) at build time.

    Examples
    --------
    >>> known_size(4, "the last axis of the input")
    4
    """
    if size is None:
        raise ValueError(f"{what} must have a known size to build the layer, got None")
    return int(size)


def ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Expand an int to ``n`` ints, or check that a sequence has ``n`` of them.

    Examples
    --------
    >>> ntuple(3, 2, "kernel_size")
    (3, 3)
    """
    message = f"{name} must be an int or {n} ints, got {value!r}"
    if isinstance(value, bool):  # an int to isinstance, but never a size
        raise ValueError(message)
    if isinstance(value, int):
        return (value,) * n
    values = tuple(value)
    if len(values) != n or not all(isinstance(v, int) for v in values):
        raise ValueError(message)
    return values


# --------------------------------------------------------------------------------------
# Keras / TensorFlow helpers (appended by the Keras/TF modules)
# --------------------------------------------------------------------------------------
def reject_unsupported_features(
    layer: str,
    *,
    use_dropconnect: bool = False,
    tie_kernel_bank: bool = False,
    kernel_bank: Any = None,
) -> None:
    """Raise NotImplementedError when a Decision-13 feature (DropConnect, kernel banks) is on.

    The arguments are accepted so that nmn configurations load; settings that nmn itself
    ignores while the feature is off (``drop_rate``, ``kernel_bank_size``, ``kernel_bank_id``)
    are not checked here.

    Examples
    --------
    >>> reject_unsupported_features("YatConv2D")
    >>> reject_unsupported_features("YatConv2D", use_dropconnect=True)
    Traceback (most recent call last):
    ...
    NotImplementedError: YatConv2D(use_dropconnect=True): DropConnect is not implemented in nmn_array yet (Decision 13); use use_dropconnect=False
    """
    if use_dropconnect:
        raise NotImplementedError(
            f"{layer}(use_dropconnect=True): DropConnect is not implemented in nmn_array yet "
            "(Decision 13); use use_dropconnect=False"
        )
    if tie_kernel_bank or kernel_bank is not None:
        raise NotImplementedError(
            f"{layer}(tie_kernel_bank=True): shared kernel banks are not implemented in "
            "nmn_array yet (Decision 13); use tie_kernel_bank=False"
        )


def conv_output_length(
    size: int | None, kernel: int, stride: int, dilation: int, padding: str
) -> int | None:
    """Output length of a direct convolution for Keras/TF ``padding`` strings.

    ``"valid"``: ``floor((size - dilation*(kernel-1) - 1) / stride) + 1``; ``"same"`` and
    ``"causal"``: ``ceil(size / stride)``. ``None`` (unknown size) stays ``None``.

    Examples
    --------
    >>> conv_output_length(10, 3, 2, 1, "valid"), conv_output_length(10, 3, 2, 1, "same")
    (4, 5)
    """
    if size is None:
        return None
    mode = padding.lower()
    if mode == "valid":
        out = (size - dilation * (kernel - 1) - 1) // stride + 1
        if out <= 0:
            raise ValueError(
                f"the output would be empty: input size {size}, kernel {kernel}, "
                f"dilation {dilation}, stride {stride}, padding 'valid'"
            )
        return out
    if mode in ("same", "causal"):
        return -(-size // stride)
    raise ValueError(f"padding must be 'valid', 'same' or 'causal', got {padding!r}")


def transpose_conv_pads(
    kernel: int, stride: int, dilation: int, padding: str, output_padding: int | None = None
) -> tuple[int, int]:
    """Keras/TensorFlow transposed-conv padding as (low, high) padding of the dilated input.

    This is the padding a direct correlation (with the spatially flipped kernel) applies to
    the zero-inserted input. Without ``output_padding``: ``"valid"`` gives output
    ``(L-1)*s + max(k_eff, s)`` and ``"same"`` gives ``L*s``, split as
    ``jax.lax.conv_transpose`` does (= TensorFlow's gradient of a 'SAME' conv). With
    ``output_padding``: Keras' rule (``valid``: ``(L-1)*s + k_eff + output_padding``;
    ``same``: ``(L-1)*s + k_eff % 2 + output_padding``).

    Examples
    --------
    >>> transpose_conv_pads(3, 2, 1, "same"), transpose_conv_pads(3, 2, 1, "valid")
    ((2, 1), (2, 2))
    """
    k_eff = dilation * (kernel - 1) + 1
    mode = padding.lower()
    if mode == "valid":
        extra = max(k_eff, stride) - k_eff if output_padding is None else output_padding
        return k_eff - 1, k_eff - 1 + extra
    if mode != "same":
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if output_padding is None:
        total = stride + k_eff - 2
    else:
        total = k_eff + k_eff % 2 - 2 + output_padding
    low = min(total // 2 + total % 2, k_eff - 1)
    return low, total - low


def transpose_conv_call_args(
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    padding: str,
    output_padding: Sequence[int] | None,
) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
    """Keras/TF transposed-conv geometry as ``nmn_array.yat_conv_transpose`` arguments.

    Returns ``(padding, output_padding, crops)``: ``crops[i]`` trailing positions of spatial
    dim ``i`` are to be dropped from the result (only for Keras' ``'same'`` with an explicit
    ``output_padding``, where the high side gets less padding than the low side).

    Examples
    --------
    >>> transpose_conv_call_args((3,), (2,), (1,), "same", None)
    ('same', (0,), (0,))
    >>> transpose_conv_call_args((3,), (2,), (1,), "valid", (1,))
    ((0,), (1,), (0,))
    """
    n = len(kernel)
    if output_padding is None:
        return padding.lower(), (0,) * n, (0,) * n
    pads, extra, crops = [], [], []
    for k, s, d, op in zip(kernel, stride, dilation, output_padding):
        low, high = transpose_conv_pads(k, s, d, padding, op)
        k_eff = d * (k - 1) + 1
        # torch form: low = k_eff - 1 - p, high = k_eff - 1 - p + output_padding
        pads.append(k_eff - 1 - low)
        extra.append(max(high - low, 0))
        crops.append(max(low - high, 0))
        if extra[-1] >= max(s, d):
            raise ValueError(
                f"output_padding {tuple(output_padding)} is too large for stride "
                f"{tuple(stride)} and dilation {tuple(dilation)} with padding={padding!r}"
            )
    return tuple(pads), tuple(extra), tuple(crops)


# --------------------------------------------------------------------------------------
# PyTorch / Flax NNX / Flax Linen helpers (appended by the torch/nnx/linen modules)
# --------------------------------------------------------------------------------------
def reject_nondefault(layer: str, reason: str, **settings: Any) -> None:
    """Raise NotImplementedError when an accepted-but-unsupported argument is not its default.

    ``settings`` maps an argument name to ``(value, default)``; the first argument whose
    value differs from its default is reported, with ``reason`` saying why it is missing.

    Examples
    --------
    >>> reject_nondefault("YatNMN", "fused kernels are Decision 13", fused=(False, False))
    >>> reject_nondefault("YatNMN", "fused kernels are Decision 13", fused=(True, False))
    Traceback (most recent call last):
    ...
    NotImplementedError: YatNMN(fused=True) is not implemented in nmn_array: fused kernels are Decision 13
    """
    for name, (value, default) in settings.items():
        if value is default:
            continue
        try:
            same = bool(value == default)
        except Exception:  # arrays and other objects without a boolean equality
            same = False
        if not same:
            raise NotImplementedError(
                f"{layer}({name}={value!r}) is not implemented in nmn_array: {reason}"
            )


def check_rate(rate: float, name: str = "dropout_rate") -> float:
    """A dropout-like probability in ``[0, 1)``.

    Examples
    --------
    >>> check_rate(0.1)
    0.1
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in the half-open interval [0, 1), got {rate!r}")
    return float(rate)


def torch_conv_padding(padding: Any, padding_mode: str) -> tuple[Any, str]:
    """``torch.nn.Conv*d`` padding as ``nmn_array.yat_conv`` ``(padding, padding_mode)``.

    PyTorch's forms map one to one: an int or one int per dimension pads both sides,
    ``'valid'`` is no padding and ``'same'`` (stride 1 only, checked by PyTorch) splits
    ``dilation * (k - 1)`` with the odd extra on the high side, which is the XLA rule at
    stride 1. A non-zero ``padding_mode`` pads with that mode before a valid correlation.

    Examples
    --------
    >>> torch_conv_padding((1, 2), "circular")
    ((1, 2), 'circular')
    >>> torch_conv_padding("same", "zeros")
    ('same', 'zeros')
    """
    modes = ("zeros", "reflect", "replicate", "circular")
    if not isinstance(padding_mode, str) or padding_mode not in modes:
        raise ValueError(f"padding_mode must be one of {list(modes)}, got {padding_mode!r}")
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid', an int or ints, got {padding!r}")
        return padding, padding_mode
    if isinstance(padding, int) and not isinstance(padding, bool):
        return padding, padding_mode
    return tuple(int(p) for p in padding), padding_mode


def _pad_pairs(padding: Any, nd: int) -> tuple[tuple[int, int], ...]:
    """An int, ``nd`` ints or ``nd`` (low, high) pairs as ``nd`` (low, high) pairs."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        return ((padding, padding),) * nd
    if isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == nd:
        pairs = []
        for p in padding:
            if isinstance(p, int) and not isinstance(p, bool):
                pairs.append((p, p))
            elif isinstance(p, Sequence) and len(p) == 2 and all(isinstance(v, int) for v in p):
                pairs.append((int(p[0]), int(p[1])))
            else:
                break
        if len(pairs) == nd:
            return tuple(pairs)
    raise ValueError(
        f"Invalid padding format: {padding!r}, should be str, int, or a sequence of len {nd} "
        "where each element is an int or pair of ints."
    )


def lax_conv_padding(
    padding: Any,
    kernel_size: Sequence[int],
    kernel_dilation: Sequence[int],
    strides: Sequence[int] | None = None,
    sizes: Sequence[int] | None = None,
) -> tuple[Any, str]:
    """nmn's NNX/Linen convolution ``padding`` as ``nmn_array.yat_conv`` ``(padding, mode)``.

    - ``'SAME'`` / ``'VALID'``: the XLA rules (``"same"``, ``"valid"``).
    - ``'SAME_LOWER'``: XLA's "same" with the odd extra on the low side (needs ``sizes``).
    - ``'CIRCULAR'`` / ``'REFLECT'``: pad ``((k_eff - 1) // 2, k_eff // 2)`` per dimension
      with wrap-around / reflection, then a valid correlation (nmn NNX).
    - ``'CAUSAL'`` (1-D only): ``dilation * (k - 1)`` zeros on the low side.
    - an int, ``nd`` ints or ``nd`` (low, high) pairs: explicit zero padding.

    Strings are case-insensitive. ``k_eff = dilation * (k - 1) + 1``.

    Examples
    --------
    >>> lax_conv_padding("CIRCULAR", (4,), (1,))
    (((1, 2),), 'circular')
    >>> lax_conv_padding("SAME", (3, 3), (1, 1))
    ('same', 'zeros')
    >>> lax_conv_padding([(1, 0), 2], (3, 3), (1, 1))
    (((1, 0), (2, 2)), 'zeros')
    """
    nd = len(kernel_size)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode in ("SAME", "VALID"):
            return mode.lower(), "zeros"
        if mode == "CAUSAL":
            if nd != 1:
                raise ValueError("Causal padding is only implemented for 1D convolutions.")
            return "causal", "zeros"
        k_eff = [d * (k - 1) + 1 for k, d in zip(kernel_size, kernel_dilation)]
        if mode in ("CIRCULAR", "REFLECT"):
            pairs = tuple(((k - 1) // 2, k // 2) for k in k_eff)
            return pairs, "circular" if mode == "CIRCULAR" else "reflect"
        if mode == "SAME_LOWER":
            if sizes is None or strides is None or any(s is None for s in sizes):
                raise ValueError("padding='SAME_LOWER' needs static spatial sizes")
            lower: list[tuple[int, int]] = []
            for n, k, s in zip(sizes, k_eff, strides):
                out = -(-n // s)
                total = max((out - 1) * s + k - n, 0)
                lower.append((total - total // 2, total // 2))
            return tuple(lower), "zeros"
        raise ValueError(
            f"padding must be 'SAME', 'VALID', 'SAME_LOWER', 'CIRCULAR', 'REFLECT', 'CAUSAL', "
            f"an int or a sequence of ints / (low, high) pairs, got {padding!r}"
        )
    return _pad_pairs(padding, nd), "zeros"


def lax_conv_transpose_padding(
    padding: Any,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    kernel_dilation: Sequence[int],
) -> tuple[Any, tuple[int, ...]]:
    """``jax.lax.conv_transpose`` padding as ``nmn_array.yat_conv_transpose`` arguments.

    Returns ``(padding, output_padding)``. ``'SAME'`` and ``'VALID'`` are passed through
    (``yat_conv_transpose`` follows ``lax.conv_transpose`` for them). Explicit ``(low, high)``
    pairs (or ints ``p`` = ``(p, p)``) pad the zero-inserted input, as ``lax.conv_transpose``
    does; PyTorch's int padding ``p`` with ``output_padding`` ``op`` is the pair
    ``(k_eff - 1 - p, k_eff - 1 - p + op)``, so a pair maps to ``p = k_eff - 1 - low`` and
    ``op = high - low``. Pairs outside that family (``low > k_eff - 1``, ``high < low`` or
    ``high - low >= max(stride, dilation)``) raise NotImplementedError. nmn NNX's
    ``'CIRCULAR'`` (which sums the outputs of wrapped positions after the non-linearity,
    reference §13.5) is not implemented.

    Examples
    --------
    >>> lax_conv_transpose_padding("SAME", (3,), (2,), (1,))
    ('same', (0,))
    >>> lax_conv_transpose_padding([(2, 3)], (3,), (2,), (1,))
    ((0,), (1,))
    """
    nd = len(kernel_size)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode in ("SAME", "VALID"):
            return mode.lower(), (0,) * nd
        if mode == "CIRCULAR":
            raise NotImplementedError(
                "YatConvTranspose(padding='CIRCULAR') is not implemented in nmn_array: nmn "
                "folds the yat outputs of wrapped positions after the non-linearity "
                "(reference §13.5); use 'SAME', 'VALID' or explicit padding"
            )
        raise ValueError(
            f"padding must be 'SAME', 'VALID', an int or (low, high) pairs, got {padding!r}"
        )
    pads, extra = [], []
    for (lo, hi), k, s, d in zip(_pad_pairs(padding, nd), kernel_size, strides, kernel_dilation):
        k_eff = d * (k - 1) + 1
        p, op = k_eff - 1 - lo, hi - lo
        if p < 0 or op < 0 or op >= max(s, d):
            raise NotImplementedError(
                f"transposed-convolution padding {padding!r} is not implemented in nmn_array: "
                f"nmn_array.yat_conv_transpose takes PyTorch-style padding p >= 0 with "
                f"output_padding < max(stride, dilation), i.e. pairs (k_eff-1-p, k_eff-1-p+op); "
                f"got ({lo}, {hi}) for kernel {k}, stride {s}, dilation {d}"
            )
        pads.append(p)
        extra.append(op)
    return tuple(pads), tuple(extra)


def softermax(x: Any, n: float = 1.0, epsilon: float = 1e-12, axis: int | None = -1) -> Any:
    """:func:`nmn_array.softermax` with nmn's signature: ``epsilon`` may be positional and
    ``axis=None`` normalises over all elements (as ``nmn.<framework>.softermax``).

    Examples
    --------
    >>> import numpy as np
    >>> softermax(np.array([[1.0, 1.0], [1.0, 1.0]]), 1.0, 1e-12, None).round(6).tolist()
    [[0.25, 0.25], [0.25, 0.25]]
    """
    from nmn_array import softermax as core
    from nmn_array._namespace import array_namespace

    if axis is None:
        xp = array_namespace(x)
        flat = core(xp.reshape(x, (-1,)), n, epsilon=epsilon)
        return xp.reshape(flat, tuple(x.shape))
    return core(x, n, epsilon=epsilon, axis=axis)
