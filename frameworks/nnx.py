"""Flax NNX modules over the pure functions of ``nmn_array``, as ``nmn.nnx`` 0.3.5.

The same class names (and aliases), constructor arguments, variable names, shapes, layouts
and initialisers, so ``nnx.state`` of an nmn model loads into the same model built from
these classes (``nnx.update``). Each ``__call__`` makes one ``nmn_array`` call on the raw
arrays (rotary attention adds RoPE for q and k); the differences from ``nmn`` are listed in
``docs/migration/nnx.md``. Every constructor argument is kept as an attribute of the same
name; the arguments the layers share mean the same in each:

- ``use_bias``, ``constant_bias``, ``softplus_bias``, ``scalar_bias``, ``bias_init``: a
  learnable bias (zeros), a constant, a softplus-positive one, one shared scalar.
- ``use_alpha``, ``constant_alpha``, ``alpha_init``: a learnable alpha (ones, (1,)) or a
  constant (``True`` = sqrt(2)); attention scales the scores with it (Decision 1).
- ``epsilon``, ``learnable_epsilon``: epsilon, or a learnable ``epsilon_param`` holding
  its softplus inverse (Decision 11).
- ``kernel_init``, ``positive_init`` (``abs()`` of the initial kernel),
  ``weight_normalized`` (unit-length kernel rows, Decision 7), ``mask`` (a fixed factor of
  the conv kernels, of its shape).
- ``use_dropconnect``, ``drop_rate`` (dense and conv layers): DropConnect, each weight
  dropped with probability ``drop_rate`` in ``[0, 1)`` and the kept ones scaled by
  ``1 / (1 - drop_rate)``, in every call unless ``deterministic=True`` (default False, as
  nmn); drawn from ``dropconnect_key``, a fork of ``rngs.dropout`` as nmn's, so one seed
  gives nmn's draws; then the ``mask`` (:func:`nmn_array.drop_connect`).
  ``MultiHeadAttention``'s ``use_dropconnect``, ``dropconnect_rate``: the same on its four
  projection kernels (not the biases), drawn from ``dropconnect_rng`` as nmn's (the class).
- ``tie_kernel_bank``, ``kernel_bank_size``, ``kernel_bank_id`` (YatNMN, YatConv): the
  layers of one class that name one bank id and agree on the kernel shape but the units,
  ``feature_group_count``, ``param_dtype``, ``kernel_init`` (identity) and ``positive_init``
  share one ``nnx.Param`` ``kernel`` of ``kernel_bank_size`` (default: the first layer's)
  units and each uses its first ``out_features``; their gradients add up in it. A larger
  layer grows the bank (old units kept, new ones drawn from its ``rngs.params``) until a
  layer of the bank has run, then ValueError; ``lazy`` with a bank is a ValueError, as nmn.
  The slice comes first, then DropConnect, the ``mask``, weight normalisation.
- ``dtype``, ``param_dtype``, ``promote_dtype``: the computation runs in the promoted
  dtype, float64 stays float64 (Decision 3); ``precision``: as
  ``jax.default_matmul_precision``.
- Decision 13, non-default values raise NotImplementedError: ``dot_general``,
  ``conv_general_dilated``; only kept: ``*_dot_general*``.
- Attention ``causal`` (both classes; nmn: performer only): key ``j`` is visible to query
  ``i`` iff ``j <= i + Lk - Lq``, combined with any ``mask`` (decoding is causal anyway).
- Attention ``use_performer`` (both classes), ``performer_kind`` ("slay", "maclaurin",
  "radial"), ``num_anchor_features``, ``num_prf_features``, ``num_quad_nodes``
  (SLAY), ``performer_num_features``, ``performer_nmax`` (MAY), ``performer_sketch_m``,
  ``performer_num_radial``, ``performer_radial_dim`` (RAY), ``performer_bias`` (MAY, RAY),
  ``performer_normalize``: linear-time attention,
  :func:`nmn_array.linear_attention.performer_attention` of the heads after the
  projections, ``normalize_qk`` and RoPE, its output times alpha (learnable or constant,
  as nmn's NNX), dropout on that output; ``mask`` must then be a key-padding mask
  ``(..., H, 1, Lk)``, ``decode``, ``window``, ``attention_fn`` and ``sow_weights`` are
  refused. The projection is drawn once at construction by NumPy, seeded from
  ``rngs.params()`` (Rotary: where nmn draws it, before the projections; MHA: after them),
  and held in :class:`PerformerProjection` variables ``perf_<key>`` (SLAY: ``perf_anchors``,
  ``perf_projections``, ``perf_quad_nodes``, ``perf_quad_weights``, nmn's names; MAY:
  ``perf_omegas``, ``perf_degrees``, ``perf_Z``; RAY: ``perf_W1``, ``perf_W2``,
  ``perf_omegas``, ``perf_phases``, ``perf_coef``, ``perf_bias``), which ``nnx.state`` and
  checkpoints carry and ``nnx.Param`` filters (optimisers) skip.
- ``rngs``: the ``nnx.Rngs`` the variables are drawn from, in nmn's order.
- ``window``, ``block_size`` (attention, keyword; not in nmn): local attention
  ``(left, right)`` and the tiling, as :func:`nmn_array.yat_attention` (the materialised
  path when dropout or ``sow_weights`` needs the weights); with ``decode``, the window
  around the cache index. A custom ``attention_fn`` takes no ``window``.

The functions take nmn.nnx's ``q, k, v (*batch, length, heads, dim)``.

Examples
--------
>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from nmn_array.frameworks import nnx as yat_nnx
>>> yat_nnx.YatNMN(4, 3, rngs=nnx.Rngs(0))(jnp.ones((2, 4))).shape
(2, 3)
>>> q = jnp.ones((2, 5, 3, 4))
>>> yat_nnx.yat_attention_weights(q, q).shape, yat_nnx.yat_attention(q, q, q).shape
((2, 3, 5, 5), (2, 5, 3, 4))
>>> yat_nnx.yat_attention_normalized(q, q, q).shape, yat_nnx.dot_product_attention(q, q, q).shape
((2, 5, 3, 4), (2, 5, 3, 4))
>>> yat_nnx.causal_attention_mask(2).tolist()
[[1.0, 0.0], [1.0, 1.0]]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from nmn_array.frameworks import _attention_api as _api
from nmn_array.frameworks import _flax, _performer
from nmn_array.frameworks._common import (
    KernelBanks,
    alpha_config,
    attention_window,
    bias_config,
    check_epsilon,
    check_rate,
    decode_visibility,
    explicit_positions,
    reject_nondefault,
    require,
    restrict_mask,
    softermax,
    unit_normalized,
)

import nmn_array
from nmn_array import soft_tanh, softer_sigmoid
from nmn_array._attention_blocks import merge_windows
from nmn_array._validation import check_floor

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
    "PerformerProjection",
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
    "causal_attention_mask",
    "combine_masks",
    "default_alpha_init",
    "default_bias_init",
    "default_kernel_init",
    "dot_product_attention",
    "dot_product_attention_weights",
    "fused_yat_l1_attention",
    "fused_yat_l1_self_attention",
    "make_attention_mask",
    "make_causal_mask",
    "normalize_qk",
    "soft_tanh",
    "softer_sigmoid",
    "softermax",
    "yat_attention",
    "yat_attention_normalized",
    "yat_attention_weights",
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

#: Arguments accepted for nmn's signatures that only their default may take: (default, why).
_UNSUPPORTED = {
    "dot_general": (lax.dot_general, "the product is computed by nmn_array.yat"),
    "conv_general_dilated": (
        lax.conv_general_dilated,
        "the convolution is computed by nmn_array.yat_conv",
    ),
}
_RATES = ("drop_rate", "dropconnect_rate", "dropout_rate")
#: YatNMN's compute_mode values (its docstring says what each means).
COMPUTE_MODES = ("fp32", "mixed", "bf16")
#: The shared kernel banks of YatNMN and YatConv (``tie_kernel_bank``; the module docstring).
_BANKS = KernelBanks()


def _drop_connect(
    kernel: Array, key: Array | None, rate: float, mask: Array | None = None
) -> Array:
    """``kernel`` after DropConnect and the fixed ``mask`` (:func:`nmn_array.drop_connect`),
    each weight kept with probability ``1 - rate`` by a Bernoulli draw from the JAX ``key``
    as nmn draws it (``key`` None: no DropConnect)."""
    keep = None if key is None else jax.random.bernoulli(key, 1.0 - rate, kernel.shape)
    return nmn_array.drop_connect(kernel, keep, rate=rate, mask=mask)


def _with_kernel(layer: Any, kernel: Array) -> Any:
    """A view of the ``nnx.LinearGeneral`` ``layer`` whose kernel is ``kernel``: the layer's
    own code runs on it (the gradient flows back through ``kernel``), ``layer`` is unchanged."""
    view = nnx.merge(*nnx.split(layer))
    view.kernel = nnx.Param(kernel)  # rebinds the view's attribute, not the shared variable
    return view


class FrozenParam(nnx.Variable):
    """A kernel excluded from ``nnx.state(model, nnx.Param)`` (``lazy`` / ``freeze_kernel``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> FrozenParam(jnp.zeros(2))[...].shape
    (2,)
    """


class PerformerProjection(nnx.Variable):
    """A performer projection array (``use_performer``): in ``nnx.state`` and checkpoints,
    not in ``nnx.state(model, nnx.Param)``, so optimisers leave it fixed.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> PerformerProjection(jnp.zeros(2))[...].shape
    (2,)
    """


class _Layer(nnx.Module):
    """The base of the layers: arguments kept as attributes, the yat variables."""

    def _setup(
        self,
        args: dict[str, Any],
        shape: tuple[int, ...] | None = None,
        *,
        table: str = "kernel",
        normalize_axis: int = -1,
    ) -> None:
        """Check the constructor's arguments ``args`` (its ``locals()``, holding only the
        arguments), keep them as attributes and create the variables in nmn's order: the
        ``table`` (``kernel`` or ``embedding``) of ``shape`` if given, ``bias`` (layers with
        ``constant_bias``), ``alpha``, ``epsilon_param`` (``None`` when there is none)."""
        layer = type(self).__name__
        for name, (default, reason) in _UNSUPPORTED.items():
            if name in args:
                reject_nondefault(layer, reason, **{name: (args[name], default)})
        for name, value in args.items():
            if name not in ("self", "rngs"):
                setattr(self, name, check_rate(value, name) if name in _RATES else value)
        rngs, param_dtype = args["rngs"], self.param_dtype
        mask = args.get("mask")
        if mask is not None and tuple(mask.shape) != shape:
            raise ValueError(
                "Mask needs to have the same shape as weights. "
                f"Shapes are: {tuple(mask.shape)}, {shape}"
            )
        if shape is not None:

            def initial(units: int) -> Array:
                """A kernel of ``shape`` with ``units`` units, drawn as nmn draws it."""
                array = args[f"{table}_init"](rngs.params(), shape[:-1] + (units,), param_dtype)
                if args.get("positive_init"):
                    array = jnp.abs(array)
                if args.get("weight_normalized"):
                    array = unit_normalized(array, normalize_axis)
                return array

            self._bank_key = None
            if args.get("tie_kernel_bank"):
                self._bank_key = self._attach_bank(args, shape, initial)
            else:
                setattr(
                    self,
                    table,
                    (FrozenParam if args.get("lazy") else nnx.Param)(initial(shape[-1])),
                )
            if table == "kernel":
                self.kernel_shape = shape
        if "constant_bias" in args:
            bias = bias_config(args["use_bias"], args["constant_bias"])
            learnable = bias.mode == "learnable"
            self.bias, self._constant_bias_value = nnx.data(None), bias.value
            if learnable:
                size = 1 if args["scalar_bias"] else args["out_features"]
                self.bias = nnx.Param(self.bias_init(rngs.params(), (size,), param_dtype))
            self.use_bias = bias.mode != "none"
            self.softplus_bias = bool(args["softplus_bias"] and learnable)
            self.scalar_bias = bool(args["scalar_bias"] and learnable)
        # nmn forks the DropConnect stream off rngs.dropout: MultiHeadAttention (the layer
        # with dropconnect_rate) before its alpha, the dense and conv layers (drop_rate)
        # after their variables; with nnx.Rngs(seed) dropout and params are one stream, so
        # the place decides every later draw
        if "dropconnect_rate" in args:
            self.dropconnect_rng = self._dropconnect_stream(rngs)
        alpha = alpha_config(args["use_alpha"], args["constant_alpha"])
        self.alpha, self._constant_alpha_value = nnx.data(None), alpha.value
        if alpha.mode == "learnable":
            self.alpha = nnx.Param(self.alpha_init(rngs.params(), (1,), param_dtype))
        self.use_alpha = alpha.mode != "none"
        self.epsilon = check_epsilon(args["epsilon"])
        self.learnable_epsilon, self.epsilon_param = bool(args["learnable_epsilon"]), nnx.data(None)
        if self.learnable_epsilon:
            self.epsilon_param = nnx.Param(_flax.raw_epsilon(self.epsilon, param_dtype))
        if "drop_rate" in args:
            self.dropconnect_key = self._dropconnect_stream(rngs)

    def _dropconnect_stream(self, rngs: nnx.Rngs) -> Any:
        """The DropConnect stream, a fork of ``rngs.dropout`` as nmn's (None without
        ``use_dropconnect``: nothing drawn)."""
        return rngs.dropout.fork() if self.use_dropconnect else nnx.data(None)

    def _attach_bank(
        self, args: dict[str, Any], shape: tuple[int, ...], initial: Callable[[int], Array]
    ) -> tuple[Any, ...]:
        """Make ``kernel`` the shared bank of ``args['kernel_bank_id']`` for this kernel
        ``shape`` (units last) through ``_BANKS``; returns the bank's key. New units are drawn
        from ``rngs.params`` only when the bank is made or grown, as in nmn."""
        if args.get("lazy"):
            raise ValueError(
                f"{type(self).__name__}(lazy=True / freeze_kernel=True) cannot be used with "
                "tie_kernel_bank=True: a shared kernel bank cannot be frozen per layer"
            )
        # as nmn: the bank id, the kernel shape but the units, the groups, the parameter
        # dtype, the initialiser (its identity) and positive_init name one bank
        key = (
            type(self).__name__, args["kernel_bank_id"], shape[:-1],
            args.get("feature_group_count", 1), jnp.dtype(args["param_dtype"]),
            args["kernel_init"], bool(args["positive_init"]),
        )  # fmt: skip

        def grow(bank: Any, old: int, new: int) -> None:
            bank.value = initial(new).at[..., :old].set(bank[...])  # the old units kept

        self.kernel = _BANKS.attach(
            key,
            units=shape[-1],
            size=args["kernel_bank_size"],
            make=lambda units: nnx.Param(initial(units)),
            grow=grow,
        )
        return key

    def _bias_array(self) -> Array | None:
        if self._constant_bias_value is not None:
            return jnp.full((self.out_features,), self._constant_bias_value, self.param_dtype)
        if self.bias is None:
            return None
        bias = self.bias[...]
        return jax.nn.softplus(bias) if self.softplus_bias else bias

    def _scalars(self) -> dict[str, Any]:
        """The call's ``alpha`` and ``epsilon``: constants or from the variables."""
        alpha = self._constant_alpha_value if self.alpha is None else self.alpha[...]
        epsilon = self.epsilon
        if self.learnable_epsilon and self.epsilon_param is not None:
            epsilon = _flax.softplus_epsilon(self.epsilon_param[...])
        return {"alpha": alpha, "epsilon": epsilon}

    def _kernel(self, deterministic: bool) -> Array:
        """The kernel (the layer's units of a shared bank) after DropConnect (when ``use_dropconnect`` and ``drop_rate > 0``, unless
        ``deterministic``; drawn as nmn draws it) and the fixed ``mask``."""
        kernel, key = self.kernel[...], None
        if self._bank_key is not None:  # this layer's units of the shared bank
            kernel = kernel[..., : self.kernel_shape[-1]]
            _BANKS.mark_used(self._bank_key)
        if self.use_dropconnect and not deterministic and self.drop_rate > 0.0:
            key = self.dropconnect_key()
        return _drop_connect(kernel, key, self.drop_rate, getattr(self, "mask", None))

    def _yat(self, x: Array, kernel: Array, bias: Array | None, **options: Any) -> Array:
        """:func:`nmn_array.yat` with the layer's scalars (``options`` may replace them),
        ``spherical`` and ``precision``."""
        precision = getattr(self, "precision", None)
        options = {**self._scalars(), **options}
        return _flax.yat(x, kernel, bias, precision, spherical=self.spherical, **options)


class YatNMN(_Layer):
    """Yat dense layer ``alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``, as nmn 0.3.5.

    Variables: ``kernel (in_features, out_features)`` (xavier normal; a
    :class:`FrozenParam` with ``lazy``, which ``freeze_kernel`` overrides), ``bias``,
    ``alpha``, ``epsilon_param``; ``spherical``: of unit-length vectors. Other arguments:
    the module docstring, and

    - ``distance_floor``: the squared distance is clamped to ``max(D, distance_floor)``
      (a finite float >= 0; default 0.0, as nmn).
    - ``compute_mode``: "fp32" (default) and "mixed" both mean the dtype policy of the
      module docstring (float16/bfloat16 computed in float32 and returned in their dtype,
      float64 kept; nmn's "fp32" rounds float64 to float32, its bug); "bf16": the input,
      kernel, bias, alpha and a learnable epsilon are cast to bfloat16 before the call, which
      computes in float32 and returns bfloat16 (nmn keeps the input dtype and rounds the
      intermediates to bfloat16 instead). Other values raise ValueError.
    - ``fused``: nmn's custom-VJP kernel; here the call is one XLA computation under
      ``jax.jit`` either way, so ``fused=True`` gives the same values as ``fused=False``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
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
        lazy = freeze_kernel = bool(lazy if freeze_kernel is None else freeze_kernel)
        if compute_mode not in COMPUTE_MODES:
            raise ValueError(f"compute_mode must be one of {COMPUTE_MODES}, got {compute_mode!r}")
        distance_floor = check_floor(distance_floor, "distance_floor")
        self._setup(locals(), (in_features, out_features), normalize_axis=1)

    def __call__(self, inputs: Array, *, deterministic: bool = False) -> Array:
        """``inputs (..., in_features)`` -> ``(..., out_features)``; ``deterministic`` turns
        DropConnect off."""
        kernel = self._kernel(deterministic)
        x, kernel, bias = self.promote_dtype((inputs, kernel, self._bias_array()), dtype=self.dtype)
        scalars = self._scalars()
        if self.compute_mode == "bf16":  # the arrays in bfloat16; Python floats stay as given
            x, kernel, bias, *values = (
                a if a is None or isinstance(a, float) else a.astype(jnp.bfloat16)
                for a in (x, kernel, bias, *scalars.values())
            )
            scalars = dict(zip(scalars, values, strict=True))
        # _w_in_out: the (in, out) kernel as stored, no transposes under XLA
        return self._yat(
            x, kernel, bias, weight_normalized=self.weight_normalized, _w_in_out=True,
            distance_floor=self.distance_floor, **scalars,
        )  # fmt: skip


YatDense = YatNMN


class _Conv(_Layer):
    """What the direct and the transposed convolution share: the call."""

    transposed = False

    def __call__(self, inputs: Array, *, deterministic: bool = False) -> Array:
        """``inputs (*batch, *spatial, in_features)`` -> ``(*batch, *out, out_features)``;
        ``deterministic`` turns DropConnect off."""
        kernel = self._kernel(deterministic)
        x, kernel, bias = self.promote_dtype((inputs, kernel, self._bias_array()), dtype=self.dtype)
        return _flax.conv(self, x, kernel, bias, **self._scalars())


class YatConv(_Conv):
    """N-D yat convolution (channels last), as ``nmn.nnx.YatConv`` 0.3.5.

    ``y = alpha * (<patch, w_o> + b_o)^2 / (|patch - w_o|^2 + epsilon)`` over inputs
    ``(*batch, *spatial, in)`` (any number of batch axes, or none). Variables: ``kernel
    (*kernel_size, in/groups, out)`` (xavier normal), ``bias``, ``alpha``, ``epsilon_param``.
    ``strides``, ``kernel_dilation``: ints or one per dimension; ``padding``: 'SAME'
    (default), 'VALID', 'SAME_LOWER', 'CIRCULAR', 'REFLECT', 'CAUSAL' (1-D), ints or (low,
    high) pairs; ``feature_group_count``: groups; ``input_dilation``: only 1. Other
    arguments: the module docstring.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> YatConv(3, 4, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 3))).shape
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
        if feature_group_count <= 0:
            raise ValueError("feature_group_count must be positive")
        if in_features % feature_group_count or out_features % feature_group_count:
            raise ValueError(
                f"in_features ({in_features}) and out_features ({out_features}) must be "
                f"multiples of feature_group_count ({feature_group_count})"
            )
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        self._setup(locals(), kernel_size + (in_features // feature_group_count, out_features))


class YatConvTranspose(_Conv):
    """N-D yat transposed convolution (channels last), as ``nmn.nnx.YatConvTranspose`` 0.3.5.

    Output sizes and padding as ``jax.lax.conv_transpose`` ('SAME': ``L * s``; 'VALID':
    ``L * s + max(k_eff - s, 0)``; (low, high) pairs that PyTorch's padding can express);
    ``|w_o|^2`` counts all taps (Decision 9). Variables: ``kernel (*kernel_size, in, out)``
    (``(*k, out, in)`` with ``transpose_kernel``, as ``lax.conv_transpose``), ``bias``,
    ``alpha``, ``epsilon_param``. Other arguments: :class:`YatConv`, the module docstring.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> conv = YatConvTranspose(3, 4, (4, 4), strides=(2, 2), rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((1, 4, 4, 3))).shape
    (1, 8, 8, 4)
    """

    transposed = True

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
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        self._setup(
            locals(),
            kernel_size
            + ((out_features, in_features) if transpose_kernel else (in_features, out_features)),
        )


# nmn.nnx's dimension-specific names are aliases of the generic classes.
YatConv1D = YatConv2D = YatConv3D = YatConv
YatConvTranspose1D = YatConvTranspose2D = YatConvTranspose3D = YatConvTranspose


class Embed(_Layer):
    """Embedding table with a yat ``attend``, as ``nmn.nnx.Embed`` (alias ``YatEmbed``) 0.3.5.

    Variables: ``embedding (num_embeddings, features)`` (``embedding_init``: variance
    scaling, fan in; rows normalised once with ``weight_normalized``), ``alpha``,
    ``epsilon_param``. ``attend(query)`` is ``alpha * (q.e_v)^2 / (|q - e_v|^2 + epsilon)``
    for every row (``spherical``: of unit-length vectors). Other arguments: the module
    docstring.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
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
        self._setup(locals(), (num_embeddings, features), table="embedding", normalize_axis=0)

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
        return self._yat(query, table, None)


YatEmbed = Embed


def _sower(module: Any) -> Callable[[Array], Any] | None:
    """Records attention weights on ``module`` as flax's functions do."""
    if module is None:
        return None
    return functools.partial(module.sow, nnx.Intermediate, "attention_weights")


def _raise_cache_full(index: Array, max_length: int) -> None:
    if int(index) >= max_length:
        raise ValueError(f"Autoregressive cache is full at length {max_length}.")


class _Attention(_Layer):
    """What the attention layers share: projections, the key/value cache, the yat call."""

    def _setup_performer(self, args: dict[str, Any], rngs: nnx.Rngs) -> None:
        """The performer settings (and ``causal``); with ``use_performer``, the projection
        seeded from ``rngs.params()`` into :class:`PerformerProjection` variables."""
        layer, attention_fn = type(self).__name__, args.get("attention_fn")
        self._performer = _performer.settings(args)
        self.performer_kind = self._performer.kind
        _performer.refuse_conflicts(
            layer, self._performer, window=self.window, attention_fn=attention_fn
        )
        if self._performer.causal and attention_fn is not None:
            raise ValueError(
                f"{layer}: causal=True applies to nmn_array's attention: it needs "
                "attention_fn=None (pass a causal mask to a custom attention_fn)"
            )
        if not self._performer.use:
            return
        projection = _flax.performer_projection(
            self._performer, self.head_dim, rngs.params(), self.epsilon, self.param_dtype
        )
        for key in self._performer.keys:
            setattr(self, f"perf_{key}", PerformerProjection(projection[key]))

    def _performer_attend(
        self,
        q: Array,
        k: Array,
        v: Array,
        mask: Array | None,
        *,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        sow_weights: bool,
        **_: Any,
    ) -> Array:
        """Performer attention on head-split ``(..., L, H, d)`` arrays, dropout on its
        output (the exact path's options, ``_``, do not apply)."""
        if sow_weights:
            raise ValueError(
                f"{type(self).__name__}: sow_weights=True needs attention weights, which "
                "use_performer=True never computes"
            )
        q, k, v = _dtypes.promote_dtype((q, k, v), dtype=self.dtype)
        rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            if rngs is None:
                raise ValueError("'rngs' must be provided for dropout.")
            rng = rngs.dropout()
        projection = {key: getattr(self, f"perf_{key}")[...] for key in self._performer.keys}
        return _flax.performer_attention(
            q, k, v, mask, self._performer, projection, dropout_rng=rng,
            dropout_rate=self.dropout_rate, precision=self.precision, **self._scalars(),
        )  # fmt: skip

    def _linear(self, in_features: Any, out_features: int, rngs: nnx.Rngs, **kwargs: Any) -> Any:
        settings = dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            use_bias=self.use_bias,
            precision=self.precision,
        )
        return nnx.LinearGeneral(in_features, out_features, rngs=rngs, **{**settings, **kwargs})

    def _cache(self, shape: tuple[int, ...] | None, dtype: Dtype = None) -> None:
        """Create the key/value cache of ``shape`` (None: no cache yet)."""
        for name in ("cached_key", "cached_value", "cache_index"):
            if shape is None:
                setattr(self, name, nnx.data(None))
            elif name == "cache_index":
                setattr(self, name, nnx.Cache(jnp.array(0, dtype=jnp.int32)))
            else:
                setattr(self, name, nnx.Cache(jnp.zeros(shape, dtype)))

    def reset_cache(self) -> None:
        """Empty the key/value cache (zeros, index 0) to decode a new sequence."""
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError("Autoregressive cache not initialized, call `init_cache` first.")
        for cache in (self.cached_key, self.cached_value, self.cache_index):
            cache[...] = jnp.zeros_like(cache[...])

    def _decode_step(self, q: Array, k: Array, v: Array, mask: Array | None) -> tuple:
        """Write one token's ``k``, ``v`` ``(*batch, 1, H, d)`` into the cache (applied by the
        caller after the call, through the returned ``pending`` triple); the query sees the
        cached positions ``0..index``."""
        *batch, max_length, heads, depth = self.cached_key[...].shape
        expected = tuple(batch) + (1, heads, depth)
        for name, t in (("query", q), ("key", k), ("value", v)):
            if t.shape != expected:
                raise ValueError(
                    f"Autoregressive cache shape error, expected {name} shape {expected} "
                    f"instead got {t.shape}."
                )
        index = self.cache_index[...]
        # fail before the write, eagerly or (through a callback) under nnx.jit
        if isinstance(index, jax.core.Tracer):
            check = functools.partial(_raise_cache_full, max_length=max_length)
            jax.debug.callback(check, index, ordered=True)
        else:
            _raise_cache_full(index, max_length)
        zero = jnp.array(0, dtype=index.dtype)  # one integer type for every start index
        start = (zero,) * len(batch) + (index, zero, zero)
        k = lax.dynamic_update_slice(self.cached_key[...], k.astype(self.cached_key.dtype), start)
        v = lax.dynamic_update_slice(
            self.cached_value[...], v.astype(self.cached_value.dtype), start
        )
        # the window around the query at the cache index (the core's end alignment would
        # place it at the end of the cache)
        visible = decode_visibility(index, 1, max_length, self.window, k)
        mask = restrict_mask(mask, jnp.broadcast_to(visible, tuple(batch) + (1, 1, max_length)))
        return k, v, mask, (k, v, index + 1)

    def _run(
        self,
        projections: tuple,
        inputs: tuple,
        mask: Array | None,
        decode: bool,
        rotate: Callable[[Array, Any], Array] | None,
        attention: Callable[..., Array],
        output: Callable[[Array], Array],
    ) -> Array:
        """The attention: ``projections`` of ``inputs`` split into heads (q and k normalised
        with ``normalize_qk``), ``rotate(t, cache index or None)`` of q and k (None: no RoPE),
        one step over the cache with ``decode``, ``attention(q, k, v, mask=...)``, ``output``
        of that with the queries that see no key zeroed, and the cache written."""
        performer = self._performer.use
        if decode and performer:
            _performer.refuse_decode(type(self).__name__)
        q, k, v = (
            _flax.split_heads(project(t), self.num_heads, normalize and self.normalize_qk)
            for project, t, normalize in zip(projections, inputs, (True, True, False))
        )
        pending, index = None, None
        if decode:
            if self.cached_key is None or self.cached_value is None or self.cache_index is None:
                raise ValueError("Autoregressive cache not initialized, call `init_cache` first.")
            index = self.cache_index[...]
        if rotate is not None:
            # the cache keeps keys rotated at their own positions
            q, k = rotate(q, index), rotate(k, index)
        if decode:
            k, v, mask, pending = self._decode_step(q, k, v, mask)
        if not performer:  # the performer takes key-padding masks (..., H, 1, Lk) as they are
            mask = _flax.head_mask(mask, q, k)
        # decoding applies the window and causality in the cache mask above
        window = None if decode else self.window
        causal = self._performer.causal and not decode and not performer
        options = {} if window is None else {"window": window}
        if causal:
            options["causal"] = True
        out = output(attention(q, k, v, mask=mask, **options))
        out = _flax.zero_keyless(out, mask, merge_windows(causal, window), k.shape[-3])
        if pending is not None:
            self.cached_key[...], self.cached_value[...], self.cache_index[...] = pending
        return out

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
        **options: Any,
    ) -> Array:
        """Yat attention on head-split ``(..., L, H, d)`` arrays, with dropout and sowing."""
        q, k, v = _dtypes.promote_dtype((q, k, v), dtype=self.dtype)
        rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            if rngs is None:
                raise ValueError("'rngs' must be provided for dropout.")
            rng = rngs.dropout()
        return _flax.attend(
            q,
            k,
            v,
            mask,
            dropout_rng=rng,
            dropout_rate=self.dropout_rate,
            broadcast_dropout=self.broadcast_dropout,
            sow=_sower(self if sow_weights else None),
            precision=self.precision,
            power=self.power,
            block_size=self.block_size,
            **self._scalars(),
            **options,
        )


class MultiHeadAttention(_Attention):
    """Multi-head yat attention, as ``nmn.nnx.MultiHeadAttention`` 0.3.5.

    ``LinearGeneral`` projections ``query``, ``key``, ``value`` (``(in, qkv)`` kernels,
    lecun normal) and ``out`` (``(H, d, out_features)``), then per head
    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) sqrt(d))) v`` (``use_softermax``:
    softermax of the scores to ``power``; ``spherical``: of unit-length q and k;
    ``normalize_qk``: ``q / max(|q|, 1e-12)``, Decision 2). ``qkv_features`` and
    ``out_features`` default to ``in_features``; ``attention_fn=None`` is nmn_array's yat
    attention, a callable is called as flax's attention functions are; ``decode=True``
    with :meth:`init_cache` runs one token at a time over a key/value cache.
    ``use_dropconnect`` with ``dropconnect_rate`` in ``(0, 1)`` drops each weight of the
    four projection kernels (not their biases) with that probability and scales the kept
    ones by ``1 / (1 - dropconnect_rate)`` in every call that is not deterministic (the
    flag is then required, as for dropout). The draws are nmn's: ``dropconnect_rng``, forked
    from ``rngs.dropout`` before ``alpha`` is drawn, gives one key per projection from its
    key and count, and the count advances by 4 after each call that succeeds. The other
    arguments are as ``flax.nnx.MultiHeadAttention`` and the module docstring.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 8))).shape
    (2, 5, 8)
    >>> attn = MultiHeadAttention(
    ...     2, 8, use_dropconnect=True, dropconnect_rate=0.1, rngs=nnx.Rngs(0)
    ... )
    >>> attn(jnp.ones((2, 5, 8)), deterministic=False).shape, int(attn.dropconnect_rng.count[...])
    ((2, 5, 8), 4)
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
        qkv_features = in_features if qkv_features is None else qkv_features
        out_features = in_features if out_features is None else out_features
        decode = bool(decode)
        window, block_size = attention_window(window, block_size)
        if window is not None and attention_fn is not None:
            raise ValueError(
                f"window={window!r} applies to nmn_array's attention: it needs "
                "attention_fn=None (pass the window as a mask to a custom attention_fn)"
            )
        self._setup(locals())
        if qkv_features % num_heads:
            raise ValueError(
                f"Memory dimension ({qkv_features}) must be divisible by "
                f"'num_heads' heads ({num_heads})."
            )
        self.head_dim = qkv_features // num_heads
        self.query, self.key, self.value = (
            self._linear(in_features, qkv_features, rngs) for _ in range(3)
        )
        self.out = self._linear(
            (num_heads, self.head_dim),
            out_features,
            rngs,
            axis=(-2, -1),
            kernel_init=out_kernel_init or kernel_init,
            bias_init=out_bias_init or bias_init,
        )
        # after the projections: their weights are the exact module's of the same seed
        self._setup_performer(locals(), rngs)
        self._cache(None)

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
        dropconnect = self.use_dropconnect and self.dropconnect_rate > 0.0
        # without dropout or DropConnect the call is deterministic whatever the flags say
        deterministic = not (self.dropout_rate > 0.0 or dropconnect) or _first_from(
            deterministic,
            self.deterministic,
            error_msg="No `deterministic` argument was provided to MultiHeadAttention "
            "as either a __call__ argument, class attribute, or nnx.flag.",
        )
        attention: Callable[..., Array] = functools.partial(
            self._performer_attend if self._performer.use else self._attend,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
            spherical=self.spherical,
            normalization="softermax" if self.use_softermax else "softmax",
        )
        if self.attention_fn is not None:
            attention = functools.partial(
                self.attention_fn,
                dropout_rng=(
                    rngs.dropout()
                    if rngs is not None and not deterministic and self.dropout_rate > 0.0
                    else None
                ),
                dropout_rate=self.dropout_rate,
                broadcast_dropout=self.broadcast_dropout,
                deterministic=deterministic,
                dtype=self.dtype,
                precision=self.precision,
                module=self if sow_weights else None,
                use_softermax=self.use_softermax,
                power=self.power,
                **self._scalars(),
            )
        layers, count = (self.query, self.key, self.value, self.out), None
        if dropconnect and not deterministic:
            # nmn's draws: one key per projection, folded from the stream's key and count;
            # the count advances by 4 only once the call has succeeded
            stream = self.dropconnect_rng
            count = stream.count[...]
            layers = tuple(
                _with_kernel(
                    layer,
                    _drop_connect(
                        layer.kernel[...],
                        jax.random.fold_in(stream.key[...], count + i),
                        self.dropconnect_rate,
                    ),
                )
                for i, layer in enumerate(layers)
            )
        out = self._run(
            layers[:3],
            (inputs_q, inputs_k, inputs_v),
            mask,
            _first_from(decode, self.decode, error_msg="no decode flag"),
            None,
            attention,
            layers[3],
        )
        if count is not None:
            self.dropconnect_rng.count[...] = count + len(layers)
        return out

    def init_cache(self, input_shape: Sequence[int], dtype: Dtype = jnp.float32) -> None:
        """Create the key/value cache for ``decode``: ``input_shape = (*batch, max_length,
        features)``."""
        self._cache((*input_shape[:-1], self.num_heads, self.head_dim), dtype)


MultiHeadYatAttention = MultiHeadAttention


class RotaryYatAttention(_Attention):
    """Multi-head yat attention with rotary position embeddings, as
    ``nmn.nnx.RotaryYatAttention`` 0.3.5 (quadratic path).

    ``LinearGeneral`` projections ``q_proj``, ``k_proj``, ``v_proj`` and (``use_out_proj``)
    ``o_proj``, ``(E, E)`` kernels without bias by default; RoPE (interleaved pairs,
    ``theta``) of q and k at positions ``position_offset + t`` (up to ``max_seq_len``);
    ``normalization`` 'softmax', 'softermax' (``use_softermax``) or 'l1' of the scores to
    ``power``; ``normalize_qk``: ``q / max(|q|, 1e-12)`` (Decision 2; nmn: a LayerNorm);
    ``decode=True`` (after :meth:`init_cache`): one token over the cache; ``causal`` and
    ``use_performer`` (its projection drawn before the projections' kernels, as nmn draws
    it, so one ``nnx.Rngs`` seed gives nmn's kernels): the module docstring. Other
    arguments: :class:`MultiHeadAttention`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
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
        window: tuple[int | None, int | None] | None = None,
        block_size: int | str | None = "auto",
    ) -> None:
        window, block_size = attention_window(window, block_size)
        normalization = "softermax" if use_softermax else normalization
        if normalization not in ("softmax", "softermax", "l1"):
            raise ValueError(
                f"normalization must be 'softmax', 'softermax' or 'l1', got {normalization!r}"
            )
        self._setup(locals())
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        self.head_dim = embed_dim // num_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE.")
        self._setup_performer(locals(), rngs)  # drawn where nmn draws it: before q, k, v
        self.q_proj, self.k_proj, self.v_proj = (
            self._linear(embed_dim, embed_dim, rngs) for _ in range(3)
        )
        self.o_proj = self._linear(embed_dim, embed_dim, rngs) if use_out_proj else nnx.data(None)
        self._cache(None)

    def _rotate(self, t: Array, offset: Any, positions: Array | None) -> Array:
        if positions is not None:
            return _flax.rotate(t, None, self.theta, positions)
        if not isinstance(offset, jax.core.Tracer) and int(offset) + t.shape[1] > self.max_seq_len:
            raise ValueError(
                f"Rotary frequencies were precomputed for max_seq_len={self.max_seq_len}, "
                f"but position_offset + seq_len = {int(offset) + t.shape[1]} exceeds it."
            )
        return _flax.rotate(t, offset, self.theta)

    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
        position_offset: int = 0,
        positions: Array | None = None,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> Array:
        """``x (B, L, E)`` -> ``(B, L, E)``; ``mask`` broadcastable to ``(B, H, L, Lk)``.

        RoPE at ``positions``, integers ``(L,)`` or 2-D ``(..., L, 2)`` (row, column), when
        given; otherwise at ``position_offset + t``, or at the cache index with ``decode``.
        """
        if decode and x.shape[1] != 1:
            raise ValueError(f"Autoregressive decode expects one token, got seq_len={x.shape[1]}.")
        attention = functools.partial(
            self._performer_attend if self._performer.use else self._attend,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
            spherical=False,
            normalization=self.normalization,
        )

        def output(out: Array) -> Array:
            out = out.reshape(x.shape[:-1] + (self.embed_dim,))
            return out if self.o_proj is None else self.o_proj(out)

        if positions is not None:
            positions = explicit_positions(positions, position_offset, self.max_seq_len)

        def rotate(t: Array, index: Array | None) -> Array:
            return self._rotate(t, position_offset if index is None else index, positions)

        projections = (self.q_proj, self.k_proj, self.v_proj)
        return self._run(projections, (x, x, x), mask, decode, rotate, attention, output)

    def init_cache(self, batch_size: int, max_length: int, dtype: Dtype = jnp.float32) -> None:
        """Create the key/value cache for ``decode=True``."""
        if max_length > self.max_seq_len:
            raise ValueError(f"cache length {max_length} exceeds max_seq_len={self.max_seq_len}")
        self._cache((batch_size, max_length, self.num_heads, self.head_dim), dtype)


# --------------------------------------------------------------------------------------
# nmn.nnx's functional attention: q, k, v (*batch, length, heads, dim)
# --------------------------------------------------------------------------------------
def yat_attention_weights(
    query: Array,
    key: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Dtype | None = None,
    precision: Any = None,
    module: Any = None,
    epsilon: float = 1e-5,
    use_softermax: bool = False,
    power: float = 1.0,
    alpha: Array | None = None,
    normalization: str = "softmax",
    *,
    spherical: bool = False,
) -> Array:
    """Yat attention weights ``(*batch, heads, Lq, Lk)`` of ``query (*batch, Lq, heads, d)``
    and ``key (*batch, Lk, heads, d)``, as ``nmn.nnx.yat_attention_weights`` 0.3.5.

    ``bias`` is added to the scores (softmax only), ``mask`` selects keys where nonzero,
    ``alpha`` multiplies the scores, ``normalization``: "softmax", "softermax" (also
    ``use_softermax``; with ``power``) or "l1"; ``dtype`` promotes the inputs, ``precision``
    sets JAX's matmul precision, ``module`` records the weights (``sow``), dropout uses
    ``dropout_rng`` unless ``deterministic``; ``spherical``: the score of
    :func:`yat_attention_normalized`.
    """
    query, key = _dtypes.promote_dtype((query, key), dtype=dtype)
    rng = _flax.dropout_key(dropout_rng, dropout_rate, deterministic)
    hook = _flax.weights_hook(rng, dropout_rate, broadcast_dropout, _sower(module))
    with _flax.precision_scope(precision):
        return _api.attention_weights(
            query, key, mask=_flax.flax_mask(mask), bias=bias, dropout=hook, epsilon=epsilon,
            alpha=alpha, spherical=spherical, power=power,
            normalization="softermax" if use_softermax else normalization,
        )  # fmt: skip


def yat_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Dtype | None = None,
    precision: Any = None,
    module: Any = None,
    epsilon: float = 1e-5,
    use_softermax: bool = False,
    power: float = 1.0,
    alpha: Array | None = None,
    normalization: str = "softmax",
    *,
    spherical: bool = False,
) -> Array:
    """Yat attention of ``value (*batch, Lk, heads, dv)``: output ``(*batch, Lq, heads,
    dv)``, as ``nmn.nnx.yat_attention`` 0.3.5; the other arguments as
    :func:`yat_attention_weights`.
    """
    query, key, value = _dtypes.promote_dtype((query, key, value), dtype=dtype)
    return _flax.attend(
        query, key, value, _flax.flax_mask(mask), bias=bias,
        dropout_rng=_flax.dropout_key(dropout_rng, dropout_rate, deterministic),
        dropout_rate=dropout_rate, broadcast_dropout=broadcast_dropout,
        sow=_sower(module), precision=precision, epsilon=epsilon, alpha=alpha,
        spherical=spherical, power=power,
        normalization="softermax" if use_softermax else normalization,
    )  # fmt: skip


def yat_attention_normalized(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Dtype | None = None,
    precision: Any = None,
    module: Any = None,
    epsilon: float = 1e-5,
    use_softermax: bool = False,
    power: float = 1.0,
    alpha: Array | None = None,
) -> Array:
    """:func:`yat_attention` with the spherical score: q and k as ``v / sqrt(|v|^2 +
    epsilon)``, distance ``max(2 - 2 q.k, 0)``.
    """
    return yat_attention(
        query, key, value, bias, mask, broadcast_dropout, dropout_rng, dropout_rate,
        deterministic, dtype, precision, module, epsilon, use_softermax, power, alpha,
        spherical=True,
    )  # fmt: skip


def fused_yat_l1_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    bias: Array | None = None,
    epsilon: float | Array = 1e-5,
    mask: Array | None = None,
    scale: float | None = None,
    precision: Any = None,
) -> Array:
    """nmn.nnx's L1 yat attention of ``query (*batch, Lq, heads, d)``, ``key``, ``value``
    (``(*batch, Lk, heads, ·)``): weights ``S / (sum S + 1e-12)`` with ``S = (q.k + bias)^2
    / ((max(|q - k|^2, 0) + epsilon) * scale)`` (``scale`` default ``sqrt(d)``; ``bias``,
    boolean ``mask`` broadcastable to ``(*batch, heads, Lq, Lk)``, masked scores 0): the
    core's "softermax" with power 1 and scale ``1 / scale``. nmn's custom VJP only saves
    memory; the values and gradients are the same.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = jnp.ones((2, 5, 3, 4))
    >>> fused_yat_l1_attention(q, q, q).shape
    (2, 5, 3, 4)
    """
    return _l1_attention(query, key, value, bias, epsilon, mask, scale, precision)


def fused_yat_l1_self_attention(
    x: Array,
    value: Array,
    *,
    bias: Array | None = None,
    epsilon: float | Array = 1e-5,
    scale: float | None = None,
    precision: Any = None,
) -> Array:
    """:func:`fused_yat_l1_attention` with ``q = k = x (*batch, L, heads, d)`` whose weight of
    each token on itself is set to 0 after the normalisation (its score still counts in the
    normaliser), as nmn.nnx's.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> fused_yat_l1_self_attention(jnp.ones((2, 5, 3, 4)), jnp.ones((2, 5, 3, 6))).shape
    (2, 5, 3, 6)
    """

    def zero_self(weights: Array) -> Array:
        n = weights.shape[-1]
        return jnp.where(jnp.eye(n, dtype=jnp.bool_), jnp.zeros((), weights.dtype), weights)

    return _l1_attention(x, x, value, bias, epsilon, None, scale, precision, zero_self)


def _l1_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None,
    epsilon: float | Array,
    mask: Array | None,
    scale: float | None,
    precision: Any,
    hook: Callable[[Array], Array] | None = None,
) -> Array:
    """The call of the fused L1 functions: nmn's ``scale`` divides the scores; the API's
    multiplies them on top of ``1 / sqrt(d)``."""
    d = query.shape[-1]
    factor = None if scale is None else math.sqrt(d) / scale
    with _flax.precision_scope(precision):
        return _api.attention(
            query, key, value, yat_bias=bias, mask=_flax.flax_mask(mask), dropout=hook,
            scale=factor, epsilon=epsilon, normalization="softermax", power=1.0,
        )  # fmt: skip


normalize_qk = _api.normalize_qk
make_attention_mask = nnx.make_attention_mask
make_causal_mask = nnx.make_causal_mask
combine_masks = nnx.combine_masks
_flax_attention = require("flax.nnx.nn.attention")


def dot_product_attention_weights(
    query: Array,
    key: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Dtype | None = None,
    precision: Any = None,
    module: Any = None,
) -> Array:
    """Flax's ``softmax(q.k / sqrt(d))`` weights ``(*batch, heads, Lq, Lk)``, with zero
    weights for a query that sees no key (nmn 0.3.5's rule; Flax spreads them evenly).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = jnp.ones((1, 2, 1, 4)); hidden = jnp.zeros((1, 1, 2, 2), dtype=bool)
    >>> dot_product_attention_weights(q, q, mask=hidden, deterministic=True).sum().item()
    0.0
    """
    weights = _flax_attention.dot_product_attention_weights(
        query, key, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic,
        dtype, precision, module,
    )  # fmt: skip
    if mask is None:
        return weights
    return jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, jnp.zeros_like(weights))


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Dtype | None = None,
    precision: Any = None,
    module: Any = None,
) -> Array:
    """:func:`dot_product_attention_weights` applied to ``value (*batch, Lk, heads, dv)``."""
    query, key, value = _dtypes.promote_dtype((query, key, value), dtype=dtype)
    weights = dot_product_attention_weights(
        query, key, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic,
        None, precision, module,
    )  # fmt: skip
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


def causal_attention_mask(seq_len: int) -> Array:
    """A ``(seq_len, seq_len)`` float32 lower-triangular mask of ones (query i sees keys
    j <= i), as ``nmn.nnx.causal_attention_mask``."""
    return jnp.tril(jnp.ones((seq_len, seq_len), dtype=jnp.float32))
