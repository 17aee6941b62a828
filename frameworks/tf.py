"""TensorFlow modules (``tf.Module``) over the pure functions of ``nmn_array``.

Drop-in replacements for ``nmn.tf`` 0.3.5 (class names, arguments, variables, layouts), so
``tf.train.Checkpoint`` files of nmn restore. Variables are made on the first call (or by
``build``); each ``__call__`` makes one ``nmn_array`` call on ``tf.Tensor`` arguments, eagerly,
in ``tf.function`` or under XLA. ``export`` writes an inference SavedModel, as in nmn.
Differences from nmn: ``docs/migration/tf.md``. The constructor arguments, as in ``nmn.tf``:

- ``features`` (dense), ``filters`` (convolutions): the number of neurons / filters.
- ``use_bias`` / ``constant_bias``: a learnable bias ``(features,)`` / ``(filters,)`` (zeros)
  inside the square, or a fixed float instead; in attention, biases of the projections.
- ``use_alpha`` / ``constant_alpha``: a learnable output scale ``alpha`` ``(1,)`` (ones), or a
  constant (``True`` means sqrt(2)). ``epsilon``: added to the squared distance;
  ``learnable_epsilon`` learns it as ``softplus(epsilon_param)``.
- ``spherical``, ``weight_normalized``: as for ``nmn_array.yat``; ``positive_init``: ``abs``
  of the initial kernel; ``lazy`` / ``freeze_kernel``: freeze the kernel
  (``trainable=False``); ``return_weights``: ``__call__`` returns ``(y, kernel)``.
- ``kernel_size``, ``strides``, ``dilation_rate``: ints or one int per spatial axis;
  ``groups``: grouped convolution; ``padding``: ``"valid"`` or ``"same"`` (XLA's rule).
- ``dtype`` (default ``tf.float32``): variables and outputs (inputs are cast to it);
  float16/bfloat16 are computed in float32. ``name``: the module's name scope.

Examples
--------
>>> import tensorflow as tf
>>> from nmn_array.frameworks.tf import YatConv2D, YatConvTranspose1D, YatNMN
>>> layer = YatNMN(4, constant_alpha=True)
>>> layer(tf.random.normal((2, 3))).shape, sorted(v.name for v in layer.variables)
(TensorShape([2, 4]), ['yat_nmn/bias:0', 'yat_nmn/kernel:0'])
>>> YatConv2D(4, 3, strides=2, groups=2, padding="same")(tf.ones((1, 9, 9, 2))).shape
TensorShape([1, 5, 5, 4])
>>> YatConvTranspose1D(4, 3, strides=2, padding="valid")(tf.ones((2, 5, 3))).shape
TensorShape([2, 11, 4])
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable, Sequence
from typing import Any

from nmn_array.frameworks import _attention_api as _api
from nmn_array.frameworks._common import known_size, require, unit_normalized
from nmn_array.frameworks._common import softermax as softermax
from nmn_array.frameworks._keras_tf import (
    PUBLIC,
    YatAttentionShell,
    YatConvShell,
    YatParams,
    check_cache_room,
    declare,
    projection_storage,
    settings,
)

from nmn_array import soft_tanh as soft_tanh
from nmn_array import softer_sigmoid as softer_sigmoid

tf: Any = require("tensorflow")  # Any-typed, so that mypy takes its classes as bases

__all__ = PUBLIC


# The keras.ops names the shared code in _keras_tf.py uses, as TensorFlow functions.
_OPS = types.SimpleNamespace(
    **{name: getattr(tf, name) for name in "broadcast_to expand_dims reshape shape".split()},
    **{name: getattr(tf, name) for name in "cast transpose where zeros_like".split()},
    any=tf.reduce_any,
    softplus=tf.nn.softplus,
)


def _as_input(x: Any, dtype: Any) -> Any:
    """``x`` as a tensor of the module's dtype (nmn.tf casts its inputs the same way)."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == dtype else tf.cast(x, dtype)


def _save(module: tf.Module, export_dir: Any, **signatures: tuple[Callable, dict]) -> None:
    """Write a SavedModel with signatures ``name=(call, {argument name: tf.TensorSpec})``;
    their outputs are ``{"outputs": y}`` (``"kernel"`` too where ``call`` returns a pair)."""
    concrete = {}
    for name, (call, specs) in signatures.items():
        inputs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in specs.items()]
        run = tf.function(_named_outputs(call, list(specs)), input_signature=inputs)
        concrete[name] = run.get_concrete_function()
    tf.saved_model.save(module, export_dir, signatures=concrete)


def _named_outputs(call: Callable, names: list[str]) -> Callable:
    def run(*args: Any) -> dict:
        out = call(**dict(zip(names, args)))
        return dict(zip(("outputs", "kernel"), out if isinstance(out, tuple) else (out,)))

    return run


class _Module(tf.Module):
    """A module that reads and makes its variables in its ``dtype``."""

    _ops = _OPS
    # a variable's current value as a tf.Tensor (None passes through); tapes see the read
    _read = staticmethod(lambda v: None if v is None else tf.convert_to_tensor(v))
    dtype: Any

    def _setup(self, name: str | None, dtype: Any) -> None:
        super().__init__(name=name)
        try:
            self.dtype = tf.as_dtype(dtype)
        except TypeError as exc:
            # a tf.Module has one dtype; Keras' "mixed_float16" policies belong to layers
            raise TypeError(
                f"dtype must be a TensorFlow dtype (tf.float32, 'bfloat16', ...), got {dtype!r};"
                " for a Keras mixed precision policy use nmn_array.frameworks.keras, or give "
                "this module float16/bfloat16 inputs: they are computed in float32 "
                "(docs/mixed_precision.md)"
            ) from exc

    def _new_weight(self, name: str, shape: tuple, fill: float, dtype: Any = None) -> Any:
        return tf.Variable(tf.constant(fill, shape=shape, dtype=dtype or self.dtype), name=name)

    def _param_dtype(self) -> Any:
        return self.dtype


class _Built(YatParams, _Module):
    """A module whose kernel and yat variables are created on the first call."""

    is_built = False
    kernel: Any = None  # a tf.Variable once built

    def _build_kernel(self, init: Any, n_out: int, trainable: bool = True) -> None:
        self.kernel = tf.Variable(init, trainable=trainable, name="kernel")
        self._build_yat(n_out)
        self.is_built = True

    def _input(self, inputs: Any) -> Any:
        """``inputs`` in the module's dtype, the variables built for them."""
        inputs = _as_input(inputs, self.dtype)
        if not self.is_built:
            self.build(inputs.shape)
        return inputs

    build: Callable[[Sequence[int | None]], None]

    def export(self, export_dir: Any, input_signature: Any) -> None:
        """Write an inference SavedModel whose ``serving_default`` signature calls the module:
        input ``inputs`` (``input_signature``, a ``tf.TensorSpec``), output ``outputs``."""
        if not isinstance(input_signature, tf.TensorSpec):
            raise TypeError(
                f"input_signature must be a tf.TensorSpec, got {type(input_signature)!r}"
            )
        _save(self, export_dir, serving_default=(self, {"inputs": input_signature}))


# --- dense ---------------------------------------------------------------------------
class YatNMN(_Built):
    """Yat dense module: ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``.

    Kernel ``(features, input_dim)`` (nmn.tf's layout) from ``N(0, 2 / (input_dim +
    features))`` on the first call; arguments and an example: the module docstring.
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
        self._setup(name, dtype)
        self._init_yat(settings(locals()))
        self.lazy = bool(lazy or freeze_kernel)
        self.input_dim: int | None = None

    @tf.Module.with_name_scope
    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create the variables for inputs of shape ``input_shape`` (last axis known)."""
        if self.is_built:
            return
        self.input_dim = known_size(input_shape[-1], "the last axis of the input")
        std = math.sqrt(2.0 / (self.input_dim + self.features))
        init = tf.random.normal((self.features, self.input_dim), stddev=std, dtype=self.dtype)
        init = tf.abs(init) if self.positive_init else init
        self._build_kernel(init, self.features, not self.lazy)

    @tf.Module.with_name_scope
    def __call__(self, inputs: Any) -> Any:
        inputs = self._input(inputs)
        if inputs.shape[-1] != self.input_dim:
            raise ValueError(
                f"Input shape changed: expected last dimension {self.input_dim}, "
                f"got {inputs.shape[-1]}"
            )
        # (features, in) is already the pure function's layout
        y = self._dense(inputs, self.kernel)
        return (y, self.kernel) if self.return_weights else y

    def get_weights(self) -> list[Any]:
        """``[kernel, bias?, alpha?, epsilon_param?]`` (those that exist), as nmn orders them."""
        if not self.is_built:
            raise ValueError("Layer must be built before weights can be retrieved.")
        variables = (self.kernel, self.bias, self.alpha, self.epsilon_param)
        return [v for v in variables if v is not None]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assign values in the order of :meth:`get_weights`."""
        current = self.get_weights()
        if len(weights) != len(current):
            raise ValueError(f"Expected {len(current)} weight tensors, got {len(weights)}")
        for variable, value in zip(current, weights):
            variable.assign(value)


YatDense = YatNMN


# --- convolutions --------------------------------------------------------------------
class _YatConvBase(YatConvShell, _Built):
    """The TensorFlow side of the yat convolution modules (channels-last input)."""

    def _setup_conv(self, s: dict[str, Any]) -> None:
        self._setup(s["name"], s["dtype"])
        self.padding = self._init_conv(s).upper()
        self._check_divisible("filters", self.filters)
        self.input_channels: int | None = None

    @tf.Module.with_name_scope
    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create the variables for channels-last inputs of shape ``input_shape``."""
        if self.is_built:
            return
        channels = known_size(input_shape[-1], "the channel axis of the input")
        self._check_divisible("input channels", channels)
        shape = self._kernel_shape(channels)
        # N(0, 1) / sqrt(fan_in), fan_in = prod(kernel_size) * the filter's input channels
        fan = math.prod(shape[:-1])
        self._build_kernel(tf.random.normal(shape, dtype=self.dtype) / math.sqrt(fan), self.filters)
        self.input_channels = channels

    @tf.Module.with_name_scope
    def __call__(self, inputs: Any) -> Any:
        return self._conv(self._input(inputs))


class _YatConvND(_YatConvBase):
    """yat convolution module, input ``(batch, *spatial, channels)``, kernel ``(*kernel_size,
    channels // groups, filters)`` from ``N(0, 1) / sqrt(fan_in)``; arguments and an example:
    the module docstring.
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
        self._setup_conv(settings(locals()))


class _YatConvTransposeND(_YatConvBase):
    """yat transposed convolution module, input ``(batch, *spatial, channels)``, kernel
    ``(*kernel_size, filters, channels)`` from ``N(0, 1) / sqrt(filters * prod(kernel_size))``.
    ``padding="same"`` (default, as nmn.tf) gives ``L * strides``, ``"valid"`` ``L * strides +
    max(kernel_size - strides, 0)``, split as ``tf.nn.conv_transpose``; ``|w|^2`` counts every
    tap of a filter (Decision 9). Arguments and an example: the module docstring.
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
        self._setup_conv(settings(locals()))


YatConv1D = YatConv1d = declare(_YatConvND, 1, __name__)
YatConv2D = YatConv2d = declare(_YatConvND, 2, __name__)
YatConv3D = YatConv3d = declare(_YatConvND, 3, __name__)
YatConvTranspose1D = YatConvTranspose1d = declare(_YatConvTransposeND, 1, __name__)
YatConvTranspose2D = YatConvTranspose2d = declare(_YatConvTransposeND, 2, __name__)
YatConvTranspose3D = YatConvTranspose3d = declare(_YatConvTransposeND, 3, __name__)


# --- embedding -----------------------------------------------------------------------
class YatEmbed(YatParams, _Module):
    """Token embedding whose ``attend`` scores queries against every embedding with yat.

    ``__call__(ids)`` gathers rows of ``embedding (num_embeddings, features)`` (created at
    construction from ``N(0, 1/features)``, unit rows when ``weight_normalized``);
    ``attend(q)`` returns ``alpha * (q.e_v)^2 / (max(|q - e_v|^2, 0) + epsilon)`` of shape
    ``(..., num_embeddings)``. Other arguments as described in the module docstring.

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
        self._setup(name, dtype)
        self._init_yat(settings(locals()))
        shape = (self.num_embeddings, self.features)
        init = tf.random.normal(shape, stddev=1.0 / math.sqrt(self.features), dtype=self.dtype)
        # Decision 7: nmn normalises the table once, at construction
        init = unit_normalized(init, 0) if self.weight_normalized else init
        with self.name_scope:
            self.embedding = tf.Variable(init, name="embedding")
            self._build_alpha()

    @tf.Module.with_name_scope
    def __call__(self, inputs: Any) -> Any:
        return tf.gather(self.embedding, inputs)

    @tf.Module.with_name_scope
    def attend(self, query: Any) -> Any:
        """Yat logits of ``query (..., features)`` against the table: ``(..., num_embeddings)``."""
        # (nmn.tf does not clamp the distance at 0; Decision 8)
        return self._attend_table(_as_input(query, self.dtype), self.embedding)

    def export(self, export_dir: Any, lookup_signature: Any, attend_signature: Any = None) -> None:
        """Write a SavedModel with a ``serving_default`` (lookup) and an ``attend`` signature.

        ``attend_signature`` defaults to a rank-2 query ``(None, features)``.
        """
        if attend_signature is None:
            attend_signature = tf.TensorSpec([None, self.features], self.dtype)
        lookup, attend = (self, {"inputs": lookup_signature}), {"query": attend_signature}
        _save(self, export_dir, serving_default=lookup, attend=(self.attend, attend))


# --- attention -----------------------------------------------------------------------
def _numpy_seed() -> int:
    """The NumPy seed of a performer projection: a draw from TensorFlow's global generator
    (reproduced by ``tf.random.set_seed``)."""
    return int(tf.random.uniform((), maxval=2**31 - 1, dtype=tf.int64))


class _Attention(YatAttentionShell, _Module):
    """What the attention modules share: dropout and the key/value cache's variables
    (non-trainable ``cache_key``, ``cache_value`` ``(batch, heads, max_length, head_dim)``
    and ``cache_index`` (int32), made by :meth:`init_cache`, eagerly)."""

    is_built = False

    def _dropout(self, weights: Any) -> Any:
        return tf.nn.dropout(weights, rate=self.dropout)

    def _build_performer(self, s: dict[str, Any]) -> None:
        """The performer settings and, with ``use_performer``, its projection as
        non-trainable variables ``performer_<key>`` (NumPy seed: a ``tf.random`` draw)."""
        arrays = self._init_performer(s, _numpy_seed)
        if arrays is not None:
            storage = tf.as_dtype(projection_storage(self.dtype))
            self.performer_projection = {
                key: tf.Variable(
                    tf.constant(array, dtype=tf.int32 if key == "degrees" else storage),
                    trainable=False,
                    name=f"performer_{key}",
                )
                for key, array in arrays.items()
            }

    def _kernels(self, input_dim: int, rows: Sequence[int]) -> None:
        """q/k/v kernels ``(rows, embed_dim)``, the biases, the output projection."""
        std = math.sqrt(2.0 / (int(input_dim) + self.embed_dim))

        def kernel(name: str, rows: int) -> Any:
            init = tf.random.normal((int(rows), self.embed_dim), stddev=std, dtype=self.dtype)
            return tf.Variable(init, name=name)

        self._build_projections(kernel, rows)
        self.is_built = True

    def _cache_variables(self, shape: tuple[int, ...], dtype: Any) -> None:
        dtype = self.dtype if dtype is None else tf.as_dtype(dtype)
        with self.name_scope:
            zeros = tf.zeros(shape, dtype)
            self.cache_key = tf.Variable(zeros, trainable=False, name="cache_key")
            self.cache_value = tf.Variable(zeros, trainable=False, name="cache_value")
            index = tf.zeros((), tf.int32)
            self.cache_index = tf.Variable(index, trainable=False, name="cache_index")

    @staticmethod
    def _assign(variable: Any, value: Any) -> None:
        variable.assign(value)

    @staticmethod
    def _update_slice(array: Any, start: list, update: Any) -> Any:
        # the slots start..start+L of axis 2, by a scatter (works traced, and under XLA)
        length = update.shape[2]
        slots = tf.range(length, dtype=tf.int32) + tf.cast(start[2], tf.int32)
        moved = tf.tensor_scatter_nd_update(
            tf.transpose(array, (2, 0, 1, 3)),
            tf.reshape(slots, (length, 1)),
            tf.transpose(update, (2, 0, 1, 3)),
        )
        return tf.transpose(moved, (1, 2, 0, 3))

    @staticmethod
    def _positions(start: Any, length: int) -> Any:
        return tf.range(length, dtype=tf.int32) + tf.cast(start, tf.int32)

    @staticmethod
    def _check_room(index: Any, length: int, max_length: int) -> None:
        if tf.executing_eagerly():
            check_cache_room(index, length, max_length)
        else:
            tf.debugging.assert_less_equal(
                index + length, max_length,
                message=f"the key/value cache is full: max_length={max_length}, L={length}",
            )  # fmt: skip


class MultiHeadYatAttention(_Attention):
    """Multi-head attention whose scores are yat products of queries and keys.

    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) * sqrt(head_dim))) @ v`` per head, with
    linear projections ``q_kernel``/``k_kernel``/``v_kernel`` ``(input_dim, embed_dim)``,
    biases ``(embed_dim,)``, ``out_kernel`` ``(embed_dim, embed_dim)`` from ``N(0, 2 /
    (input_dim + embed_dim))`` on the first call, ``alpha`` ``(1,)`` at construction.
    ``dropout``: on the attention weights (``training=True``); ``use_alpha``/``constant_alpha``
    scale the scores before the softmax (Decision 1); ``normalize_qk``: ``q / max(|q|,
    1e-12)`` (Decision 2); ``spherical``: q and k normalised inside the score;
    ``window=(left, right)`` and ``block_size``: local attention and the tiling, as
    :func:`nmn_array.yat_attention` (the materialised path when dropout needs the weights);
    others (``use_bias``, ``use_out_proj``, ``epsilon``, ``dtype``, ``name``): module
    docstring.

    ``__call__(query, key=None, value=None, mask=None, training=False, decode=False)``:
    ``mask`` broadcasts to ``(batch, heads, q_len, kv_len)``, boolean (True = attend) or
    floating (additive, added to the scores; -inf hides a key); a query that sees no key
    outputs zeros. ``decode=True`` (after :meth:`init_cache`): the L new tokens are written
    into the key/value cache at its index and attend causally to the cache
    (``docs/frameworks/tf.md``); ``mask`` then broadcasts to ``(batch, heads, L,
    max_length)``.

    ``use_performer=True``: linear-time attention,
    :func:`~nmn_array.linear_attention.performer_attention` of the projected heads (after
    ``normalize_qk``), with the feature map ``performer_kind`` (``"slay"``:
    ``num_anchor_features``, ``num_prf_features``, ``num_quad_nodes``; ``"maclaurin"``:
    ``performer_num_features``, ``performer_nmax``, ``performer_bias``; ``"radial"``:
    ``performer_sketch_m``, ``performer_num_radial``, ``performer_radial_dim``,
    ``performer_bias``), the layer's ``epsilon``, and the output (not the scores) times
    alpha; dropout on its output. The projection is drawn once, at construction, from
    ``numpy.random.default_rng(s)``, ``s`` a draw from ``tf.random`` (which
    ``tf.random.set_seed`` reproduces), and stored as non-trainable variables
    ``performer_<key>`` in the dict ``performer_projection`` (nmn's keys: ``anchors``,
    ``projections``, ``quad_nodes``, ``quad_weights`` / ``omegas``, ``degrees`` (int32),
    ``Z`` / ``W1``, ``W2``, ``omegas``, ``phases``, ``coef``, ``bias``; float32 for 16-bit
    layers), which ``tf.train.Checkpoint`` carries (``.../performer_projection/<key>``).
    Masks must be key padding, broadcastable to ``(batch, heads, 1, kv_len)`` (others raise
    the core's ValueError). ``decode=True``, ``window`` and ``learnable_epsilon`` raise
    ValueError with it; ``normalization``, ``power`` and ``spherical`` apply to the exact
    mode only. ``performer_normalize`` is accepted for nmn's signature: the feature maps
    always normalise q and k (nmn's flag adds a normalisation before SLAY's).
    ``causal=True``: key ``j`` is visible to query ``i`` only if ``j <= i``, in both modes;
    in the exact mode (which nmn's modules lack) it is combined with any given mask, and
    cross-attention aligns the last query with the last key.

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
        window: tuple[int | None, int | None] | None = None,
        block_size: int | str | None = "auto",
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
    ) -> None:
        self._setup(name, dtype)
        s = settings(locals())
        self.dropout = self._init_attention(s)
        with self.name_scope:
            self._build_alpha()
            self._build_performer(s)

    @tf.Module.with_name_scope
    def build(
        self, input_dim: int, key_dim: int | None = None, value_dim: int | None = None
    ) -> None:
        """Create the projections for query (and key, value) feature sizes."""
        if self.is_built:
            return
        key_dim = input_dim if key_dim is None else key_dim
        value_dim = key_dim if value_dim is None else value_dim
        self._kernels(input_dim, (input_dim, key_dim, value_dim))

    @tf.Module.with_name_scope
    def __call__(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        mask: Any = None,
        training: bool = False,
        decode: bool = False,
    ) -> Any:
        key = query if key is None else key
        value = key if value is None else value
        query, key, value = (_as_input(t, self.dtype) for t in (query, key, value))
        mask = None if mask is None else tf.convert_to_tensor(mask)
        if not self.is_built:
            self.build(int(query.shape[-1]), int(key.shape[-1]), int(value.shape[-1]))
        dropout = self._dropout if training and self.dropout > 0 else None
        return self._attend(query, key, value, mask, self._alpha_arg(), dropout, decode=decode)

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
        inference = functools.partial(self.__call__, training=False)
        _save(self, export_dir, serving_default=(inference, specs))


class RotaryYatAttention(_Attention):
    """Multi-head yat attention with rotary position embeddings (RoPE, interleaved pairs),
    as the torch, NNX and Linen ``RotaryYatAttention`` (nmn.tf has none).

    Self-attention of ``x (batch, L, embed_dim)``: projections ``q_kernel``/``k_kernel``/
    ``v_kernel``/``out_kernel`` ``(embed_dim, embed_dim)`` (``(in, out)``: torch's
    ``q_proj.weight`` transposed) from ``N(0, 1 / embed_dim)`` on the first call, biases
    ``q_bias`` ... ``out_bias`` ``(embed_dim,)`` when ``use_bias`` (default off), ``alpha``
    ``(1,)``, ``epsilon_param`` ``(1,)`` when ``learnable_epsilon``; q and k rotated by
    :func:`nmn_array.rotary_embedding` (``theta``) after ``normalize_qk``;
    ``normalization`` ``"softmax"``, ``"softermax"`` (``use_softermax``) or ``"l1"`` of the
    scores to ``power``; ``embed_dim / num_heads`` must be even. Other arguments as
    :class:`MultiHeadYatAttention` (``use_performer``
    and ``causal`` too; RoPE before the performer's features).

    ``__call__(x, mask=None, position_offset=0, positions=None, training=False,
    decode=False)``: positions ``position_offset + t`` (up to ``max_seq_len``), or the
    integer tensor ``positions`` (L,) as given; ``mask`` as for
    :class:`MultiHeadYatAttention`. ``decode=True`` (after :meth:`init_cache`): positions
    continue from the cache index.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from nmn_array.frameworks.tf import RotaryYatAttention
    >>> attn = RotaryYatAttention(8, 2, max_seq_len=16)
    >>> attn(tf.random.normal((2, 5, 8))).shape
    TensorShape([2, 5, 8])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        max_seq_len: int = 2048,
        theta: float = 10000.0,
        dropout: float = 0.0,
        use_bias: bool = False,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        normalize_qk: bool = False,
        use_out_proj: bool = True,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        normalization: str = "softmax",
        use_softermax: bool = False,
        power: float = 1.0,
        dtype: Any = tf.float32,
        name: str | None = None,
        window: tuple[int | None, int | None] | None = None,
        block_size: int | str | None = "auto",
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
    ) -> None:
        self._setup(name, dtype)
        s = settings(locals())
        self.dropout = self._init_rotary(s)
        with self.name_scope:
            self._build_alpha()
            self._build_epsilon()
            self._build_performer(s)

    @tf.Module.with_name_scope
    def build(self, input_dim: int) -> None:
        """Create the projections (``input_dim`` must be ``embed_dim``)."""
        if self.is_built:
            return
        if int(input_dim) != self.embed_dim:
            raise ValueError(
                f"RotaryYatAttention: x must have embed_dim={self.embed_dim} features, got "
                f"{int(input_dim)}"
            )
        self._kernels(input_dim, (input_dim,) * 3)

    @tf.Module.with_name_scope
    def __call__(
        self,
        x: Any,
        mask: Any = None,
        position_offset: Any = 0,
        positions: Any = None,
        training: bool = False,
        decode: bool = False,
    ) -> Any:
        x = _as_input(x, self.dtype)
        if x.shape.rank != 3:
            raise ValueError(f"x must be (batch, L, embed_dim), got shape {x.shape}")
        self.build(int(x.shape[-1]))
        positions = None if positions is None else tf.convert_to_tensor(positions)
        mask = None if mask is None else tf.convert_to_tensor(mask)
        rotary = functools.partial(
            self._rotary_positions, offset=position_offset, positions=positions, decode=decode
        )
        dropout = self._dropout if training and self.dropout > 0 else None
        return self._attend(x, x, x, mask, self._alpha_arg(), dropout, rotary, decode)


# nmn.tf's functional attention: q, k, v (batch, length, heads, dim)
yat_attention_weights, yat_attention, yat_attention_normalized = _api.keras_style_api(
    lambda weights, rate: tf.nn.dropout(weights, rate=rate)
)
normalize_qk = _api.normalize_qk
