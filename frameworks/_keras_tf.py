"""What the Keras layers and the TensorFlow modules share: mixins for the yat parameters
(bias, alpha, epsilon), the convolutions and the attention (whose surface nmn.mlx shares
too: the MLX attention modules use :class:`YatAttentionShell`). A framework class supplies
``_ops`` (``keras.ops``, or tf.py's stand-in), ``_read(variable)`` (the backend's array),
``_new_weight(name, shape, fill, dtype=None, **options)`` and ``_param_dtype()``; the
``_init_*`` methods read the constructor's arguments from ``settings(locals())``. No
framework is imported here and no yat arithmetic is done: that lives in ``nmn_array``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nmn_array.frameworks import _performer
from nmn_array.frameworks._common import (
    alpha_config,
    attention_window,
    bias_config,
    check_epsilon,
    check_mask_shape,
    decode_visibility,
    dtype_name,
    explicit_positions,
    keyed_queries,
    learnable_epsilon,
    ntuple,
    restrict_mask,
    transpose_conv_call_args,
)

import nmn_array

# The public names of keras.py and tf.py (the same classes in both).
PUBLIC = [f"YatConv{kind}{n}{d}" for kind in ("", "Transpose") for n in (1, 2, 3) for d in "Dd"]
PUBLIC += [
    "MultiHeadYatAttention",
    "RotaryYatAttention",
    "YatDense",
    "YatEmbed",
    "YatNMN",
    "normalize_qk",
]
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
        self._build_epsilon()

    def _build_epsilon(self) -> None:
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

    def _epsilon_arg(self) -> Any:
        """``epsilon``, or ``softplus(epsilon_param)`` when it learns."""
        eps = self.epsilon_param
        return self.epsilon if eps is None else self._ops.softplus(self._read(eps))

    def _scalars(self) -> dict[str, Any]:
        """``alpha`` and ``epsilon`` to call with."""
        return {"alpha": self._alpha_arg(), "epsilon": self._epsilon_arg()}

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


def projection_storage(dtype: Any) -> str:
    """The dtype a performer projection's float arrays are stored in: float32 for 16-bit
    layers (the random features need the precision; the core computes in float32 there),
    else the layer's dtype."""
    name = dtype_name(dtype)
    return "float32" if name in ("float16", "bfloat16") else name


def causal_window(window: Any) -> tuple[Any, int]:
    """``window`` (``(left, right)`` or None) with its right side closed at 0: a causal mask
    on the tiled path (query ``i`` sits at key position ``i + Lk - Lq``)."""
    left, right = (None, None) if window is None else window
    return left, 0 if right is None else min(right, 0)


def check_cache_room(index: Any, length: int, max_length: int) -> None:
    """Raise ValueError when ``length`` tokens written at cache slot ``index`` (an int or a
    concrete scalar) would not fit in ``max_length`` slots."""
    if int(index) + length > max_length:
        raise ValueError(
            f"the key/value cache is full: max_length={max_length}, index={int(index)}, "
            f"{length} new token(s) (L={length}); call reset_cache() or init_cache() with "
            "a larger max_length"
        )


class YatAttentionShell(YatParams):
    """Mixin: projections, head split, rotary positions, the key/value cache, the one
    ``nmn_array`` attention call, merge. A framework class also supplies
    ``_cache_variables(shape, dtype)`` (zeroed ``cache_key``/``cache_value`` and an int32
    ``cache_index`` 0, as non-trainable variables), ``_assign(variable, value)``,
    ``_update_slice(array, start, update)`` (``keras.ops.slice_update``'s contract),
    ``_positions(start, length)`` (int32 ``start + arange(length)``) and
    ``_check_room(index, length, max_length)`` (the full-cache error where the index is
    traced)."""

    out_kernel: Any = None
    out_bias: Any = None
    _cache_variables: Any
    _assign: Any
    _update_slice: Any
    _positions: Any
    _check_room: Any
    # MultiHeadYatAttention: nmn's softmax of the plain scores, no rotary positions
    normalization = "softmax"
    power = 1.0
    max_seq_len: int | None = None
    theta = 10000.0
    cache_key: Any = None
    cache_value: Any = None
    cache_index: Any = None
    use_performer = False
    causal = False
    # the performer's non-trainable projection variables by nmn's keys (None: exact mode)
    performer_projection: Any = None

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
        self._spherical = bool(s.get("spherical", False))
        self.use_out_proj = bool(s["use_out_proj"])
        self.window, self.block_size = attention_window(s["window"], s["block_size"])
        return float(dropout)

    def _init_performer(self, s: dict[str, Any], draw_seed: Callable[[], int]) -> Any:
        """Record the performer settings (:func:`_performer.settings`: ``use_performer``,
        ``performer_kind``, the feature counts, ``causal``, ``performer_normalize``); with
        ``use_performer``, return the projection as NumPy arrays, drawn from
        ``numpy.random.default_rng(draw_seed())`` (None otherwise). Call after
        :meth:`_init_attention`."""
        config = _performer.settings(s)
        self._performer_config = config
        self.use_performer, self.causal = config.use, config.causal
        self.performer_kind, self.performer_normalize = config.kind, config.normalize
        for name, value in config.counts:
            setattr(self, name, value)
        if not config.use:
            return None
        if s.get("learnable_epsilon"):
            raise ValueError(
                "use_performer=True does not support learnable_epsilon=True: the projection "
                "is drawn for the constant epsilon of the kernel"
            )
        _performer.refuse_conflicts(type(self).__name__, config, window=s.get("window"))
        return _performer.draw(config, self.head_dim, draw_seed(), self.epsilon)

    def _performer(self, q: Any, k: Any, v: Any, mask: Any, alpha: Any, dropout: Any) -> Any:
        """The one performer call (:func:`_performer.attention`) of heads ``(B, H, L, d)``;
        ``mask``: a key-padding mask (anything else raises the core's ValueError);
        ``dropout`` on its output."""
        projection = {key: self._read(var) for key, var in self.performer_projection.items()}
        x = _performer.attention(
            q, k, v, self._performer_config, projection,
            mask=mask, epsilon=self.epsilon, alpha=alpha,
        )  # fmt: skip
        return x if dropout is None else dropout(x)

    def _init_rotary(self, s: dict[str, Any]) -> float:
        """:meth:`_init_attention` and the rotary settings (RotaryYatAttention)."""
        dropout = self._init_attention(s)
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE.")
        max_seq_len, theta = s["max_seq_len"], s["theta"]
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ValueError(f"max_seq_len must be a positive int, got {max_seq_len!r}")
        self.max_seq_len, self.theta = max_seq_len, float(theta)
        self.use_softermax = bool(s["use_softermax"])
        normalization = "softermax" if self.use_softermax else s["normalization"]
        if normalization not in ("softmax", "softermax", "l1"):
            raise ValueError(
                f"normalization must be 'softmax', 'softermax' or 'l1', got {normalization!r}"
            )
        self.normalization, self.power = normalization, float(s["power"])
        return dropout

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

    def _batch(self, x: Any) -> Any:
        """``x``'s batch size where it is a plain int, else -1 (symbolic): -1 cannot be
        inferred for an empty sequence (MLX refuses the reshape)."""
        lead = self._ops.shape(x)[0]
        return lead if isinstance(lead, int) else -1

    def _heads(self, x: Any, name: str) -> Any:
        # (B, L, E) -> (B, H, L, d): the pure function takes (..., L, d)
        o, x = self._ops, self._linear(x, name)
        x = o.reshape(x, (self._batch(x), o.shape(x)[1], self.num_heads, self.head_dim))
        return o.transpose(x, (0, 2, 1, 3))

    # --- the key/value cache ---------------------------------------------------------
    def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> None:
        """Create a zeroed key/value cache of ``max_length`` slots for ``batch_size``
        sequences (dtype: the layer's compute dtype by default) and set its index to 0;
        then ``decode=True`` calls write their tokens into it. Called again, it replaces the
        cache."""
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_seq_len is not None and max_length > self.max_seq_len:
            raise ValueError(
                f"max_length ({max_length}) exceeds max_seq_len={self.max_seq_len}, the "
                "positions the rotary layer was made for"
            )
        shape = (batch_size, self.num_heads, max_length, self.head_dim)
        self._cache_variables(shape, dtype)

    def reset_cache(self) -> None:
        """Zero the key/value cache and set its index back to 0."""
        self._require_cache()
        for variable in (self.cache_key, self.cache_value, self.cache_index):
            self._assign(variable, self._ops.zeros_like(self._read(variable)))

    def _require_cache(self) -> None:
        if self.cache_key is None:
            raise ValueError(
                f"{type(self).__name__}: decode=True needs a key/value cache; call "
                "init_cache(batch_size, max_length) first"
            )

    def _cache_index(self) -> Any:
        """The cache index (raises ValueError without a cache)."""
        self._require_cache()
        return self._read(self.cache_index)

    def _decode(self, q: Any, k: Any, v: Any, mask: Any) -> tuple[Any, Any, Any]:
        """Write ``k``, ``v`` ``(B, H, L, d)`` at the cache index, advance it by L; return the
        whole cache and the mask of the slots each query sees (causal, the window's left
        side, and ``mask`` (broadcastable to (B, H, L, max_length)) if given)."""
        o = self._ops
        index = self._cache_index()
        # static sizes (``o.shape`` is a tensor in TensorFlow graphs)
        cache_shape = tuple(int(n) for n in self.cache_key.shape)
        batch, _, max_length, _ = cache_shape
        length = int(k.shape[2])
        if k.shape[0] != batch:
            raise ValueError(
                f"decode=True: the input's batch ({k.shape[0]}) differs from the cache's: "
                f"cache_key has shape {cache_shape} (batch, heads, max_length, head_dim)"
            )
        self._check_room(index, length, max_length)
        start = [0, 0, index, 0]
        cache_k, cache_v = self._read(self.cache_key), self._read(self.cache_value)
        cache_k = self._update_slice(cache_k, start, o.cast(k, cache_k.dtype))
        cache_v = self._update_slice(cache_v, start, o.cast(v, cache_v.dtype))
        visible = decode_visibility(index, length, max_length, self.window, q)
        full = (batch, self.num_heads, length, max_length)
        visible = o.broadcast_to(visible, full)
        if mask is not None:
            check_mask_shape(mask, full, "(batch, heads, L, max_length)")
        mask = visible if mask is None else restrict_mask(o.broadcast_to(mask, full), visible)
        # last: on torch, ``index`` is a view of the variable that the assignment overwrites
        self._assign(self.cache_key, cache_k)
        self._assign(self.cache_value, cache_v)
        self._assign(self.cache_index, index + length)
        return o.cast(cache_k, q.dtype), o.cast(cache_v, q.dtype), mask

    def _rotary_positions(self, length: int, offset: Any, positions: Any, decode: bool) -> Any:
        """The positions of ``length`` tokens: ``positions`` as given, the cache index + t
        (decoding) or ``offset + t`` (checked against ``max_seq_len`` when it is an int)."""
        if positions is not None:
            return explicit_positions(positions, offset, self.max_seq_len)
        if decode:
            return self._positions(self._cache_index(), length)
        limit = self.max_seq_len
        if isinstance(offset, int) and limit is not None and offset + length > limit:
            raise ValueError(
                f"position_offset + seq_len = {offset + length} exceeds "
                f"max_seq_len={self.max_seq_len}"
            )
        return self._positions(offset, length)

    def _attend(
        self,
        query: Any,
        key: Any,
        value: Any,
        mask: Any,
        alpha: Any,
        dropout: Any,
        rotary: Any = None,
        decode: bool = False,
    ) -> Any:
        """Attention of backend arrays; ``mask`` broadcasts to (B, H, Lq, Lk) or is None;
        ``dropout`` is None or a function applied to the attention weights; ``rotary``:
        a function of the query length giving the positions of q and k (None: no RoPE);
        ``decode``: over the key/value cache (:meth:`_decode`)."""
        o = self._ops
        if decode and self.use_performer:
            raise ValueError(
                "decode=True is not supported with use_performer=True: the linear-time "
                "readout keeps no key/value cache (use the exact mode to decode)"
            )
        q, k, v = self._heads(query, "q"), self._heads(key, "k"), self._heads(value, "v")
        if self._normalize_qk:
            q, k = nmn_array.attention.unit_heads(q), nmn_array.attention.unit_heads(k)
        if rotary is not None:
            positions = rotary(int(q.shape[2]))
            q, k = (nmn_array.rotary_embedding(t, positions, theta=self.theta) for t in (q, k))
        window, given_mask = self.window, mask is not None
        if self.causal and not decode:  # decoding is causal already
            window = causal_window(window)
        if self.use_performer:
            return self._finish(self._performer(q, k, v, mask, alpha, dropout), mask, None, q, k)
        if decode:
            if k.shape[2] != q.shape[2]:
                raise ValueError(
                    f"decode=True: key and value must have the query's length "
                    f"({q.shape[2]}), got {k.shape[2]}"
                )
            # the window's left side is in the cache mask; its right side is past the index
            k, v, mask = self._decode(q, k, v, mask)
            window = None
        elif mask is not None:
            full = (o.shape(q)[0], self.num_heads, o.shape(q)[2], o.shape(k)[2])
            # static sizes (``o.shape`` is a tensor in TensorFlow graphs)
            check_mask_shape(mask, (q.shape[0], self.num_heads, q.shape[2], k.shape[2]))
            mask = o.broadcast_to(mask, full)
        options = dict(mask=mask, alpha=alpha, epsilon=self._epsilon_arg(), window=window)
        options.update(spherical=self._spherical, normalization=self.normalization)
        options.update(power=self.power)
        if dropout is None:
            x = nmn_array.yat_attention(q, k, v, block_size=self.block_size, **options)
        else:
            # dropout needs the weights themselves: the materialised path
            x = dropout(nmn_array.yat_attention_weights(q, k, **options)) @ v
        # decoding, each query sees its own slot: only a given mask can leave it none
        keyed = given_mask or not decode
        return self._finish(x, mask if keyed else None, window if keyed else False, q, k)

    def _finish(self, x: Any, mask: Any, window: Any, q: Any, k: Any) -> Any:
        """Heads ``x (B, H, Lq, d)`` merged, the output projection, and zeros for the
        queries that see no key under ``mask`` and ``window`` (``window=False``: skip)."""
        o = self._ops
        # (B, H, Lq, d) -> (B, Lq, E)
        x = o.transpose(x, (0, 2, 1, 3))
        x = o.reshape(x, (self._batch(x), o.shape(x)[1], self.embed_dim))
        if self.out_kernel is not None:
            x = self._linear(x, "out")
        keyed = None
        if window is not False:
            keyed = keyed_queries(mask, window, o.shape(q)[2], o.shape(k)[2], q)
        if keyed is not None:
            # nmn 0.3.5: a query that sees no key in any head outputs zeros, also after the
            # output projection's bias.
            has_key = o.any(keyed, axis=(1, 3))
            x = o.where(o.expand_dims(has_key, -1), x, o.zeros_like(x))
        return x
