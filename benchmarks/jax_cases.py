"""JAX cases under ``jax.jit``: our Flax NNX layers, Flax NNX's own layers, and nmn.nnx's.

Every case is the same pure function: ``nnx.split`` the module into its parameters and the
rest, and ``jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))`` of
``loss(params, x) = sum(merge(params)(x))``, so gradients flow to the parameters and to the
input. A step calls it once and blocks until the result is ready. Inputs are channels last
(Flax's layout) for the convolutions. The group ``conv-fn`` does the same without nnx:
``nmn_array.yat_conv`` against ``jax.lax.conv_general_dilated`` + bias + relu on plain
arrays, so the pure function's own cost is measured apart from the layer's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import nmn_array

from ._common import Sizes

Factory = Callable[[Sizes, nnx.Rngs], tuple[nnx.Module, jax.Array, dict]]


# --------------------------------------------------------------------------------------
# Fallback wrappers over the pure functions
# --------------------------------------------------------------------------------------
class LocalYatNMN(nnx.Module):
    """Dense yat layer with nnx's layout: ``kernel (in, out)``, ``bias (out,)``,
    ``alpha (1,)``."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.xavier_normal()
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.alpha = nnx.Param(jnp.ones((1,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (..., in)`` -> ``(..., out)``."""
        return nmn_array.yat(x, self.kernel[...].T, self.bias[...], alpha=self.alpha[...])


class LocalYatConv(nnx.Module):
    """Yat 2-D convolution, channels last, ``kernel (kh, kw, in, out)``, padding "same"."""

    def __init__(self, in_features: int, out_features: int, k: int, *, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.xavier_normal()
        self.kernel = nnx.Param(init(rngs.params(), (k, k, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.alpha = nnx.Param(jnp.ones((1,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (N, H, W, C)`` -> ``(N, H, W, O)``."""
        w = jnp.transpose(self.kernel[...], (3, 2, 0, 1))
        return nmn_array.yat_conv(
            x,
            w,
            self.bias[...],
            padding="same",
            data_format="channels_last",
            alpha=self.alpha[...],
        )


class LocalYatAttention(nnx.Module):
    """Multi-head yat self-attention with ``nnx.Linear`` q/k/v/out projections."""

    def __init__(self, num_heads: int, in_features: int, *, rngs: nnx.Rngs) -> None:
        self.num_heads = num_heads
        self.query = nnx.Linear(in_features, in_features, rngs=rngs)
        self.key = nnx.Linear(in_features, in_features, rngs=rngs)
        self.value = nnx.Linear(in_features, in_features, rngs=rngs)
        self.out = nnx.Linear(in_features, in_features, rngs=rngs)
        self.alpha = nnx.Param(jnp.ones((1,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (B, L, E)`` -> ``(B, L, E)``."""
        b, length, e = x.shape

        def heads(t: jax.Array) -> jax.Array:
            return jnp.transpose(t.reshape(b, length, self.num_heads, -1), (0, 2, 1, 3))

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        y = nmn_array.yat_attention(q, k, v, alpha=self.alpha[...])
        return self.out(jnp.transpose(y, (0, 2, 1, 3)).reshape(b, length, e))


# --------------------------------------------------------------------------------------
# Flax references
# --------------------------------------------------------------------------------------
class LinearReLU(nnx.Module):
    """``nnx.Linear`` followed by ReLU."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(in_features, out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (..., in)`` -> ``(..., out)``."""
        return jax.nn.relu(self.linear(x))


class ConvReLU(nnx.Module):
    """``nnx.Conv`` (padding "SAME") followed by ReLU."""

    def __init__(self, in_features: int, out_features: int, k: int, *, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(in_features, out_features, (k, k), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (N, H, W, C)`` -> ``(N, H, W, O)``."""
        return jax.nn.relu(self.conv(x))


class Deterministic(nnx.Module):
    """Calls an attention module as self-attention with ``deterministic=True``."""

    def __init__(self, inner: nnx.Module) -> None:
        self.inner = inner

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (B, L, E)`` -> ``(B, L, E)``."""
        return self.inner(x, deterministic=True)


# --------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------
def frameworks_module() -> Any:
    """``nmn_array.frameworks.nnx`` or None if it does not import (yet)."""
    try:
        from nmn_array.frameworks import nnx as fw
    except Exception:  # noqa: BLE001 - any failure means "use the fallback"
        return None
    needed = ("YatNMN", "YatConv", "MultiHeadAttention")
    return fw if all(hasattr(fw, name) for name in needed) else None


def ours_impl() -> str:
    """``"frameworks"`` when our side runs through ``nmn_array.frameworks.nnx``."""
    return "frameworks" if frameworks_module() is not None else "wrapper"


def _x(key: int, *shape: int) -> jax.Array:
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def dense_ours(sz: Sizes, rngs: nnx.Rngs):
    """Our YatNMN."""
    fw = frameworks_module()
    cls = fw.YatNMN if fw is not None else LocalYatNMN
    return cls(sz.dense_in, sz.dense_out, rngs=rngs), _x(1, sz.dense_batch, sz.dense_in)


def dense_native(sz: Sizes, rngs: nnx.Rngs):
    """``nnx.Linear`` + ReLU."""
    return LinearReLU(sz.dense_in, sz.dense_out, rngs=rngs), _x(1, sz.dense_batch, sz.dense_in)


def dense_nmn(sz: Sizes, rngs: nnx.Rngs):
    """nmn.nnx's YatNMN."""
    from nmn.nnx import YatNMN

    return YatNMN(sz.dense_in, sz.dense_out, rngs=rngs), _x(1, sz.dense_batch, sz.dense_in)


def _conv_x(sz: Sizes) -> jax.Array:
    return _x(2, sz.conv_batch, sz.conv_hw, sz.conv_hw, sz.conv_in)


def conv_ours(sz: Sizes, rngs: nnx.Rngs):
    """Our YatConv (padding "SAME")."""
    fw = frameworks_module()
    k = sz.conv_k
    if fw is not None:
        layer = fw.YatConv(sz.conv_in, sz.conv_out, (k, k), padding="SAME", rngs=rngs)
    else:
        layer = LocalYatConv(sz.conv_in, sz.conv_out, k, rngs=rngs)
    return layer, _conv_x(sz)


def conv_native(sz: Sizes, rngs: nnx.Rngs):
    """``nnx.Conv`` + ReLU."""
    return ConvReLU(sz.conv_in, sz.conv_out, sz.conv_k, rngs=rngs), _conv_x(sz)


def conv_nmn(sz: Sizes, rngs: nnx.Rngs):
    """nmn.nnx's YatConv (padding "SAME")."""
    from nmn.nnx import YatConv

    k = sz.conv_k
    return YatConv(sz.conv_in, sz.conv_out, (k, k), padding="SAME", rngs=rngs), _conv_x(sz)


def _attn_x(sz: Sizes) -> jax.Array:
    return _x(3, sz.attn_batch, sz.attn_len, sz.attn_dim)


def attn_ours(sz: Sizes, rngs: nnx.Rngs):
    """Our MultiHeadAttention."""
    fw = frameworks_module()
    if fw is not None:
        layer = Deterministic(
            fw.MultiHeadAttention(sz.attn_heads, sz.attn_dim, decode=False, rngs=rngs)
        )
    else:
        layer = LocalYatAttention(sz.attn_heads, sz.attn_dim, rngs=rngs)
    return layer, _attn_x(sz)


def attn_native(sz: Sizes, rngs: nnx.Rngs):
    """``nnx.MultiHeadAttention`` (dot-product softmax attention)."""
    mha = nnx.MultiHeadAttention(sz.attn_heads, sz.attn_dim, decode=False, rngs=rngs)
    return Deterministic(mha), _attn_x(sz)


def attn_nmn(sz: Sizes, rngs: nnx.Rngs):
    """nmn.nnx's MultiHeadAttention."""
    from nmn.nnx import MultiHeadAttention

    return Deterministic(MultiHeadAttention(sz.attn_heads, sz.attn_dim, rngs=rngs)), _attn_x(sz)


CASES: dict[str, dict[str, tuple[str, Any]]] = {
    "dense": {
        "ours": ("nmn_array nnx YatNMN", dense_ours),
        "native": ("nnx.Linear+relu", dense_native),
        "nmn": ("nmn 0.3.5 nnx YatNMN", dense_nmn),
    },
    "conv": {
        "ours": ("nmn_array nnx YatConv", conv_ours),
        "native": ("nnx.Conv+relu", conv_native),
        "nmn": ("nmn 0.3.5 nnx YatConv", conv_nmn),
    },
    "attention": {
        "ours": ("nmn_array nnx MultiHeadAttention", attn_ours),
        "native": ("nnx.MultiHeadAttention", attn_native),
        "nmn": ("nmn 0.3.5 nnx MultiHeadAttention", attn_nmn),
    },
}


def make_step(module: nnx.Module, x: jax.Array) -> tuple[Callable[[], Any], Callable, tuple]:
    """The jitted ``value_and_grad`` of ``sum(module(x))`` over the parameters and ``x``.

    Returns the step, the jitted function and its arguments (for cost analysis).
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(p: Any, inp: jax.Array, other: Any) -> jax.Array:
        return jnp.sum(nnx.merge(graphdef, p, other)(inp))

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    args = (params, x, rest)

    def step() -> Any:
        return jax.block_until_ready(fn(*args))

    return step, fn, args


# --------------------------------------------------------------------------------------
# Pure functions without nnx: group "conv-fn"
# --------------------------------------------------------------------------------------
def _conv_fn_params(sz: Sizes, layout: str) -> dict[str, jax.Array]:
    """Kernel (``layout`` "OIHW" or "HWIO"), zero bias; the same numbers in both layouts."""
    k = sz.conv_k
    shape = (k, k, sz.conv_in, sz.conv_out)
    kernel = nnx.initializers.xavier_normal()(jax.random.key(4), shape, jnp.float32)
    if layout == "OIHW":
        kernel = jnp.transpose(kernel, (3, 2, 0, 1))
    return {"kernel": kernel, "bias": jnp.zeros((sz.conv_out,), jnp.float32)}


def conv_fn_ours(sz: Sizes) -> tuple[Callable, dict[str, jax.Array], jax.Array]:
    """``nmn_array.yat_conv`` on channels-last input, padding "SAME", its own ``(O, C, kh,
    kw)`` filter layout, with ``alpha`` as a parameter (as in the layers)."""

    def fn(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return nmn_array.yat_conv(
            x,
            p["kernel"],
            p["bias"],
            padding="same",
            data_format="channels_last",
            alpha=p["alpha"],
        )

    params = {**_conv_fn_params(sz, "OIHW"), "alpha": jnp.ones((1,), jnp.float32)}
    return fn, params, _conv_x(sz)


def conv_fn_native(sz: Sizes) -> tuple[Callable, dict[str, jax.Array], jax.Array]:
    """``jax.lax.conv_general_dilated`` (NHWC input, HWIO kernel as Flax stores it, padding
    "SAME") + bias + relu."""

    def fn(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x,
            p["kernel"],
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jax.nn.relu(y + p["bias"])

    return fn, _conv_fn_params(sz, "HWIO"), _conv_x(sz)


#: Pure-function groups: name -> (label, factory ``(sizes) -> (fn, params, x)``).
FN_CASES: dict[str, dict[str, tuple[str, Callable]]] = {
    "conv-fn": {
        "ours": ("nmn_array.yat_conv", conv_fn_ours),
        "native": ("lax.conv_general_dilated+bias+relu", conv_fn_native),
    },
}


def make_fn_step(
    fn: Callable, params: dict[str, jax.Array], x: jax.Array
) -> tuple[Callable[[], Any], Callable, tuple]:
    """:func:`make_step` for a pure function ``fn(params, x)``: the jitted
    ``value_and_grad`` of ``sum(fn(params, x))`` over ``params`` and ``x``."""

    def loss(p: dict[str, jax.Array], inp: jax.Array) -> jax.Array:
        return jnp.sum(fn(p, inp))

    jitted = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    args = (params, x)

    def step() -> Any:
        return jax.block_until_ready(jitted(*args))

    return step, jitted, args


def build(group: str, name: str, sz: Sizes) -> Callable[[], Any]:
    """The step of one case (of :data:`CASES` or :data:`FN_CASES`)."""
    if group in FN_CASES:
        return make_fn_step(*FN_CASES[group][name][1](sz))[0]
    _, factory = CASES[group][name]
    module, x = factory(sz, nnx.Rngs(0))
    return make_step(module, x)[0]


def run_suite(sz: Sizes, skip: Collection[str] = ()) -> dict[str, Any]:
    """Time every JAX group (the nnx layers, then the pure-function group ``conv-fn``),
    interleaved within the group (compilation in the warm-up); cases named in ``skip`` are
    left out."""
    from ._common import interleaved, record, select

    impl = ours_impl()
    records = []
    for group, entries in select({**CASES, **FN_CASES}, skip).items():
        base = group.split("-")[0]  # "conv-fn" has the sizes and budget of "conv"
        steps = {name: build(group, name, sz) for name in entries}
        times = interleaved(steps, reps=sz.reps[base], warmup=sz.warmup, budget_s=sz.budget_s[base])
        for name, samples in times.items():
            if group in FN_CASES:
                kind = "function" if name == "ours" else "reference"
            else:
                kind = impl if name == "ours" else "reference"
            rec = record("jax", group, name, entries[name][0], samples, impl=kind)
            records.append(rec)
    return {"cases": records, "scaling": [], "impl": impl}


def xla_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: Any = None, **_: Any
) -> jax.Array:
    """``attention_fn`` of ``nnx.MultiHeadAttention`` running
    ``jax.nn.dot_product_attention(implementation="xla")`` (dropout and the other
    keywords are unused: the benchmark is deterministic and unmasked)."""
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="xla")


def long_case(name: str, length: int, sz: Sizes) -> tuple[nnx.Module, jax.Array]:
    """Case ``name`` of the long-context study at ``length`` tokens: our nnx
    MultiHeadAttention (the study's ``block_size``, or ``None`` for ``materialised``) or
    Flax's with the XLA dot-product attention, both with ``LinearGeneral`` q/k/v/out
    projections of the same shapes."""
    from nmn_array.frameworks import nnx as fw

    rngs = nnx.Rngs(0)
    x = _x(3, sz.long_batch, length, sz.attn_dim)
    if name == "native":
        mha = nnx.MultiHeadAttention(
            sz.attn_heads, sz.attn_dim, decode=False, attention_fn=xla_attention, rngs=rngs
        )
    else:
        block = sz.long_block if name == "ours" else None
        mha = fw.MultiHeadAttention(
            sz.attn_heads, sz.attn_dim, decode=False, block_size=block, rngs=rngs
        )
    return Deterministic(mha), x


def run_long(sz: Sizes, span: tuple[int, int]) -> dict[str, Any]:
    """The JAX part of the long-context study: ours (blocked and materialised) against
    Flax's attention with ``jax.nn.dot_product_attention(implementation="xla")``, timed
    round-robin at ``long_mid`` tokens, and XLA's temp memory of every case's compiled
    forward + backward at ``long_len`` tokens (compiled only, never run), each length
    skipped when outside ``span`` (shortest, longest)."""
    from . import long
    from ._common import interleaved, record

    names = list(long.JAX_LABELS)
    records, memory = [], []
    if span[0] <= sz.long_mid <= span[1]:
        grp = long.group(sz.long_mid)
        steps = {name: make_step(*long_case(name, sz.long_mid, sz))[0] for name in names}
        times = interleaved(
            steps, reps=sz.reps["long"], warmup=sz.warmup, budget_s=sz.budget_s["long"]
        )
        for name, samples in times.items():
            label = long.label(long.JAX_LABELS, name, sz)
            kind = "reference" if name == "native" else "frameworks"
            records.append(record("jax", grp, name, label, samples, impl=kind, x=sz.long_mid))
    if span[0] <= sz.long_len <= span[1]:
        for name in names:
            _, fn, args = make_step(*long_case(name, sz.long_len, sz))
            analysis = fn.lower(*args).compile().memory_analysis()
            temp = int(analysis.temp_size_in_bytes)
            memory.append(
                {
                    "suite": "jax",
                    "group": long.group(sz.long_len),
                    "name": name,
                    "label": long.label(long.JAX_LABELS, name, sz),
                    # the memory ratios divide peak_mb; here it is XLA's temp allocation
                    "peak_mb": temp / 2**20,
                    "temp_size_in_bytes": temp,
                    "method": "XLA compiled.memory_analysis().temp_size_in_bytes",
                    "x": sz.long_len,
                }
            )
    return {"cases": records, "memory": memory, "scaling": [], "impl": "frameworks"}


def cost_analysis(group: str, name: str, sz: Sizes) -> dict[str, float]:
    """XLA's flop and byte counts of one case's compiled forward + backward."""
    _, factory = CASES[group][name]
    module, x = factory(sz, nnx.Rngs(0))
    _, fn, args = make_step(module, x)
    compiled = fn.lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    keep = ("flops", "bytes accessed", "transcendentals")
    out = {k: float(cost.get(k, math.nan)) for k in keep}
    out.update(_wide_kernels(compiled.as_text(), _wide_numel(group, sz)))
    return out


def _wide_numel(group: str, sz: Sizes) -> int:
    if group == "dense":
        return sz.dense_batch * sz.dense_out
    if group == "conv":
        return sz.conv_batch * sz.conv_out * sz.conv_hw**2
    return sz.attn_batch * sz.attn_heads * sz.attn_len**2


def _wide_kernels(hlo: str, numel: int) -> dict[str, float]:
    """Kernels of the optimised HLO's entry computation that write an array of ``numel``
    elements or more: each is one pass over the widest tensor (``matmul_conv`` of them
    are dots/convolutions, possibly with fused epilogues)."""
    import re

    entry = hlo[hlo.index("\nENTRY") :]
    entry = entry[: entry.index("\n}")]
    wide = dots = 0
    for line in entry.splitlines():
        m = re.match(r"\s*(ROOT )?%\S+ = (\w+)\[([\d,]*)\]\{?[^ ]* (\w[\w-]*)\(", line)
        if m is None:
            continue
        dims = [int(d) for d in m.group(3).split(",") if d]
        if not dims or math.prod(dims) < numel or m.group(4) in ("parameter", "bitcast"):
            continue
        wide += 1
        if m.group(4) in ("dot", "convolution") or "ynn_fusion" in line.split("=")[0]:
            dots += 1
    return {"wide_kernels": float(wide), "matmul_conv": float(dots)}
