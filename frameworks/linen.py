"""Flax Linen modules over the pure functions of ``nmn_array``, as ``nmn.linen`` 0.3.5.

The same class names (and lower-case conv aliases), dataclass fields in the same order,
parameter names, shapes, layouts and initialisers, so a ``params`` tree of an ``nmn.linen``
model applies to the same model built from these classes. Each ``__call__`` makes one
``nmn_array`` call on the raw arrays (rotary attention adds RoPE for q and k); the
differences from ``nmn`` are listed in ``docs/migration/linen.md``. The fields the layers
share mean the same in each:

- ``use_bias``, ``constant_bias``, ``bias_init``: a learnable bias (zeros) or a constant.
- ``use_alpha``, ``constant_alpha``, ``alpha_init``: a learnable alpha (ones, shape (1,))
  or a constant (``True`` = sqrt(2)); attention scales the scores before normalisation.
- ``epsilon``, ``learnable_epsilon``: the positive epsilon, or a learnable
  ``epsilon_param`` holding its softplus inverse (Decision 11).
- ``kernel_init``; ``dtype``, ``param_dtype``: compute and parameter dtypes;
  ``precision``: applied as ``jax.default_matmul_precision``.
- ``window``, ``block_size`` (attention; not in nmn): local attention
  ``(left, right)`` and the tiling, as :func:`nmn_array.yat_attention` (the materialised
  path when dropout needs the weights).
- ``causal`` (attention, not in nmn.linen): key ``j`` visible to query ``i`` iff
  ``j <= i + Lk - Lq``, combined with any ``mask`` (decoding is causal anyway).
- Linear-time attention (attention, the last fields; nmn.nnx's Rotary names and
  defaults): ``use_performer``, ``performer_kind`` ("slay", "maclaurin", "radial"),
  ``num_anchor_features``, ``num_prf_features``, ``num_quad_nodes`` (SLAY),
  ``performer_num_features``, ``performer_nmax`` (MAY), ``performer_sketch_m``,
  ``performer_num_radial``, ``performer_radial_dim`` (RAY), ``performer_bias`` (MAY, RAY),
  ``performer_normalize`` (SLAY: q, k first scaled to ``v / sqrt(|v|^2 + epsilon)``, as
  nmn): :func:`nmn_array.linear_attention.performer_attention` of the heads after the
  projections, ``normalize_qk`` and RoPE, its output times alpha (learnable or constant,
  as nmn's NNX), dropout on that output. ``mask`` must be a key-padding mask
  ``(..., H, 1, Lk)``; ``decode`` and ``window`` are refused. ``init`` draws the
  projection with NumPy, seeded by two words drawn from the ``"params"`` rng (in a
  ``jax.pure_callback``, so ``jax.jit(init)`` gives the same arrays), into the
  ``"performer"`` collection, ``perf_<key>`` (the keys of
  :mod:`nmn_array.frameworks.nnx`'s ``PerformerProjection`` variables); ``apply`` needs
  that collection, gradients of ``"params"`` leave it alone.

The functions take nmn.linen's ``q, k, v (*batch, length, heads, dim)``.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from nmn_array.frameworks import linen
>>> layer = linen.YatNMN(features=3)
>>> params = layer.init(jax.random.key(0), jnp.ones((2, 4)))
>>> layer.apply(params, jnp.ones((2, 4))).shape
(2, 3)
>>> q = jnp.ones((2, 5, 3, 4))  # (batch, length, heads, dim)
>>> linen.yat_attention_weights(q, q).shape, linen.yat_attention(q, q, q).shape
((2, 3, 5, 5), (2, 5, 3, 4))
>>> linen.yat_attention_normalized(q, q, q).shape
(2, 5, 3, 4)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence  # noqa: F401 (conv field annotations name it)
from typing import TYPE_CHECKING, Any

from nmn_array.frameworks import _attention_api as _api
from nmn_array.frameworks import _flax, _performer
from nmn_array.frameworks._common import (
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

from nmn_array import soft_tanh, softer_sigmoid
from nmn_array._attention_blocks import merge_windows

jax = require("jax")
# Any: the module is imported at run time and its classes are our base classes; mypy
# takes a base class from an Any-typed name, not from a plain module object.
nn: Any = require("flax.linen")
jnp = jax.numpy
lax = jax.lax
_promote_dtype = require("flax.linen.dtypes").promote_dtype

__all__ = [
    "DEFAULT_CONSTANT_ALPHA",
    "MultiHeadAttention",
    "MultiHeadYatAttention",
    "RotaryYatAttention",
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
    "normalize_qk",
    "soft_tanh",
    "softer_sigmoid",
    "softermax",
    "yat_attention",
    "yat_attention_normalized",
    "yat_attention_weights",
]

Array = Any

#: ``constant_alpha=True``.
DEFAULT_CONSTANT_ALPHA = math.sqrt(2.0)
#: The attention fields of linear-time attention and ``causal`` (nmn's names, defaults).
_PERFORMER_FIELDS = ("use_performer", "performer_kind", *_performer.COUNTS, "causal")
_PERFORMER_FIELDS += ("performer_normalize",)


def _ones(key: Any, shape: tuple[int, ...], dtype: Any) -> Array:
    return jnp.ones(shape, dtype)


def _promote(arrays: tuple, dtype: Any = None, inexact: bool = True) -> tuple:
    """flax's dtype promotion of ``arrays`` (``None`` entries pass), as NNX takes it."""
    return _promote_dtype(*arrays, dtype=dtype, inexact=inexact)


def _fp32_init(initializer: Callable[..., Array]) -> Callable[..., Array]:
    """Run an initialiser in float32 for float16/bfloat16 parameters (JAX's QR, used by the
    orthogonal initialiser, has no float16 kernel on CPU)."""

    def init(key: Any, shape: tuple[int, ...], dtype: Any) -> Array:
        if dtype in (jnp.float16, jnp.bfloat16):
            return initializer(key, shape, jnp.float32).astype(dtype)
        return initializer(key, shape, dtype)

    return init


# For mypy the mixins are flax Modules (they are only combined with one, whose dataclass
# fields and methods they use); at run time they stay plain classes.
_ModuleBase: Any = nn.Module if TYPE_CHECKING else object


class _YatMixin(_ModuleBase):
    """Parameters shared by the layers; the rules live in ``_common``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_epsilon(self.epsilon)
        if getattr(self, "learnable_epsilon", False):
            _flax.raw_epsilon(self.epsilon, self.param_dtype)  # refuse bad values now

    def _alpha(self, constant_alpha: Any = None) -> Any:
        cfg = alpha_config(self.use_alpha, constant_alpha)
        if cfg.mode == "learnable":
            return self.param("alpha", self.alpha_init, (1,), self.param_dtype)
        return cfg.value  # a constant or None

    def _bias(self) -> Array | None:
        cfg = bias_config(self.use_bias, self.constant_bias)
        if cfg.mode == "learnable":
            return self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return (
            None if cfg.value is None else jnp.full((self.features,), cfg.value, self.param_dtype)
        )

    def _epsilon(self) -> Any:
        if not self.learnable_epsilon:
            return self.epsilon
        raw = _flax.raw_epsilon(self.epsilon, self.param_dtype)
        return _flax.softplus_epsilon(self.param("epsilon_param", lambda _: raw))

    def _yat(self, x: Array, table: Array, bias: Array | None, alpha: Any, epsilon: Any) -> Array:
        """:func:`nmn_array.yat` with the layer's ``spherical``, ``weight_normalized`` and
        ``precision``."""
        options = {"spherical": self.spherical, "weight_normalized": self.weight_normalized}
        precision = getattr(self, "precision", None)
        return _flax.yat(x, table, bias, precision, alpha=alpha, epsilon=epsilon, **options)


class YatNMN(_YatMixin, nn.Module):
    """Yat dense layer ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``, as
    ``nmn.linen.YatNMN`` 0.3.5.

    ``features`` neurons; parameters ``kernel (features, in)`` (one neuron per row, xavier
    normal), ``bias``, ``alpha``, ``epsilon_param``. ``positive_init`` takes ``abs()`` of
    the kernel in every call and ``lazy`` / ``freeze_kernel`` stop its gradient, as nmn
    Linen does; ``spherical``, ``weight_normalized`` (unit-length rows) as
    :func:`nmn_array.yat`; ``dot_general``, ``dot_general_cls``: only ``None``;
    ``return_weights``: return ``(y, kernel)``. The other fields: see the module docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from nmn_array.frameworks.linen import YatNMN
    >>> m = YatNMN(features=2, constant_alpha=True)
    >>> sorted(m.init(jax.random.key(0), jnp.ones((3, 4)))["params"])
    ['bias', 'kernel']
    """

    features: int
    use_bias: bool = True
    constant_bias: float | None = None
    use_alpha: bool = True
    constant_alpha: Any = None
    positive_init: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.xavier_normal()
    bias_init: Any = nn.initializers.zeros_init()
    alpha_init: Any = _ones
    epsilon: float = 1e-5
    learnable_epsilon: bool = False
    spherical: bool = False
    weight_normalized: bool = False
    lazy: bool = False
    freeze_kernel: bool = False
    dot_general: Any = None
    dot_general_cls: Any = None
    return_weights: bool = False

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs (..., in)`` -> ``(..., features)`` (or ``(y, kernel)``)."""
        reject_nondefault(
            "YatNMN",
            "the product is computed by nmn_array.yat",
            dot_general=(self.dot_general, None),
            dot_general_cls=(self.dot_general_cls, None),
        )
        shape = (self.features, jnp.shape(inputs)[-1])
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        if self.lazy or self.freeze_kernel:
            kernel = jax.lax.stop_gradient(kernel)
        if self.positive_init:
            kernel = jnp.abs(kernel)
        alpha, bias, epsilon = self._alpha(self.constant_alpha), self._bias(), self._epsilon()
        x, kernel, bias = _promote((inputs, kernel, bias), dtype=self.dtype)
        y = self._yat(x, kernel, bias, alpha, epsilon)
        return (y, kernel) if self.return_weights else y


YatDense = YatNMN


class _ConvCall(_YatMixin, nn.Module):
    """The call of the direct and the transposed convolution (channels last)."""

    transposed = False

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs (batch, *spatial, in)`` -> ``(batch, *out, features)``."""
        channels, groups = inputs.shape[-1], getattr(self, "feature_group_count", 1)
        if groups <= 0 or channels % groups or self.features % groups:
            raise ValueError(
                f"Input channels ({channels}) and features ({self.features}) must be "
                f"divisible by feature_group_count ({groups})."
            )
        shape = tuple(self.kernel_size) + (channels // groups, self.features)
        kernel = self.param("kernel", _fp32_init(self.kernel_init), shape, self.param_dtype)
        x, kernel, bias = _promote((inputs, kernel, self._bias()), dtype=self.dtype)
        return _flax.conv(self, x, kernel, bias, alpha=self._alpha(), epsilon=self._epsilon())


#: The conv fields after ``features``, ``kernel_size``, in nmn's order: (annotation, default;
#: ``None`` for sizes: ones). The transposed conv has no dilations and groups.
_CONV_FIELDS: dict[str, tuple[str, Any]] = {
    "strides": ("Sequence[int]", None),
    "padding": ("Any", "VALID"),
    "input_dilation": ("Sequence[int]", None),
    "kernel_dilation": ("Sequence[int]", None),
    "feature_group_count": ("int", 1),
    "use_bias": ("bool", True),
    "constant_bias": ("float | None", None),
    "use_alpha": ("bool", True),
    "dtype": ("Any", None),
    "param_dtype": ("Any", jnp.float32),
    "kernel_init": ("Any", nn.initializers.orthogonal()),
    "bias_init": ("Any", nn.initializers.zeros_init()),
    "alpha_init": ("Any", _ones),
    "epsilon": ("float", 1e-5),
    "learnable_epsilon": ("bool", False),
}
_DIRECT_ONLY = ("input_dilation", "kernel_dilation", "feature_group_count")


_CONV_DOC = """{nd}-D yat {what} (channels last), as ``nmn.linen.{name}`` 0.3.5.

{about} Parameters: ``kernel (*k, {channels}, features)`` (orthogonal), ``bias`` (zeros),
``alpha`` (ones), ``epsilon_param``; the fields as described in the module docstring.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from nmn_array.frameworks.linen import {name}
>>> m = {name}(features=4, kernel_size={k}, strides={s})
>>> x = jnp.ones((1,) + (6,) * {nd} + (2,))
>>> m.apply(m.init(jax.random.key(0), x), x).shape
{shape}
"""
_ABOUT = (
    "``y = alpha * (<patch, w_o> + b_o)^2 / (|patch - w_o|^2 + epsilon)``. ``padding``: "
    "'VALID' (default), 'SAME', 'SAME_LOWER', (low, high) pairs, and also NNX's 'CIRCULAR', "
    "'REFLECT', 'CAUSAL' (1-D). ``input_dilation`` must be 1 (NotImplementedError otherwise).",
    "Output sizes as ``jax.lax.conv_transpose`` ('VALID': ``L * s + max(k - s, 0)``, 'SAME': "
    "``L * s``); ``|w_o|^2`` counts all taps (Decision 9).",
)


def _conv_class(nd: int, transposed: bool) -> type:
    name = f"YatConv{'Transpose' if transposed else ''}{nd}D"
    doc = _CONV_DOC.format(
        nd=nd,
        name=name,
        what="transposed convolution" if transposed else "convolution",
        about=_ABOUT[transposed],
        channels="in" if transposed else "in/groups",
        k=(3,) * nd,
        s=(2,) * nd,
        shape=(1,) + (13 if transposed else 2,) * nd + (4,),
    )
    fields = {k: v for k, v in _CONV_FIELDS.items() if not (transposed and k in _DIRECT_ONLY)}
    annotations = {"features": "int", "kernel_size": "Sequence[int]"}
    namespace: dict[str, Any] = {
        "__annotations__": {**annotations, **{k: kind for k, (kind, _) in fields.items()}},
        **{k: (1,) * nd if kind == "Sequence[int]" else v for k, (kind, v) in fields.items()},
        "transposed": transposed,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": doc,
    }
    return type(name, (_ConvCall,), namespace)


YatConv1D, YatConv2D, YatConv3D = (_conv_class(nd, False) for nd in (1, 2, 3))
YatConvTranspose1D, YatConvTranspose2D, YatConvTranspose3D = (
    _conv_class(nd, True) for nd in (1, 2, 3)
)
YatConv1d, YatConv2d, YatConv3d = YatConv1D, YatConv2D, YatConv3D
YatConvTranspose1d, YatConvTranspose2d, YatConvTranspose3d = (
    YatConvTranspose1D,
    YatConvTranspose2D,
    YatConvTranspose3D,
)


class YatEmbed(_YatMixin, nn.Module):
    """Embedding table with a yat ``attend``, as ``nmn.linen.YatEmbed`` 0.3.5.

    Parameters ``embedding (num_embeddings, features)`` (``embedding_init``: variance
    scaling, fan in) and, created by ``attend``, ``alpha``. ``attend(query)`` is
    ``alpha * (q.e_v)^2 / (|q - e_v|^2 + epsilon)`` per row (``spherical``: of unit-length
    vectors); ``weight_normalized`` normalises the rows in every call, as nmn Linen does.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from nmn_array.frameworks.linen import YatEmbed
    >>> m = YatEmbed(num_embeddings=10, features=4)
    >>> q = jnp.ones((3, 4))
    >>> m.apply(m.init(jax.random.key(0), q, method="attend"), q, method="attend").shape
    (3, 10)
    """

    num_embeddings: int = 1
    features: int = 1
    use_alpha: bool = True
    constant_alpha: Any = None
    epsilon: float = 1e-5
    spherical: bool = False
    weight_normalized: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    embedding_init: Any = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    alpha_init: Any = _ones

    def _table(self) -> Array:
        shape = (self.num_embeddings, self.features)
        return self.param("embedding", self.embedding_init, shape, self.param_dtype)

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """Rows of the table: ``(*inputs.shape, features)``."""
        table = self._table()
        if self.weight_normalized:
            table = unit_normalized(table, 0)
        (table,) = _promote((table,), dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(table, inputs.shape + (self.features,))
        return jnp.take(table, inputs, axis=0)

    @nn.compact
    def attend(self, query: Array) -> Array:
        """Yat similarity of ``query (..., features)`` with every row: ``(..., num_embeddings)``."""
        table = self._table()
        alpha = self._alpha(self.constant_alpha)
        query, table = _promote((query, table), dtype=self.dtype)
        return self._yat(query, table, None, alpha, self.epsilon)


class _AttentionMixin(_YatMixin):
    def _dense(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name=name,
        )

    def _attention(
        self,
        inputs: tuple[Array, Array, Array],
        names: tuple[str, str, str],
        features: int,
        mask: Array | None,
        deterministic: bool,
        decode: bool,
        rotary: Callable[[int, Any], Array] | None,
        output: Callable[[Array], Array],
        **options: Any,
    ) -> Array:
        """Project ``inputs`` (q, k, v) with the Dense layers ``names``, split the heads,
        rotate q and k at ``rotary(length, index)`` (``index``: the cache index when
        decoding, else None), with ``decode`` write k and v into the cache and attend to
        it, attend (``options``: epsilon, normalization, ...), merge the heads; the queries
        that see no key give zeros (``output`` is applied to the merged heads first)."""
        config = _performer.settings({name: getattr(self, name) for name in _PERFORMER_FIELDS})
        window, block_size = attention_window(self.window, self.block_size)
        _performer.refuse_conflicts(type(self).__name__, config, window=window)
        if decode and config.use:
            _performer.refuse_decode(type(self).__name__)
        q, k, v = (
            _flax.split_heads(self._dense(features, name)(t), self.num_heads, normalize)
            for t, name, normalize in zip(inputs, names, (self.normalize_qk,) * 2 + (False,))
        )
        alpha = self._alpha(self.constant_alpha)
        q, k, v = _promote((q, k, v), dtype=self.dtype)
        index = self._cache_index(q, k, v) if decode else None
        if rotary is not None:
            positions = rotary(q.shape[-3], index)
            q, k = (_flax.rotate(t, None, self.theta, positions) for t in (q, k))
        masked = mask is not None
        rate = check_rate(self.dropout_rate)
        rng = self.make_rng("dropout") if rate > 0.0 and not deterministic else None
        if config.use:
            # a key-padding mask (..., H, 1, Lk) as it is (the core refuses any other)
            projection = self._performer_projection(config, q.shape[-1])
            x = _flax.performer_attention(
                q, k, v, mask, config, projection, dropout_rng=rng, dropout_rate=rate,
                alpha=alpha, epsilon=options["epsilon"],
            )  # fmt: skip
            x = output(x.reshape(x.shape[:-2] + (features,)))
            return _flax.zero_keyless(x, mask, None, k.shape[-3])
        causal = config.causal and index is None  # decoding is causal through its mask
        if index is not None:
            k, v, visible = self._write_cache(k, v, index, window)
            mask = _flax.head_mask(mask, q, k)
            mask = visible if mask is None else restrict_mask(mask, visible)
            window = None  # its left side is in the decode mask; its right side: causal
        else:
            mask = _flax.head_mask(mask, q, k)
        options.update(window=window, block_size=block_size, causal=causal)
        x = _flax.attend(q, k, v, mask, dropout_rng=rng, dropout_rate=rate, alpha=alpha, **options)
        x = output(x.reshape(x.shape[:-2] + (features,)))
        # decoding without a mask: each query sees its own slot at least
        window = merge_windows(causal, window)
        return _flax.zero_keyless(x, mask if masked else None, window, k.shape[-3])

    def _performer_projection(self, config: Any, head_dim: int) -> dict[str, Array]:
        """The projection in the ``"performer"`` collection (``perf_<key>``): drawn by
        ``init`` (seeded from the ``"params"`` rng), read by ``apply``."""
        names = {key: f"perf_{key}" for key in config.keys}
        if not all(self.has_variable("performer", name) for name in names.values()):
            if not self.is_mutable_collection("performer"):
                raise ValueError(
                    f"{type(self).__name__}(use_performer=True) needs its 'performer' "
                    "collection: apply the variables that init returned (not only 'params')"
                )
            drawn = _flax.performer_projection(
                config, head_dim, self.make_rng("params"), self.epsilon, self.param_dtype
            )
            for key, name in names.items():
                self.put_variable("performer", name, drawn[key])
        return {key: self.get_variable("performer", name) for key, name in names.items()}

    def _cache_index(self, q: Array, k: Array, v: Array) -> Array | None:
        """The cache variables (made zeroed, index 0, by ``init`` with ``decode=True``,
        shaped as its keys and values ``(*batch, max_length, H, d)``) and, once they exist,
        the index where the new tokens go, after checking that they fit; None while
        initialising."""
        made = self.has_variable("cache", "cached_key")
        if not made and not self.is_initializing():
            raise ValueError(
                f"{type(self).__name__}: decode=True needs the 'cache' collection: create it "
                "with init(..., decode=True) on inputs of shape (*batch, max_length, "
                "features), then apply(..., decode=True, mutable=['cache'])"
            )
        if not made:
            self.put_variable("cache", "cached_key", jnp.zeros(k.shape, k.dtype))
            self.put_variable("cache", "cached_value", jnp.zeros(v.shape, v.dtype))
            self.put_variable("cache", "cache_index", jnp.array(0, dtype=jnp.int32))
            return None
        index = self.get_variable("cache", "cache_index")
        cached = self.get_variable("cache", "cached_key")
        *batch, max_length, heads, depth = cached.shape
        length = q.shape[-3]
        expected = (*batch, length, heads, depth)
        if q.shape != expected or k.shape != expected:
            raise ValueError(
                f"decode=True: the new tokens give queries of shape {q.shape} and keys of "
                f"shape {k.shape}; the cache (cached_key of shape {cached.shape}) needs "
                f"{expected}: the batch of init and as many keys as queries"
            )
        full = functools.partial(_check_cache_room, length=length, max_length=max_length)
        if isinstance(index, jax.core.Tracer):
            # fail before the write, eagerly or (through a callback) under jax.jit
            jax.debug.callback(full, index, ordered=True)
        else:
            full(index)
        return index

    def _write_cache(self, k: Array, v: Array, index: Array, window: Any) -> tuple:
        """Write ``k``, ``v`` ``(*batch, L, H, d)`` at slot ``index`` and advance the index;
        returns the cached keys and values and the slots each query sees, ``(*batch, 1, L,
        max_length)``."""
        zero = jnp.zeros((), index.dtype)  # one integer type for every start index
        start = (zero,) * (k.ndim - 3) + (index, zero, zero)
        cached = []
        for name, new in (("cached_key", k), ("cached_value", v)):
            old = self.get_variable("cache", name)
            cached.append(lax.dynamic_update_slice(old, new.astype(old.dtype), start))
            self.put_variable("cache", name, cached[-1])
        length, max_length = k.shape[-3], cached[0].shape[-3]
        self.put_variable("cache", "cache_index", index + length)
        visible = decode_visibility(index, length, max_length, window, k)
        visible = jnp.broadcast_to(visible, k.shape[:-3] + (1, length, max_length))
        return cached[0].astype(k.dtype), cached[1].astype(v.dtype), visible


def _check_cache_room(index: Any, length: int, max_length: int) -> None:
    """ValueError when ``length`` new tokens at ``index`` overflow the cache."""
    if int(index) + length > max_length:
        raise ValueError(
            f"decode=True: the cache is full: max_length={max_length}, index={int(index)}, "
            f"L={length} new tokens; start again from the cache of init"
        )


class MultiHeadAttention(_AttentionMixin, nn.Module):
    """Multi-head yat attention, as ``nmn.linen.MultiHeadAttention`` 0.3.5.

    ``nn.Dense`` projections ``query``, ``key``, ``value`` (``qkv_features``, default: the
    input's), ``out`` (``out_features``, likewise), kernels ``(in, out)``, xavier normal;
    then per head ``norm(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) sqrt(d))) v`` over
    ``num_heads`` heads, ``normalization`` "softmax" or "l1". ``spherical`` is honoured and
    dropout (``dropout_rate``) draws from the ``'dropout'`` rng stream (Decision 5);
    ``normalize_qk`` is ``q / max(|q|, 1e-12)`` (Decision 2). Other fields: module docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from nmn_array.frameworks.linen import MultiHeadAttention
    >>> m = MultiHeadAttention(num_heads=2)
    >>> x = jnp.ones((2, 5, 8))
    >>> m.apply(m.init(jax.random.key(0), x), x).shape
    (2, 5, 8)
    """

    num_heads: int = 1
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    use_bias: bool = True
    use_alpha: bool = True
    constant_alpha: Any = None
    normalize_qk: bool = False
    spherical: bool = False
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.xavier_normal()
    bias_init: Any = nn.initializers.zeros_init()
    alpha_init: Any = _ones
    normalization: str = "softmax"
    window: Any = None
    block_size: Any = "auto"
    decode: bool = False
    use_performer: bool = False
    performer_kind: str = "slay"
    num_anchor_features: int = 16
    num_prf_features: int = 8
    num_quad_nodes: int = 1
    performer_num_features: int = 256
    performer_bias: float = 1.0
    performer_nmax: int = 40
    performer_sketch_m: int = 128
    performer_num_radial: int = 8
    performer_radial_dim: int = 64
    causal: bool = False
    performer_normalize: bool = True

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array | None = None,
        inputs_v: Array | None = None,
        mask: Array | None = None,
        deterministic: bool = True,
        decode: bool | None = None,
    ) -> Array:
        """``inputs_q (*batch, Lq, in)`` -> ``(*batch, Lq, out_features)``; ``mask``
        broadcastable to ``(*batch, H, Lq, Lk)``: boolean (True = attend) or floating
        (additive, -inf hides a key; softmax only).

        ``decode`` (the call's, else the field): ``init`` makes the ``"cache"`` collection
        from inputs ``(*batch, max_length, in)``; ``apply(..., mutable=["cache"])`` then
        writes the ``L`` new tokens (``Lk = Lq``) at the cache index, which advances by
        ``L``, and query ``t`` attends to the slots ``0 .. index + t`` (and the left side
        of ``window``); ``mask`` is then broadcastable to ``(*batch, H, L, max_length)``."""
        if self.normalization not in ("softmax", "l1"):
            raise ValueError(
                f"normalization must be either 'softmax' or 'l1', got {self.normalization!r}"
            )
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        qkv = self.qkv_features or inputs_q.shape[-1]
        if qkv % self.num_heads:
            raise ValueError(
                f"qkv_features ({qkv}) must be divisible by num_heads ({self.num_heads})."
            )
        return self._attention(
            (inputs_q, inputs_k, inputs_v),
            ("query", "key", "value"),
            qkv,
            mask,
            deterministic,
            self.decode if decode is None else decode,
            None,
            lambda x: self._dense(self.out_features or qkv, "out")(x),  # after q, k, v
            epsilon=self.epsilon,
            spherical=self.spherical,
            normalization=self.normalization,
        )


MultiHeadYatAttention = MultiHeadAttention


class RotaryYatAttention(_AttentionMixin, nn.Module):
    """Multi-head yat attention with rotary position embeddings (RoPE, interleaved pairs).

    nmn has no Linen rotary layer; this one mirrors ``nmn.nnx.RotaryYatAttention``
    (quadratic path) with Linen conventions: ``nn.Dense`` projections ``q_proj``, ``k_proj``,
    ``v_proj`` and optional ``o_proj`` (``use_out_proj``; lecun normal, no bias by default)
    of ``embed_dim`` features, ``num_heads`` heads of even size; RoPE (``theta``) on q and k
    at positions ``position_offset + t`` (up to ``max_seq_len``); ``normalization``
    'softmax', 'softermax' or 'l1' of the scores raised to ``power``; dropout
    (``dropout_rate``) from the ``'dropout'`` rng stream; ``normalize_qk``:
    ``q / max(|q|, 1e-12)`` per head before RoPE (Decision 2). Other fields: module docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from nmn_array.frameworks.linen import RotaryYatAttention
    >>> m = RotaryYatAttention(embed_dim=8, num_heads=2, max_seq_len=16)
    >>> x = jnp.ones((2, 5, 8))
    >>> m.apply(m.init(jax.random.key(0), x), x).shape
    (2, 5, 8)
    """

    embed_dim: int
    num_heads: int
    max_seq_len: int = 2048
    theta: float = 10000.0
    dropout_rate: float = 0.0
    use_bias: bool = False
    use_alpha: bool = True
    constant_alpha: Any = None
    normalize_qk: bool = False
    use_out_proj: bool = True
    epsilon: float = 1e-5
    learnable_epsilon: bool = False
    normalization: str = "softmax"
    power: float = 1.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    alpha_init: Any = _ones
    window: Any = None
    block_size: Any = "auto"
    decode: bool = False
    use_performer: bool = False
    performer_kind: str = "slay"
    num_anchor_features: int = 16
    num_prf_features: int = 8
    num_quad_nodes: int = 1
    performer_num_features: int = 256
    performer_bias: float = 1.0
    performer_nmax: int = 40
    performer_sketch_m: int = 128
    performer_num_radial: int = 8
    performer_radial_dim: int = 64
    causal: bool = False
    performer_normalize: bool = True

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        deterministic: bool = True,
        position_offset: int = 0,
        decode: bool | None = None,
        positions: Array | None = None,
    ) -> Array:
        """``x (B, L, embed_dim)`` -> ``(B, L, embed_dim)``; ``mask`` broadcastable to
        ``(B, H, L, L)``.

        RoPE turns q and k at ``positions`` (an integer array of shape ``(L,)``, passed to
        :func:`nmn_array.rotary_embedding` as it is), else at ``position_offset + t``, or
        when decoding at ``index + t``. ``decode``: as :class:`MultiHeadAttention`'s; the
        cache keeps the rotated keys, and ``init`` on ``max_length`` tokens checks
        ``max_length <= max_seq_len``."""
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 2:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must split into {self.num_heads} heads of even size"
            )
        decode = self.decode if decode is None else decode
        if decode and position_offset and not self.is_initializing():
            raise ValueError(
                f"decode=True takes the positions from the cache index; got "
                f"position_offset={position_offset} (pass positions= to override them)"
            )

        def rotary(length: int, index: Any) -> Array:
            """The RoPE positions, checked against max_seq_len when they are 1-D."""
            if positions is not None:
                return explicit_positions(positions, position_offset, self.max_seq_len)
            start = position_offset if index is None else index
            return jnp.asarray(start, jnp.int32) + jnp.arange(length, dtype=jnp.int32)

        if positions is None and position_offset + x.shape[1] > self.max_seq_len:
            # decoding: init on max_length tokens checked it
            raise ValueError(
                f"position_offset + seq_len = {position_offset + x.shape[1]} exceeds "
                f"max_seq_len={self.max_seq_len}"
            )

        def o_proj(out: Array) -> Array:  # made after q, k and v, as before
            return self._dense(self.embed_dim, "o_proj")(out) if self.use_out_proj else out

        return self._attention(
            (x, x, x),
            ("q_proj", "k_proj", "v_proj"),
            self.embed_dim,
            mask,
            deterministic,
            decode,
            rotary,
            o_proj,
            epsilon=self._epsilon(),
            spherical=False,
            normalization=self.normalization,
            power=self.power,
        )


# --------------------------------------------------------------------------------------
# nmn.linen's functional attention: q, k, v (*batch, length, heads, dim)
# --------------------------------------------------------------------------------------
def yat_attention_weights(
    query: Array,
    key: Array,
    mask: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    epsilon: float = 1e-5,
    alpha: Array | None = None,
    spherical: bool = False,
    *,
    dropout_rng: Array | None = None,
) -> Array:
    """Yat attention weights ``(*batch, heads, Lq, Lk)``, as ``nmn.linen.yat_attention_weights``
    0.3.5: ``query (*batch, Lq, heads, d)``, ``key (*batch, Lk, heads, d)``, ``mask``
    nonzero where a key is visible. Dropout (``deterministic=False``) needs ``dropout_rng``,
    which nmn's signature lacks (nmn fails there with a TypeError). Examples: in the module
    docstring.
    """
    hook = _flax.weights_hook(
        _flax.dropout_key(dropout_rng, dropout_rate, deterministic), dropout_rate
    )
    return _api.attention_weights(
        query, key, mask=_flax.flax_mask(mask), dropout=hook, epsilon=epsilon, alpha=alpha,
        spherical=spherical,
    )  # fmt: skip


def yat_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    epsilon: float = 1e-5,
    alpha: Array | None = None,
    spherical: bool = False,
    *,
    dropout_rng: Array | None = None,
) -> Array:
    """Yat attention of ``value (*batch, Lk, heads, dv)``: ``(*batch, Lq, heads, dv)``, as
    ``nmn.linen.yat_attention`` 0.3.5; the other arguments as :func:`yat_attention_weights`.
    """
    return _flax.attend(
        query, key, value, _flax.flax_mask(mask), epsilon=epsilon, alpha=alpha,
        spherical=spherical, dropout_rate=dropout_rate,
        dropout_rng=_flax.dropout_key(dropout_rng, dropout_rate, deterministic),
    )  # fmt: skip


def yat_attention_normalized(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    epsilon: float = 1e-5,
    alpha: Array | None = None,
    *,
    dropout_rng: Array | None = None,
) -> Array:
    """:func:`yat_attention` with ``spherical=True``."""
    return yat_attention(
        query, key, value, mask, dropout_rate, deterministic, epsilon, alpha, True,
        dropout_rng=dropout_rng,
    )  # fmt: skip


normalize_qk = _api.normalize_qk
