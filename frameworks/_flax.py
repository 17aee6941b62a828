"""JAX code shared by the Flax NNX and Flax Linen modules: no parameters, no yat formulas.

Each function takes the raw arrays a layer holds and makes the ``nmn_array`` call, so the
conversion of flax conventions (channels-last kernels, ``lax`` padding, head-split
``(..., L, H, d)`` attention arrays, ``precision``) is written once for both APIs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from nmn_array.frameworks import _attention_api as _api
from nmn_array.frameworks._common import (
    check_mask_shape,
    check_rate,
    keyed_queries,
    lax_conv_padding,
    lax_conv_transpose_padding,
    learnable_epsilon,
    require,
)

import nmn_array

jax = require("jax")
jnp = jax.numpy
lax = jax.lax

Array = Any


def precision_scope(precision: Any) -> contextlib.AbstractContextManager:
    """``precision`` of a flax layer as a ``jax.default_matmul_precision`` scope.

    The pure functions take no precision argument, so a layer's ``precision`` (``None``, a
    string or a ``jax.lax.Precision``) sets JAX's default matmul/conv precision around the
    call.
    """
    if precision is None:
        return contextlib.nullcontext()
    if isinstance(precision, lax.Precision):
        precision = precision.name.lower()
    if not isinstance(precision, str):
        raise NotImplementedError(
            f"precision={precision!r} is not supported: use None, a string or a "
            "jax.lax.Precision (one precision for all operands)"
        )
    return jax.default_matmul_precision(precision.lower())


def raw_epsilon(epsilon: float, param_dtype: Any) -> Array:
    """The ``(1,)`` raw value of a learnable epsilon (validated; float32 for 16-bit
    parameters, as nmn stores it); float64 needs ``jax_enable_x64``, which JAX would
    otherwise silently turn into float32."""
    raw, storage = learnable_epsilon(epsilon, param_dtype)
    if storage == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "a float64 learnable epsilon needs 64-bit JAX: set jax_enable_x64 "
            "(jax.config.update('jax_enable_x64', True) or JAX_ENABLE_X64=1)"
        )
    return jnp.full((1,), raw, dtype=storage)


def softplus_epsilon(raw: Array) -> Array:
    """A learnable epsilon from its raw parameter (Decision 11), computed in >= float32."""
    if raw.dtype in (jnp.float16, jnp.bfloat16):
        raw = raw.astype(jnp.float32)
    return jax.nn.softplus(raw)


def yat(x: Array, kernel: Array, bias: Array | None, precision: Any, **options: Any) -> Array:
    """:func:`nmn_array.yat` under the layer's ``precision``."""
    with precision_scope(precision):
        return nmn_array.yat(x, kernel, bias, **options)


# --------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------
def sizes(value: int | Sequence[int] | None, nd: int) -> tuple[int, ...]:
    """A conv size argument (``None``: 1, an int, or one per dimension) as a tuple."""
    value = 1 if value is None else value
    return (value,) * nd if isinstance(value, int) else tuple(value)


def conv(layer: Any, inputs: Array, kernel: Array, bias: Array | None, **options: Any) -> Array:
    """The yat (transposed) convolution of a flax conv ``layer``: its attributes ``transposed``,
    ``strides``, ``padding`` (as ``lax.conv_general_dilated`` / ``lax.conv_transpose`` take
    it), ``kernel_dilation``, ``input_dilation`` (only 1), ``feature_group_count``,
    ``transpose_kernel``, ``precision``, ``weight_normalized`` (NNX and Linen name them
    alike; absent ones take their defaults) applied to channels-last ``inputs (*batch,
    *spatial, in)`` (any number of batch axes, or none) and a ``(*k, in, out)`` kernel
    (``(*k, out, in)`` with ``transpose_kernel``); ``options``: alpha, epsilon.
    """
    nd = kernel.ndim - 2
    strides, dilation, input_dilation = (
        sizes(getattr(layer, name, None), nd)
        for name in ("strides", "kernel_dilation", "input_dilation")
    )
    if any(d != 1 for d in input_dilation):
        raise NotImplementedError(
            f"{type(layer).__name__}(input_dilation={input_dilation!r}) is not implemented in "
            "nmn_array: nmn_array.yat_conv has no input (lhs) dilation"
        )
    options["weight_normalized"] = getattr(layer, "weight_normalized", False)
    # fold the leading batch axes (or none) into one
    batch = inputs.shape[: inputs.ndim - (nd + 1)]
    x = jnp.reshape(inputs, (-1, *inputs.shape[len(batch) :]))
    size, order = kernel.shape[:nd], (nd + 1, nd, *range(nd))  # (*k, a, b) -> (b, a, *k)
    if layer.transposed and not getattr(layer, "transpose_kernel", False):
        # lax.conv_transpose correlates the zero-inserted input with a (*k, in, out) kernel:
        # PyTorch's (in, out, *k) transposed convolution with the taps flipped (with
        # transpose_kernel, (*k, out, in) is PyTorch's layout up to a permutation)
        kernel, order = jnp.flip(kernel, axis=tuple(range(nd))), (nd, nd + 1, *range(nd))
    w = jnp.transpose(kernel, order)
    options.update(stride=strides, dilation=dilation, data_format="channels_last")
    with precision_scope(getattr(layer, "precision", None)):
        if layer.transposed:
            pads, extra = lax_conv_transpose_padding(layer.padding, size, strides, dilation)
            y = nmn_array.yat_conv_transpose(
                x, w, bias, padding=pads, output_padding=extra, **options
            )
        else:
            pads, mode = lax_conv_padding(layer.padding, size, dilation, strides, x.shape[1:-1])
            groups = getattr(layer, "feature_group_count", 1)
            y = nmn_array.yat_conv(
                x, w, bias, padding=pads, groups=groups, padding_mode=mode, **options
            )
    return jnp.reshape(y, tuple(batch) + y.shape[1:])


# --------------------------------------------------------------------------------------
# Attention on head-split (..., L, H, d) arrays
# --------------------------------------------------------------------------------------
def split_heads(x: Array, num_heads: int, normalize: bool = False) -> Array:
    """``(..., L, H * d)`` -> ``(..., L, H, d)``; ``normalize``: ``q / max(|q|, 1e-12)`` per
    head (normalize_qk, Decision 2)."""
    x = x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))
    return nmn_array.attention.unit_heads(x) if normalize else x


def rotate(t: Array, offset: Any, theta: float, positions: Array | None = None) -> Array:
    """RoPE of ``(..., L, H, d)`` at ``positions`` (as
    :func:`nmn_array.frameworks._common.explicit_positions` returns them), by default
    ``offset + arange(L)``."""
    if positions is None:
        positions = jnp.asarray(offset, jnp.int32) + jnp.arange(t.shape[-3], dtype=jnp.int32)
    rotated = nmn_array.rotary_embedding(jnp.swapaxes(t, -3, -2), positions, theta=theta)
    return jnp.swapaxes(rotated, -3, -2)


def head_mask(mask: Array | None, q: Array, k: Array) -> Array | None:
    """``mask`` broadcast to ``(..., H, Lq, Lk)`` for head-split ``q`` and ``k``."""
    if mask is None:
        return None
    full = q.shape[:-3] + (q.shape[-2], q.shape[-3], k.shape[-3])
    check_mask_shape(mask, full, "(..., heads, Lq, Lk)")
    return jnp.broadcast_to(mask, full)


def weights_hook(
    dropout_rng: Array | None,
    dropout_rate: float,
    broadcast_dropout: bool = True,
    sow: Callable[[Array], Any] | None = None,
) -> Callable[[Array], Array] | None:
    """What flax does to attention weights: hand them to ``sow``, then, with a
    ``dropout_rng``, inverted dropout (``broadcast_dropout`` shares one mask across the batch
    and head axes). None when there is nothing to do."""
    if dropout_rng is None and sow is None:
        return None

    def hook(weights: Array) -> Array:
        if sow is not None:
            sow(weights)
        if dropout_rng is None:
            return weights
        keep_prob = 1.0 - dropout_rate
        shape = weights.shape
        if broadcast_dropout:
            shape = (1,) * (weights.ndim - 2) + shape[-2:]
        keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
        return weights * (keep.astype(weights.dtype) / jnp.asarray(keep_prob, weights.dtype))

    return hook


def dropout_key(dropout_rng: Array | None, dropout_rate: float, deterministic: bool) -> Any:
    """The key that drops attention weights out, or None when dropout is off; a missing key
    where dropout is on is an error (flax's functional convention)."""
    check_rate(dropout_rate)
    if deterministic or dropout_rate == 0:
        return None
    if dropout_rng is None:
        raise ValueError(
            f"dropout_rate={dropout_rate} with deterministic=False needs a dropout_rng "
            "(a jax.random key)"
        )
    return dropout_rng


def flax_mask(mask: Array | None) -> Array | None:
    """Flax attention masks select where they are nonzero, whatever their dtype (its
    ``make_attention_mask`` gives float32 ones); additive logits go through ``bias``."""
    return mask if mask is None or mask.dtype == jnp.bool_ else mask != 0


def attend(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None,
    *,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    broadcast_dropout: bool = True,
    sow: Callable[[Array], Any] | None = None,
    precision: Any = None,
    **options: Any,
) -> Array:
    """Yat attention of head-split ``(..., L, H, d)`` arrays (``mask (..., H, Lq, Lk)``),
    with :func:`weights_hook`'s dropout and ``sow``. ``options``: bias, alpha, epsilon,
    scale (on top of ``1 / sqrt(d)``), spherical, normalization, power."""
    hook = weights_hook(dropout_rng, dropout_rate, broadcast_dropout, sow)
    with precision_scope(precision):
        return _api.attention(q, k, v, mask=mask, dropout=hook, **options)


def zero_keyless(out: Array, mask: Array | None, window: Any = None, lk: int = 0) -> Array:
    """Zero the outputs ``(..., Lq, F)`` of queries that see no key in any head under
    ``mask (..., H, Lq, Lk)`` (boolean, True = attend, or additive, -inf hides a key) and
    ``window`` (over ``lk`` keys)."""
    keyed = keyed_queries(mask, window, out.shape[-2], lk, out)
    if keyed is None:
        return out
    has_key = jnp.any(keyed, axis=(-3, -1))
    return jnp.where(has_key[..., None], out, jnp.zeros_like(out))


# --------------------------------------------------------------------------------------
# Linear-time (performer) attention
# --------------------------------------------------------------------------------------
def performer_projection(
    config: Any, head_dim: int, key: Array, epsilon: float, dtype: Any
) -> dict:
    """The performer projection (:func:`nmn_array.frameworks._performer.draw`) seeded by two
    32-bit words drawn from the JAX ``key``, as JAX arrays (floating ones in ``dtype``,
    ``degrees`` int32). The NumPy draw runs in a ``jax.pure_callback``, so a traced key
    (``jax.jit(init)``, ``nnx.eval_shape``) works too; the shapes come from a draw with
    seed 0."""
    import numpy as np
    from nmn_array.frameworks import _performer

    dtype = jax.dtypes.canonicalize_dtype(dtype)
    shapes = _performer.draw(config, head_dim, 0, epsilon)

    spec = {
        name: jax.ShapeDtypeStruct(np.shape(value), np.int32 if name == "degrees" else dtype)
        for name, value in shapes.items()
    }

    def host(words: Any) -> dict:
        drawn = _performer.draw(config, head_dim, [int(w) for w in np.asarray(words)], epsilon)
        return {name: np.asarray(value, dtype=spec[name].dtype) for name, value in drawn.items()}

    words = jax.random.bits(key, (2,), jnp.uint32)
    return jax.pure_callback(host, spec, words, vmap_method="sequential")


def performer_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None,
    config: Any,
    projection: dict,
    *,
    dropout_rng: Array | None,
    dropout_rate: float,
    precision: Any = None,
    **scalars: Any,
) -> Array:
    """The performer attention of head-split ``(..., L, H, d)`` arrays (key-padding ``mask
    (..., H, 1, Lk)``; ``scalars``: alpha, epsilon), with inverted dropout on the output
    drawn from ``dropout_rng`` (one Bernoulli per element, as nmn's NNX)."""
    from nmn_array.frameworks import _performer

    def heads_first(t: Array) -> Array:
        return jnp.swapaxes(t, -3, -2)

    with precision_scope(precision):
        out = _performer.attention(
            heads_first(q), heads_first(k), heads_first(v), config, projection, mask=mask,
            **scalars,
        )  # fmt: skip
    out = heads_first(out)
    hook = weights_hook(dropout_rng, dropout_rate, broadcast_dropout=False)
    return out if hook is None else hook(out)
