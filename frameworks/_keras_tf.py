"""What the Keras layers and the TensorFlow modules share: mixins for the yat parameters
(bias, alpha, epsilon), the convolutions and the attention. A framework class supplies
``_ops`` (``keras.ops``, or tf.py's stand-in), ``_read(variable)`` (the backend's array),
``_new_weight(name, shape, fill, dtype=None, **options)`` and ``_param_dtype()``; the
``_init_*`` methods read the constructor's arguments from ``settings(locals())``. No
framework is imported here and no yat arithmetic is done: that lives in ``nmn_array``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nmn_array.frameworks._common import (
    alpha_config,
    attention_window,
    bias_config,
    check_epsilon,
    keyed_queries,
    learnable_epsilon,
    ntuple,
    transpose_conv_call_args,
)

import nmn_array

# The public names of keras.py and tf.py (the same classes in both).
PUBLIC = [f"YatConv{kind}{n}{d}" for kind in ("", "Transpose") for n in (1, 2, 3) for d in "Dd"]
PUBLIC += ["MultiHeadYatAttention", "YatDense", "YatEmbed", "YatNMN", "normalize_qk"]
PUBLIC += ["soft_tanh", "softer_sigmoid", "softermax", "yat_attention"]
PUBLIC += ["yat_attention_normalized", "yat_attention_weights"]

# The yat layers' boolean settings, recorded as given (``_init_yat``).
_FLAGS = ("learnable_epsilon", "spherical", "weight_normalized", "positive_init", "return_weights")


def settings(local_vars: dict[str, Any]) -> dict[str, Any]:
    """A constructor's arguments from its ``locals()``."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "kwargs", "__class__")}


def declare(base: type, rank: int, module: str) -> Any:
    """The public ``rank``-D class of the convolution ``base`` (``_YatConvND`` gives
    ``YatConv{rank}D``), its docstring the base's."""
    name = f"{base.__name__[1:-2]}{rank}D"
    doc = f"{rank}-D {base.__doc__}"
    namespace = {"rank": rank, "__doc__": doc, "__module__": module, "__qualname__": name}
    return type(name, (base,), namespace)


class YatParams:
    """Mixin: the bias / alpha / epsilon parameters of every yat layer, and their reads."""

    _ops: Any
    _read: Any
    _new_weight: Any
    _param_dtype: Any
    bias: Any = None
    alpha: Any = None
    epsilon_param: Any = None
    learnable_epsilon: bool
    spherical: bool
    weight_normalized: bool

    def _init_yat(self, s: dict[str, Any]) -> None:
        """Record the yat settings among the constructor arguments ``s``."""
        self._bias_cfg = bias_config(s.get("use_bias", False), s.get("constant_bias"))
        self._alpha_cfg = alpha_config(s["use_alpha"], s.get("constant_alpha"))
        # nmn reports use_bias/use_alpha as True when a constant is set.
        if "use_bias" in s:
            self.use_bias = self._bias_cfg.mode != "none"
            self.constant_bias = s["constant_bias"]
        self.use_alpha = self._alpha_cfg.mode != "none"
        self.constant_alpha = s.get("constant_alpha")
        self.epsilon = check_epsilon(s["epsilon"])
        for key in ("units", "features", "filters", "num_embeddings"):  # the layer's widths
            if key in s:
                setattr(self, key, int(s[key]))
        for flag in _FLAGS:
            if flag in s:
                setattr(self, flag, bool(s[flag]))
        if s.get("learnable_epsilon"):
            # validated now, as nmn does, rather than as an inf at the first call
            self._raw_epsilon = learnable_epsilon(self.epsilon, self._param_dtype())

    def _build_yat(self, n_out: int, **bias_options: Any) -> None:
        """Those of bias ``(n_out,)``, alpha ``(1,)``, epsilon_param ``(1,)`` that learn."""
        if self._bias_cfg.mode == "learnable":
            self.bias = self._new_weight("bias", (n_out,), 0.0, **bias_options)
        self._build_alpha()
        if self.learnable_epsilon:
            # Decision 11: epsilon = softplus(epsilon_param), stored in >= float32
            raw, storage = self._raw_epsilon
            self.epsilon_param = self._new_weight("epsilon_param", (1,), raw, storage)

    def _build_alpha(self, attribute: str = "alpha") -> None:
        if self._alpha_cfg.mode == "learnable":
            setattr(self, attribute, self._new_weight("alpha", (1,), 1.0))

    def _bias_arg(self) -> Any:
        return self._bias_cfg.value if self._bias_cfg.mode == "constant" else self._read(self.bias)

    def _alpha_arg(self, variable: Any = None) -> Any:
        variable = self.alpha if variable is None else variable
        return self._alpha_cfg.value if self._alpha_cfg.mode == "constant" else self._read(variable)

    def _scalars(self) -> dict[str, Any]:
        """``alpha`` and ``epsilon`` (``softplus(epsilon_param)`` when it learns) to call with."""
        eps = self.epsilon_param
        epsilon = self.epsilon if eps is None else self._ops.softplus(self._read(eps))
        return {"alpha": self._alpha_arg(), "epsilon": epsilon}

    def _dense(self, inputs: Any, kernel: Any, w_in_out: bool = False) -> Any:
        """The one ``nmn_array.yat`` call of a dense layer (``w_in_out``: kernel (in, out))."""
        options: dict[str, Any] = {"spherical": self.spherical, "_w_in_out": w_in_out}
        options.update(weight_normalized=self.weight_normalized, **self._scalars())
        return nmn_array.yat(inputs, self._read(kernel), self._bias_arg(), **options)

    def _attend_table(self, query: Any, table: Any) -> Any:
        """Yat logits of ``query`` against every row of an embedding ``table``."""
        # Decision 8: the distance is clamped at 0 in every mode; attend has no bias.
        return nmn_array.yat(
            query, self._read(table), None, spherical=self.spherical, **self._scalars()
        )


class YatConvShell(YatParams):
    """Mixin: geometry, kernel layout and the one ``nmn_array`` call of the convolutions of
    ``rank`` spatial axes. Kernels are stored as in Keras and nmn: ``(*kernel_size, channels
    // groups, filters)``, transposed ``(*kernel_size, filters, channels)``."""

    rank: int = 0
    filters: int
    transposed: bool = False
    output_padding: tuple[int, ...] | None = None
    kernel: Any = None
    padding: str
    weight_normalized = False  # nmn.tf's convolutions have no weight_normalized argument
    drop_rate = 0.0  # nor DropConnect
    _channels_first = False

    def _init_conv(self, s: dict[str, Any], allowed: Sequence[str] = ("valid", "same")) -> str:
        """Record the geometry and the yat settings; return ``padding`` in lower case."""
        n, name = self.rank, type(self).__name__
        self.kernel_size = ntuple(s["kernel_size"], n, "kernel_size")
        self.strides = ntuple(s["strides"], n, "strides")
        self.dilation_rate = ntuple(s.get("dilation_rate", 1), n, "dilation_rate")
        padding, groups = s["padding"], s.get("groups", 1)
        if not isinstance(padding, str) or padding.lower() not in allowed:
            raise ValueError(f"{name}: padding must be one of {list(allowed)}, got {padding!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
        self.groups = groups
        self._init_yat(s)
        return padding.lower()

    def _check_divisible(self, what: str, size: int) -> None:
        if size % self.groups:
            groups = f"the number of groups ({self.groups})"
            raise ValueError(f"The number of {what} ({size}) must be divisible by {groups}.")

    def _kernel_shape(self, channels: int) -> tuple[int, ...]:
        if self.transposed:
            return (*self.kernel_size, self.filters, channels)
        return (*self.kernel_size, channels // self.groups, self.filters)

    def _conv(self, inputs: Any, keep: Any = None, kernel: Any = None) -> Any:
        """The layer's output; ``keep``: the DropConnect draw (None: no DropConnect);
        ``kernel``: the kernel as a backend array (default: ``self.kernel``, read)."""
        n = self.rank
        kernel = self._read(self.kernel) if kernel is None else kernel
        if keep is not None:
            kernel = nmn_array.drop_connect(kernel, keep, rate=self.drop_rate)
        # (*k, a, b) -> (b, a, *k): conv (*k, in/g, O) -> (O, in/g, *k), transposed
        # (*k, O, in) -> (in, O, *k). No spatial flip: TensorFlow's and Keras' conv_transpose
        # is the exact gradient of their cross-correlation.
        w = self._ops.transpose(kernel, (n + 1, n, *range(n)))
        fmt = "channels_first" if self._channels_first else "channels_last"
        common: dict[str, Any] = dict(stride=self.strides, dilation=self.dilation_rate)
        common.update(data_format=fmt, weight_normalized=self.weight_normalized, **self._scalars())
        padding = self.padding.lower()
        if not self.transposed:
            b = self._bias_arg()
            return nmn_array.yat_conv(inputs, w, b, padding=padding, groups=self.groups, **common)
        padding, extra, crops = transpose_conv_call_args(
            self.kernel_size, self.strides, self.dilation_rate, padding, self.output_padding
        )
        y = nmn_array.yat_conv_transpose(
            inputs, w, self._bias_arg(), padding=padding, output_padding=extra, **common
        )
        if any(crops):
            # Keras' 'same' with an output_padding can pad less on the high side than on the
            # low side, which (padding, output_padding) cannot express: the extra trailing
            # positions are dropped (each output position is computed on its own).
            first = 2 if self._channels_first else 1
            index = [slice(None)] * (n + 2)
            for i, crop in enumerate(crops):
                index[first + i] = slice(0, -crop) if crop else slice(None)
            y = y[tuple(index)]
        return y


class YatAttentionShell(YatParams):
    """Mixin: projections, head split, the one ``nmn_array`` attention call, merge."""

    out_kernel: Any = None
    out_bias: Any = None

    def _init_attention(self, s: dict[str, Any]) -> float:
        """Record the settings; return the dropout rate."""
        embed_dim, num_heads, dropout = s["embed_dim"], s["num_heads"], s["dropout"]
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.use_bias = bool(s["use_bias"])
        self._init_yat({k: v for k, v in s.items() if k not in ("use_bias", "spherical")})
        self._normalize_qk = bool(s["normalize_qk"])
        self._spherical = bool(s["spherical"])
        self.use_out_proj = bool(s["use_out_proj"])
        self.window, self.block_size = attention_window(s["window"], s["block_size"])
        return float(dropout)

    def _build_projections(self, kernel: Any, rows: Sequence[Any]) -> None:
        """q/k/v kernels ``(rows, embed_dim)`` from ``kernel(name, rows)``, the biases
        ``(embed_dim,)``, then the output projection: in the order nmn creates them."""
        for name, n in zip(("q", "k", "v"), rows):
            setattr(self, f"{name}_kernel", kernel(f"{name}_kernel", n))
        for name in ("q", "k", "v"):
            setattr(self, f"{name}_bias", self._bias(f"{name}_bias"))
        if self.use_out_proj:
            # nmn.keras 0.3.5 makes this (input_dim, embed_dim), which breaks when they differ
            # (bug §13.3); the projection maps the embed_dim-wide heads back to embed_dim.
            self.out_kernel = kernel("out_kernel", self.embed_dim)
            self.out_bias = self._bias("out_bias")

    def _bias(self, name: str) -> Any:
        return self._new_weight(name, (self.embed_dim,), 0.0) if self.use_bias else None

    def _linear(self, x: Any, name: str) -> Any:
        # The array's own ``@``: keras.ops.matmul returns float32 for float64 inputs on the
        # torch backend (Keras' result_type maps float64 to float32 outside TensorFlow).
        y = x @ self._read(getattr(self, f"{name}_kernel"))
        bias = getattr(self, f"{name}_bias")
        return y if bias is None else y + self._read(bias)

    def _heads(self, x: Any, name: str) -> Any:
        # (B, L, E) -> (B, H, L, d): the pure function takes (..., L, d)
        o, x = self._ops, self._linear(x, name)
        x = o.reshape(x, (-1, o.shape(x)[1], self.num_heads, self.head_dim))
        return o.transpose(x, (0, 2, 1, 3))

    def _attend(self, query: Any, key: Any, value: Any, mask: Any, alpha: Any, dropout: Any) -> Any:
        """Attention of backend arrays; ``mask`` broadcasts to (B, H, Lq, Lk) or is None;
        ``dropout`` is None or a function applied to the attention weights."""
        o = self._ops
        q, k, v = self._heads(query, "q"), self._heads(key, "k"), self._heads(value, "v")
        if self._normalize_qk:
            q, k = nmn_array.attention.unit_heads(q), nmn_array.attention.unit_heads(k)
        if mask is not None:
            full = (o.shape(q)[0], self.num_heads, o.shape(q)[2], o.shape(k)[2])
            mask = o.broadcast_to(mask, full)
        options = dict(mask=mask, alpha=alpha, epsilon=self.epsilon, spherical=self._spherical)
        options.update(window=self.window)
        if dropout is None:
            x = nmn_array.yat_attention(q, k, v, block_size=self.block_size, **options)
        else:
            # dropout needs the weights themselves: the materialised path
            x = dropout(nmn_array.yat_attention_weights(q, k, **options)) @ v
        # (B, H, Lq, d) -> (B, Lq, E)
        x = o.transpose(x, (0, 2, 1, 3))
        x = o.reshape(x, (-1, o.shape(x)[1], self.embed_dim))
        if self.out_kernel is not None:
            x = self._linear(x, "out")
        keyed = keyed_queries(mask, self.window, o.shape(q)[2], o.shape(k)[2], q)
        if keyed is not None:
            # nmn 0.3.5: a query that sees no key in any head outputs zeros, also after the
            # output projection's bias.
            has_key = o.any(keyed, axis=(1, 3))
            x = o.where(o.expand_dims(has_key, -1), x, o.zeros_like(x))
        return x
