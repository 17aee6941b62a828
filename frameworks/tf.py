"""TensorFlow modules (``tf.Module``) over the pure functions of ``nmn_array``.

Drop-in replacements for ``nmn.tf`` 0.3.5: the same class names, constructor arguments,
variable attributes, shapes and layouts, so ``from nmn.tf import YatNMN`` can become
``from nmn_array.frameworks.tf import YatNMN`` and ``tf.train.Checkpoint`` files still
restore. Variables are created on the first call (or by ``build``); each ``__call__`` makes
exactly one ``nmn_array`` call on ``tf.Tensor`` arguments, so modules run eagerly, inside
``tf.function`` and under XLA (``jit_compile=True``). ``export`` writes an inference
SavedModel, as in nmn. Differences from nmn are listed in ``docs/migration/tf.md``.

Examples
--------
>>> import tensorflow as tf
>>> from nmn_array.frameworks.tf import YatNMN
>>> layer = YatNMN(features=3)
>>> layer(tf.ones((2, 5))).shape
TensorShape([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from nmn_array.frameworks._common import (
    alpha_config,
    bias_config,
    check_epsilon,
    known_size,
    mask_visibility,
    ntuple,
    require,
    softplus_inverse,
    transpose_conv_call_args,
)

import nmn_array
from nmn_array import soft_tanh, softer_sigmoid, softermax

# Any: the module is imported at run time and its classes are our base classes; mypy
# takes a base class from an Any-typed name, not from a plain module object.
tf: Any = require("tensorflow")

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

# Decision 2: normalize_qk is q / max(|q|, 1e-12); l2_normalize's epsilon bounds |q|^2.
_QK_NORM_FLOOR_SQ = 1e-24


def _is_low_precision(dtype: Any) -> bool:
    return tf.as_dtype(dtype) in (tf.float16, tf.bfloat16)


def _as_input(x: Any, dtype: Any) -> Any:
    """``x`` as a tensor of the module's dtype (nmn.tf casts its inputs the same way)."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == dtype else tf.cast(x, dtype)


def _read(variable: Any) -> Any:
    """A variable's current value as a tf.Tensor (None passes through); tapes see the read."""
    return None if variable is None else tf.convert_to_tensor(variable)


class _YatParams:
    """Mixin: the bias / alpha / epsilon variables every yat module shares."""

    def _init_yat(
        self,
        *,
        use_bias: bool,
        constant_bias: Any,
        use_alpha: bool,
        constant_alpha: Any,
        epsilon: float,
        learnable_epsilon: bool,
        dtype: Any,
    ) -> None:
        self.dtype = tf.as_dtype(dtype)
        self._bias_cfg = bias_config(use_bias, constant_bias)
        self._alpha_cfg = alpha_config(use_alpha, constant_alpha)
        # nmn reports use_bias/use_alpha as True when a constant is set.
        self.use_bias = self._bias_cfg.mode != "none"
        self.constant_bias = constant_bias
        self.use_alpha = self._alpha_cfg.mode != "none"
        self.constant_alpha = constant_alpha
        self.epsilon = check_epsilon(epsilon)
        self.learnable_epsilon = bool(learnable_epsilon)
        self.is_built = False
        self.kernel: Any = None  # a tf.Variable once built
        self.bias = None
        self.alpha = None
        self.epsilon_param = None

    def _build_yat(self, n_out: int) -> None:
        if self._alpha_cfg.mode == "learnable":
            self.alpha = tf.Variable(tf.ones([1], dtype=self.dtype), name="alpha")
        if self._bias_cfg.mode == "learnable":
            self.bias = tf.Variable(tf.zeros([n_out], dtype=self.dtype), name="bias")
        if self.learnable_epsilon:
            # float32 storage for float16/bfloat16 modules, as nmn does
            eps_dtype = tf.float32 if _is_low_precision(self.dtype) else self.dtype
            raw = softplus_inverse(self.epsilon)
            self.epsilon_param = tf.Variable(
                tf.constant(raw, shape=[1], dtype=eps_dtype), name="epsilon_param"
            )

    def _bias_arg(self) -> Any:
        if self._bias_cfg.mode == "constant":
            return self._bias_cfg.value
        return _read(self.bias)

    def _alpha_arg(self) -> Any:
        if self._alpha_cfg.mode == "constant":
            return self._alpha_cfg.value
        return _read(self.alpha)

    def _epsilon_arg(self) -> Any:
        if self.epsilon_param is None:
            return self.epsilon
        # Decision 11: the effective epsilon is softplus of the raw parameter.
        return tf.nn.softplus(self.epsilon_param)


def _export_single(module: tf.Module, export_dir: Any, input_signature: Any) -> None:
    if not isinstance(input_signature, tf.TensorSpec):
        raise TypeError(f"input_signature must be a tf.TensorSpec, got {type(input_signature)!r}")
    spec = tf.TensorSpec(input_signature.shape, input_signature.dtype, name="inputs")

    @tf.function(input_signature=[spec])
    def serving_default(inputs):
        result = module(inputs)
        if isinstance(result, tuple):
            return {"outputs": result[0], "kernel": result[1]}
        return {"outputs": result}

    tf.saved_model.save(
        module, export_dir, signatures={"serving_default": serving_default.get_concrete_function()}
    )


class _SingleInputExport:
    def export(self, export_dir: Any, input_signature: Any) -> None:
        """Write an inference SavedModel whose ``serving_default`` signature calls the module.

        ``input_signature`` is a ``tf.TensorSpec``; the signature's input is named
        ``inputs`` and its output ``outputs``.
        """
        _export_single(self, export_dir, input_signature)


# --------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------
class YatNMN(_SingleInputExport, _YatParams, tf.Module):
    """Yat dense module: ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``.

    The kernel has nmn.tf's layout ``(features, input_dim)`` (one neuron per row) and is
    created on the first call from ``N(0, 2 / (input_dim + features))``.

    Parameters
    ----------
    features : int
        Number of neurons.
    use_bias, constant_bias : bool, float or None
        Learnable bias ``(features,)`` inside the square, or a fixed float.
    use_alpha, constant_alpha : bool, bool/float/None
        Learnable ``alpha`` ``(1,)`` (init 1); ``constant_alpha=True`` means sqrt(2).
    positive_init : bool
        ``abs`` of the initial kernel.
    dtype : tf.DType, default tf.float32
        Variables and outputs; float16/bfloat16 are computed in float32.
    epsilon, learnable_epsilon : float, bool
        ``learnable_epsilon`` learns ``softplus(epsilon_param)``.
    spherical, weight_normalized : bool
        As for ``nmn_array.yat``.
    return_weights : bool
        ``__call__`` returns ``(output, kernel)``.
    lazy, freeze_kernel : bool
        Freeze the kernel (``trainable=False``).
    name : str, optional

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import YatNMN
    >>> layer = YatNMN(4, constant_alpha=True)
    >>> y = layer(tf.random.normal((2, 3)))
    >>> y.shape, sorted(v.name for v in layer.variables)
    (TensorShape([2, 4]), ['yat_nmn/bias:0', 'yat_nmn/kernel:0'])
    """

    def __init__(
        self,
        features: int,
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        positive_init: bool = False,
        dtype: Any = tf.float32,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        weight_normalized: bool = False,
        return_weights: bool = False,
        lazy: bool = False,
        freeze_kernel: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.features = int(features)
        self._init_yat(
            use_bias=use_bias,
            constant_bias=constant_bias,
            use_alpha=use_alpha,
            constant_alpha=constant_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            dtype=dtype,
        )
        self.positive_init = bool(positive_init)
        self.spherical = bool(spherical)
        self.weight_normalized = bool(weight_normalized)
        self.return_weights = bool(return_weights)
        self.lazy = bool(lazy or freeze_kernel)
        self.input_dim: int | None = None

    @tf.Module.with_name_scope
    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create the variables for inputs of shape ``input_shape`` (last axis known)."""
        if self.is_built:
            return
        input_dim = known_size(input_shape[-1], "the last axis of the input")
        std = math.sqrt(2.0 / (input_dim + self.features))
        init = tf.random.normal((self.features, input_dim), stddev=std, dtype=self.dtype)
        if self.positive_init:
            init = tf.abs(init)
        self.kernel = tf.Variable(init, trainable=not self.lazy, name="kernel")
        self._build_yat(self.features)
        self.input_dim = input_dim
        self.is_built = True

    @tf.Module.with_name_scope
    def __call__(self, inputs: Any) -> Any:
        inputs = _as_input(inputs, self.dtype)
        if not self.is_built:
            self.build(inputs.shape)
        elif inputs.shape[-1] != self.input_dim:
            raise ValueError(
                f"Input shape changed: expected last dimension {self.input_dim}, "
                f"got {inputs.shape[-1]}"
            )
        y = nmn_array.yat(
            inputs,
            _read(self.kernel),  # (features, in) is already the pure function's layout
            self._bias_arg(),
            alpha=self._alpha_arg(),
            epsilon=self._epsilon_arg(),
            spherical=self.spherical,
            weight_normalized=self.weight_normalized,
        )
        return (y, self.kernel) if self.return_weights else y

    def get_weights(self) -> list[Any]:
        """``[kernel, bias?, alpha?, epsilon_param?]`` (those that exist), as nmn orders them."""
        if not self.is_built:
            raise ValueError("Layer must be built before weights can be retrieved.")
        return [
            v for v in (self.kernel, self.bias, self.alpha, self.epsilon_param) if v is not None
        ]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assign values in the order of :meth:`get_weights`."""
        current = self.get_weights()
        if len(weights) != len(current):
            raise ValueError(f"Expected {len(current)} weight tensors, got {len(weights)}")
        for variable, value in zip(current, weights):
            variable.assign(value)


YatDense = YatNMN


# --------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------
class _YatConvBase(_SingleInputExport, _YatParams, tf.Module):
    """Shared machinery of the direct and transposed yat convolution modules (N...C)."""

    rank = 0
    transposed = False

    def _setup(
        self,
        filters: int,
        kernel_size: Any,
        strides: Any,
        padding: str,
        dilation_rate: Any,
        groups: int,
        use_bias: bool,
        constant_bias: Any,
        use_alpha: bool,
        epsilon: float,
        learnable_epsilon: bool,
        dtype: Any,
    ) -> None:
        n = self.rank
        self.filters = int(filters)
        self.kernel_size = ntuple(kernel_size, n, "kernel_size")
        self.strides = ntuple(strides, n, "strides")
        self.dilation_rate = ntuple(dilation_rate, n, "dilation_rate")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(
                f"{type(self).__name__}: padding must be 'valid' or 'same', got {padding!r}"
            )
        self.padding = padding.upper()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        if self.filters % groups:
            raise ValueError(f"Filters ({self.filters}) must be divisible by groups ({groups})")
        self.groups = groups
        self._init_yat(
            use_bias=use_bias,
            constant_bias=constant_bias,
            use_alpha=use_alpha,
            constant_alpha=None,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            dtype=dtype,
        )
        self.input_channels: int | None = None

    def _kernel_shape_and_fan(self, channels: int) -> tuple[tuple[int, ...], int]:
        raise NotImplementedError

    @tf.Module.with_name_scope
    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create the variables for channels-last inputs of shape ``input_shape``."""
        if self.is_built:
            return
        channels = known_size(input_shape[-1], "the channel axis of the input")
        if channels % self.groups:
            raise ValueError(
                f"Input channels ({channels}) must be divisible by groups ({self.groups})"
            )
        shape, fan = self._kernel_shape_and_fan(channels)
        init = tf.random.normal(shape, dtype=self.dtype) / tf.sqrt(tf.cast(fan, self.dtype))
        self.kernel = tf.Variable(init, name="kernel")
        self._build_yat(self.filters)
        self.input_channels = channels
        self.is_built = True

    def _torch_layout_kernel(self) -> Any:
        # (*k, a, b) -> (b, a, *k): conv (*k, in/g, O) -> (O, in/g, *k); transposed
        # (*k, O, in) -> (in, O, *k). A permutation only: tf.nn.conv*_transpose is the exact
        # gradient of the cross-correlation, so no spatial flip is needed.
        n = self.rank
        return tf.transpose(_read(self.kernel), (n + 1, n, *range(n)))

    @tf.Module.with_name_scope
    def __call__(self, inputs: Any) -> Any:
        inputs = _as_input(inputs, self.dtype)
        if not self.is_built:
            self.build(inputs.shape)
        return self._forward(inputs)


class _YatConvND(_YatConvBase):
    """Yat convolution module, channels-last input ``(batch, *spatial, channels)``.

    Kernel ``(*kernel_size, channels // groups, filters)`` from ``N(0, 1) / sqrt(fan_in)``,
    bias ``(filters,)`` zeros, alpha ``(1,)`` ones. ``padding`` is ``"valid"`` or ``"same"``
    (the XLA/TensorFlow rule for any stride).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self._setup(
            filters,
            kernel_size,
            strides,
            padding,
            dilation_rate,
            groups,
            use_bias,
            constant_bias,
            use_alpha,
            epsilon,
            learnable_epsilon,
            dtype,
        )

    def _kernel_shape_and_fan(self, channels: int) -> tuple[tuple[int, ...], int]:
        per_group = channels // self.groups
        return (*self.kernel_size, per_group, self.filters), per_group * math.prod(self.kernel_size)

    def _forward(self, inputs: Any) -> Any:
        return nmn_array.yat_conv(
            inputs,
            self._torch_layout_kernel(),
            self._bias_arg(),
            stride=self.strides,
            padding=self.padding.lower(),
            dilation=self.dilation_rate,
            groups=self.groups,
            data_format="channels_last",
            alpha=self._alpha_arg(),
            epsilon=self._epsilon_arg(),
        )


class YatConv1D(_YatConvND):
    """1-D yat convolution; input ``(batch, length, channels)``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import YatConv1D
    >>> YatConv1D(4, 3, padding="same")(tf.ones((2, 10, 3))).shape
    TensorShape([2, 10, 4])
    """

    rank = 1


class YatConv2D(_YatConvND):
    """2-D yat convolution; input ``(batch, height, width, channels)``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import YatConv2D
    >>> YatConv2D(4, 3, strides=2, groups=2)(tf.ones((1, 9, 9, 2))).shape
    TensorShape([1, 4, 4, 4])
    """

    rank = 2


class YatConv3D(_YatConvND):
    """3-D yat convolution; input ``(batch, depth, height, width, channels)``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import YatConv3D
    >>> YatConv3D(2, 2)(tf.ones((1, 3, 3, 3, 2))).shape
    TensorShape([1, 2, 2, 2, 2])
    """

    rank = 3


class _YatConvTransposeND(_YatConvBase):
    """Yat transposed convolution module, channels-last input.

    Kernel ``(*kernel_size, filters, channels)`` from ``N(0, 1) / sqrt(filters * prod(k))``.
    ``padding="same"`` (the default, as in nmn.tf) gives ``L * stride``; ``"valid"`` gives
    ``L * stride + max(k - stride, 0)``; both split as ``tf.nn.conv_transpose`` (=
    ``jax.lax.conv_transpose``). ``|w|^2`` counts every tap of a filter (Decision 9).
    """

    transposed = True

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "same",
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self._setup(
            filters,
            kernel_size,
            strides,
            padding,
            1,
            1,
            use_bias,
            constant_bias,
            use_alpha,
            epsilon,
            learnable_epsilon,
            dtype,
        )

    def _kernel_shape_and_fan(self, channels: int) -> tuple[tuple[int, ...], int]:
        return (*self.kernel_size, self.filters, channels), self.filters * math.prod(
            self.kernel_size
        )

    def _forward(self, inputs: Any) -> Any:
        padding, output_padding, _ = transpose_conv_call_args(
            self.kernel_size, self.strides, self.dilation_rate, self.padding, None
        )
        return nmn_array.yat_conv_transpose(
            inputs,
            self._torch_layout_kernel(),
            self._bias_arg(),
            stride=self.strides,
            padding=padding,
            output_padding=output_padding,
            data_format="channels_last",
            alpha=self._alpha_arg(),
            epsilon=self._epsilon_arg(),
        )


class YatConvTranspose1D(_YatConvTransposeND):
    """1-D yat transposed convolution; input ``(batch, length, channels)``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import YatConvTranspose1D
    >>> YatConvTranspose1D(4, 3, strides=2)(tf.ones((2, 5, 3))).shape
    TensorShape([2, 10, 4])
    """

    rank = 1


class YatConvTranspose2D(_YatConvTransposeND):
    """2-D yat transposed convolution; input ``(batch, height, width, channels)``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import YatConvTranspose2D
    >>> YatConvTranspose2D(2, 3, strides=2, padding="valid")(tf.ones((1, 4, 4, 3))).shape
    TensorShape([1, 9, 9, 2])
    """

    rank = 2


class YatConvTranspose3D(_YatConvTransposeND):
    """3-D yat transposed convolution; input ``(batch, depth, height, width, channels)``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import YatConvTranspose3D
    >>> YatConvTranspose3D(2, 2, strides=2)(tf.ones((1, 2, 2, 2, 3))).shape
    TensorShape([1, 4, 4, 4, 2])
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
class YatEmbed(tf.Module):
    """Token embedding whose ``attend`` scores queries against every embedding with yat.

    ``__call__(ids)`` gathers rows of ``embedding (num_embeddings, features)`` (created at
    construction from ``N(0, 1/features)``, unit rows when ``weight_normalized``);
    ``attend(q)`` returns ``alpha * (q.e_v)^2 / (max(|q - e_v|^2, 0) + epsilon)`` of shape
    ``(..., num_embeddings)``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import YatEmbed
    >>> emb = YatEmbed(10, 4)
    >>> h = emb(tf.constant([[1, 2, 3]]))
    >>> h.shape, emb.attend(h).shape
    (TensorShape([1, 3, 4]), TensorShape([1, 3, 10]))
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
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.num_embeddings = int(num_embeddings)
        self.features = int(features)
        self.epsilon = check_epsilon(epsilon)
        self.spherical = bool(spherical)
        self.weight_normalized = bool(weight_normalized)
        self.dtype = tf.as_dtype(dtype)
        std = 1.0 / math.sqrt(self.features)
        init = tf.random.normal((self.num_embeddings, self.features), stddev=std, dtype=self.dtype)
        if self.weight_normalized:
            # initialisation only (nmn normalises the table once, at construction)
            init = init / (tf.norm(init, axis=1, keepdims=True) + 1e-8)
        with self.name_scope:
            self.embedding = tf.Variable(init, name="embedding")
            self._alpha_cfg = alpha_config(use_alpha, constant_alpha)
            self.alpha = None
            if self._alpha_cfg.mode == "learnable":
                self.alpha = tf.Variable(tf.ones([1], dtype=self.dtype), name="alpha")
        self.use_alpha = self._alpha_cfg.mode != "none"
        self.constant_alpha = constant_alpha

    @tf.Module.with_name_scope
    def __call__(self, inputs: Any) -> Any:
        return tf.gather(self.embedding, inputs)

    @tf.Module.with_name_scope
    def attend(self, query: Any) -> Any:
        """Yat logits of ``query (..., features)`` against the table: ``(..., num_embeddings)``."""
        alpha = self._alpha_cfg.value if self._alpha_cfg.mode == "constant" else _read(self.alpha)
        # Decision 8: the distance is clamped at 0 (nmn.tf does not clamp); attend has no bias.
        return nmn_array.yat(
            _as_input(query, self.dtype),
            _read(self.embedding),
            None,
            alpha=alpha,
            epsilon=self.epsilon,
            spherical=self.spherical,
        )

    def export(self, export_dir: Any, lookup_signature: Any, attend_signature: Any = None) -> None:
        """Write a SavedModel with a ``serving_default`` (lookup) and an ``attend`` signature.

        ``attend_signature`` defaults to a rank-2 query ``(None, features)``.
        """
        if attend_signature is None:
            attend_signature = tf.TensorSpec([None, self.features], self.dtype)
        ids = tf.TensorSpec(lookup_signature.shape, lookup_signature.dtype, name="inputs")
        query = tf.TensorSpec(attend_signature.shape, attend_signature.dtype, name="query")

        @tf.function(input_signature=[ids])
        def serving_default(inputs):
            return {"outputs": self(inputs)}

        @tf.function(input_signature=[query])
        def attend(q):
            return {"outputs": self.attend(q)}

        signatures = {
            "serving_default": serving_default.get_concrete_function(),
            "attend": attend.get_concrete_function(),
        }
        tf.saved_model.save(self, export_dir, signatures=signatures)


# --------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------
class MultiHeadYatAttention(tf.Module):
    """Multi-head attention whose scores are yat products of queries and keys.

    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) * sqrt(head_dim))) @ v`` per head,
    with linear projections ``q_kernel``/``k_kernel``/``v_kernel`` ``(input_dim,
    embed_dim)``, biases ``(embed_dim,)``, ``out_kernel`` ``(embed_dim, embed_dim)``, all from
    ``N(0, 2 / (input_dim + embed_dim))`` on the first call; ``alpha`` ``(1,)`` is created at
    construction.

    ``__call__(query, key=None, value=None, mask=None, training=False)``: ``mask`` broadcasts
    to ``(batch, heads, q_len, kv_len)``, boolean (True = attend) or floating (additive, added
    to the scores; -inf hides a key); a query that sees no key outputs zeros. Constant and learnable alpha multiply the scores before the softmax
    (Decision 1); ``normalize_qk`` is ``q / max(|q|, 1e-12)`` (Decision 2).

    Examples
    --------
    >>> import numpy as np, tensorflow as tf
    >>> from nmn_array.frameworks.tf import MultiHeadYatAttention
    >>> mha = MultiHeadYatAttention(embed_dim=8, num_heads=2)
    >>> causal = np.tril(np.ones((5, 5), dtype=bool))
    >>> mha(tf.random.normal((2, 5, 8)), mask=causal).shape
    TensorShape([2, 5, 8])
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
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        self._normalize_qk = bool(normalize_qk)
        self._spherical = bool(spherical)
        self.use_out_proj = bool(use_out_proj)
        self.epsilon = check_epsilon(epsilon)
        self.dtype = tf.as_dtype(dtype)
        self._alpha_cfg = alpha_config(use_alpha, constant_alpha)
        self.use_alpha = self._alpha_cfg.mode != "none"
        self.constant_alpha = constant_alpha
        self.alpha = None
        if self._alpha_cfg.mode == "learnable":
            with self.name_scope:
                self.alpha = tf.Variable(tf.ones([1], dtype=self.dtype), name="alpha")
        self.is_built = False

    @tf.Module.with_name_scope
    def build(
        self, input_dim: int, key_dim: int | None = None, value_dim: int | None = None
    ) -> None:
        """Create the projections for query (and key, value) feature sizes."""
        if self.is_built:
            return
        key_dim = input_dim if key_dim is None else key_dim
        value_dim = key_dim if value_dim is None else value_dim
        e = self.embed_dim

        def kernel(rows: int, name: str) -> Any:
            std = math.sqrt(2.0 / (int(input_dim) + e))
            return tf.Variable(
                tf.random.normal((int(rows), e), stddev=std, dtype=self.dtype), name=name
            )

        def bias(name: str) -> Any:
            return (
                tf.Variable(tf.zeros([e], dtype=self.dtype), name=name) if self.use_bias else None
            )

        self.q_kernel = kernel(input_dim, "q_kernel")
        self.k_kernel = kernel(key_dim, "k_kernel")
        self.v_kernel = kernel(value_dim, "v_kernel")
        self.q_bias, self.k_bias, self.v_bias = bias("q_bias"), bias("k_bias"), bias("v_bias")
        self.out_kernel = kernel(e, "out_kernel") if self.use_out_proj else None
        self.out_bias = bias("out_bias") if self.use_out_proj else None
        self.is_built = True

    @staticmethod
    def _linear(x: Any, kernel: Any, bias: Any) -> Any:
        y = tf.matmul(x, kernel)
        return y if bias is None else y + bias

    def _split_heads(self, x: Any) -> Any:
        # (B, L, E) -> (B, H, L, d): the pure function takes (..., L, d)
        x = tf.reshape(x, (tf.shape(x)[0], tf.shape(x)[1], self.num_heads, self.head_dim))
        return tf.transpose(x, (0, 2, 1, 3))

    @tf.Module.with_name_scope
    def __call__(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        mask: Any = None,
        training: bool = False,
    ) -> Any:
        key = query if key is None else key
        value = key if value is None else value
        query, key, value = (_as_input(t, self.dtype) for t in (query, key, value))
        if not self.is_built:
            self.build(int(query.shape[-1]), int(key.shape[-1]), int(value.shape[-1]))
        q = self._split_heads(self._linear(query, self.q_kernel, self.q_bias))
        k = self._split_heads(self._linear(key, self.k_kernel, self.k_bias))
        v = self._split_heads(self._linear(value, self.v_kernel, self.v_bias))
        if self._normalize_qk:
            q = tf.math.l2_normalize(q, axis=-1, epsilon=_QK_NORM_FLOOR_SQ)
            k = tf.math.l2_normalize(k, axis=-1, epsilon=_QK_NORM_FLOOR_SQ)
        effective = None
        if mask is not None:
            full = tf.stack([tf.shape(q)[0], self.num_heads, tf.shape(q)[2], tf.shape(k)[2]])
            effective = tf.broadcast_to(mask, full)
        if self._alpha_cfg.mode == "constant":
            alpha = self._alpha_cfg.value
        else:
            alpha = _read(self.alpha)
        options: dict[str, Any] = dict(
            mask=effective, alpha=alpha, epsilon=self.epsilon, spherical=self._spherical
        )
        if training and self.dropout > 0:
            weights = nmn_array.yat_attention_weights(q, k, **options)
            x = tf.matmul(tf.nn.dropout(weights, rate=self.dropout), v)
        else:
            x = nmn_array.yat_attention(q, k, v, **options)
        # (B, H, Lq, d) -> (B, Lq, E)
        x = tf.transpose(x, (0, 2, 1, 3))
        x = tf.reshape(x, (tf.shape(x)[0], tf.shape(x)[1], self.embed_dim))
        if self.out_kernel is not None:
            x = self._linear(x, self.out_kernel, self.out_bias)
        if effective is not None:
            # nmn 0.3.5: a query that sees no key in any head outputs zeros, also after the
            # output projection's bias.
            has_key = tf.reduce_any(mask_visibility(effective), axis=(1, 3))
            x = tf.where(has_key[..., None], x, tf.zeros_like(x))
        return x

    def export(
        self,
        export_dir: Any,
        query_signature: Any,
        *,
        key_signature: Any = None,
        value_signature: Any = None,
        mask_signature: Any = None,
    ) -> None:
        """Write an inference SavedModel (``training=False``) for self- or cross-attention.

        Give both ``key_signature`` and ``value_signature`` for cross-attention; a
        ``mask_signature`` adds a ``mask`` input.
        """
        if (key_signature is None) != (value_signature is None):
            raise ValueError(
                "key_signature and value_signature must either both be provided or both be omitted"
            )
        specs = {"query": query_signature}
        if key_signature is not None:
            specs.update(key=key_signature, value=value_signature)
        if mask_signature is not None:
            specs["mask"] = mask_signature
        names = list(specs)
        signature = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in specs.items()]

        @tf.function(input_signature=signature)
        def serving_default(*args):
            kwargs = dict(zip(names, args))
            q = kwargs.pop("query")
            return {"outputs": self(q, training=False, **kwargs)}

        concrete = serving_default.get_concrete_function()
        tf.saved_model.save(self, export_dir, signatures={"serving_default": concrete})
