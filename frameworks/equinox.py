"""Equinox modules over the pure functions of ``nmn_array``.

Each layer is an ``eqx.Module`` whose fields are its arrays (``weight``, ``bias``, ``alpha``,
``epsilon_param``; ``None`` when the configuration has none) and its static settings, built
with a keyword-only ``key`` and called on ONE unbatched example, as ``equinox.nn.Linear``,
``Conv`` and ``Embedding`` are: batch with ``jax.vmap``. Each ``__call__`` makes one
``nmn_array`` call (:func:`nmn_array.yat`, :func:`nmn_array.yat_conv`,
:func:`nmn_array.yat_conv_transpose`); the layers work under ``eqx.filter_jit`` and
``eqx.filter_grad`` and serialise with ``eqx.tree_serialise_leaves``.

The arguments the layers share, named as in ``nmn_array.frameworks.nnx`` where Equinox has
no name of its own:

- ``use_bias``: a learnable bias of shape ``(out,)``, initialised to zeros (inside the
  square, so not Equinox's post-convolution ``(out, 1, ..., 1)``).
- ``use_alpha``, ``constant_alpha``: a learnable alpha (ones, shape ``(1,)``) or a constant
  (``True`` = sqrt(2)); neither: no alpha.
- ``epsilon``, ``learnable_epsilon``: epsilon, or a learnable ``epsilon_param`` holding its
  softplus inverse (Decision 11).
- ``weight_normalized``: unit-length filters (the initial weight too, Decision 7);
  ``positive_init``: ``abs()`` of the initial weight.
- ``drop_rate`` (dense and convolution layers): DropConnect, each weight dropped with
  probability ``drop_rate`` in ``[0, 1)`` and the kept ones scaled by ``1 / (1 - drop_rate)``
  (:func:`nmn_array.drop_connect`), drawn from the call's ``key`` unless ``inference``
  (Equinox's ``Dropout`` convention: the field, overridden by the call's ``inference``
  argument and set for a whole model by ``eqx.nn.inference_mode``).
- ``dtype``: of the arrays (default float32, float64 with ``jax_enable_x64``, as Equinox);
  a call computes in the promoted dtype of the input and the weight.
- ``key``: the ``jax.random`` key the weight is drawn from (xavier normal, as the other
  frameworks' yat layers; ``YatEmbed``: standard normal, as ``eqx.nn.Embedding``).

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from nmn_array.frameworks import equinox as yat_eqx
>>> layer = yat_eqx.YatNMN(4, 3, key=jax.random.key(0))
>>> layer(jnp.ones(4)).shape, jax.vmap(layer)(jnp.ones((2, 4))).shape
((3,), (2, 3))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from nmn_array.frameworks import _flax
from nmn_array.frameworks._common import (
    alpha_config,
    check_epsilon,
    check_rate,
    lax_conv_padding,
    ntuple,
    require,
    unit_normalized,
)

import nmn_array

jax = require("jax")
# Any: the module is imported at run time and its Module is our base class; mypy takes a
# base class from an Any-typed name, not from a plain module object.
eqx: Any = require("equinox")
jnp = jax.numpy

__all__ = [
    "DEFAULT_CONSTANT_ALPHA",
    "MultiHeadYatAttention",
    "RotaryYatAttention",
    "YatConv1D",
    "YatConv2D",
    "YatConv3D",
    "YatConvTranspose1D",
    "YatConvTranspose2D",
    "YatConvTranspose3D",
    "YatDense",
    "YatEmbed",
    "YatNMN",
]

Array = Any
Dtype = Any

#: ``constant_alpha=True``: exactly sqrt(2).
DEFAULT_CONSTANT_ALPHA = math.sqrt(2.0)
#: Equinox's padding modes (its ``Conv``), as :func:`nmn_array.yat_conv` names them.
_PADDING_MODES = {"ZEROS": "zeros", "REFLECT": "reflect", "REPLICATE": "replicate", "CIRCULAR": "circular"}  # fmt: skip


def _dtype(dtype: Dtype | None) -> Any:
    """The arrays' dtype: float64 canonicalised (float32 unless ``jax_enable_x64``) for None,
    Equinox's default."""
    return jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)


def _positive_int(value: Any, name: str, layer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
    return value


def _scalars(
    use_alpha: bool,
    constant_alpha: bool | float | None,
    epsilon: float,
    learnable_epsilon: bool,
    dtype: Any,
) -> tuple[Array | None, float | None, float, Array | None]:
    """The alpha array (or None), the constant alpha (or None), epsilon and the raw
    learnable epsilon (or None) of a layer's arguments."""
    alpha = alpha_config(use_alpha, constant_alpha)
    epsilon = check_epsilon(epsilon)
    raw = _flax.raw_epsilon(epsilon, dtype) if learnable_epsilon else None
    return (jnp.ones((1,), dtype) if alpha.mode == "learnable" else None), alpha.value, epsilon, raw


def _initial(
    key: Array, shape: tuple[int, ...], dtype: Any, positive: bool, normalized: bool
) -> Array:
    """A xavier-normal weight of ``shape`` (filters along axis 0; the other axes are fan-in,
    the receptive field counted in both fans as the other frameworks count it)."""
    weight = jax.nn.initializers.xavier_normal(in_axis=1, out_axis=0)(key, shape, dtype)
    if positive:
        weight = jnp.abs(weight)
    return unit_normalized(weight, 0) if normalized else weight


class _Yat(eqx.Module):
    """What the layers share: alpha, epsilon and the call's scalars."""

    alpha: Array | None
    epsilon_param: Array | None
    constant_alpha: float | None = eqx.field(static=True)
    epsilon: float = eqx.field(static=True)

    def _scalars(self) -> dict[str, Any]:
        """The call's ``alpha`` and ``epsilon``: constants or from the arrays."""
        alpha = self.constant_alpha if self.alpha is None else self.alpha
        epsilon = self.epsilon
        if self.epsilon_param is not None:
            epsilon = _flax.softplus_epsilon(self.epsilon_param)
        return {"alpha": alpha, "epsilon": epsilon}

    def _check_input(self, x: Array, shape: tuple[int, ...], what: str) -> None:
        """ValueError naming the layer and both shapes when ``x`` is not one example."""
        if tuple(x.shape) != shape:
            raise ValueError(
                f"{type(self).__name__} takes one unbatched example of shape {what} = {shape}, "
                f"got an input of shape {tuple(x.shape)}; batch it with jax.vmap"
            )


class _Dropped(_Yat):
    """A layer with a ``weight`` and DropConnect (``drop_rate``, ``inference``)."""

    weight: Array
    bias: Array | None
    drop_rate: float = eqx.field(static=True)
    # not static: eqx.nn.inference_mode flips it with tree_at, as on eqx.nn.Dropout
    inference: bool

    def _weight(self, key: Array | None, inference: bool | None) -> Array:
        """The weight after DropConnect (unless ``inference`` or ``drop_rate == 0``)."""
        inference = self.inference if inference is None else inference
        if inference or self.drop_rate == 0.0:
            return self.weight
        if key is None:
            raise ValueError(
                f"{type(self).__name__}(drop_rate={self.drop_rate}) needs a key for DropConnect "
                "when not in inference mode: call it with key=..., or with inference=True "
                "(eqx.nn.inference_mode(model))"
            )
        keep = jax.random.bernoulli(key, 1.0 - self.drop_rate, self.weight.shape)
        return nmn_array.drop_connect(self.weight, keep, rate=self.drop_rate)

    def _promoted(self, x: Array, weight: Array) -> tuple[Array, Array, Array | None]:
        """``x``, ``weight`` and the bias in their promoted floating dtype."""
        dtype = jnp.result_type(x, weight)
        bias = None if self.bias is None else self.bias.astype(dtype)
        return x.astype(dtype), weight.astype(dtype), bias


class YatNMN(_Dropped):
    """Yat dense layer ``alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)`` (alias
    ``YatDense``), in Equinox's conventions.

    Parameters
    ----------
    in_features, out_features : int
        Input and output sizes.
    use_bias, use_alpha, constant_alpha, epsilon, learnable_epsilon, positive_init,
    weight_normalized, drop_rate, inference, dtype
        The module docstring.
    spherical : bool
        The yat product of unit-length vectors (:func:`nmn_array.yat`).
    distance_floor : float
        The squared distance is clamped to ``max(D, distance_floor)``.
    key : jax.random key
        Draws the weight (keyword only).

    Fields: ``weight (out_features, in_features)`` (``eqx.nn.Linear``'s layout), ``bias
    (out_features,)``, ``alpha (1,)``, ``epsilon_param (1,)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> layer = YatNMN(4, 2, constant_alpha=True, key=jax.random.key(0))
    >>> bool((jax.vmap(layer)(jnp.ones((3, 4))) >= 0).all())
    True
    """

    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    spherical: bool = eqx.field(static=True)
    weight_normalized: bool = eqx.field(static=True)
    distance_floor: float = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        weight_normalized: bool = False,
        positive_init: bool = False,
        distance_floor: float = 0.0,
        drop_rate: float = 0.0,
        inference: bool = False,
        dtype: Dtype | None = None,
        key: Array,
    ) -> None:
        layer = type(self).__name__
        self.in_features = _positive_int(in_features, "in_features", layer)
        self.out_features = _positive_int(out_features, "out_features", layer)
        dtype = _dtype(dtype)
        self.alpha, self.constant_alpha, self.epsilon, self.epsilon_param = _scalars(
            use_alpha, constant_alpha, epsilon, learnable_epsilon, dtype
        )
        shape = (out_features, in_features)
        self.weight = _initial(key, shape, dtype, positive_init, weight_normalized)
        self.bias = jnp.zeros((out_features,), dtype) if use_bias else None
        self.spherical, self.weight_normalized = bool(spherical), bool(weight_normalized)
        self.distance_floor = float(distance_floor)
        self.drop_rate, self.inference = check_rate(drop_rate, "drop_rate"), bool(inference)

    def __call__(
        self, x: Array, *, key: Array | None = None, inference: bool | None = None
    ) -> Array:
        """``x (in_features,)`` -> ``(out_features,)``; ``key`` draws DropConnect,
        ``inference`` (default: the field) turns it off."""
        x = jnp.asarray(x)
        self._check_input(x, (self.in_features,), "(in_features,)")
        x, weight, bias = self._promoted(x, self._weight(key, inference))
        return nmn_array.yat(
            x, weight, bias, spherical=self.spherical, weight_normalized=self.weight_normalized,
            distance_floor=self.distance_floor, **self._scalars(),
        )  # fmt: skip


YatDense = YatNMN


def _conv_padding(padding: Any, nd: int, layer: str, strings: tuple[str, ...]) -> Any:
    """A convolution ``padding`` checked and kept hashable: one of ``strings`` (upper case),
    or ``nd`` (low, high) pairs (or ints, for the transposed convolution)."""
    if isinstance(padding, str):
        if padding.upper() not in strings:
            raise ValueError(
                f"{layer}: padding must be one of {strings}, an int, {nd} ints or {nd} "
                f"(low, high) pairs, got {padding!r}"
            )
        return padding.upper()
    if isinstance(padding, int) and not isinstance(padding, bool):
        return padding
    try:
        return tuple(p if isinstance(p, int) else tuple(p) for p in padding)
    except TypeError:
        raise ValueError(
            f"{layer}: padding must be a str, an int or a sequence, got {padding!r}"
        ) from None


class _YatConv(_Dropped):
    """What the direct and the transposed convolutions share."""

    num_spatial_dims: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: Any = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    weight_normalized: bool = eqx.field(static=True)

    def _setup(
        self,
        args: dict[str, Any],
        nd: int,
        weight_shape: Any,
        key: Array,
    ) -> None:
        """Check and keep the shared arguments ``args``, draw the weight of
        ``weight_shape(kernel_size)``."""
        layer = type(self).__name__
        self.num_spatial_dims = nd
        self.in_channels = _positive_int(args["in_channels"], "in_channels", layer)
        self.out_channels = _positive_int(args["out_channels"], "out_channels", layer)
        self.groups = _positive_int(args["groups"], "groups", layer)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{layer}: in_channels ({self.in_channels}) and out_channels "
                f"({self.out_channels}) must be multiples of groups ({self.groups})"
            )
        self.kernel_size = ntuple(args["kernel_size"], nd, "kernel_size")
        self.stride = ntuple(args["stride"], nd, "stride")
        self.dilation = ntuple(args["dilation"], nd, "dilation")
        for name in ("kernel_size", "stride", "dilation"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{layer}: {name} must be positive, got {args[name]!r}")
        dtype = _dtype(args["dtype"])
        self.alpha, self.constant_alpha, self.epsilon, self.epsilon_param = _scalars(
            args["use_alpha"], args["constant_alpha"], args["epsilon"],
            args["learnable_epsilon"], dtype,
        )  # fmt: skip
        shape = weight_shape(self.kernel_size)
        normalized = bool(args["weight_normalized"])
        self.weight = _initial(key, shape, dtype, args["positive_init"], normalized)
        self.bias = jnp.zeros((self.out_channels,), dtype) if args["use_bias"] else None
        self.weight_normalized = normalized
        self.drop_rate = check_rate(args["drop_rate"], "drop_rate")
        self.inference = bool(args["inference"])

    def _input(self, x: Array) -> None:
        if x.ndim != self.num_spatial_dims + 1 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} takes one unbatched example of shape (in_channels="
                f"{self.in_channels}, {', '.join(['...'] * self.num_spatial_dims)}), got an "
                f"input of shape {tuple(x.shape)}; batch it with jax.vmap"
            )


class _YatConvNd(_YatConv):
    """N-D yat convolution, channels first (``eqx.nn.Conv``'s layout)."""

    padding_mode: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[Any] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Dtype | None = None,
        *,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        weight_normalized: bool = False,
        positive_init: bool = False,
        drop_rate: float = 0.0,
        inference: bool = False,
        key: Array,
    ) -> None:
        nd, layer = self._nd, type(self).__name__
        if not isinstance(padding_mode, str) or padding_mode.upper() not in _PADDING_MODES:
            raise ValueError(
                f"{layer}: padding_mode must be one of {tuple(_PADDING_MODES)}, got "
                f"{padding_mode!r}"
            )
        self.padding_mode = padding_mode.upper()
        self.padding = _conv_padding(padding, nd, layer, ("VALID", "SAME", "SAME_LOWER", "CAUSAL"))
        self._setup(locals(), nd, lambda k: (out_channels, in_channels // max(groups, 1), *k), key)

    def __call__(
        self, x: Array, *, key: Array | None = None, inference: bool | None = None
    ) -> Array:
        """``x (in_channels, *spatial)`` -> ``(out_channels, *out)``; ``key`` draws
        DropConnect, ``inference`` (default: the field) turns it off."""
        x = jnp.asarray(x)
        self._input(x)
        x, weight, bias = self._promoted(x, self._weight(key, inference))
        padding = self.padding
        if isinstance(padding, str):  # XLA's rules, 'SAME_LOWER' and 'CAUSAL' included
            padding, _ = lax_conv_padding(
                padding, self.kernel_size, self.dilation, self.stride, x.shape[1:]
            )
        y = nmn_array.yat_conv(
            x[None], weight, bias, stride=self.stride, padding=padding, dilation=self.dilation,
            groups=self.groups, padding_mode=_PADDING_MODES[self.padding_mode],
            weight_normalized=self.weight_normalized, **self._scalars(),
        )  # fmt: skip
        return y[0]


class YatConv1D(_YatConvNd):
    """1-D yat convolution ``alpha * (<patch, w_o> + b_o)^2 / (|patch - w_o|^2 +
    epsilon)`` of one ``(in_channels, length)`` example, in Equinox's conventions
    (``eqx.nn.Conv1d``'s arguments and ``weight (out_channels, in_channels / groups, *k)``
    layout).

    ``padding``: an int, one int or one (low, high) pair per dimension, 'VALID', 'SAME',
    'SAME_LOWER' or 'CAUSAL' (1-D); ``padding_mode``: 'ZEROS', 'REFLECT', 'REPLICATE',
    'CIRCULAR'. Fields: ``weight``, ``bias (out_channels,)``, ``alpha (1,)``,
    ``epsilon_param (1,)``. The other keyword arguments: the module docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> conv = YatConv1D(2, 3, 3, padding="SAME", key=jax.random.key(0))
    >>> conv(jnp.ones((2, 8))).shape
    (3, 8)
    """

    _nd = 1


class YatConv2D(_YatConvNd):
    """2-D :class:`YatConv1D`: one ``(in_channels, height, width)`` example.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> conv = YatConv2D(3, 4, (3, 3), padding=1, key=jax.random.key(0))
    >>> jax.vmap(conv)(jnp.ones((2, 3, 8, 8))).shape
    (2, 4, 8, 8)
    """

    _nd = 2


class YatConv3D(_YatConvNd):
    """3-D :class:`YatConv1D`: one ``(in_channels, depth, height, width)`` example.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> YatConv3D(1, 2, 2, key=jax.random.key(0))(jnp.ones((1, 4, 4, 4))).shape
    (2, 3, 3, 3)
    """

    _nd = 3


class _YatConvTransposeNd(_YatConv):
    """N-D yat transposed convolution, channels first."""

    output_padding: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        output_padding: int | Sequence[int] = 0,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        *,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        weight_normalized: bool = False,
        positive_init: bool = False,
        drop_rate: float = 0.0,
        inference: bool = False,
        key: Array,
    ) -> None:
        nd, layer = self._nd, type(self).__name__
        self.padding = _conv_padding(padding, nd, layer, ("VALID", "SAME"))
        self.output_padding = ntuple(output_padding, nd, "output_padding")
        self._setup(locals(), nd, lambda k: (in_channels, out_channels // max(groups, 1), *k), key)
        for s, d, o in zip(self.stride, self.dilation, self.output_padding, strict=True):
            if not 0 <= o < max(s, d):
                raise ValueError(
                    f"{layer}: output_padding must be in [0, max(stride, dilation)) per "
                    f"dimension, got output_padding={self.output_padding}, stride="
                    f"{self.stride}, dilation={self.dilation}"
                )

    def __call__(
        self, x: Array, *, key: Array | None = None, inference: bool | None = None
    ) -> Array:
        """``x (in_channels, *spatial)`` -> ``(out_channels, *out)``; ``key`` draws
        DropConnect, ``inference`` (default: the field) turns it off."""
        x = jnp.asarray(x)
        self._input(x)
        x, weight, bias = self._promoted(x, self._weight(key, inference))
        padding = self.padding.lower() if isinstance(self.padding, str) else self.padding
        y = nmn_array.yat_conv_transpose(
            x[None], weight, bias, stride=self.stride, padding=padding,
            output_padding=self.output_padding, dilation=self.dilation, groups=self.groups,
            weight_normalized=self.weight_normalized, **self._scalars(),
        )  # fmt: skip
        return y[0]


class YatConvTranspose1D(_YatConvTransposeNd):
    """1-D yat transposed convolution of one ``(in_channels, length)`` example, as
    :func:`nmn_array.yat_conv_transpose`.

    ``weight (in_channels, out_channels / groups, *k)``: the function's (PyTorch's) layout,
    not ``eqx.nn.ConvTranspose``'s ``(out, in, *k)`` with its flipped-kernel semantics, so
    one weight means the same transposed convolution in every framework. ``padding``: an int
    ``p`` (output ``(L - 1) * stride - 2p + dilation * (k - 1) + output_padding + 1``), one
    per dimension, or 'VALID' / 'SAME' (``jax.lax.conv_transpose``'s sizes);
    ``output_padding`` below ``max(stride, dilation)``. ``|w_o|^2`` counts all taps
    (Decision 9). Other arguments: :class:`YatConv1D`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> conv = YatConvTranspose1D(2, 3, 4, stride=2, padding=1, key=jax.random.key(0))
    >>> conv(jnp.ones((2, 5))).shape
    (3, 10)
    """

    _nd = 1


class YatConvTranspose2D(_YatConvTransposeNd):
    """2-D :class:`YatConvTranspose1D`: one ``(in_channels, height, width)`` example.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> conv = YatConvTranspose2D(3, 4, 4, stride=2, padding="SAME", key=jax.random.key(0))
    >>> conv(jnp.ones((3, 4, 4))).shape
    (4, 8, 8)
    """

    _nd = 2


class YatConvTranspose3D(_YatConvTransposeNd):
    """3-D :class:`YatConvTranspose1D`: one ``(in_channels, depth, height, width)`` example.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> YatConvTranspose3D(1, 2, 2, key=jax.random.key(0))(jnp.ones((1, 3, 3, 3))).shape
    (2, 4, 4, 4)
    """

    _nd = 3


class YatEmbed(_Yat):
    """Embedding table with a yat ``attend``, in ``eqx.nn.Embedding``'s conventions.

    ``__call__`` takes one integer index (shape ``()``) and returns its row ``(embedding_size,)``;
    ``attend(query (embedding_size,))`` is ``alpha * (q.e_v)^2 / (|q - e_v|^2 + epsilon)`` for
    every row ``v``: ``(num_embeddings,)`` (``spherical``: of unit-length vectors). Fields:
    ``weight (num_embeddings, embedding_size)`` (standard normal unless ``weight`` is given;
    ``weight_normalized``: its rows normalised once), ``alpha (1,)``, ``epsilon_param (1,)``.
    Other arguments: the module docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> emb = YatEmbed(10, 4, key=jax.random.key(0))
    >>> emb(jnp.array(3)).shape, jax.vmap(emb.attend)(jnp.ones((2, 4))).shape
    ((4,), (2, 10))
    """

    weight: Array
    num_embeddings: int = eqx.field(static=True)
    embedding_size: int = eqx.field(static=True)
    spherical: bool = eqx.field(static=True)

    def __init__(
        self,
        num_embeddings: int | None = None,
        embedding_size: int | None = None,
        weight: Array | None = None,
        dtype: Dtype | None = None,
        *,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        weight_normalized: bool = False,
        key: Array | None = None,
    ) -> None:
        layer = type(self).__name__
        dtype = _dtype(dtype if weight is None or dtype is not None else weight.dtype)
        if weight is None:
            if num_embeddings is None or embedding_size is None or key is None:
                raise ValueError(
                    f"{layer} needs num_embeddings, embedding_size and key, or a weight "
                    f"(got num_embeddings={num_embeddings!r}, embedding_size="
                    f"{embedding_size!r}, key={'None' if key is None else 'given'})"
                )
            shape = (
                _positive_int(num_embeddings, "num_embeddings", layer),
                _positive_int(embedding_size, "embedding_size", layer),
            )
            weight = jax.random.normal(key, shape, dtype)
        else:
            weight = jnp.asarray(weight, dtype)
            given = (num_embeddings, embedding_size)
            if weight.ndim != 2 or any(g not in (None, s) for g, s in zip(given, weight.shape)):
                raise ValueError(
                    f"{layer}: weight must have shape (num_embeddings, embedding_size) = "
                    f"{given}, got {tuple(weight.shape)}"
                )
        self.weight = unit_normalized(weight, 0) if weight_normalized else weight
        self.num_embeddings, self.embedding_size = (int(s) for s in weight.shape)
        self.alpha, self.constant_alpha, self.epsilon, self.epsilon_param = _scalars(
            use_alpha, constant_alpha, epsilon, learnable_epsilon, dtype
        )
        self.spherical = bool(spherical)

    def __call__(self, x: Array, *, key: Array | None = None) -> Array:
        """The row ``(embedding_size,)`` of the integer index ``x`` (shape ``()``); ``key``
        is ignored (Equinox's signature)."""
        del key
        x = jnp.asarray(x)
        if x.ndim != 0 or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"{type(self).__name__} takes one integer index of shape (), got an input of "
                f"shape {tuple(x.shape)} and dtype {x.dtype}; batch it with jax.vmap"
            )
        return self.weight[x]

    def attend(self, query: Array) -> Array:
        """Yat similarity of ``query (embedding_size,)`` with every row: ``(num_embeddings,)``."""
        query = jnp.asarray(query)
        self._check_input(query, (self.embedding_size,), "(embedding_size,)")
        dtype = jnp.result_type(query, self.weight)
        return nmn_array.yat(
            query.astype(dtype), self.weight.astype(dtype), None, spherical=self.spherical,
            **self._scalars(),
        )  # fmt: skip


# --------------------------------------------------------------------------------------
# Attention: one (L, E) sequence per call
# --------------------------------------------------------------------------------------
class _YatAttention(_Yat):
    """``eqx.nn.Linear`` projections, head split, one :func:`nmn_array.yat_attention` call
    (:func:`nmn_array.yat_attention_weights` when dropout needs the weights), head merge,
    the output projection."""

    q_proj: Any
    k_proj: Any
    v_proj: Any
    embed_dim: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    normalize_qk: bool = eqx.field(static=True)
    spherical: bool = eqx.field(static=True)
    normalization: str = eqx.field(static=True)
    power: float = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    # not static: eqx.nn.inference_mode flips it, as on eqx.nn.Dropout
    inference: bool

    def _setup(self, args: dict[str, Any], key: Array) -> tuple[Any, Any]:
        """Check and keep ``args``; returns the output projection's key and a Linear
        factory (``eqx.nn.Linear(E, E)``: its layout and initialiser)."""
        layer = type(self).__name__
        self.embed_dim = _positive_int(args["embed_dim"], "embed_dim", layer)
        self.num_heads = _positive_int(args["num_heads"], "num_heads", layer)
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"{layer}: embed_dim ({self.embed_dim}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        self.head_dim = self.embed_dim // self.num_heads
        normalization = args.get("normalization", "softmax")
        if normalization not in ("softmax", "softermax", "l1"):
            raise ValueError(
                f"{layer}: normalization must be 'softmax', 'softermax' or 'l1', got "
                f"{normalization!r}"
            )
        self.normalization, self.power = normalization, float(args.get("power", 1.0))
        self.normalize_qk = bool(args["normalize_qk"])
        self.spherical = bool(args.get("spherical", False))
        self.dropout_rate = check_rate(args["dropout_rate"], "dropout_rate")
        self.inference = bool(args["inference"])
        dtype = _dtype(args["dtype"])
        self.alpha, self.constant_alpha, self.epsilon, self.epsilon_param = _scalars(
            args["use_alpha"], args["constant_alpha"], args["epsilon"],
            args["learnable_epsilon"], dtype,
        )  # fmt: skip
        qk, kk, vk, ok = jax.random.split(key, 4)

        def linear(k: Array) -> Any:
            return eqx.nn.Linear(
                self.embed_dim, self.embed_dim, use_bias=args["use_bias"], dtype=dtype, key=k
            )

        self.q_proj, self.k_proj, self.v_proj = linear(qk), linear(kk), linear(vk)
        return ok, linear

    def _heads(self, t: Array, proj: Any) -> Array:
        """``(L, E)`` -> projected ``(H, L, d)``."""
        y = jax.vmap(proj)(t)
        return jnp.swapaxes(y.reshape(t.shape[0], self.num_heads, self.head_dim), 0, 1)

    def _attend(
        self,
        query: Array,
        key_: Array | None,
        value: Array | None,
        mask: Array | None,
        key: Array | None,
        inference: bool | None,
        out_proj: Any,
        rotate: Any = None,
    ) -> Array:
        """Self-attention of ``query (Lq, E)`` (or attention over ``key_``, ``value (Lk,
        E)``) under a boolean ``mask`` broadcastable to ``(H, Lq, Lk)`` (True = attend);
        queries that see no key in any head give zeros (nmn's rule)."""
        layer = type(self).__name__
        query = jnp.asarray(query)
        key_ = query if key_ is None else jnp.asarray(key_)
        value = key_ if value is None else jnp.asarray(value)
        for name, t in (("query", query), ("key_", key_), ("value", value)):
            if t.ndim != 2 or t.shape[-1] != self.embed_dim:
                raise ValueError(
                    f"{layer} takes one unbatched sequence: {name} of shape (length, "
                    f"embed_dim={self.embed_dim}), got {tuple(t.shape)}; batch it with jax.vmap"
                )
        if key_.shape[0] != value.shape[0]:
            raise ValueError(
                f"{layer}: key_ and value must have one length, got {tuple(key_.shape)} and "
                f"{tuple(value.shape)}"
            )
        lq, lk = query.shape[0], key_.shape[0]
        q, k, v = (self._heads(t, p) for t, p in zip((query, key_, value), (self.q_proj, self.k_proj, self.v_proj), strict=True))  # fmt: skip
        if self.normalize_qk:
            q, k = nmn_array.attention.unit_heads(q), nmn_array.attention.unit_heads(k)
        if rotate is not None:
            q, k = rotate(q), rotate(k)
        if mask is not None:
            try:
                mask = jnp.broadcast_to(mask, (self.num_heads, lq, lk))
            except ValueError:
                raise ValueError(
                    f"{layer}: mask must broadcast to (num_heads, Lq, Lk) = "
                    f"{(self.num_heads, lq, lk)}, got {tuple(mask.shape)}"
                ) from None
            mask = mask if mask.dtype == jnp.bool_ else mask != 0
        inference = self.inference if inference is None else inference
        options = {
            "mask": mask, "spherical": self.spherical, "normalization": self.normalization,
            "power": self.power, **self._scalars(),
        }  # fmt: skip
        if inference or self.dropout_rate == 0.0:
            out = nmn_array.yat_attention(q, k, v, **options)
        else:
            if key is None:
                raise ValueError(
                    f"{layer}(dropout_rate={self.dropout_rate}) needs a key for dropout when "
                    "not in inference mode: call it with key=..., or with inference=True "
                    "(eqx.nn.inference_mode(model))"
                )
            # dropout acts on the weights themselves: the materialised path
            weights = nmn_array.yat_attention_weights(q, k, **options)
            keep_prob = 1.0 - self.dropout_rate
            keep = jax.random.bernoulli(key, keep_prob, weights.shape)
            weights = jnp.where(keep, weights / keep_prob, jnp.zeros((), weights.dtype))
            out = weights @ v.astype(weights.dtype)
        out = jnp.swapaxes(out, 0, 1).reshape(lq, self.embed_dim)
        if out_proj is not None:
            out = jax.vmap(out_proj)(out)
        return _flax.zero_keyless(out, mask, None, lk)


class MultiHeadYatAttention(_YatAttention):
    """Multi-head yat attention of one sequence, in ``eqx.nn.MultiheadAttention``'s
    conventions: ``query (Lq, embed_dim)`` (``key_``, ``value (Lk, embed_dim)``, default the
    query) -> ``(Lq, embed_dim)``; batch with ``jax.vmap``.

    Per head, the softmax over keys of ``alpha * (q.k)^2 / (|q - k|^2 + epsilon) /
    sqrt(head_dim)`` weights the values (:func:`nmn_array.yat_attention`); ``mask``
    boolean, broadcastable to ``(num_heads, Lq, Lk)``, True = attend; a query that sees no
    key in any head gives zeros. Fields: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``
    (``eqx.nn.Linear(embed_dim, embed_dim)``, ``use_bias``), ``alpha (1,)``,
    ``epsilon_param (1,)``. ``normalize_qk``: unit-length q and k per head;
    ``spherical``: the spherical score; ``dropout_rate``: dropout on the attention weights,
    drawn from the call's ``key`` unless ``inference`` (the call's argument, else the
    field). Other arguments: the module docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> attn = MultiHeadYatAttention(8, 2, key=jax.random.key(0))
    >>> attn(jnp.ones((5, 8))).shape, jax.vmap(attn)(jnp.ones((3, 5, 8))).shape
    ((5, 8), (3, 5, 8))
    """

    out_proj: Any

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        use_bias: bool = True,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        normalize_qk: bool = False,
        spherical: bool = False,
        use_out_proj: bool = True,
        dropout_rate: float = 0.0,
        inference: bool = False,
        dtype: Dtype | None = None,
        key: Array,
    ) -> None:
        out_key, linear = self._setup(locals(), key)
        self.out_proj = linear(out_key) if use_out_proj else None

    def __call__(
        self,
        query: Array,
        key_: Array | None = None,
        value: Array | None = None,
        mask: Array | None = None,
        *,
        key: Array | None = None,
        inference: bool | None = None,
    ) -> Array:
        """``(Lq, embed_dim)`` -> ``(Lq, embed_dim)``; ``key`` draws dropout."""
        return self._attend(query, key_, value, mask, key, inference, self.out_proj)


class RotaryYatAttention(_YatAttention):
    """:class:`MultiHeadYatAttention` with RoPE on q and k (:func:`nmn_array.rotary_embedding`
    at positions ``0..L-1``, or ``positions`` of the call), of one ``(L, embed_dim)``
    sequence; batch with ``jax.vmap``.

    ``head_dim`` must be even; ``max_seq_len`` bounds the length of a sequence rotated at the
    default positions; ``theta``: RoPE's base;
    ``normalization``: "softmax", "softermax" (with ``power``) or "l1". Fields: ``q_proj``,
    ``k_proj``, ``v_proj``, ``o_proj`` (``None`` without ``use_out_proj``), ``alpha``,
    ``epsilon_param``. Other arguments: :class:`MultiHeadYatAttention`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> attn = RotaryYatAttention(8, 2, max_seq_len=16, key=jax.random.key(0))
    >>> jax.vmap(attn)(jnp.ones((2, 5, 8))).shape
    (2, 5, 8)
    """

    o_proj: Any
    max_seq_len: int = eqx.field(static=True)
    theta: float = eqx.field(static=True)

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        max_seq_len: int = 2048,
        *,
        theta: float = 10000.0,
        use_bias: bool = False,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        normalize_qk: bool = False,
        use_out_proj: bool = True,
        normalization: str = "softmax",
        power: float = 1.0,
        dropout_rate: float = 0.0,
        inference: bool = False,
        dtype: Dtype | None = None,
        key: Array,
    ) -> None:
        out_key, linear = self._setup(locals(), key)
        if self.head_dim % 2:
            raise ValueError(
                f"{type(self).__name__}: head_dim = embed_dim / num_heads = {self.head_dim} "
                "must be even for RoPE"
            )
        self.max_seq_len = _positive_int(max_seq_len, "max_seq_len", type(self).__name__)
        self.theta = float(theta)
        self.o_proj = linear(out_key) if use_out_proj else None

    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        *,
        positions: Array | None = None,
        key: Array | None = None,
        inference: bool | None = None,
    ) -> Array:
        """``x (L, embed_dim)`` -> ``(L, embed_dim)``; RoPE at ``positions`` (integers
        ``(L,)``, default ``0..L-1``); ``key`` draws dropout."""
        x = jnp.asarray(x)
        if x.ndim == 2 and positions is None and x.shape[0] > self.max_seq_len:
            raise ValueError(
                f"{type(self).__name__}: sequence length {x.shape[0]} exceeds max_seq_len="
                f"{self.max_seq_len}"
            )
        if positions is None and x.ndim == 2:
            positions = jnp.arange(x.shape[0], dtype=jnp.int32)

        def rotate(t: Array) -> Array:
            return nmn_array.rotary_embedding(t, positions, theta=self.theta)

        return self._attend(x, None, None, mask, key, inference, self.o_proj, rotate)
