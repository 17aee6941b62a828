"""Keras 3 layers (any backend: jax, torch, tensorflow) over the pure functions of ``nmn_array``.

Drop-in replacements for ``nmn.keras`` 0.3.5 (class names, arguments, weight names, shapes
and layouts), so saved nmn weights load. Every ``call`` unwraps its variables to the
backend's own arrays and makes one ``nmn_array`` call; differences from nmn are listed in
``docs/migration/keras.md``. The constructor arguments, as in ``nmn.keras``:

- ``units`` (dense), ``filters`` (convolutions): the number of neurons / filters.
- ``use_bias`` / ``constant_bias``: a learnable bias ``(units,)`` / ``(filters,)`` inside the
  square, or a fixed float instead; in attention, biases of the q/k/v/out projections.
- ``use_alpha`` / ``constant_alpha``: a learnable output scale ``alpha`` ``(1,)`` (ones), or a
  constant (``True`` means sqrt(2)). ``epsilon``: added to the squared distance;
  ``learnable_epsilon`` learns it as ``softplus(epsilon_param)``.
- ``spherical``: normalise inputs and neurons to unit length (distance ``2 - 2 x.w``);
  ``weight_normalized``: normalise the neurons (once at build and in every call).
- ``positive_init``: ``abs`` of the initial kernel; ``lazy`` / ``freeze_kernel``: freeze the
  kernel (``trainable=False``; bias, alpha and epsilon still train).
- ``kernel_size``, ``strides``, ``dilation_rate``, ``output_padding``: ints or one int per
  spatial axis; ``groups``: grouped convolution; ``padding``: ``"valid"``, ``"same"`` (XLA's
  rule for any stride) or, for ``YatConv1D``, ``"causal"``; ``data_format``:
  ``"channels_last"`` (also for None, as in nmn) or ``"channels_first"``.
- ``use_dropconnect``, ``drop_rate`` (in ``[0, 1)``): with ``training=True``, each kernel
  weight is dropped with probability ``drop_rate`` and the kept ones divided by ``1 -
  drop_rate`` (``nmn_array.drop_connect``), before weight normalisation. Drawn from a
  ``keras.random.SeedGenerator`` of the layer (nmn: Keras' unseeded global draw), seeded by
  ``keras.utils.set_random_seed`` before the layer is made.
- ``tie_kernel_bank`` (convolutions and transposed convolutions, as in nmn.keras): the layers
  that name one ``kernel_bank_id`` and agree on the rest of the kernel's shape (kernel size,
  channels, groups; direct or transposed), the variable dtype and the kernel initializer share
  one ``kernel`` variable of ``kernel_bank_size`` filters (default: the first layer's
  ``filters``); each uses its first ``filters`` along the filter axis, so their gradients add up
  in it. Keras variables have a fixed shape: a later layer that needs more filters than the
  bank holds raises ValueError (give the first layer a large enough ``kernel_bank_size``).
  ``get_config`` reports the bank's size as ``kernel_bank_size`` and ``kernel_bank`` as None;
  a layer made from it joins the bank of the same id in this process, or makes one.
  ``kernel_bank`` (nmn's serialized bank reference) is accepted: its ``capacity`` stands for
  an unset ``kernel_bank_size``.
- ``kernel_initializer`` (``"glorot_normal"``; ``"orthogonal"`` for convolutions),
  ``bias_initializer``, ``embedding_initializer``, ``*_regularizer``, ``*_constraint``: as
  for ``keras.layers.Dense`` / ``Conv2D``; other keyword arguments go to ``keras.layers.Layer``.

Examples
--------
>>> import numpy as np
>>> from nmn_array.frameworks.keras import YatConv1D, YatConvTranspose2D, YatNMN
>>> layer = YatNMN(4, constant_alpha=True)
>>> y = layer(np.random.default_rng(0).normal(size=(2, 3)).astype("float32"))
>>> tuple(y.shape), [w.path.split("/")[-1] for w in layer.weights]
((2, 4), ['kernel', 'bias'])
>>> tuple(YatConv1D(4, 3, padding="causal")(np.ones((2, 10, 3), dtype="float32")).shape)
(2, 10, 4)
>>> up = YatConvTranspose2D(2, 3, strides=2, padding="same", data_format="channels_first")
>>> tuple(up(np.ones((1, 3, 4, 4), dtype="float32")).shape)
(1, 2, 8, 8)
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from nmn_array.frameworks import _attention_api as _api
from nmn_array.frameworks._common import (
    KernelBanks,
    check_rate,
    combine_masks,
    conv_output_length,
    known_size,
    ntuple,
    require,
    restrict_mask,
    transpose_conv_pads,
    unit_normalized,
)
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

keras: Any = require("keras")  # Any-typed, so that mypy takes its classes as bases
ops = keras.ops

__all__ = PUBLIC

_register = keras.saving.register_keras_serializable(package="nmn_array")
# The constructor arguments that are Keras objects, by the end of their name.
_KERAS_KINDS = ("initializer", "regularizer", "constraint")
#: The shared kernel banks of the convolutions (``tie_kernel_bank=True``); fixed capacity.
_BANKS = KernelBanks()


def _raw(value: Any) -> Any:
    """A Keras variable or tensor as the backend's own array (None passes through).

    ``Variable.value`` reads through Keras (autocast; on JAX the stateless scope of
    ``model.fit``): a jax array, a torch tensor with autograd, or a ``tf.Variable``.
    """
    if isinstance(value, keras.Variable):
        value = value.value
    if value is None or keras.backend.backend() != "tensorflow":
        return None if value is None else ops.convert_to_tensor(value)
    # A Keras variable's value is a tf.Variable there; read it into a tf.Tensor.
    return sys.modules["tensorflow"].convert_to_tensor(value)


def _fp32_safe(initializer: Any) -> Any:
    """Initialise 16-bit variables through float32 (orthogonal init needs a QR in float32)."""

    def initialize(shape, dtype=None):
        # float16 or bfloat16
        if dtype is not None and "float16" in keras.backend.standardize_dtype(dtype):
            return ops.cast(initializer(shape, dtype="float32"), dtype)
        return initializer(shape, dtype=dtype)

    return initialize


class _Layer(YatParams, keras.layers.Layer):
    """A yat Keras layer whose settings are attributes named as its constructor's arguments,
    from which ``get_config`` is derived (``_CONFIG_ATTRS``: attributes spelt otherwise)."""

    _ops = ops
    _read = staticmethod(_raw)
    _CONFIG_ATTRS: dict[str, str] = {}

    def _new_weight(self, name: str, shape: tuple, fill: float, dtype: Any = None, **kw) -> Any:
        if dtype is not None:
            # from NumPy, exact: Keras' Constant goes through float32 (a float64 epsilon
            # would lose digits, 2**-1022 would become 0)
            kw["dtype"] = dtype
            kw["initializer"] = lambda shape, dtype=None: np.full(shape, fill, dtype=dtype)
        kw.setdefault("initializer", keras.initializers.Constant(fill))
        return self.add_weight(name=name, shape=shape, **kw)

    def _param_dtype(self) -> str:
        return keras.backend.standardize_dtype(self.variable_dtype)

    def _init_yat(self, s: dict[str, Any]) -> None:
        super()._init_yat(s)
        # the initializers, regularizers and constraints among the arguments, as objects
        for name, value in s.items():
            if name.endswith(_KERAS_KINDS):
                setattr(self, name, getattr(keras, name.rsplit("_", 1)[1] + "s").get(value))

    def _keras_objects(self, weight: str) -> dict[str, Any]:
        """``{"initializer": self.<weight>_initializer, "regularizer": ..., "constraint": ...}``"""
        return {kind: getattr(self, f"{weight}_{kind}") for kind in _KERAS_KINDS}

    def _build_kernel(
        self, shape: tuple, n_out: int, axis: int, init: Any, bank: Any = None, **kw: Any
    ) -> None:
        """The kernel and the yat weights; nmn's build-time abs and weight normalisation.
        ``bank``: None, or the key of the shared kernel bank to join (``axis`` then sizes it)."""
        kernel = dict(self._keras_objects("kernel"), initializer=init)
        made = []

        def make(size: int) -> Any:
            made.append(size)
            full = (*shape[:axis], size, *shape[axis + 1 :])
            return self.add_weight(name="kernel", shape=full, **kernel, **kw)

        if bank is None:
            self.kernel = make(shape[axis])
        else:
            size = getattr(self, "kernel_bank_size", None)
            self.kernel = _BANKS.attach(bank, units=n_out, size=size, make=make)
        self._build_yat(n_out, **self._keras_objects("bias"))
        if not made:  # a bank made by another layer is initialised (and normalised) already
            return
        if getattr(self, "positive_init", False):
            self.kernel.assign(ops.abs(_raw(self.kernel)))
        if self.weight_normalized:
            # Decision 7: nmn normalises the stored kernel once at build.
            self.kernel.assign(unit_normalized(_raw(self.kernel), axis))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        # every constructor argument but self and **kwargs
        for name in list(inspect.signature(type(self).__init__).parameters)[1:-1]:
            value = getattr(self, self._CONFIG_ATTRS.get(name, name))
            kind = name.rsplit("_", 1)[-1]
            config[name] = (
                getattr(keras, kind + "s").serialize(value) if kind in _KERAS_KINDS else value
            )
        return config


# --- dense ---------------------------------------------------------------------------
@_register
class YatNMN(_Layer):
    """Yat dense layer: ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``.

    Kernel ``(input_dim, units)`` (nmn.keras's layout); arguments and an example: the module
    docstring.
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
        self._init_yat(settings(locals()))
        # nmn: freeze_kernel is an alias of lazy; either one freezes the kernel.
        self.lazy = self.freeze_kernel = bool(lazy or freeze_kernel)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape: Sequence[int | None]) -> None:
        input_dim = known_size(input_shape[-1], "the last axis of the input")
        shape = (input_dim, self.units)
        self._build_kernel(shape, self.units, 1, self.kernel_initializer, trainable=not self.lazy)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs: Any) -> Any:
        # the (input_dim, units) kernel as stored: no transposes
        return self._dense(inputs, self.kernel, w_in_out=True)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return (*tuple(input_shape)[:-1], self.units)


YatDense = YatNMN


# --- convolutions --------------------------------------------------------------------
class _YatConvBase(YatConvShell, _Layer):
    """The Keras side of the yat convolutions: settings, weights, output shapes."""

    def _setup(self, s: dict[str, Any]) -> None:
        name = type(self).__name__
        direct_1d = self.rank == 1 and not self.transposed
        self.padding = self._init_conv(
            s, ("valid", "same", "causal") if direct_1d else ("valid", "same")
        )
        if direct_1d and max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError("`strides > 1` is incompatible with `dilation_rate > 1`.")
        self.data_format = s["data_format"]
        if self.data_format not in (None, "channels_last", "channels_first"):
            raise ValueError(
                f"{name}: data_format must be 'channels_last' or 'channels_first', "
                f"got {self.data_format!r}"
            )
        # nmn treats data_format=None as channels_last (it does not read the global setting)
        self._channels_first = self.data_format == "channels_first"
        if s.get("output_padding") is not None:
            self.output_padding = ntuple(s["output_padding"], self.rank, "output_padding")
        self._setup_bank(s)
        self.use_dropconnect = s["use_dropconnect"]
        self.drop_rate = check_rate(s["drop_rate"], "drop_rate")
        # DropConnect draws from a generator of the layer, so that it also works under jax.jit
        active = bool(self.use_dropconnect) and self.drop_rate > 0
        self._seed_generator = keras.random.SeedGenerator() if active else None
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)
        self.supports_masking = True

    def _setup_bank(self, s: dict[str, Any]) -> None:
        """nmn's kernel-bank settings (kept, as nmn does, also when the bank is off)."""
        self.tie_kernel_bank, size = bool(s["tie_kernel_bank"]), s["kernel_bank_size"]
        self.kernel_bank_id, self.kernel_bank = s["kernel_bank_id"], None
        if size is None and s["kernel_bank"] is not None:
            size = _bank_capacity(s["kernel_bank"])
        self.kernel_bank_size = size
        if self.tie_kernel_bank and size is not None and size < self.filters:
            # checked here, as nmn does, rather than at build
            raise ValueError(
                f"kernel_bank_size ({size}) must be at least the units ({self.filters})"
            )

    def _bank_key(self, channels: int) -> Any:
        """The key of the layer's kernel bank, None when it has none: what must agree."""
        if not self.tie_kernel_bank:
            return None
        shape = self._kernel_shape(channels)
        filter_axis = self.rank if self.transposed else self.rank + 1
        rest = shape[:filter_axis] + shape[filter_axis + 1 :]
        # the initializer's identity: its class and configuration (not the seed-less object)
        init = json.dumps(
            keras.initializers.serialize(self.kernel_initializer), sort_keys=True, default=str
        )
        kind = "transpose" if self.transposed else "forward"
        return (kind, self.kernel_bank_id, rest, self.groups, self._param_dtype(), init)

    def build(self, input_shape: Sequence[int | None]) -> None:
        axis = 1 if self._channels_first else -1
        if input_shape[axis] is None:
            raise ValueError(
                "The channel dimension of the inputs should be defined. "
                f"Found `None`. Full input shape: {input_shape}"
            )
        input_dim = int(input_shape[axis])  # type: ignore[arg-type]
        if not self.transposed:
            self._check_divisible("input channels", input_dim)
            self._check_divisible("filters", self.filters)
        filter_axis = self.rank if self.transposed else self.rank + 1
        init, bank = _fp32_safe(self.kernel_initializer), self._bank_key(input_dim)
        self._build_kernel(self._kernel_shape(input_dim), self.filters, filter_axis, init, bank)
        if bank is not None:  # what get_config reports: a layer made from it fits the bank
            self.kernel_bank_size = int(self.kernel.shape[filter_axis])
        self.input_dim = input_dim
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={axis: input_dim})

    def call(self, inputs: Any, training: Any = None) -> Any:
        kernel = _raw(self.kernel)
        if self.tie_kernel_bank:
            # the layer's first filters of the bank, before DropConnect
            index = [slice(None)] * (self.rank + 2)
            index[self.rank if self.transposed else self.rank + 1] = slice(0, self.filters)
            kernel = kernel[tuple(index)]
        if not training or self._seed_generator is None:
            return self._conv(inputs, kernel=kernel)
        # nmn's draw: each weight is kept with probability 1 - drop_rate
        shape, dtype, seed = tuple(kernel.shape), self.kernel.dtype, self._seed_generator
        keep = keras.random.uniform(shape, dtype=dtype, seed=seed) < 1.0 - self.drop_rate
        return self._conv(inputs, keep, kernel)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        shape = tuple(input_shape)
        spatial = shape[2:] if self._channels_first else shape[1:-1]
        extras = self.output_padding or (None,) * self.rank
        out: list[int | None] = []
        geometry = zip(spatial, self.kernel_size, self.strides, self.dilation_rate, extras)
        for size, k, s, d, extra in geometry:
            if not self.transposed:
                out.append(conv_output_length(size, k, s, d, self.padding))
                continue
            low, high = transpose_conv_pads(k, s, d, self.padding, extra)
            out.append(None if size is None else (size - 1) * s + low + high - d * (k - 1) + 1)
        if self._channels_first:
            return (shape[0], self.filters, *out)
        return (shape[0], *out, self.filters)


def _bank_capacity(reference: Any) -> int:
    """The capacity of nmn.keras's kernel-bank reference (its config entry, or the object)."""
    if isinstance(reference, Mapping):
        config = reference.get("config", reference)
    else:  # the reference object itself (nmn's get_config before serialisation)
        config = getattr(reference, "get_config", lambda: None)()
    config = config if isinstance(config, Mapping) else {}
    capacity = config.get("capacity")
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(
            "kernel_bank must be None or nmn.keras's serialized kernel bank (a dict with a "
            f"'capacity'), got {reference!r}"
        )
    return capacity


class _YatConvND(_YatConvBase):
    """yat convolution: the yat product of every input patch with every filter.

    Input ``(batch, *spatial, channels)``, or ``(batch, channels, *spatial)`` with
    ``data_format="channels_first"``; kernel ``(*kernel_size, channels // groups, filters)``,
    bias ``(filters,)``, alpha ``(1,)``. Arguments and examples: the module docstring.
    """

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
        self._setup(settings(locals()))


class _YatConvTransposeND(_YatConvBase):
    """yat transposed convolution with Keras' output sizes.

    Input as for the convolutions; kernel ``(*kernel_size, filters, channels)``, bias
    ``(filters,)``, alpha ``(1,)``. ``padding="valid"`` gives ``(L - 1) * s + max(k_eff, s)``
    and ``"same"`` ``L * s``, split as ``jax.lax.conv_transpose``; an ``output_padding`` (<
    ``max(strides, dilation_rate)``) gives ``(L - 1) * s + k_eff + output_padding`` ("valid")
    or ``(L - 1) * s + k_eff % 2 + output_padding`` ("same"). ``|w|^2`` counts every tap of a
    filter (Decision 9). Arguments and examples: the module docstring.
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
        self._setup(settings(locals()))


YatConv1D = YatConv1d = _register(declare(_YatConvND, 1, __name__))
YatConv2D = YatConv2d = _register(declare(_YatConvND, 2, __name__))
YatConv3D = YatConv3d = _register(declare(_YatConvND, 3, __name__))
YatConvTranspose1D = YatConvTranspose1d = _register(declare(_YatConvTransposeND, 1, __name__))
YatConvTranspose2D = YatConvTranspose2d = _register(declare(_YatConvTransposeND, 2, __name__))
YatConvTranspose3D = YatConvTranspose3d = _register(declare(_YatConvTransposeND, 3, __name__))


# --- embedding -----------------------------------------------------------------------
@_register
class YatEmbed(_Layer):
    """Token embedding whose ``attend`` scores queries against every embedding with yat.

    ``call(ids)`` is a plain lookup in ``embedding (num_embeddings, features)``;
    ``attend(q)`` returns ``alpha * (q.e_v)^2 / (max(|q - e_v|^2, 0) + epsilon)`` of shape
    ``(..., num_embeddings)`` (weight tying for language-model heads). ``spherical``
    normalises queries and embeddings in ``attend``; ``weight_normalized`` normalises the
    table once at build; other arguments as described in the module docstring.

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
        self._init_yat(settings(locals()))

    def build(self, input_shape: Any = None) -> None:
        shape, init = (self.num_embeddings, self.features), self.embedding_initializer
        self.embedding = self.add_weight(name="embedding", shape=shape, initializer=init)
        if self.weight_normalized:
            self.embedding.assign(unit_normalized(_raw(self.embedding), 0))
        self._build_alpha()
        self.built = True

    def call(self, inputs: Any, attend: bool = False) -> Any:
        if attend:
            return self._attend_table(inputs, self.embedding)
        return ops.take(self.embedding, inputs, axis=0)

    def attend(self, query: Any) -> Any:
        """Yat logits of ``query (..., features)`` against the table: ``(..., num_embeddings)``.

        A call of this layer (``self(query, attend=True)``): in a functional model a second
        node of the same layer, so the weights stay tied through saving and loading.
        """
        return self(query, attend=True)

    def compute_output_spec(self, inputs: Any, attend: bool = False) -> Any:
        shape = tuple(inputs.shape)
        shape = (*shape[:-1], self.num_embeddings) if attend else (*shape, self.features)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)


# --- attention -----------------------------------------------------------------------
def _numpy_seed(seed: int | None) -> int:
    """The NumPy seed of a performer projection: ``seed``, or a draw from a
    ``keras.random.SeedGenerator`` (reproduced by ``keras.utils.set_random_seed``)."""
    if seed is not None:
        return seed
    draw = keras.random.randint((), 0, 2**31 - 1, seed=keras.random.SeedGenerator())
    return int(ops.convert_to_numpy(draw))


def _from_numpy(array: Any, shape: Any = None, dtype: Any = None) -> Any:
    """An initializer giving ``array`` exactly (Keras' Constant goes through float32)."""
    return np.asarray(array, dtype=keras.backend.standardize_dtype(dtype))


class _Attention(YatAttentionShell, _Layer):
    """What the Keras attention layers share: masks, dropout, the key/value cache's
    variables (non-trainable weights ``cache_key``, ``cache_value`` ``(batch, heads,
    max_length, head_dim)`` and ``cache_index`` (int32), made by :meth:`init_cache`)."""

    _CONFIG_ATTRS = dict(
        dropout="dropout_rate", normalize_qk="_normalize_qk", spherical="_spherical"
    )

    def _setup(self, dropout_rate: float, s: dict[str, Any]) -> None:
        self.dropout_rate = dropout_rate
        self.supports_masking = True
        # Dropout draws from a seeded generator so it also works under jax.jit (model.fit).
        self._seed_generator = keras.random.SeedGenerator() if self.dropout_rate > 0 else None
        seed = s["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        # drawn now (eagerly, also where build is traced); made weights in build
        self._performer_arrays = self._init_performer(s, functools.partial(_numpy_seed, seed))

    def _effective_mask(
        self, query: Any, mask: Any, attention_mask: Any, self_attention: bool
    ) -> tuple[Any, Any]:
        """One mask broadcastable to (B, H, Lq, Lk), or None (nmn's rules); boolean unless an
        additive (floating) mask was given, which is kept additive. With ``use_performer``,
        which takes key-padding masks only, a sequence mask masks the keys (self-attention)
        and is also returned, as the queries whose outputs are zeroed (else None)."""
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
        effective = attention_mask
        while effective is not None and len(effective.shape) < 4:
            effective = ops.expand_dims(effective, 0)
        if sequence_mask is not None and self.use_performer:
            if self_attention:
                keys = ops.expand_dims(ops.expand_dims(sequence_mask, 1), 1)
                effective = keys if effective is None else restrict_mask(effective, keys)
            return effective, sequence_mask
        if sequence_mask is not None:
            # (B, S) -> queries (B, 1, Lq, 1); for self-attention also keys (B, 1, 1, Lk)
            queries = ops.expand_dims(ops.expand_dims(sequence_mask, 1), -1)
            if self_attention:
                keys = ops.expand_dims(ops.expand_dims(sequence_mask, 1), 1)
                queries = ops.logical_and(queries, keys)
            effective = queries if effective is None else restrict_mask(effective, queries)
        return effective, None

    @staticmethod
    def _zero_masked_queries(y: Any, queries: Any) -> Any:
        """``y (B, Lq, E)`` with zeros at the queries ``(B, Lq)`` marks False (None: as is)."""
        if queries is None:
            return y
        return ops.where(ops.expand_dims(queries, -1), y, ops.zeros_like(y))

    def _dropout(self, weights: Any) -> Any:
        return keras.random.dropout(weights, self.dropout_rate, seed=self._seed_generator)

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> Any:
        if previous_mask is not None and len(previous_mask.shape) == 2:
            return previous_mask
        return None

    def _cache_variables(self, shape: tuple[int, ...], dtype: Any) -> None:
        dtype = self.compute_dtype if dtype is None else keras.backend.standardize_dtype(dtype)
        old = [v for v in (self.cache_key, self.cache_value, self.cache_index) if v is not None]
        for variable in old:
            self._untrack_variable(variable)
        # Keras locks a built layer's state; the cache is state made after build, on request.
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            made = {}
            for name, size, kind in (
                ("cache_key", shape, dtype),
                ("cache_value", shape, dtype),
                ("cache_index", (), "int32"),
            ):
                made[name] = self.add_weight(
                    name=name, shape=size, dtype=kind, initializer="zeros", trainable=False,
                    autocast=False,
                )  # fmt: skip
            self.cache_key, self.cache_value = made["cache_key"], made["cache_value"]
            self.cache_index = made["cache_index"]
        finally:
            if locked:
                self._tracker.lock()

    def _build_attention(self, rows: Sequence[int | None]) -> None:
        """The projections (``rows``: the q, k, v input widths) and alpha."""

        def kernel(name: str, rows: int | None) -> Any:
            # A fresh initializer per projection: nmn.keras reuses one unseeded instance,
            # which gives q_kernel == k_kernel == v_kernel at init (each token then attends
            # only to itself and q/k get no gradient). A seeded initializer still repeats.
            init = type(self.kernel_initializer).from_config(self.kernel_initializer.get_config())
            shape = (known_size(rows, f"the feature axis for {name}"), self.embed_dim)
            return self.add_weight(name=name, shape=shape, initializer=init, trainable=True)

        self._build_projections(kernel, rows)
        self.alpha_param = None
        self._build_alpha("alpha_param")
        if self._performer_arrays is not None:
            storage = projection_storage(self.variable_dtype)
            self.performer_projection = {
                key: self.add_weight(
                    name=f"performer_{key}",
                    shape=np.shape(array),
                    trainable=False,
                    dtype="int32" if key == "degrees" else storage,
                    autocast=False,
                    initializer=functools.partial(_from_numpy, array),
                )
                for key, array in self._performer_arrays.items()
            }

    def _saved_variables(self) -> list[Any]:
        """The layer's variables but the cache: decoding state, not weights, which a saved
        model leaves out (it loads into layers with or without a cache)."""
        cache = {id(v) for v in (self.cache_key, self.cache_value, self.cache_index)}
        variables = self._trainable_variables + self._non_trainable_variables
        return [v for v in variables if id(v) not in cache]

    def save_own_variables(self, store: Any) -> None:
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store: Any) -> None:
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer {self.name!r} expected {len(variables)} variables, but received "
                f"{len(store.keys())} variables during loading"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])

    @staticmethod
    def _assign(variable: Any, value: Any) -> None:
        variable.assign(value)

    @staticmethod
    def _update_slice(array: Any, start: list, update: Any) -> Any:
        return ops.slice_update(array, ops.stack([ops.cast(i, "int32") for i in start]), update)

    @staticmethod
    def _positions(start: Any, length: int) -> Any:
        return ops.arange(length, dtype="int32") + ops.cast(start, "int32")

    @staticmethod
    def _check_room(index: Any, length: int, max_length: int) -> None:
        backend = keras.backend.backend()
        if backend == "tensorflow" and not sys.modules["tensorflow"].executing_eagerly():
            tf = sys.modules["tensorflow"]
            tf.debugging.assert_less_equal(
                index + length, max_length,
                message=f"the key/value cache is full: max_length={max_length}, L={length}",
            )  # fmt: skip
        elif backend == "jax" and isinstance(index, sys.modules["jax"].core.Tracer):
            # under jax.jit: the error from a callback, before the write is used
            check = functools.partial(check_cache_room, length=length, max_length=max_length)
            sys.modules["jax"].debug.callback(check, index, ordered=True)
        elif backend != "torch" or not sys.modules["torch"].compiler.is_compiling():
            check_cache_room(index, length, max_length)


@_register
class MultiHeadYatAttention(_Attention):
    """Multi-head attention whose scores are yat products of queries and keys.

    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) * sqrt(head_dim))) @ v`` per head, with
    linear projections ``q_kernel``/``k_kernel``/``v_kernel`` ``(input_dim, embed_dim)``,
    ``out_kernel`` ``(embed_dim, embed_dim)``, biases ``q_bias`` ... ``out_bias``
    ``(embed_dim,)`` and ``alpha`` ``(1,)``. ``dropout``: on the attention weights (with
    ``training=True``); ``use_alpha``/``constant_alpha`` scale the scores before the softmax
    (Decision 1); ``normalize_qk``: ``q / max(|q|, 1e-12)`` per head (Decision 2);
    ``spherical``: ``v / sqrt(|v|^2 + epsilon)`` inside the score; ``window=(left, right)``
    and ``block_size``: local attention and the tiling, as :func:`nmn_array.yat_attention`
    (the materialised path when dropout needs the weights; both in ``get_config``); others:
    module docstring.

    ``call(query, key=None, value=None, mask=None, attention_mask=None, training=False,
    decode=False)``: ``key`` defaults to ``query``, ``value`` to ``key``. ``attention_mask``
    broadcasts to ``(batch, heads, q_len, kv_len)``: boolean (True = attend) or floating
    (additive; -inf hides a key); other dtypes raise TypeError. ``mask``: a boolean Keras
    sequence mask ``(batch, seq)`` (e.g. from ``Embedding(mask_zero=True)``; in
    self-attention it masks queries and keys) or another attention mask. A query that sees
    no key outputs zeros. ``decode=True`` (after :meth:`init_cache`): the L new tokens are
    written into the key/value cache at its index and attend causally to the cache
    (``docs/frameworks/keras.md``); masks then broadcast to ``(batch, heads, L,
    max_length)``.

    ``use_performer=True``: linear-time attention,
    :func:`~nmn_array.linear_attention.performer_attention` of the projected heads (after
    ``normalize_qk``), with the feature map ``performer_kind`` (``"slay"``:
    ``num_anchor_features``, ``num_prf_features``, ``num_quad_nodes``; ``"maclaurin"``:
    ``performer_num_features``, ``performer_nmax``, ``performer_bias``; ``"radial"``:
    ``performer_sketch_m``, ``performer_num_radial``, ``performer_radial_dim``,
    ``performer_bias``), the layer's ``epsilon``, and the output (not the scores) times
    alpha; dropout on its output. The projection is drawn once, at construction, from
    ``numpy.random.default_rng(s)``, ``s`` = ``seed`` or a draw from a
    ``keras.random.SeedGenerator`` (which ``keras.utils.set_random_seed`` reproduces), and
    stored as non-trainable weights ``performer_<key>`` (the dict
    ``performer_projection``; nmn's keys: ``anchors``, ``projections``, ``quad_nodes``,
    ``quad_weights`` / ``omegas``, ``degrees`` (int32), ``Z`` / ``W1``, ``W2``, ``omegas``,
    ``phases``, ``coef``, ``bias``; float32 for 16-bit layers), which ``model.save`` /
    ``keras.models.load_model``, ``save_weights`` and ``get_weights`` carry. Masks must be
    key padding, broadcastable to ``(batch, heads, 1, kv_len)`` (others raise the core's
    ValueError); a Keras sequence mask masks the keys (self-attention) and zeroes the padded
    queries' outputs. ``decode=True``, ``window`` and ``learnable_epsilon`` raise ValueError
    with it; ``normalization``, ``power`` and ``spherical`` apply to the exact mode only.
    ``performer_normalize`` is accepted for nmn's signature: the feature maps always
    normalise q and k (nmn's flag adds a normalisation before SLAY's). ``causal=True``: key
    ``j`` is visible to query ``i`` only if ``j <= i``, in both modes; in the exact mode
    (which nmn's modules lack) it is combined with any given mask, and cross-attention
    aligns the last query with the last key.

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
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        s = settings(locals())
        self._setup(self._init_attention(s), s)

    def build(
        self,
        query_shape: Sequence[int | None],
        key_shape: Sequence[int | None] | None = None,
        value_shape: Sequence[int | None] | None = None,
    ) -> None:
        key_shape = query_shape if key_shape is None else key_shape
        value_shape = key_shape if value_shape is None else value_shape
        self._build_attention((query_shape[-1], key_shape[-1], value_shape[-1]))

    def call(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        mask: Any = None,
        attention_mask: Any = None,
        training: Any = False,
        decode: bool = False,
    ) -> Any:
        effective, queries = self._effective_mask(query, mask, attention_mask, key is None)
        key = query if key is None else key
        value = key if value is None else value
        query, key, value = (ops.convert_to_tensor(t) for t in (query, key, value))
        dropout = self._dropout if training and self.dropout_rate > 0 else None
        alpha = self._alpha_arg(self.alpha_param)
        y = self._attend(query, key, value, effective, alpha, dropout, decode=decode)
        return self._zero_masked_queries(y, queries)

    def compute_output_shape(
        self,
        query_shape: Sequence[int | None],
        key_shape: Sequence[int | None] | None = None,
        value_shape: Sequence[int | None] | None = None,
    ) -> tuple:
        return (*tuple(query_shape)[:-1], self.embed_dim)


@_register
class RotaryYatAttention(_Attention):
    """Multi-head yat attention with rotary position embeddings (RoPE, interleaved pairs),
    as the torch, NNX and Linen ``RotaryYatAttention`` (nmn.keras has none).

    Self-attention of ``x (batch, L, embed_dim)``: projections ``q_kernel``/``k_kernel``/
    ``v_kernel``/``out_kernel`` ``(embed_dim, embed_dim)`` (``(in, out)``: torch's
    ``q_proj.weight`` transposed), biases ``q_bias`` ... ``out_bias`` ``(embed_dim,)`` when
    ``use_bias`` (default off), ``alpha`` ``(1,)``, ``epsilon_param`` ``(1,)`` when
    ``learnable_epsilon``; q and k rotated by :func:`nmn_array.rotary_embedding` (``theta``)
    after ``normalize_qk``; ``normalization`` ``"softmax"``, ``"softermax"``
    (``use_softermax``) or ``"l1"`` of the scores to ``power``; ``embed_dim / num_heads``
    must be even. Other arguments as :class:`MultiHeadYatAttention` (``use_performer``
    and ``causal`` too; RoPE before the performer's features).

    ``call(x, mask=None, position_offset=0, positions=None, training=False,
    decode=False)``: positions ``position_offset + t`` (up to ``max_seq_len``), or the
    integer array ``positions`` (L,) as given; ``mask`` as ``attention_mask`` of
    :class:`MultiHeadYatAttention` (or a Keras sequence mask). ``decode=True`` (after
    :meth:`init_cache`): positions continue from the cache index.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.frameworks.keras import RotaryYatAttention
    >>> attn = RotaryYatAttention(8, 2, max_seq_len=16)
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    >>> tuple(attn(x).shape)
    (2, 5, 8)
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
        kernel_initializer: Any = "glorot_normal",
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
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        s = settings(locals())
        self._setup(self._init_rotary(s), s)

    def build(self, input_shape: Sequence[int | None]) -> None:
        width = known_size(input_shape[-1], "the last axis of x")
        if width != self.embed_dim:
            raise ValueError(
                f"RotaryYatAttention: x must have embed_dim={self.embed_dim} features, got "
                f"shape {tuple(input_shape)}"
            )
        self._build_attention((width,) * 3)
        self._build_epsilon()
        self.built = True

    def call(
        self,
        x: Any,
        mask: Any = None,
        position_offset: Any = 0,
        positions: Any = None,
        training: Any = False,
        decode: bool = False,
    ) -> Any:
        effective, queries = self._effective_mask(x, mask, None, True)
        x = ops.convert_to_tensor(x)
        positions = None if positions is None else ops.convert_to_tensor(positions)
        rotary = functools.partial(
            self._rotary_positions, offset=position_offset, positions=positions, decode=decode
        )
        dropout = self._dropout if training and self.dropout_rate > 0 else None
        alpha = self._alpha_arg(self.alpha_param)
        y = self._attend(x, x, x, effective, alpha, dropout, rotary, decode)
        return self._zero_masked_queries(y, queries)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return (*tuple(input_shape)[:-1], self.embed_dim)


# nmn.keras's functional attention: q, k, v (batch, length, heads, dim)
yat_attention_weights, yat_attention, yat_attention_normalized = _api.keras_style_api(
    lambda weights, rate: keras.random.dropout(weights, rate)
)
normalize_qk = _api.normalize_qk
