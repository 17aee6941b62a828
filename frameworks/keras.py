"""Keras 3 layers (any backend: jax, torch, tensorflow) over the pure functions of ``nmn_array``.

Drop-in replacements for ``nmn.keras`` 0.3.5: the same class names, constructor arguments,
weight names, shapes and layouts, so ``from nmn.keras import YatNMN`` can become
``from nmn_array.frameworks.keras import YatNMN`` and saved weights still load. Every
``call`` unwraps its variables to the backend's own arrays (jax arrays, torch tensors or
``tf.Tensor``) and makes exactly one ``nmn_array`` call; the few places that differ from
``nmn`` are listed in ``docs/migration/keras.md``.

Examples
--------
>>> import numpy as np
>>> from nmn_array.frameworks.keras import YatNMN
>>> layer = YatNMN(3)
>>> tuple(layer(np.ones((2, 5), dtype="float32")).shape)
(2, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nmn_array.frameworks._common import (
    alpha_config,
    bias_config,
    check_epsilon,
    combine_masks,
    conv_output_length,
    known_size,
    mask_visibility,
    ntuple,
    reject_unsupported_features,
    require,
    restrict_mask,
    softplus_inverse,
    transpose_conv_call_args,
    transpose_conv_pads,
    unit_normalized,
)

import nmn_array
from nmn_array import soft_tanh, softer_sigmoid, softermax

# Any: the module is imported at run time and its classes are our base classes; mypy
# takes a base class from an Any-typed name, not from a plain module object.
keras: Any = require("keras")
ops = keras.ops

__all__ = [
    "MultiHeadYatAttention",
    "YatConv1D",
    "YatConv1d",
    "YatConv2D",
    "YatConv2d",
    "YatConv3D",
    "YatConv3d",
    "YatConvTranspose1D",
    "YatConvTranspose1d",
    "YatConvTranspose2D",
    "YatConvTranspose2d",
    "YatConvTranspose3D",
    "YatConvTranspose3d",
    "YatDense",
    "YatEmbed",
    "YatNMN",
    "soft_tanh",
    "softer_sigmoid",
    "softermax",
]

_register = keras.saving.register_keras_serializable(package="nmn_array")

# Normalisation guard of nmn's build-time weight normalisation (Decision 7).
# Decision 2: normalize_qk is q / max(|q|, 1e-12).
_QK_NORM_FLOOR = 1e-12


# --------------------------------------------------------------------------------------
# helpers: unwrapping, parameters, initialisers
# --------------------------------------------------------------------------------------
def _raw(value: Any) -> Any:
    """A Keras variable or tensor as the backend's own array (None passes through).

    ``Variable.value`` reads a variable through Keras (honouring autocast and, on JAX, the
    stateless scope that ``model.fit`` traces in), giving a jax array, a torch tensor that
    still carries autograd, or (TensorFlow) a ``tf.Variable`` whose read a GradientTape
    watches.
    """
    if value is None:
        return None
    if isinstance(value, keras.Variable):
        value = value.value
    if keras.backend.backend() == "tensorflow":
        # A Keras variable's value is a tf.Variable there; read it into a tf.Tensor.
        import tensorflow as tf

        return tf.convert_to_tensor(value)
    return ops.convert_to_tensor(value)


def _is_low_precision(dtype: Any) -> bool:
    return "float16" in str(dtype)


def _fp32_safe(initializer: Any) -> Any:
    """Initialise 16-bit variables through float32 (orthogonal init needs a QR in float32)."""

    def initialize(shape, dtype=None):
        if dtype is not None and _is_low_precision(keras.backend.standardize_dtype(dtype)):
            return ops.cast(initializer(shape, dtype="float32"), dtype)
        return initializer(shape, dtype=dtype)

    return initialize


def _unit_filters_init(variable: Any, axis: int) -> None:
    """Build-time weight normalisation of a stored kernel (nmn does it once at build)."""
    variable.assign(unit_normalized(_raw(variable), axis))


def _epsilon_dtype(layer: keras.layers.Layer) -> str:
    """Learnable epsilon is stored in float32 for float16/bfloat16 layers (as nmn does)."""
    dtype = keras.backend.standardize_dtype(layer.variable_dtype)
    return "float32" if _is_low_precision(dtype) else dtype


class _YatParams:
    """Mixin: the bias / alpha / epsilon parameters every yat layer shares."""

    if TYPE_CHECKING:
        # From the keras.layers.Layer this mixin is combined with (type checking only).
        add_weight: Callable[..., Any]

    def _init_yat(
        self,
        *,
        use_bias: bool,
        constant_bias: Any,
        use_alpha: bool,
        constant_alpha: Any,
        epsilon: float,
        learnable_epsilon: bool,
    ) -> None:
        self._bias_cfg = bias_config(use_bias, constant_bias)
        self._alpha_cfg = alpha_config(use_alpha, constant_alpha)
        # nmn reports use_bias/use_alpha as True when a constant is set.
        self.use_bias = self._bias_cfg.mode != "none"
        self.constant_bias = constant_bias
        self.use_alpha = self._alpha_cfg.mode != "none"
        self.constant_alpha = constant_alpha
        self.epsilon = check_epsilon(epsilon)
        self.learnable_epsilon = bool(learnable_epsilon)
        self.bias = None
        self.alpha = None
        self.epsilon_param = None

    def _build_yat(self, n_out: int, bias_kwargs: dict[str, Any] | None = None) -> None:
        if self._bias_cfg.mode == "learnable":
            self.bias = self.add_weight(
                name="bias",
                shape=(n_out,),
                trainable=True,
                **(bias_kwargs or {"initializer": "zeros"}),
            )
        if self._alpha_cfg.mode == "learnable":
            self.alpha = self.add_weight(name="alpha", shape=(1,), initializer="ones")
        if self.learnable_epsilon:
            self.epsilon_param = self.add_weight(
                name="epsilon_param",
                shape=(1,),
                initializer=keras.initializers.Constant(softplus_inverse(self.epsilon)),
                dtype=_epsilon_dtype(self),
            )

    def _bias_arg(self) -> Any:
        if self._bias_cfg.mode == "constant":
            return self._bias_cfg.value
        return _raw(self.bias)

    def _alpha_arg(self) -> Any:
        if self._alpha_cfg.mode == "constant":
            return self._alpha_cfg.value
        return _raw(self.alpha)

    def _epsilon_arg(self) -> Any:
        if self.epsilon_param is None:
            return self.epsilon
        # Decision 11: the effective epsilon is softplus of the raw parameter.
        return ops.softplus(_raw(self.epsilon_param))


def _serialize(obj: Any, kind: str) -> Any:
    return getattr(keras, kind).serialize(obj)


# --------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------
@_register
class YatNMN(_YatParams, keras.layers.Layer):
    """Yat dense layer: ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``.

    Activation-free (the yat product is itself non-linear). The kernel has nmn.keras's
    layout ``(input_dim, units)`` (one neuron per column).

    Parameters
    ----------
    units : int
        Number of neurons.
    use_bias : bool
        Learnable bias ``(units,)`` added to the dot product inside the square.
    constant_bias : float or None
        A fixed bias instead of a learnable one.
    use_alpha : bool
        Learnable output scale ``alpha`` of shape ``(1,)``, initialised to 1.
    constant_alpha : bool, float or None
        ``True`` means sqrt(2), a number means that number; no alpha weight is made.
    positive_init : bool
        Take ``abs`` of the initial kernel.
    epsilon : float
        Added to the squared distance.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_param)``.
    spherical : bool
        Normalise inputs and neurons to unit length; the distance is ``2 - 2 x.w``.
    weight_normalized : bool
        Normalise neurons (at build and in every call) and take ``|w|^2 = 1``.
    lazy, freeze_kernel : bool
        Freeze the kernel (``trainable=False``); bias, alpha and epsilon still train.
    kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer, activity_regularizer, kernel_constraint, bias_constraint
        As for ``keras.layers.Dense``; the kernel default is ``"glorot_normal"``.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import YatNMN
    >>> layer = YatNMN(4, constant_alpha=True)
    >>> y = layer(np.random.default_rng(0).normal(size=(2, 3)).astype("float32"))
    >>> tuple(y.shape), [w.path.split("/")[-1] for w in layer.weights]
    ((2, 4), ['kernel', 'bias'])
    """

    def __init__(
        self,
        units: int,
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        positive_init: bool = False,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        weight_normalized: bool = False,
        lazy: bool = False,
        freeze_kernel: bool | None = None,
        kernel_initializer: Any = "glorot_normal",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = int(units)
        self._init_yat(
            use_bias=use_bias,
            constant_bias=constant_bias,
            use_alpha=use_alpha,
            constant_alpha=constant_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
        )
        self.positive_init = bool(positive_init)
        self.spherical = bool(spherical)
        self.weight_normalized = bool(weight_normalized)
        # nmn: freeze_kernel is an alias of lazy; either one freezes the kernel.
        self.lazy = bool(lazy or freeze_kernel)
        self.freeze_kernel = self.lazy
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape: Sequence[int | None]) -> None:
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"the last axis of the input must be known, got {input_shape}")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(input_dim), self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=not self.lazy,
        )
        self._build_yat(
            self.units,
            {
                "initializer": self.bias_initializer,
                "regularizer": self.bias_regularizer,
                "constraint": self.bias_constraint,
            },
        )
        if self.positive_init:
            self.kernel.assign(ops.abs(ops.convert_to_tensor(self.kernel)))
        if self.weight_normalized:
            _unit_filters_init(self.kernel, 1)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: int(input_dim)})

    def call(self, inputs: Any) -> Any:
        return nmn_array.yat(
            inputs,
            _raw(self.kernel),
            self._bias_arg(),
            alpha=self._alpha_arg(),
            epsilon=self._epsilon_arg(),
            spherical=self.spherical,
            weight_normalized=self.weight_normalized,
            _w_in_out=True,  # the (input_dim, units) kernel as stored: no transposes
        )

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return (*tuple(input_shape)[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "use_bias": self.use_bias,
                "constant_bias": self.constant_bias,
                "use_alpha": self.use_alpha,
                "constant_alpha": self.constant_alpha,
                "positive_init": self.positive_init,
                "epsilon": self.epsilon,
                "learnable_epsilon": self.learnable_epsilon,
                "spherical": self.spherical,
                "weight_normalized": self.weight_normalized,
                "lazy": self.lazy,
                "freeze_kernel": self.freeze_kernel,
                "kernel_initializer": _serialize(self.kernel_initializer, "initializers"),
                "bias_initializer": _serialize(self.bias_initializer, "initializers"),
                "kernel_regularizer": _serialize(self.kernel_regularizer, "regularizers"),
                "bias_regularizer": _serialize(self.bias_regularizer, "regularizers"),
                "activity_regularizer": _serialize(self.activity_regularizer, "regularizers"),
                "kernel_constraint": _serialize(self.kernel_constraint, "constraints"),
                "bias_constraint": _serialize(self.bias_constraint, "constraints"),
            }
        )
        return config


YatDense = YatNMN


# --------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------
class _YatConvBase(_YatParams, keras.layers.Layer):
    """Shared machinery of the direct and transposed yat convolutions."""

    rank: int = 0
    transposed: bool = False

    def _setup(
        self,
        *,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int],
        padding: str,
        data_format: str | None,
        dilation_rate: int | Sequence[int],
        groups: int,
        use_bias: bool,
        constant_bias: float | None,
        use_alpha: bool,
        epsilon: float,
        learnable_epsilon: bool,
        weight_normalized: bool,
        use_dropconnect: bool,
        drop_rate: float,
        tie_kernel_bank: bool,
        kernel_bank_size: int | None,
        kernel_bank_id: str,
        kernel_bank: Any,
        kernel_initializer: Any,
        bias_initializer: Any,
        kernel_regularizer: Any,
        bias_regularizer: Any,
        kernel_constraint: Any,
        bias_constraint: Any,
        output_padding: int | Sequence[int] | None,
    ) -> None:
        name = type(self).__name__
        # Decision 13: DropConnect and kernel banks are not in this release.
        reject_unsupported_features(
            name,
            use_dropconnect=use_dropconnect,
            tie_kernel_bank=tie_kernel_bank,
            kernel_bank=kernel_bank,
        )
        n = self.rank
        self.filters = int(filters)
        self.kernel_size = ntuple(kernel_size, n, "kernel_size")
        self.strides = ntuple(strides, n, "strides")
        self.dilation_rate = ntuple(dilation_rate, n, "dilation_rate")
        if not isinstance(padding, str):
            raise ValueError(f"{name}: padding must be 'valid' or 'same', got {padding!r}")
        self.padding = padding.lower()
        allowed = ("valid", "same") + (("causal",) if n == 1 and not self.transposed else ())
        if self.padding not in allowed:
            raise ValueError(f"{name}: padding must be one of {list(allowed)}, got {padding!r}")
        if data_format not in (None, "channels_last", "channels_first"):
            raise ValueError(
                f"{name}: data_format must be 'channels_last' or 'channels_first', "
                f"got {data_format!r}"
            )
        self.data_format = data_format
        if n == 1 and not self.transposed and max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError("`strides > 1` is incompatible with `dilation_rate > 1`.")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
        self.groups = groups
        self.output_padding = (
            None if output_padding is None else ntuple(output_padding, n, "output_padding")
        )
        self._init_yat(
            use_bias=use_bias,
            constant_bias=constant_bias,
            use_alpha=use_alpha,
            constant_alpha=None,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
        )
        self.weight_normalized = bool(weight_normalized)
        self.use_dropconnect = use_dropconnect
        self.drop_rate = drop_rate
        self.tie_kernel_bank = tie_kernel_bank
        self.kernel_bank_size = kernel_bank_size
        self.kernel_bank_id = kernel_bank_id
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=n + 2)
        self.supports_masking = True

    # nmn treats data_format=None as channels_last (it does not read the global setting)
    @property
    def _channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def _channel_axis(self) -> int:
        return 1 if self._channels_first else -1

    def _kernel_shape(self, input_dim: int) -> tuple[int, ...]:
        raise NotImplementedError

    def build(self, input_shape: Sequence[int | None]) -> None:
        axis = self._channel_axis()
        input_dim = input_shape[axis]
        if input_dim is None:
            raise ValueError(
                "The channel dimension of the inputs should be defined. "
                f"Found `None`. Full input shape: {input_shape}"
            )
        input_dim = int(input_dim)
        if not self.transposed:
            if input_dim % self.groups:
                raise ValueError(
                    f"The number of input channels ({input_dim}) must be divisible by the "
                    f"number of groups ({self.groups})."
                )
            if self.filters % self.groups:
                raise ValueError(
                    f"The number of filters ({self.filters}) must be divisible by the number "
                    f"of groups ({self.groups})."
                )
        self.kernel = self.add_weight(
            name="kernel",
            shape=self._kernel_shape(input_dim),
            initializer=_fp32_safe(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
        )
        self._build_yat(
            self.filters,
            {
                "initializer": self.bias_initializer,
                "regularizer": self.bias_regularizer,
                "constraint": self.bias_constraint,
            },
        )
        if self.weight_normalized:
            _unit_filters_init(self.kernel, self._filter_axis())
        self.input_dim = input_dim
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={axis: input_dim})

    def _filter_axis(self) -> int:
        """The axis of the stored kernel that indexes filters."""
        raise NotImplementedError

    def _torch_layout_kernel(self) -> Any:
        # Keras (*k, a, b) -> (b, a, *k): conv (*k, in/g, O) -> (O, in/g, *k) and
        # transposed (*k, O, in) -> (in, O, *k). A pure permutation: no spatial flip, because
        # Keras' conv_transpose is the exact gradient of its cross-correlation.
        n = self.rank
        return ops.transpose(_raw(self.kernel), (n + 1, n, *range(n)))

    def _data_format_arg(self) -> str:
        return "channels_first" if self._channels_first else "channels_last"

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "use_bias": self.use_bias,
                "constant_bias": self.constant_bias,
                "use_alpha": self.use_alpha,
                "epsilon": self.epsilon,
                "learnable_epsilon": self.learnable_epsilon,
                "weight_normalized": self.weight_normalized,
                "use_dropconnect": self.use_dropconnect,
                "drop_rate": self.drop_rate,
                "tie_kernel_bank": self.tie_kernel_bank,
                "kernel_bank_size": self.kernel_bank_size,
                "kernel_bank_id": self.kernel_bank_id,
                "kernel_bank": None,
                "kernel_initializer": _serialize(self.kernel_initializer, "initializers"),
                "bias_initializer": _serialize(self.bias_initializer, "initializers"),
                "kernel_regularizer": _serialize(self.kernel_regularizer, "regularizers"),
                "bias_regularizer": _serialize(self.bias_regularizer, "regularizers"),
                "activity_regularizer": _serialize(self.activity_regularizer, "regularizers"),
                "kernel_constraint": _serialize(self.kernel_constraint, "constraints"),
                "bias_constraint": _serialize(self.bias_constraint, "constraints"),
            }
        )
        return config


class _YatConvND(_YatConvBase):
    """Yat convolution: the yat product of every input patch with every filter.

    Kernel layout ``(*kernel_size, input_dim // groups, filters)`` (Keras'), bias
    ``(filters,)``, alpha ``(1,)``. ``padding`` is ``"valid"``, ``"same"`` (XLA/TensorFlow
    rule for any stride) or, for 1-D, ``"causal"``. ``data_format`` ``None`` means
    ``"channels_last"``. ``use_dropconnect``, ``drop_rate`` and the kernel-bank arguments are
    accepted for compatibility; turning DropConnect or kernel banks on raises
    ``NotImplementedError``.
    """

    transposed = False

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        weight_normalized: bool = False,
        use_dropconnect: bool = False,
        drop_rate: float = 0.0,
        tie_kernel_bank: bool = False,
        kernel_bank_size: int | None = None,
        kernel_bank_id: str = "default",
        kernel_bank: Any = None,
        kernel_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        options = dict(locals())
        for key in ("self", "kwargs", "activity_regularizer", "__class__"):
            options.pop(key, None)
        self._setup(output_padding=None, **options)

    def _kernel_shape(self, input_dim: int) -> tuple[int, ...]:
        return (*self.kernel_size, input_dim // self.groups, self.filters)

    def _filter_axis(self) -> int:
        return self.rank + 1

    def call(self, inputs: Any, training: Any = None) -> Any:
        return nmn_array.yat_conv(
            inputs,
            self._torch_layout_kernel(),
            self._bias_arg(),
            stride=self.strides,
            padding=self.padding,
            dilation=self.dilation_rate,
            groups=self.groups,
            data_format=self._data_format_arg(),
            alpha=self._alpha_arg(),
            epsilon=self._epsilon_arg(),
            weight_normalized=self.weight_normalized,
        )

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        shape = tuple(input_shape)
        spatial = shape[2:] if self._channels_first else shape[1:-1]
        out = tuple(
            conv_output_length(size, k, s, d, self.padding)
            for size, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate)
        )
        if self._channels_first:
            return (shape[0], self.filters, *out)
        return (shape[0], *out, self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["groups"] = self.groups
        return config


@_register
class YatConv1D(_YatConvND):
    """1-D yat convolution; input ``(batch, steps, channels)`` (or channels first).

    See ``_YatConvND`` for the arguments, which are those of ``nmn.keras.YatConv1D``.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import YatConv1D
    >>> layer = YatConv1D(4, 3, padding="causal")
    >>> tuple(layer(np.ones((2, 10, 3), dtype="float32")).shape)
    (2, 10, 4)
    """

    rank = 1


@_register
class YatConv2D(_YatConvND):
    """2-D yat convolution; input ``(batch, height, width, channels)`` (or channels first).

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import YatConv2D
    >>> layer = YatConv2D(4, 3, strides=2, padding="same", groups=2)
    >>> tuple(layer(np.ones((2, 9, 9, 6), dtype="float32")).shape)
    (2, 5, 5, 4)
    """

    rank = 2


@_register
class YatConv3D(_YatConvND):
    """3-D yat convolution; input ``(batch, d, h, w, channels)`` (or channels first).

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import YatConv3D
    >>> layer = YatConv3D(2, 2, data_format="channels_first")
    >>> tuple(layer(np.ones((1, 3, 4, 4, 4), dtype="float32")).shape)
    (1, 2, 3, 3, 3)
    """

    rank = 3


class _YatConvTransposeND(_YatConvBase):
    """Yat transposed convolution with Keras' output sizes.

    Kernel layout ``(*kernel_size, filters, input_dim)`` (Keras'), bias ``(filters,)``,
    alpha ``(1,)``. Keras' output sizes: ``padding="valid"`` gives
    ``(L - 1) * s + max(k_eff, s)`` and ``"same"`` gives ``L * s``, with the low/high split
    of ``jax.lax.conv_transpose`` on every backend; an explicit ``output_padding`` gives
    ``(L - 1) * s + k_eff + output_padding`` ("valid") or
    ``(L - 1) * s + k_eff % 2 + output_padding`` ("same"). ``|w|^2`` counts every tap of a
    filter (Decision 9). DropConnect and kernel banks raise ``NotImplementedError``.
    """

    transposed = True

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        weight_normalized: bool = False,
        use_dropconnect: bool = False,
        drop_rate: float = 0.0,
        tie_kernel_bank: bool = False,
        kernel_bank_size: int | None = None,
        kernel_bank_id: str = "default",
        kernel_bank: Any = None,
        kernel_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        output_padding: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        options = dict(locals())
        for key in ("self", "kwargs", "activity_regularizer", "__class__"):
            options.pop(key, None)
        self._setup(groups=1, **options)

    def _kernel_shape(self, input_dim: int) -> tuple[int, ...]:
        return (*self.kernel_size, self.filters, input_dim)

    def _filter_axis(self) -> int:
        return self.rank

    def call(self, inputs: Any, training: Any = None) -> Any:
        w = self._torch_layout_kernel()
        padding, output_padding, crops = transpose_conv_call_args(
            self.kernel_size, self.strides, self.dilation_rate, self.padding, self.output_padding
        )
        y = nmn_array.yat_conv_transpose(
            inputs,
            w,
            self._bias_arg(),
            stride=self.strides,
            padding=padding,
            output_padding=output_padding,
            dilation=self.dilation_rate,
            data_format=self._data_format_arg(),
            alpha=self._alpha_arg(),
            epsilon=self._epsilon_arg(),
            weight_normalized=self.weight_normalized,
        )
        if any(crops):
            # Keras' 'same' with an explicit output_padding can put less padding on the high
            # side than on the low side, which the torch-style (padding, output_padding) pair
            # cannot express; the extra trailing positions are dropped (each output position
            # is computed independently, so the rest are exact).
            first = 2 if self._channels_first else 1
            index = [slice(None)] * (self.rank + 2)
            for i, crop in enumerate(crops):
                if crop:
                    index[first + i] = slice(0, -crop)
            y = y[tuple(index)]
        return y

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        shape = tuple(input_shape)
        spatial = shape[2:] if self._channels_first else shape[1:-1]
        ops_ = self.output_padding or (None,) * self.rank
        out = []
        for size, k, s, d, op in zip(
            spatial, self.kernel_size, self.strides, self.dilation_rate, ops_
        ):
            lo, hi = transpose_conv_pads(k, s, d, self.padding, op)
            k_eff = d * (k - 1) + 1
            out.append(None if size is None else (size - 1) * s + lo + hi - k_eff + 2)
        if self._channels_first:
            return (shape[0], self.filters, *out)
        return (shape[0], *out, self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["output_padding"] = self.output_padding
        return config


@_register
class YatConvTranspose1D(_YatConvTransposeND):
    """1-D yat transposed convolution; arguments as ``nmn.keras.YatConvTranspose1D``.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import YatConvTranspose1D
    >>> layer = YatConvTranspose1D(4, 3, strides=2, padding="same")
    >>> tuple(layer(np.ones((2, 5, 3), dtype="float32")).shape)
    (2, 10, 4)
    """

    rank = 1


@_register
class YatConvTranspose2D(_YatConvTransposeND):
    """2-D yat transposed convolution; arguments as ``nmn.keras.YatConvTranspose2D``.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import YatConvTranspose2D
    >>> layer = YatConvTranspose2D(2, 3, strides=2)
    >>> tuple(layer(np.ones((1, 4, 4, 3), dtype="float32")).shape)
    (1, 9, 9, 2)
    """

    rank = 2


@_register
class YatConvTranspose3D(_YatConvTransposeND):
    """3-D yat transposed convolution; arguments as ``nmn.keras.YatConvTranspose3D``.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import YatConvTranspose3D
    >>> layer = YatConvTranspose3D(2, 2, strides=2, padding="same")
    >>> tuple(layer(np.ones((1, 2, 2, 2, 3), dtype="float32")).shape)
    (1, 4, 4, 4, 2)
    """

    rank = 3


YatConv1d = YatConv1D
YatConv2d = YatConv2D
YatConv3d = YatConv3D
YatConvTranspose1d = YatConvTranspose1D
YatConvTranspose2d = YatConvTranspose2D
YatConvTranspose3d = YatConvTranspose3D


# --------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------
@_register
class YatEmbed(keras.layers.Layer):
    """Token embedding whose ``attend`` scores queries against every embedding with yat.

    ``call(ids)`` is a plain lookup ``embedding[ids]``; ``attend(q)`` returns
    ``alpha * (q.e_v)^2 / (max(|q - e_v|^2, 0) + epsilon)`` of shape
    ``(..., num_embeddings)`` (weight tying for language-model heads).

    Parameters
    ----------
    num_embeddings, features : int
        Table shape ``(num_embeddings, features)``; the weight is named ``embedding``.
    use_alpha, constant_alpha : as for :class:`YatNMN`
    epsilon : float
    spherical : bool
        Normalise queries and embeddings (``v / (|v| + 1e-8)``) in ``attend``.
    weight_normalized : bool
        Normalise the table once at build.
    embedding_initializer : initializer, default ``"glorot_normal"``

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import YatEmbed
    >>> emb = YatEmbed(10, 4)
    >>> h = emb(np.array([[1, 2, 3]]))
    >>> tuple(h.shape), tuple(emb.attend(h).shape)
    ((1, 3, 4), (1, 3, 10))
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        spherical: bool = False,
        weight_normalized: bool = False,
        embedding_initializer: Any = "glorot_normal",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_embeddings = int(num_embeddings)
        self.features = int(features)
        self.epsilon = check_epsilon(epsilon)
        self.spherical = bool(spherical)
        self.weight_normalized = bool(weight_normalized)
        self.embedding_initializer = keras.initializers.get(embedding_initializer)
        self._alpha_cfg = alpha_config(use_alpha, constant_alpha)
        self.use_alpha = self._alpha_cfg.mode != "none"
        self.constant_alpha = constant_alpha
        self.alpha = None

    def build(self, input_shape: Any = None) -> None:
        self.embedding = self.add_weight(
            name="embedding",
            shape=(self.num_embeddings, self.features),
            initializer=self.embedding_initializer,
            trainable=True,
        )
        if self.weight_normalized:
            _unit_filters_init(self.embedding, 0)
        if self._alpha_cfg.mode == "learnable":
            self.alpha = self.add_weight(name="alpha", shape=(1,), initializer="ones")
        self.built = True

    def call(self, inputs: Any, attend: bool = False) -> Any:
        if attend:
            return self._attend(inputs)
        return ops.take(self.embedding, inputs, axis=0)

    def attend(self, query: Any) -> Any:
        """Yat logits of ``query (..., features)`` against the table: ``(..., num_embeddings)``.

        Runs as a call of this layer (``self(query, attend=True)``), so in a functional model
        it is a second node of the same layer: the weights stay tied through saving and
        loading, and symbolic calls get their shape without running any math.
        """
        return self(query, attend=True)

    def _attend(self, query: Any) -> Any:
        alpha = self._alpha_cfg.value if self._alpha_cfg.mode == "constant" else _raw(self.alpha)
        # Decision 8: the distance is clamped at 0 in every mode; attend has no bias.
        return nmn_array.yat(
            query,
            _raw(self.embedding),
            None,
            alpha=alpha,
            epsilon=self.epsilon,
            spherical=self.spherical,
        )

    def compute_output_spec(self, inputs: Any, attend: bool = False) -> Any:
        shape = tuple(inputs.shape)
        shape = (*shape[:-1], self.num_embeddings) if attend else (*shape, self.features)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_embeddings": self.num_embeddings,
                "features": self.features,
                "use_alpha": self.use_alpha,
                "constant_alpha": self.constant_alpha,
                "epsilon": self.epsilon,
                "spherical": self.spherical,
                "weight_normalized": self.weight_normalized,
                "embedding_initializer": _serialize(self.embedding_initializer, "initializers"),
            }
        )
        return config


# --------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------
@_register
class MultiHeadYatAttention(keras.layers.Layer):
    """Multi-head attention whose scores are yat products of queries and keys.

    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) * sqrt(head_dim))) @ v`` per head,
    with ordinary (linear) q/k/v/out projections. Weights: ``q_kernel``, ``k_kernel``,
    ``v_kernel`` ``(input_dim, embed_dim)``, ``q_bias``, ``k_bias``, ``v_bias``
    ``(embed_dim,)``, ``out_kernel`` ``(embed_dim, embed_dim)`` and ``out_bias``, and a
    learnable ``alpha`` ``(1,)``.

    Parameters
    ----------
    embed_dim, num_heads : int
    dropout : float
        Dropout on the attention weights (only with ``training=True``).
    use_bias : bool
        Biases in the projections.
    use_alpha, constant_alpha : as for :class:`YatNMN`
        Both multiply the scores before the softmax (Decision 1).
    normalize_qk : bool
        L2-normalise each head's q and k as ``q / max(|q|, 1e-12)`` (Decision 2).
    spherical : bool
        Normalise q and k as ``v / sqrt(|v|^2 + epsilon)`` inside the score.
    use_out_proj : bool
    epsilon : float
    kernel_initializer : initializer, default ``"glorot_normal"``

    Notes
    -----
    ``call(query, key=None, value=None, mask=None, attention_mask=None, training=False)``:
    ``key`` defaults to ``query`` and ``value`` to ``key``. ``attention_mask`` broadcasts to
    ``(batch, heads, q_len, kv_len)``: boolean (True = attend) or floating (additive, added to
    the scores; -inf hides a key); other dtypes raise TypeError. ``mask`` is either a boolean
    Keras sequence mask ``(batch, seq)`` (e.g. from ``Embedding(mask_zero=True)``; for
    self-attention it masks queries and keys) or another attention mask. Queries that see
    no key output zeros.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import MultiHeadYatAttention
    >>> mha = MultiHeadYatAttention(embed_dim=8, num_heads=2)
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype("float32")
    >>> causal = np.tril(np.ones((5, 5), dtype=bool))
    >>> tuple(mha(x, attention_mask=causal).shape)
    (2, 5, 8)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        use_bias: bool = True,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        normalize_qk: bool = False,
        spherical: bool = False,
        use_out_proj: bool = True,
        epsilon: float = 1e-5,
        kernel_initializer: Any = "glorot_normal",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout_rate = float(dropout)
        self.use_bias = bool(use_bias)
        self._alpha_cfg = alpha_config(use_alpha, constant_alpha)
        self.use_alpha = self._alpha_cfg.mode != "none"
        self.constant_alpha = constant_alpha
        self._normalize_qk = bool(normalize_qk)
        self._spherical = bool(spherical)
        self.use_out_proj = bool(use_out_proj)
        self.epsilon = check_epsilon(epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True
        # Dropout draws from a seeded generator so it also works under jax.jit (model.fit).
        self._seed_generator = keras.random.SeedGenerator() if self.dropout_rate > 0 else None

    def build(
        self,
        query_shape: Sequence[int | None],
        key_shape: Sequence[int | None] | None = None,
        value_shape: Sequence[int | None] | None = None,
    ) -> None:
        key_shape = query_shape if key_shape is None else key_shape
        value_shape = key_shape if value_shape is None else value_shape

        def kernel(name: str, rows: int | None) -> Any:
            # A fresh initializer per projection: nmn.keras reuses one unseeded instance,
            # which gives q_kernel == k_kernel == v_kernel at init (each token then attends
            # only to itself and q/k get no gradient). A seeded initializer still repeats.
            init = type(self.kernel_initializer).from_config(self.kernel_initializer.get_config())
            return self.add_weight(
                name=name,
                shape=(known_size(rows, f"the feature axis for {name}"), self.embed_dim),
                initializer=init,
                trainable=True,
            )

        def bias(name: str) -> Any:
            if not self.use_bias:
                return None
            return self.add_weight(name=name, shape=(self.embed_dim,), initializer="zeros")

        self.q_kernel = kernel("q_kernel", query_shape[-1])
        self.k_kernel = kernel("k_kernel", key_shape[-1])
        self.v_kernel = kernel("v_kernel", value_shape[-1])
        self.q_bias, self.k_bias, self.v_bias = bias("q_bias"), bias("k_bias"), bias("v_bias")
        if self.use_out_proj:
            # nmn 0.3.5 makes this (input_dim, embed_dim), which breaks when they differ
            # (bug §13.3); the projection maps the embed_dim-wide heads back to embed_dim.
            self.out_kernel = kernel("out_kernel", self.embed_dim)
            self.out_bias = bias("out_bias")
        else:
            self.out_kernel = None
            self.out_bias = None
        if self._alpha_cfg.mode == "learnable":
            self.alpha_param = self.add_weight(name="alpha", shape=(1,), initializer="ones")
        else:
            self.alpha_param = None
        self.built = True

    @staticmethod
    def _linear(x: Any, kernel: Any, bias: Any) -> Any:
        # The array's own ``@``: keras.ops.matmul returns float32 for float64 inputs on the
        # torch backend (Keras' result_type maps float64 to float32 outside TensorFlow).
        y = ops.convert_to_tensor(x) @ _raw(kernel)
        return y if bias is None else y + _raw(bias)

    def _split_heads(self, x: Any) -> Any:
        # (B, L, E) -> (B, H, L, d): the pure function takes (..., L, d)
        shape = ops.shape(x)
        x = ops.reshape(x, (-1, shape[1], self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def _effective_mask(
        self, query: Any, mask: Any, attention_mask: Any, self_attention: bool
    ) -> Any:
        """One mask broadcastable to (B, H, Lq, Lk), or None (nmn's rules); boolean unless an
        additive (floating) mask was given, which is kept additive."""
        sequence_mask = None
        # backend tensors (a NumPy mask would not mix with the backend's q and k)
        if attention_mask is not None:
            attention_mask = ops.convert_to_tensor(attention_mask)
        if mask is not None:
            mask = ops.convert_to_tensor(mask)
            rank = len(mask.shape)
            first = mask.shape[0] if rank == 2 else None
            batch, q_len = query.shape[0], query.shape[1]
            looks_like_sequence = rank == 2 and (
                getattr(query, "_keras_mask", None) is not None
                or first is None
                or (batch is not None and first == batch and first != q_len)
            )
            if looks_like_sequence:
                if keras.backend.standardize_dtype(mask.dtype) != "bool":
                    raise TypeError(
                        "a (batch, seq) sequence mask must be boolean (True = keep), got dtype "
                        f"{mask.dtype}; pass an additive mask as attention_mask"
                    )
                sequence_mask = mask
            elif attention_mask is None:
                attention_mask = mask
            else:
                attention_mask = combine_masks(attention_mask, mask)
        effective = None
        if attention_mask is not None:
            effective = attention_mask
            while len(effective.shape) < 4:
                effective = ops.expand_dims(effective, 0)
        if sequence_mask is not None:
            # (B, S) -> queries (B, 1, Lq, 1); for self-attention also keys (B, 1, 1, Lk)
            seq = (
                ops.logical_and(
                    ops.expand_dims(ops.expand_dims(sequence_mask, 1), -1),
                    ops.expand_dims(ops.expand_dims(sequence_mask, 1), 1),
                )
                if self_attention
                else ops.expand_dims(ops.expand_dims(sequence_mask, 1), -1)
            )
            effective = seq if effective is None else restrict_mask(effective, seq)
        return effective

    def call(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        mask: Any = None,
        attention_mask: Any = None,
        training: Any = False,
    ) -> Any:
        self_attention = key is None
        key = query if key is None else key
        value = key if value is None else value
        q = self._split_heads(self._linear(query, self.q_kernel, self.q_bias))
        k = self._split_heads(self._linear(key, self.k_kernel, self.k_bias))
        v = self._split_heads(self._linear(value, self.v_kernel, self.v_bias))
        if self._normalize_qk:
            q = ops.normalize(q, axis=-1, order=2, epsilon=_QK_NORM_FLOOR)
            k = ops.normalize(k, axis=-1, order=2, epsilon=_QK_NORM_FLOOR)
        effective = self._effective_mask(query, mask, attention_mask, self_attention)
        if effective is not None:
            q_len, kv_len = ops.shape(q)[2], ops.shape(k)[2]
            effective = ops.broadcast_to(
                effective, (ops.shape(q)[0], self.num_heads, q_len, kv_len)
            )
        if self._alpha_cfg.mode == "constant":
            alpha = self._alpha_cfg.value
        else:
            alpha = _raw(self.alpha_param)
        options = dict(mask=effective, alpha=alpha, epsilon=self.epsilon, spherical=self._spherical)
        if training and self.dropout_rate > 0:
            weights = nmn_array.yat_attention_weights(q, k, **options)
            weights = keras.random.dropout(weights, self.dropout_rate, seed=self._seed_generator)
            x = weights @ v
        else:
            x = nmn_array.yat_attention(q, k, v, **options)
        # (B, H, Lq, d) -> (B, Lq, E)
        x = ops.transpose(x, (0, 2, 1, 3))
        x = ops.reshape(x, (-1, ops.shape(x)[1], self.embed_dim))
        if self.out_kernel is not None:
            x = self._linear(x, self.out_kernel, self.out_bias)
        if effective is not None:
            # nmn 0.3.5: a query that sees no key in any head outputs zeros, also after the
            # output projection's bias.
            has_key = ops.any(mask_visibility(effective), axis=(1, 3))
            x = ops.where(ops.expand_dims(has_key, -1), x, ops.zeros_like(x))
        return x

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> Any:
        if previous_mask is not None and len(previous_mask.shape) == 2:
            return previous_mask
        return None

    def compute_output_shape(
        self,
        query_shape: Sequence[int | None],
        key_shape: Sequence[int | None] | None = None,
        value_shape: Sequence[int | None] | None = None,
    ) -> tuple:
        return (*tuple(query_shape)[:-1], self.embed_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "embed_dim": self.embed_dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout_rate,
                "use_bias": self.use_bias,
                "use_alpha": self.use_alpha,
                "constant_alpha": self.constant_alpha,
                "normalize_qk": self._normalize_qk,
                "spherical": self._spherical,
                "use_out_proj": self.use_out_proj,
                "epsilon": self.epsilon,
                "kernel_initializer": _serialize(self.kernel_initializer, "initializers"),
            }
        )
        return config
