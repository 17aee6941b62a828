"""Flax Linen modules over the pure functions of ``nmn_array``.

Drop-in replacements for ``nmn.linen`` 0.3.5: the same class names (and lower-case conv
aliases), dataclass fields in the same order, parameter names, shapes, layouts and
initialisers, so a ``params`` tree initialised or trained with ``nmn.linen`` applies to
the same model built from these classes. Each ``__call__`` makes one ``nmn_array`` call on
the raw arrays; rotary attention adds the two ``rotary_embedding`` calls for q and k. The
differences from ``nmn`` are listed in ``docs/migration/linen.md``.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from nmn_array.frameworks.linen import YatNMN
>>> layer = YatNMN(features=3)
>>> params = layer.init(jax.random.key(0), jnp.ones((2, 4)))
>>> layer.apply(params, jnp.ones((2, 4))).shape
(2, 3)
"""

from __future__ import annotations

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
    reject_nondefault,
    require,
    softplus_inverse,
    unit_normalized,
)

import nmn_array
from nmn_array import soft_tanh, softer_sigmoid, softermax

jax = require("jax")
# Any: the module is imported at run time and its classes are our base classes; mypy
# takes a base class from an Any-typed name, not from a plain module object.
nn: Any = require("flax.linen")
jnp = jax.numpy
_promote_dtype = require("flax.linen.dtypes").promote_dtype

from nmn_array.frameworks.nnx import (  # noqa: E402  (jax helpers shared with NNX)
    attention_dropout,
    conv_kernel_to_oihw,
    conv_transpose_kernel_to_iohw,
    flat_batch,
    precision_scope,
    softplus_epsilon,
    zero_keyless,
)

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
    "soft_tanh",
    "softer_sigmoid",
    "softermax",
]

Array = Any

#: ``constant_alpha=True``.
DEFAULT_CONSTANT_ALPHA = math.sqrt(2.0)
# nmn's guard when normalising the embedding table (Decision 7).
# Decision 2: normalize_qk is q / max(|q|, 1e-12).
_QK_NORM_FLOOR = 1e-12


def _ones(key: Any, shape: tuple[int, ...], dtype: Any) -> Array:
    return jnp.ones(shape, dtype)


def _fp32_init(initializer: Callable[..., Array]) -> Callable[..., Array]:
    """Run an initialiser in float32 for float16/bfloat16 parameters (JAX's QR, used by the
    orthogonal initialiser, has no float16 kernel on CPU)."""

    def init(key: Any, shape: tuple[int, ...], dtype: Any) -> Array:
        if dtype in (jnp.float16, jnp.bfloat16):
            return initializer(key, shape, jnp.float32).astype(dtype)
        return initializer(key, shape, dtype)

    return init


def _epsilon_dtype(param_dtype: Any) -> Any:
    """A learnable epsilon is stored in at least float32 (its raw value underflows float16)."""
    if param_dtype in (jnp.float16, jnp.bfloat16):
        return jnp.float32
    if jnp.dtype(param_dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("float64 learnable epsilon requires jax_enable_x64")
    return param_dtype


# For mypy the mixins are flax Modules (they are only combined with one, whose dataclass
# fields and methods they use); at run time they stay plain classes.
_ModuleBase: Any = nn.Module if TYPE_CHECKING else object


class _YatMixin(_ModuleBase):
    """Parameters shared by the layers; the rules live in ``_common``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_epsilon(self.epsilon)

    def _alpha(self, constant_alpha: Any = None) -> Any:
        cfg = alpha_config(self.use_alpha, constant_alpha)
        if cfg.mode == "constant":
            return cfg.value
        if cfg.mode == "learnable":
            return self.param("alpha", self.alpha_init, (1,), self.param_dtype)
        return None

    def _bias(self) -> Array | None:
        cfg = bias_config(self.use_bias, self.constant_bias)
        if cfg.mode == "constant":
            return jnp.full((self.features,), cfg.value, dtype=self.param_dtype)
        if cfg.mode == "learnable":
            return self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return None

    def _epsilon(self) -> Any:
        if not self.learnable_epsilon:
            return self.epsilon
        raw = softplus_inverse(self.epsilon)
        param = self.param(
            "epsilon_param",
            lambda key, shape, dtype: jnp.full(shape, raw, dtype),
            (1,),
            _epsilon_dtype(self.param_dtype),
        )
        return softplus_epsilon(param)


# --------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------
class YatNMN(_YatMixin, nn.Module):
    """Yat dense layer: ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``.

    Fields and parameters as ``nmn.linen.YatNMN`` 0.3.5: ``kernel (features, in)`` (one
    neuron per row, xavier normal), ``bias`` (zeros), ``alpha`` (ones, (1,)),
    ``epsilon_param``. ``positive_init`` takes ``abs()`` of the kernel in every call and
    ``lazy`` / ``freeze_kernel`` stop its gradient, as nmn Linen does.

    Attributes
    ----------
    features : int
    use_bias, constant_bias, use_alpha, constant_alpha, positive_init, dtype, param_dtype
    precision
        Matmul precision (as ``jax.default_matmul_precision``).
    kernel_init, bias_init, alpha_init, epsilon, learnable_epsilon, spherical,
    weight_normalized, lazy, freeze_kernel
    dot_general, dot_general_cls
        Only ``None`` (the product is computed by ``nmn_array.yat``).
    return_weights : bool
        Return ``(y, kernel)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from nmn_array.frameworks.linen import YatNMN
    >>> m = YatNMN(features=2, constant_alpha=True)
    >>> p = m.init(jax.random.key(0), jnp.ones((3, 4)))
    >>> sorted(p["params"])
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
        kernel = self.param(
            "kernel", self.kernel_init, (self.features, jnp.shape(inputs)[-1]), self.param_dtype
        )
        if self.lazy or self.freeze_kernel:
            kernel = jax.lax.stop_gradient(kernel)
        if self.positive_init:
            kernel = jnp.abs(kernel)
        alpha = self._alpha(self.constant_alpha)
        bias = self._bias()
        epsilon = self._epsilon()
        x, kernel, bias = _promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        with precision_scope(self.precision):
            y = nmn_array.yat(
                x,
                kernel,
                bias,
                alpha=alpha,
                epsilon=epsilon,
                spherical=self.spherical,
                weight_normalized=self.weight_normalized,
            )
        return (y, kernel) if self.return_weights else y


YatDense = YatNMN


# --------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------
class _YatConv(_YatMixin, nn.Module):
    """Yat convolution, channels last; subclasses fix the number of spatial dimensions."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1,)
    padding: Any = "VALID"
    input_dilation: Sequence[int] = (1,)
    kernel_dilation: Sequence[int] = (1,)
    feature_group_count: int = 1
    use_bias: bool = True
    constant_bias: float | None = None
    use_alpha: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.orthogonal()
    bias_init: Any = nn.initializers.zeros_init()
    alpha_init: Any = _ones
    epsilon: float = 1e-5
    learnable_epsilon: bool = False

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs (batch, *spatial, in)`` -> ``(batch, *out, features)``."""
        nd = len(self.kernel_size)
        if any(d != 1 for d in self.input_dilation):
            raise NotImplementedError(
                f"{type(self).__name__}(input_dilation={tuple(self.input_dilation)}) is not "
                "implemented in nmn_array: nmn_array.yat_conv has no input (lhs) dilation"
            )
        channels, groups = inputs.shape[-1], self.feature_group_count
        if groups <= 0 or channels % groups or self.features % groups:
            raise ValueError(
                f"Input channels ({channels}) and features ({self.features}) must be "
                f"divisible by feature_group_count ({groups})."
            )
        kernel = self.param(
            "kernel",
            _fp32_init(self.kernel_init),
            tuple(self.kernel_size) + (channels // groups, self.features),
            self.param_dtype,
        )
        bias = self._bias()
        alpha = self._alpha()
        epsilon = self._epsilon()
        x, batch = flat_batch(inputs, nd)
        padding, mode = lax_conv_padding(
            self.padding, self.kernel_size, self.kernel_dilation, self.strides, x.shape[1:-1]
        )
        x, kernel, bias = _promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = nmn_array.yat_conv(
            x,
            conv_kernel_to_oihw(kernel),
            bias,
            stride=tuple(self.strides),
            padding=padding,
            dilation=tuple(self.kernel_dilation),
            groups=groups,
            padding_mode=mode,
            data_format="channels_last",
            alpha=alpha,
            epsilon=epsilon,
        )
        return jnp.reshape(y, batch + y.shape[1:])


class _YatConvTranspose(_YatMixin, nn.Module):
    """Yat transposed convolution, channels last, ``lax.conv_transpose`` output sizes."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1,)
    padding: Any = "VALID"
    use_bias: bool = True
    constant_bias: float | None = None
    use_alpha: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.orthogonal()
    bias_init: Any = nn.initializers.zeros_init()
    alpha_init: Any = _ones
    epsilon: float = 1e-5
    learnable_epsilon: bool = False

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs (batch, *spatial, in)`` -> ``(batch, *out, features)``."""
        nd = len(self.kernel_size)
        kernel = self.param(
            "kernel",
            _fp32_init(self.kernel_init),
            tuple(self.kernel_size) + (inputs.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self._bias()
        alpha = self._alpha()
        epsilon = self._epsilon()
        x, batch = flat_batch(inputs, nd)
        padding, output_padding = lax_conv_transpose_padding(
            self.padding, self.kernel_size, self.strides, (1,) * nd
        )
        x, kernel, bias = _promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = nmn_array.yat_conv_transpose(
            x,
            conv_transpose_kernel_to_iohw(kernel),
            bias,
            stride=tuple(self.strides),
            padding=padding,
            output_padding=output_padding,
            data_format="channels_last",
            alpha=alpha,
            epsilon=epsilon,
        )
        return jnp.reshape(y, batch + y.shape[1:])


_CONV_DOC = """{nd}-D yat convolution (channels last), as ``nmn.linen.YatConv{nd}D`` 0.3.5.

``y = alpha * (<patch, w_o> + b_o)^2 / (|patch - w_o|^2 + epsilon)``. Parameters:
``kernel (*k, in/groups, features)`` (orthogonal), ``bias`` (zeros), ``alpha`` (ones),
``epsilon_param``. ``padding``: 'VALID' (default), 'SAME', 'SAME_LOWER', (low, high)
pairs, and also NNX's 'CIRCULAR', 'REFLECT', 'CAUSAL' (1-D). ``input_dilation`` must be 1
(NotImplementedError otherwise).

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from nmn_array.frameworks.linen import YatConv{nd}D
>>> m = YatConv{nd}D(features=4, kernel_size={k})
>>> x = jnp.ones((1,) + (6,) * {nd} + (2,))
>>> m.apply(m.init(jax.random.key(0), x), x).shape
{shape}
"""

_CONV_T_DOC = """{nd}-D yat transposed convolution (channels last), as
``nmn.linen.YatConvTranspose{nd}D`` 0.3.5.

Output sizes as ``jax.lax.conv_transpose`` ('VALID': ``L * s + max(k - s, 0)``, 'SAME':
``L * s``); ``|w_o|^2`` counts all taps (Decision 9). Parameters:
``kernel (*k, in, features)`` (orthogonal), ``bias``, ``alpha``, ``epsilon_param``.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from nmn_array.frameworks.linen import YatConvTranspose{nd}D
>>> m = YatConvTranspose{nd}D(features=4, kernel_size={k}, strides={s})
>>> x = jnp.ones((1,) + (3,) * {nd} + (2,))
>>> m.apply(m.init(jax.random.key(0), x), x).shape
{shape_t}
"""


def _conv_class(name: str, nd: int, transposed: bool) -> type:
    ones = (1,) * nd
    namespace: dict[str, Any] = {
        "__annotations__": {"strides": "Sequence[int]"},
        "strides": ones,
        "__module__": __name__,
        "__qualname__": name,
    }
    k, s = (3,) * nd, (2,) * nd
    if transposed:
        base = _YatConvTranspose
        doc = _CONV_T_DOC.format(nd=nd, k=k, s=s, shape_t=(1,) + (7,) * nd + (4,))
    else:
        base = _YatConv
        namespace["__annotations__"].update(
            {"input_dilation": "Sequence[int]", "kernel_dilation": "Sequence[int]"}
        )
        namespace["input_dilation"] = ones
        namespace["kernel_dilation"] = ones
        doc = _CONV_DOC.format(nd=nd, k=k, shape=(1,) + (4,) * nd + (4,))
    namespace["__doc__"] = doc
    return type(name, (base,), namespace)


YatConv1D = _conv_class("YatConv1D", 1, False)
YatConv2D = _conv_class("YatConv2D", 2, False)
YatConv3D = _conv_class("YatConv3D", 3, False)
YatConvTranspose1D = _conv_class("YatConvTranspose1D", 1, True)
YatConvTranspose2D = _conv_class("YatConvTranspose2D", 2, True)
YatConvTranspose3D = _conv_class("YatConvTranspose3D", 3, True)
YatConv1d, YatConv2d, YatConv3d = YatConv1D, YatConv2D, YatConv3D
YatConvTranspose1d, YatConvTranspose2d, YatConvTranspose3d = (
    YatConvTranspose1D,
    YatConvTranspose2D,
    YatConvTranspose3D,
)


# --------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------
class YatEmbed(_YatMixin, nn.Module):
    """Embedding table with a yat ``attend``, as ``nmn.linen.YatEmbed`` 0.3.5.

    ``__call__(ids)`` looks rows up; ``attend(query)`` is
    ``alpha * (q.e_v)^2 / (|q - e_v|^2 + epsilon)`` per row (no bias). Parameters:
    ``embedding (num_embeddings, features)`` (variance scaling, fan in) and, created by
    ``attend``, ``alpha``. With ``weight_normalized`` the rows are normalised in every call
    (lookup and attend), as nmn Linen does.

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
        return self.param(
            "embedding",
            self.embedding_init,
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """Rows of the table: ``(*inputs.shape, features)``."""
        table = self._table()
        if self.weight_normalized:
            table = unit_normalized(table, 0)
        (table,) = _promote_dtype(table, dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(table, inputs.shape + (self.features,))
        return jnp.take(table, inputs, axis=0)

    @nn.compact
    def attend(self, query: Array) -> Array:
        """Yat similarity of ``query (..., features)`` with every row: ``(..., num_embeddings)``."""
        table = self._table()
        alpha = self._alpha(self.constant_alpha)
        query, table = _promote_dtype(query, table, dtype=self.dtype)
        return nmn_array.yat(
            query,
            table,
            alpha=alpha,
            epsilon=self.epsilon,
            spherical=self.spherical,
            weight_normalized=self.weight_normalized,
        )


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------
def _l2_normalize(x: Array) -> Array:
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, jnp.asarray(_QK_NORM_FLOOR, norm.dtype))


class _AttentionMixin(_YatMixin):
    def _attend(
        self,
        q: Array,
        k: Array,
        v: Array,
        mask: Array | None,
        alpha: Any,
        epsilon: Any,
        deterministic: bool,
        spherical: bool,
        normalization: str,
        power: float = 1.0,
    ) -> Array:
        """Yat attention on ``(..., L, H, d)`` arrays; dropout on the weights."""
        q, k, v = (jnp.swapaxes(t, -3, -2) for t in (q, k, v))
        kwargs = dict(
            mask=mask,
            alpha=alpha,
            epsilon=epsilon,
            spherical=spherical,
            normalization=normalization,
            power=power,
        )
        rate = check_rate(self.dropout_rate)
        if rate > 0.0 and not deterministic:
            weights = nmn_array.yat_attention_weights(q, k, **kwargs)
            weights = attention_dropout(weights, self.make_rng("dropout"), rate, True)
            out = jnp.matmul(weights, v)
        else:
            out = nmn_array.yat_attention(q, k, v, **kwargs)
        return jnp.swapaxes(out, -3, -2)

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


class MultiHeadAttention(_AttentionMixin, nn.Module):
    """Multi-head yat attention, as ``nmn.linen.MultiHeadAttention`` 0.3.5.

    ``nn.Dense`` projections ``query``, ``key``, ``value``, ``out`` (kernels ``(in, out)``,
    xavier normal) and per head
    ``norm(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) sqrt(d))) v``. ``spherical`` is honoured
    and dropout draws from the ``'dropout'`` rng stream (Decision 5); ``normalize_qk`` is
    ``q / max(|q|, 1e-12)`` (Decision 2).

    Attributes
    ----------
    num_heads, qkv_features, out_features, dropout_rate, use_bias, use_alpha, constant_alpha,
    normalize_qk, spherical, epsilon, dtype, param_dtype, kernel_init, bias_init, alpha_init
    normalization : {"softmax", "l1"}

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

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array | None = None,
        inputs_v: Array | None = None,
        mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """``inputs_q (*batch, Lq, in)`` -> ``(*batch, Lq, out_features)``; ``mask``
        broadcastable to ``(*batch, H, Lq, Lk)``: boolean (True = attend) or floating
        (additive, -inf hides a key; softmax only)."""
        if self.normalization not in ("softmax", "l1"):
            raise ValueError(
                f"normalization must be either 'softmax' or 'l1', got {self.normalization!r}"
            )
        if inputs_k is None:
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        qkv = self.qkv_features or inputs_q.shape[-1]
        out_features = self.out_features or qkv
        if qkv % self.num_heads:
            raise ValueError(
                f"qkv_features ({qkv}) must be divisible by num_heads ({self.num_heads})."
            )
        heads = (self.num_heads, qkv // self.num_heads)
        q = self._dense(qkv, "query")(inputs_q)
        k = self._dense(qkv, "key")(inputs_k)
        v = self._dense(qkv, "value")(inputs_v)
        q, k, v = (t.reshape(t.shape[:-1] + heads) for t in (q, k, v))
        if self.normalize_qk:
            q, k = _l2_normalize(q), _l2_normalize(k)
        alpha = self._alpha(self.constant_alpha)
        q, k, v = _promote_dtype(q, k, v, dtype=self.dtype)
        if mask is not None:
            mask = jnp.broadcast_to(mask, q.shape[:-3] + (q.shape[-2], q.shape[-3], k.shape[-3]))
        x = self._attend(
            q,
            k,
            v,
            mask,
            alpha,
            self.epsilon,
            deterministic,
            self.spherical,
            self.normalization,
        )
        x = self._dense(out_features, "out")(x.reshape(x.shape[:-2] + (qkv,)))
        return zero_keyless(x, mask)


MultiHeadYatAttention = MultiHeadAttention


class RotaryYatAttention(_AttentionMixin, nn.Module):
    """Multi-head yat attention with rotary position embeddings (RoPE, interleaved pairs).

    nmn has no Linen rotary layer; this one mirrors ``nmn.nnx.RotaryYatAttention``
    (quadratic path) with Linen conventions: ``nn.Dense`` projections ``q_proj``, ``k_proj``,
    ``v_proj`` and optional ``o_proj`` (lecun normal, no bias by default); RoPE on q and k at
    positions ``position_offset + t``; alpha scales the scores before normalisation.

    Attributes
    ----------
    embed_dim, num_heads : int
        ``embed_dim / num_heads`` must be even.
    max_seq_len : int
    theta : float
    dropout_rate, use_bias, use_alpha, constant_alpha
    normalize_qk : bool
        ``q / max(|q|, 1e-12)`` per head before RoPE (Decision 2).
    use_out_proj, epsilon, learnable_epsilon, normalization, power, dtype, param_dtype,
    kernel_init, bias_init, alpha_init

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

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        deterministic: bool = True,
        position_offset: int = 0,
    ) -> Array:
        """``x (B, L, embed_dim)`` -> ``(B, L, embed_dim)``; ``mask`` broadcastable to
        ``(B, H, L, L)``."""
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 2:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must split into {self.num_heads} heads of even size"
            )
        b, length, _ = x.shape
        if position_offset + length > self.max_seq_len:
            raise ValueError(
                f"position_offset + seq_len = {position_offset + length} exceeds "
                f"max_seq_len={self.max_seq_len}"
            )
        heads = (self.num_heads, self.embed_dim // self.num_heads)
        q = self._dense(self.embed_dim, "q_proj")(x).reshape((b, length) + heads)
        k = self._dense(self.embed_dim, "k_proj")(x).reshape((b, length) + heads)
        v = self._dense(self.embed_dim, "v_proj")(x).reshape((b, length) + heads)
        if self.normalize_qk:
            q, k = _l2_normalize(q), _l2_normalize(k)
        alpha = self._alpha(self.constant_alpha)
        epsilon = self._epsilon()
        q, k, v = _promote_dtype(q, k, v, dtype=self.dtype)
        positions = position_offset + jnp.arange(length, dtype=jnp.int32)
        # RoPE acts on (..., L, d): rotate with the heads moved in front of the positions
        q, k = (
            jnp.swapaxes(
                nmn_array.rotary_embedding(jnp.swapaxes(t, 1, 2), positions, theta=self.theta),
                1,
                2,
            )
            for t in (q, k)
        )
        if mask is not None:
            mask = jnp.broadcast_to(mask, (b, self.num_heads, length, length))
        out = self._attend(
            q,
            k,
            v,
            mask,
            alpha,
            epsilon,
            deterministic,
            False,
            self.normalization,
            self.power,
        ).reshape(b, length, self.embed_dim)
        if self.use_out_proj:
            out = self._dense(self.embed_dim, "o_proj")(out)
        return zero_keyless(out, mask)
