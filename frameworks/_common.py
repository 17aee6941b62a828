"""Configuration shared by every framework module: no framework imports, no yat math.

The framework modules turn constructor arguments into the small records here, so the rules
for alpha, bias, epsilon, rates and padding are written once for all frameworks.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import numbers
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

# check_rate is re-exported: the modules validate their rates with the core's rule
from nmn_array._validation import check_rate as check_rate
from nmn_array._validation import plain

# re-exported: the modules zero the output of queries that see no key (the core decides which)
from nmn_array.attention import keyed_queries as keyed_queries

SQRT2 = math.sqrt(2.0)
# the pip extra that provides each framework, for the error a user sees when it is missing
_EXTRAS = {
    "torch": "torch",
    "jax": "nnx",
    "flax": "nnx",
    "keras": "keras",
    "tensorflow": "tensorflow",
    "mlx": "mlx",
}


def check_mask_shape(
    mask: Any, target: Sequence[Any], what: str = "(batch, heads, Lq, Lk)"
) -> None:
    """Raise a ValueError naming ``mask`` when its shape cannot broadcast to ``target``.

    The layers broadcast a mask to the attention's full shape before the core sees it, so the
    array library's own broadcast error (which names neither the argument nor the expected
    layout) would reach the user. Sizes unknown while tracing (``None``) are not checked.

    >>> check_mask_shape(type("A", (), {"shape": (1, 5)})(), (2, 4, 3, 5))
    >>> check_mask_shape(type("A", (), {"shape": (3, 3)})(), (2, 4, 5, 5))
    Traceback (most recent call last):
    ...
    ValueError: mask must broadcast to (batch, heads, Lq, Lk) = (2, 4, 5, 5), got shape (3, 3)
    """
    shape = tuple(getattr(mask, "shape", ()))
    target = tuple(target)

    def known(d: Any) -> int | None:
        # a plain (or NumPy) int; anything else is a size known only when running (None, a
        # symbolic tensor: never int() it, which AutoGraph turns into a graph op)
        return int(d) if isinstance(d, numbers.Integral) else None

    fits = len(shape) <= len(target) and all(
        known(m) in (None, 1) or known(t) is None or known(m) == known(t)
        for m, t in zip(reversed(shape), reversed(target))
    )
    if not fits:
        shown = tuple(known(t) for t in target)
        raise ValueError(
            f"mask must broadcast to {what} = {shown}, got shape {tuple(known(m) for m in shape)}"
        )


def unit_normalized(a: Any, keep_axis: int) -> Any:
    """``a`` with each slice along ``keep_axis`` scaled to unit length, ``v / (|v| + 1e-8)``:
    nmn's ``weight_normalized`` re-parameterisation of a stored kernel (Decision 7).

    >>> import numpy as np
    >>> unit_normalized(np.array([[3.0, 0.0], [4.0, 1.0]]), 1).round(6).tolist()
    [[0.6, 0.0], [0.8, 1.0]]
    """
    from nmn_array._namespace import array_namespace
    from nmn_array.dense import normalize

    axes = tuple(i for i in range(a.ndim) if i != keep_axis % a.ndim)
    return normalize(array_namespace(a), a, axis=axes)


def mask_visibility(mask: Any) -> Any:
    """The keys an attention ``mask`` lets each query see, by :func:`nmn_array.yat_attention`'s
    rule (boolean: True = attend; floating: additive, -inf hides; other dtypes: TypeError).

    >>> import numpy as np
    >>> mask_visibility(np.array([0.0, -np.inf, -3.0])).tolist()
    [True, False, True]
    """
    from nmn_array._namespace import array_namespace
    from nmn_array.attention import _shown

    return _shown(array_namespace(mask), mask)


def restrict_mask(mask: Any, allowed: Any) -> Any:
    """``mask`` (boolean, additive or None) limited to the keys the boolean ``allowed`` lets
    through, keeping its kind (an additive mask gets -inf where ``allowed`` is False)."""
    from nmn_array._namespace import array_namespace
    from nmn_array.attention import _restrict

    return _restrict(array_namespace(mask, allowed), mask, allowed)


def attention_window(window: Any, block_size: Any) -> tuple[Any, Any]:
    """An attention module's ``window`` (as a tuple) and ``block_size``, checked by
    :func:`nmn_array.yat_attention`'s rules (ValueError naming the argument).

    >>> attention_window([2, None], 4)
    ((2, None), 4)
    """
    from nmn_array._validation import check_block_size, check_window

    return check_window(window), check_block_size(block_size)


def decode_visibility(index: Any, length: int, max_length: int, window: Any, like: Any) -> Any:
    """Which cache slots the ``length`` queries written at ``index, index + 1, ...`` of a
    key/value cache of ``max_length`` slots see: a boolean ``(length, max_length)``, True
    for slot ``j`` of query ``i`` when ``index + i - left <= j <= index + i`` (causal, and
    within the left side of ``window`` when there is one). ``index`` may be a Python int,
    a backend scalar or a traced one; ``like`` is an array of the backend and device.

    >>> import numpy as np
    >>> decode_visibility(1, 2, 4, (1, 0), np.zeros(1)).astype(int).tolist()
    [[1, 1, 0, 0], [0, 1, 1, 0]]
    """
    from nmn_array._namespace import array_namespace, device_kw, index_dtype

    xp = array_namespace(like)
    kw, dtype = device_kw(xp, like), index_dtype(xp)
    slots = xp.reshape(xp.arange(max_length, dtype=dtype, **kw), (1, max_length))
    queries = xp.reshape(xp.arange(length, dtype=dtype, **kw), (length, 1))
    if not isinstance(index, int):
        index = xp.astype(index, dtype)
    queries = queries + index
    visible = slots <= queries
    left = None if window is None else window[0]
    if left is not None:
        visible = xp.logical_and(visible, slots >= queries - left)
    return visible


def is_traced(a: Any) -> bool:
    """True while ``a`` is a placeholder of a compiler (a JAX tracer, a TensorFlow graph
    tensor, or any tensor while ``torch.compile`` traces), whose values cannot be read."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(a, jax.core.Tracer):
        return True
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(a, tf.Tensor) and not tf.executing_eagerly():
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor) and torch.compiler.is_compiling()


def explicit_positions(positions: Any, offset: Any, max_seq_len: int | None) -> Any:
    """A rotary layer's ``positions=`` argument made ready for head-split ``(B, H, L, d)``
    q and k: ``(L,)`` and ``(L, 2)`` as they are, per-sequence ``(B, L, 2)`` with a head
    axis ``(B, 1, L, 2)``. ValueError when ``position_offset`` is also given, or when 1-D
    positions reach ``max_seq_len`` (checked where their values can be read).

    >>> import numpy as np
    >>> explicit_positions(np.zeros((3, 5, 2), np.int64), 0, 8).shape
    (3, 1, 5, 2)
    """
    from nmn_array._namespace import array_namespace

    xp = array_namespace(positions)
    shape = tuple(positions.shape)
    if not (isinstance(offset, int) and offset == 0):
        raise ValueError(
            f"pass positions= or position_offset=, not both; got position_offset={offset} "
            f"and positions of shape {shape}"
        )
    if len(shape) == 1 and shape[0] and max_seq_len is not None and not is_traced(positions):
        top = int(xp.max(positions))
        if top >= max_seq_len:
            raise ValueError(
                f"positions reach {top}, beyond max_seq_len={max_seq_len} "
                "(positions must be < max_seq_len)"
            )
    if len(shape) > 2:
        return xp.expand_dims(positions, axis=-3)
    return positions


def combine_masks(a: Any, b: Any) -> Any:
    """Two attention masks together: boolean ones and-ed, additive ones added, and a boolean
    one limits an additive one (:func:`restrict_mask`).

    >>> import numpy as np
    >>> combine_masks(np.array([0.0, -1.0]), np.array([False, True])).tolist()
    [-inf, -1.0]
    """
    from nmn_array._namespace import array_namespace
    from nmn_array.attention import _is_additive

    xp = array_namespace(a, b)
    if not _is_additive(xp, b):
        return restrict_mask(a, b)
    if not _is_additive(xp, a):
        return restrict_mask(b, a)
    return a + b


def require(module: str) -> Any:
    """Import ``module``, or raise an ImportError that says why it failed: "not installed"
    (with the extra to install) only when the top-level package is absent, else the original
    error (and for Keras the backend in use, ``KERAS_BACKEND``)."""
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


class AlphaConfig(NamedTuple):
    """``mode``: "learnable" (a parameter of shape (1,) initialised to 1), "constant" (the
    float ``value``) or "none"."""

    mode: str
    value: float | None = None


class BiasConfig(NamedTuple):
    """``mode``: "learnable", "constant" (the float ``value``) or "none"."""

    mode: str
    value: float | None = None


def _constant(value: Any, name: str, what: str) -> float | None:
    """nmn's ``constant_alpha`` / ``constant_bias`` number; None or False: no constant."""
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return float(value)


def alpha_config(use_alpha: bool = True, constant_alpha: Any = None) -> AlphaConfig:
    """nmn's ``use_alpha`` / ``constant_alpha`` pair: ``constant_alpha=True`` is sqrt(2), a
    number is that number, None or False a learnable alpha if ``use_alpha`` else none.

    >>> alpha_config(True, None).mode, round(alpha_config(True, True).value, 6)
    ('learnable', 1.414214)
    """
    if constant_alpha is True:
        return AlphaConfig("constant", SQRT2)
    value = _constant(constant_alpha, "constant_alpha", "None, a bool or a number")
    if value is not None:
        return AlphaConfig("constant", value)
    return AlphaConfig("learnable") if use_alpha else AlphaConfig("none")


def bias_config(use_bias: bool = True, constant_bias: Any = None) -> BiasConfig:
    """nmn's ``use_bias`` / ``constant_bias`` pair (Decision 4: False = no constant).

    >>> bias_config(True, 0.5), bias_config(True, False).mode
    (BiasConfig(mode='constant', value=0.5), 'learnable')
    """
    value = _constant(constant_bias, "constant_bias", "None or a number")
    if value is not None:
        return BiasConfig("constant", value)
    return BiasConfig("learnable") if use_bias else BiasConfig("none")


def check_epsilon(epsilon: float) -> float:
    """Validate a layer's epsilon (a positive finite float; a NumPy scalar is a float)."""
    epsilon = plain(epsilon)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a positive float, got {epsilon!r}")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite float, got {epsilon!r}")
    return float(epsilon)


def softplus_inverse(epsilon: float) -> float:
    """The raw value whose softplus is ``epsilon`` (Decision 11), stable for small epsilon.

    >>> abs(math.log1p(math.exp(softplus_inverse(1e-5))) - 1e-5) < 1e-18
    True
    """
    epsilon = check_epsilon(epsilon)
    return epsilon + math.log(-math.expm1(-epsilon))


#: Smallest normal and largest finite value of the floating dtypes a parameter can have.
_FLOAT_RANGES = {
    "float16": (6.103515625e-05, 65504.0),
    "bfloat16": (1.1754943508222875e-38, 3.3895313892515355e38),
    "float32": (1.1754943508222875e-38, 3.4028234663852886e38),
    "float64": (2.2250738585072014e-308, 1.7976931348623157e308),
}


def dtype_name(dtype: Any) -> str:
    """The name of a floating dtype of any framework (``None`` is float32), e.g. "float64"."""
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
    """The raw value of a learnable epsilon (``epsilon = softplus(raw)``, Decision 11) and the
    dtype it is stored in: float32 for float16/bfloat16 layers (as nmn: softplus^-1 of a small
    epsilon is far outside float16's range), else the layer's dtype. An epsilon the storage
    dtype cannot hold as a normal number raises ValueError here, not an inf at the first call.

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
    """``size`` as an int; a ValueError naming ``what`` when it is unknown (None) at build."""
    if size is None:
        raise ValueError(f"{what} must have a known size to build the layer, got None")
    return int(size)


def ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """An int expanded to ``n`` ints, or a sequence checked to hold ``n`` ints."""
    message = f"{name} must be an int or {n} ints, got {value!r}"
    if isinstance(value, bool):  # an int to isinstance, but never a size
        raise ValueError(message)
    if isinstance(value, int):
        return (value,) * n
    values = tuple(value)
    if len(values) != n or not all(isinstance(v, int) for v in values):
        raise ValueError(message)
    return values


def reject_nondefault(layer: str, reason: str, **settings: Any) -> None:
    """NotImplementedError for the first accepted-but-unsupported argument (``name=(value,
    default)``) that is not its default, with ``reason`` saying why it is missing.

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


def conv_output_length(
    size: int | None, kernel: int, stride: int, dilation: int, padding: str
) -> int | None:
    """Output length of a direct convolution for Keras/TF ``padding`` strings: ``"valid"``
    ``floor((size - dilation*(kernel-1) - 1) / stride) + 1``, ``"same"`` and ``"causal"``
    ``ceil(size / stride)``; an unknown size (None) stays None.

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


def torch_conv_padding(padding: Any, padding_mode: str) -> tuple[Any, str]:
    """``torch.nn.Conv*d`` padding as ``nmn_array.yat_conv`` ``(padding, padding_mode)``.

    PyTorch's forms map one to one: an int or one int per dimension pads both sides,
    ``'valid'`` is no padding and ``'same'`` (stride 1 only, checked by PyTorch) splits
    ``dilation * (k - 1)`` with the odd extra on the high side, which is the XLA rule at
    stride 1. A non-zero ``padding_mode`` pads with that mode before a valid correlation.
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


@dataclass
class _Bank:
    """One kernel bank of :class:`KernelBanks`: its variable, how many units it holds, and
    whether a layer has run with it (mutable: a bank grows and is marked used in place)."""

    variable: Any
    size: int
    used: bool = False


class KernelBanks:
    """Shared kernel banks (nmn's ``tie_kernel_bank``): the layers that name one bank and agree
    on everything but their number of units use the first units of one kernel variable, so
    their gradients add up in it.

    ``attach`` makes the bank with the first layer (``make(size)``, ``size`` =
    ``kernel_bank_size`` or the layer's units) and grows it for a later, larger layer with
    ``grow(variable, old_size, new_size)``, which keeps the old units. A bank that has been
    used in a forward pass (``mark_used``) no longer grows, as in nmn.torch: optimisers and
    compiled steps hold its shape by then. Without ``grow`` (Keras variables cannot change
    shape) a larger layer raises ValueError and the bank is unchanged.

    >>> banks = KernelBanks()
    >>> v = banks.attach(("default", 4), units=2, size=None, make=lambda n: [0.0] * n)
    >>> banks.attach(("default", 4), units=3, size=None, make=list)
    Traceback (most recent call last):
    ...
    ValueError: kernel bank ('default', 4) has 2 units and cannot grow to 3 (it has a fixed capacity); give the first layer kernel_bank_size=3 or more
    """

    def __init__(self) -> None:
        self._banks: dict[Any, _Bank] = {}
        self._lock = threading.Lock()

    def attach(self, key: Any, *, units: int, size: int | None, make: Any, grow: Any = None) -> Any:
        """The bank variable for ``key``, made or grown to hold ``units`` (see the class)."""
        size = units if size is None else size
        if size < units:
            raise ValueError(f"kernel_bank_size ({size}) must be at least the units ({units})")
        with self._lock:
            bank = self._banks.get(key)
            if bank is None:
                bank = self._banks[key] = _Bank(make(size), size)
            elif size > bank.size:
                if grow is None or bank.used:
                    why = "has a fixed capacity" if grow is None else "was used already"
                    raise ValueError(
                        f"kernel bank {key!r} has {bank.size} units and cannot grow to {size} "
                        f"(it {why}); give the first layer kernel_bank_size={size} or more"
                    )
                grow(bank.variable, bank.size, size)
                bank.size = size
            return bank.variable

    def mark_used(self, key: Any) -> None:
        """Record that a layer of bank ``key`` has run (its size is final); a key forgotten by
        :meth:`clear` is ignored (its layers keep their variable)."""
        bank = self._banks.get(key)
        if bank is not None:
            bank.used = True

    def clear(self) -> None:
        """Forget every bank (their variables live on in the layers that hold them)."""
        with self._lock:
            self._banks.clear()
