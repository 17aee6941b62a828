"""Flax NNX modules over the pure functions of ``nmn_array``.

Drop-in replacements for ``nmn.nnx`` 0.3.5: the same class names (and aliases), constructor
arguments, variable names, shapes, layouts and initialisers, so ``nnx.state`` of an nmn model
loads into the same model built from these classes (``nnx.update``). Each ``__call__`` makes
one ``nmn_array`` call on the module's raw arrays; rotary attention adds the two
``rotary_embedding`` calls for q and k. The differences from ``nmn`` are listed in
``docs/migration/nnx.md``.

Examples
--------
>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from nmn_array.frameworks.nnx import YatNMN
>>> layer = YatNMN(4, 3, rngs=nnx.Rngs(0))
>>> layer(jnp.ones((2, 4))).shape
(2, 3)
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nmn_array.frameworks._common import (
    alpha_config,
    bias_config,
    check_epsilon,
    check_rate,
    lax_conv_padding,
    lax_conv_transpose_padding,
    mask_visibility,
    reject_nondefault,
    reject_unsupported_features,
    require,
    restrict_mask,
    softplus_inverse,
    unit_normalized,
)

import nmn_array
from nmn_array import soft_tanh, softer_sigmoid, softermax

jax = require("jax")
# Any: the module is imported at run time and its classes are our base classes; mypy
# takes a base class from an Any-typed name, not from a plain module object.
nnx: Any = require("flax.nnx")
jnp = jax.numpy
lax = jax.lax
_dtypes = require("flax.nnx.nn.dtypes")
_initializers = require("flax.nnx.nn.initializers")
_linear = require("flax.nnx.nn.linear")
_first_from = require("flax.nnx.module").first_from

__all__ = [
    "ATTENTION_DEFAULT_CONSTANT_ALPHA",
    "CONV_DEFAULT_CONSTANT_ALPHA",
    "DEFAULT_CONSTANT_ALPHA",
    "Embed",
    "FrozenParam",
    "MultiHeadAttention",
    "MultiHeadYatAttention",
    "RotaryYatAttention",
    "YatConv",
    "YatConv1D",
    "YatConv2D",
    "YatConv3D",
    "YatConvTranspose",
    "YatConvTranspose1D",
    "YatConvTranspose2D",
    "YatConvTranspose3D",
    "YatDense",
    "YatEmbed",
    "YatNMN",
    "default_alpha_init",
    "default_bias_init",
    "default_kernel_init",
    "soft_tanh",
    "softer_sigmoid",
    "softermax",
]

Array = Any
Dtype = Any
Initializer = Callable[..., Any]

#: ``constant_alpha=True``: exactly sqrt(2) (nmn NNX holds a float32-rounded value).
DEFAULT_CONSTANT_ALPHA = math.sqrt(2.0)
CONV_DEFAULT_CONSTANT_ALPHA = DEFAULT_CONSTANT_ALPHA
ATTENTION_DEFAULT_CONSTANT_ALPHA = DEFAULT_CONSTANT_ALPHA

default_kernel_init = _initializers.xavier_normal()
default_bias_init = _initializers.zeros_init()
default_alpha_init = _initializers.ones_init()
default_embed_init = _linear.default_embed_init
# nmn's guard when normalising stored weights at construction (Decision 7).
# Decision 2: normalize_qk is q / max(|q|, 1e-12).
_QK_NORM_FLOOR = 1e-12
_DECISION_13 = "DropConnect, kernel banks, fused kernels and linear attention are Decision 13"


class FrozenParam(nnx.Variable):
    """A kernel excluded from ``nnx.state(model, nnx.Param)`` (``lazy`` / ``freeze_kernel``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> FrozenParam(jnp.zeros(2))[...].shape
    (2,)
    """


# --------------------------------------------------------------------------------------
# helpers shared with the Linen module
# --------------------------------------------------------------------------------------
def precision_scope(precision: Any) -> contextlib.AbstractContextManager:
    """``precision`` of a flax layer as a ``jax.default_matmul_precision`` scope.

    The pure functions take no precision argument, so a layer's ``precision`` (``None``, a
    string or a ``jax.lax.Precision``) sets JAX's default matmul/conv precision around the
    call.
    """
    if precision is None:
        return contextlib.nullcontext()
    if isinstance(precision, lax.Precision):
        precision = precision.name.lower()
    if not isinstance(precision, str):
        raise NotImplementedError(
            f"precision={precision!r} is not supported: use None, a string or a "
            "jax.lax.Precision (one precision for all operands)"
        )
    return jax.default_matmul_precision(precision.lower())


def softplus_epsilon(raw: Array) -> Array:
    """A learnable epsilon from its raw parameter (Decision 11), computed in >= float32."""
    if raw.dtype in (jnp.float16, jnp.bfloat16):
        raw = raw.astype(jnp.float32)
    return jax.nn.softplus(raw)


def l2_normalize(x: Array) -> Array:
    """``x / max(|x|, 1e-12)`` along the last axis (normalize_qk, Decision 2)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, jnp.asarray(_QK_NORM_FLOOR, norm.dtype))


def flat_batch(inputs: Array, nd: int) -> tuple[Array, tuple[int, ...]]:
    """Fold any number of leading batch axes (or none) of a channels-last input into one."""
    batch = inputs.shape[: inputs.ndim - (nd + 1)]
    return jnp.reshape(inputs, (-1, *inputs.shape[len(batch) :])), tuple(batch)


def conv_kernel_to_oihw(kernel: Array) -> Array:
    """``(*k, in/groups, out)`` -> ``(out, in/groups, *k)`` (the pure function's layout)."""
    nd = kernel.ndim - 2
    return jnp.transpose(kernel, (nd + 1, nd, *range(nd)))


def conv_transpose_kernel_to_iohw(kernel: Array, transpose_kernel: bool = False) -> Array:
    """A ``lax.conv_transpose`` kernel as the pure function's ``(in, out, *k)``.

    Without ``transpose_kernel`` the kernel ``(*k, in, out)`` is used by ``lax.conv_transpose``
    as a direct correlation over the zero-inserted input, which is PyTorch's transposed
    convolution with the taps flipped; with it, ``(*k, out, in)`` is already PyTorch's
    ``(in, out, *k)`` up to an axis permutation.
    """
    nd = kernel.ndim - 2
    if transpose_kernel:
        return jnp.transpose(kernel, (nd + 1, nd, *range(nd)))
    flipped = jnp.flip(kernel, axis=tuple(range(nd)))
    return jnp.transpose(flipped, (nd, nd + 1, *range(nd)))


def attention_dropout(weights: Array, rng: Array, rate: float, broadcast: bool) -> Array:
    """Inverted dropout of ``(..., H, Lq, Lk)`` weights; ``broadcast`` shares one mask across
    the batch and head axes (flax's ``broadcast_dropout``)."""
    keep_prob = 1.0 - rate
    shape = (1,) * (weights.ndim - 2) + weights.shape[-2:] if broadcast else weights.shape
    keep = jax.random.bernoulli(rng, keep_prob, shape)
    return weights * (keep.astype(weights.dtype) / jnp.asarray(keep_prob, weights.dtype))


def zero_keyless(out: Array, mask: Array | None) -> Array:
    """Zero the outputs of queries that see no key in any head; ``mask (..., H, Lq, Lk)``,
    boolean (True = attend) or additive (-inf hides a key)."""
    if mask is None:
        return out
    has_key = jnp.any(mask_visibility(mask), axis=(-3, -1))
    return jnp.where(has_key[..., None], out, jnp.zeros_like(out))


def _raise_cache_full(index: Array, max_length: int) -> None:
    if int(index) >= max_length:
        raise ValueError(f"Autoregressive cache is full at length {max_length}.")


def _check_cache_capacity(index: Array, max_length: int) -> None:
    """Fail before a cache write, eagerly or (through a callback) under ``nnx.jit``."""
    if isinstance(index, jax.core.Tracer):
        jax.debug.callback(
            functools.partial(_raise_cache_full, max_length=max_length), index, ordered=True
        )
    else:
        _raise_cache_full(index, max_length)


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if value is None:
        value = 1
    if isinstance(value, int):
        return (value,) * n
    return tuple(value)


class _YatParams:
    """Alpha, bias and epsilon variables shared by the layers (rules in _common)."""

    if TYPE_CHECKING:
        # Set by the layer class this mixin is combined with (type checking only).
        out_features: int
        param_dtype: Any

    def _setup_alpha(
        self,
        use_alpha: bool,
        constant_alpha: Any,
        alpha_init: Initializer,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ) -> None:
        cfg = alpha_config(use_alpha, constant_alpha)
        self._constant_alpha_value = cfg.value if cfg.mode == "constant" else None
        if cfg.mode == "learnable":
            self.alpha = nnx.Param(alpha_init(rngs.params(), (1,), param_dtype))
        else:
            self.alpha = nnx.data(None)
        self.use_alpha = cfg.mode != "none"
        self.constant_alpha = constant_alpha

    def _setup_bias(
        self,
        use_bias: bool,
        constant_bias: Any,
        softplus_bias: bool,
        scalar_bias: bool,
        bias_init: Initializer,
        n: int,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ) -> None:
        cfg = bias_config(use_bias, constant_bias)
        self._constant_bias_value = cfg.value if cfg.mode == "constant" else None
        if cfg.mode == "learnable":
            shape = (1,) if scalar_bias else (n,)
            self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype))
        else:
            self.bias = nnx.data(None)
        self.use_bias = cfg.mode != "none"
        self.constant_bias = constant_bias
        self.softplus_bias = bool(softplus_bias and self.bias is not None)
        self.scalar_bias = bool(scalar_bias and self.bias is not None)

    def _setup_epsilon(self, epsilon: float, learnable_epsilon: bool, param_dtype: Dtype) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.learnable_epsilon = bool(learnable_epsilon)
        if learnable_epsilon:
            raw = softplus_inverse(self.epsilon)
            self.epsilon_param = nnx.Param(jnp.asarray([raw], dtype=param_dtype))
        else:
            self.epsilon_param = nnx.data(None)

    def _alpha_value(self) -> Any:
        if self._constant_alpha_value is not None:
            return self._constant_alpha_value
        return None if self.alpha is None else self.alpha[...]

    def _bias_array(self) -> Array | None:
        if self._constant_bias_value is not None:
            return jnp.full((self.out_features,), self._constant_bias_value, self.param_dtype)
        if self.bias is None:
            return None
        bias = self.bias[...]
        return jax.nn.softplus(bias) if self.softplus_bias else bias

    def _epsilon_value(self) -> Any:
        if self.learnable_epsilon and self.epsilon_param is not None:
            return softplus_epsilon(self.epsilon_param[...])
        return self.epsilon


# --------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------
class YatNMN(_YatParams, nnx.Module):
    """Yat dense layer: ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``.

    Variables as ``nmn.nnx.YatNMN`` 0.3.5: ``kernel (in, out)`` (xavier normal; a
    :class:`FrozenParam` when ``lazy``), ``bias`` (zeros), ``alpha`` (ones, shape (1,)),
    ``epsilon_param``. The computation runs in the promoted dtype of the inputs and
    parameters; float64 stays float64 (Decision 3).

    Parameters
    ----------
    in_features, out_features : int
    use_bias, constant_bias, softplus_bias, scalar_bias
        Learnable / constant / softplus-positive / shared scalar bias.
    use_alpha, constant_alpha
        Learnable alpha or a constant (``True`` = sqrt(2)).
    positive_init : bool
        ``abs()`` of the initial kernel.
    dtype, param_dtype
        Compute and parameter dtypes.
    precision
        Matmul precision (applied as ``jax.default_matmul_precision``).
    epsilon, learnable_epsilon
    spherical, weight_normalized : bool
    lazy, freeze_kernel : bool
        Store the kernel as :class:`FrozenParam` (not trained).
    kernel_init, bias_init, alpha_init, promote_dtype
    use_dropconnect, drop_rate, fused, compute_mode, distance_floor, dot_general, tie_kernel_bank, kernel_bank_size, kernel_bank_id
        Accepted for compatibility; non-default values of ``use_dropconnect``, ``fused``,
        ``compute_mode``, ``distance_floor``, ``dot_general`` and ``tie_kernel_bank`` raise
        NotImplementedError (Decision 13).
    rngs : nnx.Rngs

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from nmn_array.frameworks.nnx import YatNMN
    >>> layer = YatNMN(4, 2, constant_alpha=True, rngs=nnx.Rngs(0))
    >>> bool((layer(jnp.ones((3, 4))) >= 0).all())
    True
    """

    DEFAULT_CONSTANT_ALPHA = DEFAULT_CONSTANT_ALPHA

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        constant_bias: float | None = None,
        softplus_bias: bool = False,
        scalar_bias: bool = False,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        positive_init: bool = False,
        use_dropconnect: bool = False,
        fused: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        compute_mode: str = "fp32",
        distance_floor: float = 0.0,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        alpha_init: Initializer = default_alpha_init,
        dot_general: Any = lax.dot_general,
        promote_dtype: Callable[..., Any] = _dtypes.promote_dtype,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        drop_rate: float = 0.0,
        weight_normalized: bool = False,
        tie_kernel_bank: bool = False,
        kernel_bank_size: int | None = None,
        kernel_bank_id: str = "default",
        lazy: bool = False,
        freeze_kernel: bool | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        check_rate(drop_rate, "drop_rate")
        reject_unsupported_features(
            "YatNMN", use_dropconnect=use_dropconnect, tie_kernel_bank=tie_kernel_bank
        )
        reject_nondefault(
            "YatNMN",
            "it computes in the input dtype with the distance clamped at 0 (Decisions 3 and 13)",
            fused=(fused, False),
            compute_mode=(compute_mode, "fp32"),
            distance_floor=(float(distance_floor), 0.0),
        )
        reject_nondefault(
            "YatNMN",
            "the product is computed by nmn_array.yat",
            dot_general=(dot_general, lax.dot_general),
        )
        if freeze_kernel is not None:
            lazy = bool(freeze_kernel)
        self.lazy = self.freeze_kernel = bool(lazy)
        self.kernel_shape = (in_features, out_features)
        kernel = kernel_init(rngs.params(), self.kernel_shape, param_dtype)
        if positive_init:
            kernel = jnp.abs(kernel)
        if weight_normalized:
            kernel = unit_normalized(kernel, 1)
        self.kernel = (FrozenParam if lazy else nnx.Param)(kernel)
        self._setup_bias(
            use_bias, constant_bias, softplus_bias, scalar_bias, bias_init, out_features,
            param_dtype, rngs,
        )  # fmt: skip
        self._setup_alpha(use_alpha, constant_alpha, alpha_init, param_dtype, rngs)
        self._setup_epsilon(epsilon, learnable_epsilon, param_dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.positive_init = positive_init
        self.use_dropconnect = False
        self.drop_rate = drop_rate
        self.fused = False
        self.compute_mode = compute_mode
        self.distance_floor = 0.0
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel_init = kernel_init
        self.bias_init = bias_init
        self.promote_dtype = promote_dtype
        self.spherical = spherical
        self.weight_normalized = weight_normalized
        self.tie_kernel_bank = False
        self.kernel_bank_size = kernel_bank_size
        self.kernel_bank_id = kernel_bank_id

    def __call__(self, inputs: Array, *, deterministic: bool = False) -> Array:
        """``inputs (..., in_features)`` -> ``(..., out_features)``; ``deterministic`` only
        switches DropConnect in nmn (not implemented here)."""
        x, kernel, bias = self.promote_dtype(
            (inputs, self.kernel[...], self._bias_array()), dtype=self.dtype
        )
        with precision_scope(self.precision):
            return nmn_array.yat(
                x,
                kernel,
                bias,
                alpha=self._alpha_value(),
                epsilon=self._epsilon_value(),
                spherical=self.spherical,
                weight_normalized=self.weight_normalized,
                _w_in_out=True,  # the (in, out) kernel as stored: no transposes under XLA
            )


YatDense = YatNMN


# --------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------
class YatConv(_YatParams, nnx.Module):
    """N-D yat convolution (channels last), as ``nmn.nnx.YatConv`` 0.3.5.

    ``y = alpha * (<patch, w_o> + b_o)^2 / (|patch - w_o|^2 + epsilon)``. Variables:
    ``kernel (*k, in/groups, out)`` (xavier normal), ``bias``, ``alpha``, ``epsilon_param``;
    a fixed kernel ``mask`` of the kernel's shape is multiplied in. Inputs
    ``(*batch, *spatial, in)`` with any number of batch axes (or none).

    Parameters
    ----------
    in_features, out_features : int
    kernel_size : int or sequence of ints
    strides : int or sequence, default 1
    padding : default 'SAME'
        'SAME', 'VALID', 'SAME_LOWER', 'CIRCULAR', 'REFLECT', 'CAUSAL' (1-D), an int, ints
        or (low, high) pairs.
    input_dilation
        Only 1 (nmn_array.yat_conv has no input dilation: NotImplementedError otherwise).
    kernel_dilation : int or sequence, default 1
    feature_group_count : int
    use_bias, constant_bias, softplus_bias, scalar_bias, use_alpha, constant_alpha
    positive_init, kernel_init, bias_init, alpha_init, mask, dtype, param_dtype, precision
    promote_dtype, epsilon, learnable_epsilon, weight_normalized
    use_dropconnect, drop_rate, conv_general_dilated, tie_kernel_bank, kernel_bank_size, kernel_bank_id
        Accepted; non-default DropConnect, kernel banks or conv primitive raise
        NotImplementedError (Decision 13).
    rngs : nnx.Rngs

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from nmn_array.frameworks.nnx import YatConv
    >>> conv = YatConv(3, 4, (3, 3), rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 4)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        padding: Any = "SAME",
        input_dilation: int | Sequence[int] | None = 1,
        kernel_dilation: int | Sequence[int] | None = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        constant_bias: float | None = None,
        softplus_bias: bool = False,
        scalar_bias: bool = False,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        use_dropconnect: bool = False,
        positive_init: bool = False,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        alpha_init: Initializer = default_alpha_init,
        mask: Array | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        conv_general_dilated: Any = lax.conv_general_dilated,
        promote_dtype: Callable[..., Any] = _dtypes.promote_dtype,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        drop_rate: float = 0.0,
        weight_normalized: bool = False,
        tie_kernel_bank: bool = False,
        kernel_bank_size: int | None = None,
        kernel_bank_id: str = "default",
        rngs: nnx.Rngs,
    ) -> None:
        check_rate(drop_rate, "drop_rate")
        reject_unsupported_features(
            "YatConv", use_dropconnect=use_dropconnect, tie_kernel_bank=tie_kernel_bank
        )
        reject_nondefault(
            "YatConv",
            "the convolution is computed by nmn_array.yat_conv",
            conv_general_dilated=(conv_general_dilated, lax.conv_general_dilated),
        )
        if feature_group_count <= 0:
            raise ValueError("feature_group_count must be positive")
        if in_features % feature_group_count or out_features % feature_group_count:
            raise ValueError(
                f"in_features ({in_features}) and out_features ({out_features}) must be "
                f"multiples of feature_group_count ({feature_group_count})"
            )
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.kernel_shape = kernel_size + (in_features // feature_group_count, out_features)
        kernel = kernel_init(rngs.params(), self.kernel_shape, param_dtype)
        if positive_init:
            kernel = jnp.abs(kernel)
        if weight_normalized:
            kernel = unit_normalized(kernel, -1)
        self.kernel = nnx.Param(kernel)
        self._setup_bias(
            use_bias, constant_bias, softplus_bias, scalar_bias, bias_init, out_features,
            param_dtype, rngs,
        )  # fmt: skip
        self._setup_alpha(use_alpha, constant_alpha, alpha_init, param_dtype, rngs)
        self._setup_epsilon(epsilon, learnable_epsilon, param_dtype)
        if mask is not None and tuple(mask.shape) != self.kernel_shape:
            raise ValueError(
                "Mask needs to have the same shape as weights. "
                f"Shapes are: {tuple(mask.shape)}, {self.kernel_shape}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.input_dilation = input_dilation
        self.kernel_dilation = kernel_dilation
        self.feature_group_count = feature_group_count
        self.use_dropconnect = False
        self.mask = mask
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel_init = kernel_init
        self.bias_init = bias_init
        self.promote_dtype = promote_dtype
        self.drop_rate = drop_rate
        self.weight_normalized = weight_normalized
        self.tie_kernel_bank = False
        self.kernel_bank_size = kernel_bank_size
        self.kernel_bank_id = kernel_bank_id

    def __call__(self, inputs: Array, *, deterministic: bool = False) -> Array:
        """``inputs (*batch, *spatial, in_features)`` -> ``(*batch, *out, out_features)``."""
        nd = len(self.kernel_size)
        if any(d != 1 for d in _tuple(self.input_dilation, nd)):
            raise NotImplementedError(
                f"YatConv(input_dilation={self.input_dilation!r}) is not implemented in "
                "nmn_array: nmn_array.yat_conv has no input (lhs) dilation"
            )
        x, batch = flat_batch(inputs, nd)
        strides = _tuple(self.strides, nd)
        dilation = _tuple(self.kernel_dilation, nd)
        padding, mode = lax_conv_padding(
            self.padding, self.kernel_size, dilation, strides, x.shape[1:-1]
        )
        kernel = self.kernel[...]
        if self.mask is not None:
            kernel = kernel * self.mask
        x, kernel, bias = self.promote_dtype((x, kernel, self._bias_array()), dtype=self.dtype)
        with precision_scope(self.precision):
            y = nmn_array.yat_conv(
                x,
                conv_kernel_to_oihw(kernel),
                bias,
                stride=strides,
                padding=padding,
                dilation=dilation,
                groups=self.feature_group_count,
                padding_mode=mode,
                data_format="channels_last",
                alpha=self._alpha_value(),
                epsilon=self._epsilon_value(),
                weight_normalized=self.weight_normalized,
            )
        return jnp.reshape(y, batch + y.shape[1:])


class YatConvTranspose(_YatParams, nnx.Module):
    """N-D yat transposed convolution (channels last), as ``nmn.nnx.YatConvTranspose`` 0.3.5.

    Output sizes and padding as ``jax.lax.conv_transpose`` ('SAME': ``L * s``; 'VALID':
    ``L * s + max(k_eff - s, 0)``); ``|w_o|^2`` counts all taps (Decision 9). Variables:
    ``kernel (*k, in, out)`` (``(*k, out, in)`` with ``transpose_kernel``), ``bias``,
    ``alpha``, ``epsilon_param``.

    Parameters
    ----------
    in_features, out_features : int
    kernel_size : int or sequence of ints
    strides : int or sequence, default 1
    padding : default 'SAME'
        'SAME', 'VALID', or (low, high) pairs of the form PyTorch's padding can express
        (see :func:`nmn_array.frameworks._common.lax_conv_transpose_padding`); 'CIRCULAR'
        raises NotImplementedError.
    kernel_dilation : int or sequence, default 1
    transpose_kernel : bool
        As ``lax.conv_transpose``'s flag.
    use_bias, constant_bias, softplus_bias, scalar_bias, use_alpha, constant_alpha, use_dropconnect, positive_init, mask, dtype, param_dtype, precision, kernel_init, bias_init, alpha_init, promote_dtype, epsilon, learnable_epsilon, drop_rate, rngs

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from nmn_array.frameworks.nnx import YatConvTranspose
    >>> conv = YatConvTranspose(3, 4, (4, 4), strides=(2, 2), rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((1, 4, 4, 3))).shape
    (1, 8, 8, 4)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        *,
        padding: Any = "SAME",
        kernel_dilation: int | Sequence[int] | None = None,
        use_bias: bool = True,
        constant_bias: float | None = None,
        softplus_bias: bool = False,
        scalar_bias: bool = False,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        use_dropconnect: bool = False,
        positive_init: bool = False,
        mask: Array | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        alpha_init: Initializer = default_alpha_init,
        transpose_kernel: bool = False,
        promote_dtype: Callable[..., Any] = _dtypes.promote_dtype,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        drop_rate: float = 0.0,
        rngs: nnx.Rngs,
    ) -> None:
        check_rate(drop_rate, "drop_rate")
        reject_unsupported_features("YatConvTranspose", use_dropconnect=use_dropconnect)
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.kernel_size = kernel_size
        self.in_features = in_features
        self.out_features = out_features
        self.strides = strides
        self.padding = padding
        self.kernel_dilation = kernel_dilation
        self.use_dropconnect = False
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel_init = kernel_init
        self.bias_init = bias_init
        self.alpha_init = alpha_init
        self.transpose_kernel = transpose_kernel
        self.promote_dtype = promote_dtype
        self.drop_rate = drop_rate
        self._setup_epsilon(epsilon, learnable_epsilon, param_dtype)
        if transpose_kernel:
            self.kernel_shape = kernel_size + (out_features, in_features)
        else:
            self.kernel_shape = kernel_size + (in_features, out_features)
        kernel = kernel_init(rngs.params(), self.kernel_shape, param_dtype)
        if positive_init:
            kernel = jnp.abs(kernel)
        self.kernel = nnx.Param(kernel)
        self._setup_bias(
            use_bias, constant_bias, softplus_bias, scalar_bias, bias_init, out_features,
            param_dtype, rngs,
        )  # fmt: skip
        self._setup_alpha(use_alpha, constant_alpha, alpha_init, param_dtype, rngs)
        if mask is not None and tuple(mask.shape) != self.kernel_shape:
            raise ValueError(
                "Mask needs to have the same shape as weights. "
                f"Shapes are: {tuple(mask.shape)}, {self.kernel_shape}"
            )
        self.mask = mask

    def __call__(self, inputs: Array, *, deterministic: bool = False) -> Array:
        """``inputs (*batch, *spatial, in_features)`` -> ``(*batch, *out, out_features)``."""
        nd = len(self.kernel_size)
        x, batch = flat_batch(inputs, nd)
        strides = _tuple(self.strides, nd)
        dilation = _tuple(self.kernel_dilation, nd)
        padding, output_padding = lax_conv_transpose_padding(
            self.padding, self.kernel_size, strides, dilation
        )
        kernel = self.kernel[...]
        if self.mask is not None:
            kernel = kernel * self.mask
        x, kernel, bias = self.promote_dtype((x, kernel, self._bias_array()), dtype=self.dtype)
        with precision_scope(self.precision):
            y = nmn_array.yat_conv_transpose(
                x,
                conv_transpose_kernel_to_iohw(kernel, self.transpose_kernel),
                bias,
                stride=strides,
                padding=padding,
                output_padding=output_padding,
                dilation=dilation,
                data_format="channels_last",
                alpha=self._alpha_value(),
                epsilon=self._epsilon_value(),
            )
        return jnp.reshape(y, batch + y.shape[1:])


# nmn.nnx's dimension-specific names are aliases of the generic classes.
YatConv1D = YatConv2D = YatConv3D = YatConv
YatConvTranspose1D = YatConvTranspose2D = YatConvTranspose3D = YatConvTranspose


# --------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------
class Embed(_YatParams, nnx.Module):
    """Embedding table with a yat ``attend``, as ``nmn.nnx.Embed`` (alias ``YatEmbed``) 0.3.5.

    Variables: ``embedding (num_embeddings, features)`` (variance scaling, fan in),
    ``alpha``, ``epsilon_param``. ``attend(query)`` is
    ``alpha * (q.e_v)^2 / (|q - e_v|^2 + epsilon)`` for every row, computed in the promoted
    dtype of the query and the table (or ``dtype`` if given; Decision 3).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from nmn_array.frameworks.nnx import Embed
    >>> emb = Embed(10, 4, rngs=nnx.Rngs(0))
    >>> emb(jnp.array([1, 2])).shape, emb.attend(jnp.ones((3, 4))).shape
    ((2, 4), (3, 10))
    """

    DEFAULT_CONSTANT_ALPHA = DEFAULT_CONSTANT_ALPHA

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        embedding_init: Initializer = default_embed_init,
        promote_dtype: Callable[..., Any] = _dtypes.promote_dtype,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        weight_normalized: bool = False,
        alpha_init: Initializer = default_alpha_init,
        rngs: nnx.Rngs,
    ) -> None:
        table = embedding_init(rngs.params(), (num_embeddings, features), param_dtype)
        if weight_normalized:
            table = unit_normalized(table, 0)
        self.embedding = nnx.Param(table)
        self._setup_alpha(use_alpha, constant_alpha, alpha_init, param_dtype, rngs)
        self._setup_epsilon(epsilon, learnable_epsilon, param_dtype)
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.embedding_init = embedding_init
        self.promote_dtype = promote_dtype
        self.spherical = spherical
        self.weight_normalized = weight_normalized

    def __call__(self, inputs: Array) -> Array:
        """Rows of the table for integer ``inputs``: ``(*inputs.shape, features)``."""
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("Input type must be an integer or unsigned integer.")
        (table,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(table, inputs.shape + (self.features,))
        return jnp.take(table, inputs, axis=0)

    def attend(self, query: Array) -> Array:
        """Yat similarity of ``query (..., features)`` with every row: ``(..., num_embeddings)``."""
        query, table = self.promote_dtype((query, self.embedding[...]), dtype=self.dtype)
        return nmn_array.yat(
            query,
            table,
            alpha=self._alpha_value(),
            epsilon=self._epsilon_value(),
            spherical=self.spherical,
        )


YatEmbed = Embed


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------
def _normalization(use_softermax: bool, normalization: str) -> str:
    if use_softermax:
        return "softermax"
    if normalization not in ("softmax", "softermax", "l1"):
        raise ValueError(
            f"normalization must be 'softmax', 'softermax' or 'l1', got {normalization!r}"
        )
    return normalization


class _AttentionCore(_YatParams):
    """Yat attention on head-split ``(..., L, H, d)`` arrays, with dropout and sowing."""

    if TYPE_CHECKING:
        # Set by the attention layer, or from nnx.Module (sow) (type checking only).
        dtype: Any
        power: float
        dropout_rate: float
        broadcast_dropout: bool
        precision: Any
        sow: Callable[..., Any]

    def _attend(
        self,
        q: Array,
        k: Array,
        v: Array,
        mask: Array | None,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        sow_weights: bool,
        spherical: bool,
        normalization: str,
    ) -> Array:
        # (..., L, H, d) -> (..., H, L, d): the pure functions take (..., L, d)
        q, k, v = (jnp.swapaxes(t, -3, -2) for t in (q, k, v))
        q, k, v = _dtypes.promote_dtype((q, k, v), dtype=self.dtype)
        kwargs = dict(
            mask=mask,
            alpha=self._alpha_value(),
            epsilon=self._epsilon_value(),
            spherical=spherical,
            normalization=normalization,
            power=self.power,
        )
        dropout = self.dropout_rate > 0.0 and not deterministic
        with precision_scope(self.precision):
            if not (dropout or sow_weights):
                out = nmn_array.yat_attention(q, k, v, **kwargs)
            else:
                weights = nmn_array.yat_attention_weights(q, k, **kwargs)
                if sow_weights:
                    self.sow(nnx.Intermediate, "attention_weights", weights)
                if dropout:
                    if rngs is None:
                        raise ValueError("'rngs' must be provided for dropout.")
                    weights = attention_dropout(
                        weights, rngs.dropout(), self.dropout_rate, self.broadcast_dropout
                    )
                out = jnp.matmul(weights, v)
        return jnp.swapaxes(out, -3, -2)


class MultiHeadAttention(_AttentionCore, nnx.Module):
    """Multi-head yat attention, as ``nmn.nnx.MultiHeadAttention`` 0.3.5.

    ``LinearGeneral`` projections ``query``, ``key``, ``value`` (``(in, qkv)`` kernels,
    lecun normal) and ``out`` (``(H, d, out_features)``), then per head
    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) sqrt(d))) v``. Both a learnable and a
    constant alpha scale the scores before normalisation (Decision 1). ``decode=True`` with
    :meth:`init_cache` runs one token at a time over a key/value cache.

    Parameters
    ----------
    num_heads, in_features : int
    qkv_features, out_features : int or None
        Default ``in_features``.
    dtype, param_dtype, broadcast_dropout, dropout_rate, deterministic, precision, kernel_init, out_kernel_init, bias_init, out_bias_init, use_bias
        As ``flax.nnx.MultiHeadAttention``.
    attention_fn : callable or None
        ``None`` (default): nmn_array's yat attention. A callable is used instead, called
        like flax's attention functions (head-split q, k, v and keyword arguments).
    decode : bool or None
    normalize_qk : bool
        ``q / max(|q|, 1e-12)`` per head (Decision 2).
    use_alpha, constant_alpha, alpha_init
    epsilon, learnable_epsilon
    use_softermax, power
        Softermax normalisation of the scores.
    spherical : bool
        Spherical yat scores (nmn NNX reaches them through ``attention_fn``).
    use_dropconnect, dropconnect_rate, qkv_dot_general, out_dot_general, qkv_dot_general_cls, out_dot_general_cls
        Accepted; DropConnect raises NotImplementedError (Decision 13).
    rngs : nnx.Rngs

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from nmn_array.frameworks.nnx import MultiHeadAttention
    >>> attn = MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))
    >>> attn(jnp.ones((2, 5, 8))).shape
    (2, 5, 8)
    """

    DEFAULT_CONSTANT_ALPHA = DEFAULT_CONSTANT_ALPHA

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        deterministic: bool | None = None,
        precision: Any = None,
        kernel_init: Initializer = _linear.default_kernel_init,
        out_kernel_init: Initializer | None = None,
        bias_init: Initializer = default_bias_init,
        out_bias_init: Initializer | None = None,
        use_bias: bool = True,
        attention_fn: Callable[..., Array] | None = None,
        decode: bool | None = None,
        normalize_qk: bool = False,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        alpha_init: Initializer = default_alpha_init,
        use_dropconnect: bool = False,
        dropconnect_rate: float = 0.0,
        qkv_dot_general: Any = None,
        out_dot_general: Any = None,
        qkv_dot_general_cls: Any = None,
        out_dot_general_cls: Any = None,
        rngs: nnx.Rngs,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        use_softermax: bool = False,
        power: float = 1.0,
        spherical: bool = False,
    ) -> None:
        reject_unsupported_features("MultiHeadAttention", use_dropconnect=use_dropconnect)
        check_rate(dropconnect_rate, "dropconnect_rate")
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = qkv_features if qkv_features is not None else in_features
        self.out_features = out_features if out_features is not None else in_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = check_rate(dropout_rate)
        self.deterministic = deterministic
        self.precision = precision
        self.kernel_init = kernel_init
        self.out_kernel_init = out_kernel_init
        self.bias_init = bias_init
        self.out_bias_init = out_bias_init
        self.use_bias = use_bias
        self.attention_fn = attention_fn
        self.decode = False if decode is None else decode
        self.normalize_qk = normalize_qk
        self.spherical = spherical
        self.use_softermax = use_softermax
        self.power = power
        self.use_dropconnect = False
        self.dropconnect_rate = dropconnect_rate
        self._setup_epsilon(epsilon, learnable_epsilon, param_dtype)
        self._setup_alpha(use_alpha, constant_alpha, alpha_init, param_dtype, rngs)
        self.alpha_init = alpha_init
        if self.qkv_features % num_heads:
            raise ValueError(
                f"Memory dimension ({self.qkv_features}) must be divisible by "
                f"'num_heads' heads ({num_heads})."
            )
        self.head_dim = self.qkv_features // num_heads
        linear = functools.partial(
            nnx.LinearGeneral,
            in_features=in_features,
            out_features=self.qkv_features,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            use_bias=use_bias,
            precision=precision,
        )
        self.query = linear(rngs=rngs)
        self.key = linear(rngs=rngs)
        self.value = linear(rngs=rngs)
        self.out = nnx.LinearGeneral(
            in_features=(num_heads, self.head_dim),
            out_features=self.out_features,
            axis=(-2, -1),
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=out_kernel_init or kernel_init,
            bias_init=out_bias_init or bias_init,
            use_bias=use_bias,
            precision=precision,
            rngs=rngs,
        )
        self.cached_key = nnx.data(None)
        self.cached_value = nnx.data(None)
        self.cache_index = nnx.data(None)

    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array | None = None,
        inputs_v: Array | None = None,
        *,
        mask: Array | None = None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
        decode: bool | None = None,
    ) -> Array:
        """``inputs_q (*batch, Lq, in_features)`` -> ``(*batch, Lq, out_features)``.

        ``mask`` broadcasts to ``(*batch, H, Lq, Lk)``: boolean (True = attend) or floating
        (additive, -inf hides a key; softmax only).
        """
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    "`inputs_k` cannot be None if `inputs_v` is not None. "
                    "Pass the value to `inputs_k` and leave `inputs_v` as None."
                )
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        if inputs_q.shape[-1] != self.in_features:
            raise ValueError(
                f"Incompatible input dimension, got {inputs_q.shape[-1]} "
                f"but module expects {self.in_features}."
            )
        if self.dropout_rate > 0.0:
            deterministic = _first_from(
                deterministic,
                self.deterministic,
                error_msg="No `deterministic` argument was provided to MultiHeadAttention "
                "as either a __call__ argument, class attribute, or nnx.flag.",
            )
        else:
            deterministic = True
        decode = _first_from(decode, self.decode, error_msg="no decode flag")
        heads = (self.num_heads, self.head_dim)
        q, k, v = (
            t.reshape(t.shape[:-1] + heads)
            for t in (self.query(inputs_q), self.key(inputs_k), self.value(inputs_v))
        )
        if self.normalize_qk:
            q, k = l2_normalize(q), l2_normalize(k)
        pending = None
        if decode:
            k, v, mask, pending = self._decode_step(q, k, v, mask)
        if mask is not None:
            mask = jnp.broadcast_to(mask, q.shape[:-3] + (q.shape[-2], q.shape[-3], k.shape[-3]))
        if self.attention_fn is not None:
            x = self.attention_fn(
                q,
                k,
                v,
                mask=mask,
                dropout_rng=rngs.dropout() if rngs is not None and not deterministic else None,
                dropout_rate=self.dropout_rate,
                broadcast_dropout=self.broadcast_dropout,
                deterministic=deterministic,
                dtype=self.dtype,
                precision=self.precision,
                module=self if sow_weights else None,
                epsilon=self._epsilon_value(),
                use_softermax=self.use_softermax,
                power=self.power,
                alpha=self._alpha_value(),
            )
        else:
            x = self._attend(
                q,
                k,
                v,
                mask,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
                spherical=self.spherical,
                normalization=_normalization(self.use_softermax, "softmax"),
            )
        out = zero_keyless(self.out(x), mask)
        if pending is not None:
            self.cached_key[...], self.cached_value[...], self.cache_index[...] = pending
        return out

    def _decode_step(self, q: Array, k: Array, v: Array, mask: Array | None):
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError("Autoregressive cache not initialized, call `init_cache` first.")
        *batch, max_length, heads, depth = self.cached_key[...].shape
        expected = tuple(batch) + (1, heads, depth)
        for name, t in (("query", q), ("key", k), ("value", v)):
            if t.shape != expected:
                raise ValueError(
                    f"Autoregressive cache shape error, expected {name} shape {expected} "
                    f"instead got {t.shape}."
                )
        index = self.cache_index[...]
        _check_cache_capacity(index, max_length)
        zero = jnp.array(0, dtype=index.dtype)
        start = (zero,) * len(batch) + (index, zero, zero)
        k = lax.dynamic_update_slice(self.cached_key[...], k.astype(self.cached_key.dtype), start)
        v = lax.dynamic_update_slice(
            self.cached_value[...], v.astype(self.cached_value.dtype), start
        )
        # the new query sees the cached positions 0..index
        visible = jnp.broadcast_to(
            jnp.arange(max_length) <= index, tuple(batch) + (1, 1, max_length)
        )
        mask = restrict_mask(mask, visible)
        return k, v, mask, (k, v, index + 1)

    def init_cache(self, input_shape: Sequence[int], dtype: Dtype = jnp.float32) -> None:
        """Create the key/value cache for ``decode``: ``input_shape = (*batch, max_length,
        features)``."""
        shape = (*input_shape[:-1], self.num_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
        self.cache_index = nnx.Cache(jnp.array(0, dtype=jnp.int32))


MultiHeadYatAttention = MultiHeadAttention


class RotaryYatAttention(_AttentionCore, nnx.Module):
    """Multi-head yat attention with rotary position embeddings, as
    ``nmn.nnx.RotaryYatAttention`` 0.3.5 (quadratic path).

    ``LinearGeneral`` projections ``q_proj``, ``k_proj``, ``v_proj`` and optional ``o_proj``
    (``(E, E)`` kernels, no bias by default); RoPE (interleaved pairs) rotates q and k at
    positions ``position_offset + t``; then yat attention. With ``decode=True`` (after
    :meth:`init_cache`) one token attends over the cache, the query rotated at the cache
    index and the cached keys from position 0.

    Parameters
    ----------
    embed_dim, num_heads, max_seq_len : int
    theta : float
    dtype, param_dtype, broadcast_dropout, dropout_rate, precision, kernel_init, bias_init, alpha_init, use_bias, use_out_proj
    normalize_qk : bool
        ``q / max(|q|, 1e-12)`` per head (Decision 2; nmn NNX uses a LayerNorm here).
    epsilon, learnable_epsilon, use_softermax, power, normalization
    use_alpha, constant_alpha
        Alpha scales the scores before normalisation (Decision 1).
    use_performer, performer_kind, num_anchor_features, num_prf_features, num_quad_nodes, performer_num_features, performer_bias, performer_nmax, performer_sketch_m, performer_num_radial, performer_radial_dim, causal, performer_normalize
        Linear-time attention is Decision 13: ``use_performer=True`` and ``causal=True``
        (which only acts in performer mode in nmn) raise NotImplementedError.
    rngs : nnx.Rngs

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from nmn_array.frameworks.nnx import RotaryYatAttention
    >>> attn = RotaryYatAttention(8, 2, max_seq_len=16, rngs=nnx.Rngs(0))
    >>> attn(jnp.ones((2, 5, 8))).shape
    (2, 5, 8)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        max_seq_len: int = 2048,
        *,
        theta: float = 10000.0,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        precision: Any = None,
        kernel_init: Initializer = _linear.default_kernel_init,
        bias_init: Initializer = default_bias_init,
        alpha_init: Initializer = default_alpha_init,
        use_bias: bool = False,
        normalize_qk: bool = False,
        use_out_proj: bool = True,
        epsilon: float = 1e-5,
        use_softermax: bool = False,
        power: float = 1.0,
        use_performer: bool = False,
        performer_kind: str = "slay",
        num_anchor_features: int = 16,
        num_prf_features: int = 8,
        num_quad_nodes: int = 1,
        performer_num_features: int = 256,
        performer_bias: float = 1.0,
        performer_nmax: int = 40,
        performer_sketch_m: int = 128,
        performer_num_radial: int = 8,
        performer_radial_dim: int = 64,
        causal: bool = False,
        performer_normalize: bool = True,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        learnable_epsilon: bool = False,
        normalization: str = "softmax",
        rngs: nnx.Rngs,
    ) -> None:
        if performer_kind not in ("slay", "maclaurin", "radial"):
            raise ValueError(
                "performer_kind must be one of 'slay', 'maclaurin', 'radial', "
                f"got {performer_kind!r}."
            )
        reject_nondefault(
            "RotaryYatAttention",
            "linear-time (performer) attention is Decision 13; pass a causal mask instead",
            use_performer=(use_performer, False),
            causal=(causal, False),
        )
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE.")
        self.max_seq_len = max_seq_len
        self.theta = theta
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = check_rate(dropout_rate)
        self.precision = precision
        self.use_bias = use_bias
        self.normalize_qk = normalize_qk
        self.use_out_proj = use_out_proj
        self.use_softermax = use_softermax
        self.power = power
        self.use_performer = False
        self.performer_kind = performer_kind
        self.causal = False
        self.performer_normalize = performer_normalize
        self.normalization = _normalization(use_softermax, normalization)
        self._setup_epsilon(epsilon, learnable_epsilon, param_dtype)
        self._setup_alpha(use_alpha, constant_alpha, alpha_init, param_dtype, rngs)
        linear = functools.partial(
            nnx.LinearGeneral,
            in_features=embed_dim,
            out_features=embed_dim,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            use_bias=use_bias,
            precision=precision,
        )
        self.q_proj = linear(rngs=rngs)
        self.k_proj = linear(rngs=rngs)
        self.v_proj = linear(rngs=rngs)
        self.o_proj = linear(rngs=rngs) if use_out_proj else nnx.data(None)
        self.cached_key = nnx.data(None)
        self.cached_value = nnx.data(None)
        self.cache_index = nnx.data(None)

    def _rotate(self, t: Array, offset: Any) -> Array:
        """RoPE of ``(B, L, H, d)`` at positions ``offset + arange(L)``."""
        length = t.shape[1]
        if not isinstance(offset, jax.core.Tracer) and int(offset) + length > self.max_seq_len:
            raise ValueError(
                f"Rotary frequencies were precomputed for max_seq_len={self.max_seq_len}, "
                f"but position_offset + seq_len = {int(offset) + length} exceeds it."
            )
        positions = jnp.asarray(offset, jnp.int32) + jnp.arange(length, dtype=jnp.int32)
        rotated = nmn_array.rotary_embedding(jnp.swapaxes(t, 1, 2), positions, theta=self.theta)
        return jnp.swapaxes(rotated, 1, 2)

    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
        position_offset: int = 0,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> Array:
        """``x (B, L, E)`` -> ``(B, L, E)``; ``mask`` broadcastable to ``(B, H, L, Lk)``."""
        b, length, _ = x.shape
        shape = (b, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).reshape(shape)
        k = self.k_proj(x).reshape(shape)
        v = self.v_proj(x).reshape(shape)
        if self.normalize_qk:
            q, k = l2_normalize(q), l2_normalize(k)
        pending = None
        key_offset: Any = position_offset
        if decode:
            k, v, mask, pending, position_offset = self._decode_step(q, k, v, mask)
            key_offset = 0
        q = self._rotate(q, position_offset)
        k = self._rotate(k, key_offset)
        if mask is not None:
            mask = jnp.broadcast_to(mask, (b, self.num_heads, length, k.shape[1]))
        out = self._attend(
            q,
            k,
            v,
            mask,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
            spherical=False,
            normalization=self.normalization,
        )
        out = out.reshape(b, length, self.embed_dim)
        if self.o_proj is not None:
            out = self.o_proj(out)
        out = zero_keyless(out, mask)
        if pending is not None:
            self.cached_key[...], self.cached_value[...], self.cache_index[...] = pending
        return out

    def _decode_step(self, q: Array, k: Array, v: Array, mask: Array | None):
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError("Cache not initialized. Call init_cache first.")
        b, max_length = self.cached_key.shape[:2]
        if q.shape[1] != 1:
            raise ValueError(f"Autoregressive decode expects one token, got seq_len={q.shape[1]}.")
        expected = (b, 1, self.num_heads, self.head_dim)
        for name, t in (("query", q), ("key", k), ("value", v)):
            if t.shape != expected:
                raise ValueError(
                    f"Autoregressive cache shape error, expected {name} shape {expected} "
                    f"instead got {t.shape}."
                )
        index = self.cache_index[...]
        _check_cache_capacity(index, max_length)
        zero = jnp.array(0, dtype=index.dtype)  # one integer type for every start index
        start = (zero, index, zero, zero)
        # the cache holds un-rotated keys; all of them are rotated from position 0
        k = lax.dynamic_update_slice(self.cached_key[...], k.astype(self.cached_key.dtype), start)
        v = lax.dynamic_update_slice(
            self.cached_value[...], v.astype(self.cached_value.dtype), start
        )
        visible = jnp.broadcast_to(jnp.arange(max_length) <= index, (b, 1, 1, max_length))
        mask = restrict_mask(mask, visible)
        return k, v, mask, (k, v, index + 1), index

    def init_cache(self, batch_size: int, max_length: int, dtype: Dtype = jnp.float32) -> None:
        """Create the key/value cache for ``decode=True``."""
        if max_length > self.max_seq_len:
            raise ValueError(f"cache length {max_length} exceeds max_seq_len={self.max_seq_len}")
        shape = (batch_size, max_length, self.num_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
        self.cache_index = nnx.Cache(jnp.array(0, dtype=jnp.int32))
