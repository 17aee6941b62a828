"""JAX prototypes of the proposals in ``docs/performance.md`` (see ``README.md`` here).

Benchmark-only code (float32, no masks, ``groups=1``, padding "SAME"). Same closed-form
derivatives as ``prototypes_torch.py``: with ``r = n / q``, ``u = alpha * G * r`` and
``h = u * r * [q > eps]``, ``dL/d dot = 2 (u + h)``, ``dL/d|a|^2 = -h``, ``dL/db = 2 u``.
``python experiments/prototypes_jax.py`` checks them against nmn_array.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from nmn_array.benchmarks._common import Sizes

EPS = 1e-5


# --------------------------------------------------------------------------------------
# Dense: hand-written VJP, kernel used in nnx's (in, out) layout (no transposes)
# --------------------------------------------------------------------------------------
def _dense_fwd_core(x, kernel, bias, alpha):
    n = x @ kernel + bias
    row = jnp.sum(kernel * kernel, axis=0) + 2 * bias + EPS
    q = jnp.maximum(row - 2 * n + jnp.sum(x * x, axis=-1, keepdims=True), EPS)
    r = n / q
    return alpha * n * r, (n, q, r)


@jax.custom_vjp
def yat_dense_io(x, kernel, bias, alpha):
    """``x (B, d)``, ``kernel (d, n)``, ``bias (n,)``, ``alpha ()`` -> ``(B, n)``."""
    return _dense_fwd_core(x, kernel, bias, alpha)[0]


def _dense_fwd(x, kernel, bias, alpha):
    y, (n, q, r) = _dense_fwd_core(x, kernel, bias, alpha)
    return y, (x, kernel, n, q, r, alpha)


def _dense_bwd(res, g):
    x, kernel, n, q, r, alpha = res
    gr = g * r
    d_alpha = jnp.sum(gr * n)
    u = alpha * gr
    h = jnp.where(q > EPS, u * r, 0.0)
    s = 2 * (u + h)
    dx = s @ kernel.T - 2 * x * jnp.sum(h, axis=-1, keepdims=True)
    dk = x.T @ s - 2 * kernel * jnp.sum(h, axis=0)
    db = 2 * jnp.sum(u, axis=0)
    return dx, dk, db, jnp.reshape(d_alpha, jnp.shape(alpha))


yat_dense_io.defvjp(_dense_fwd, _dense_bwd)


class ProtoYatNMN(nnx.Module):
    """nnx layout (``kernel (in, out)``), forward through :func:`yat_dense_io`."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.xavier_normal()
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.alpha = nnx.Param(jnp.ones((1,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (B, in)`` -> ``(B, out)``."""
        return yat_dense_io(x, self.kernel[...], self.bias[...], self.alpha[...][0])


# --------------------------------------------------------------------------------------
# Conv: channels last end to end (no layout transposes), plain autodiff
# --------------------------------------------------------------------------------------
def yat_conv_nhwc(x, kernel, bias, alpha):
    """``x (N, H, W, C)``, ``kernel (kh, kw, C, O)`` -> ``(N, H, W, O)``, padding SAME."""
    dn = ("NHWC", "HWIO", "NHWC")
    n = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dn) + bias
    xsq = jnp.sum(x * x, axis=-1, keepdims=True)
    ones = jnp.ones((*kernel.shape[:2], 1, 1), x.dtype)
    psq = lax.conv_general_dilated(xsq, ones, (1, 1), "SAME", dimension_numbers=dn)
    row = jnp.sum(kernel * kernel, axis=(0, 1, 2)) + 2 * bias + EPS
    q = jnp.maximum(row - 2 * n + psq, EPS)
    return alpha * n * n / q


class ProtoYatConv(nnx.Module):
    """nnx layout (``kernel (kh, kw, in, out)``), forward through :func:`yat_conv_nhwc`."""

    def __init__(self, in_features: int, out_features: int, k: int, *, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.xavier_normal()
        self.kernel = nnx.Param(init(rngs.params(), (k, k, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.alpha = nnx.Param(jnp.ones((1,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (N, H, W, C)`` -> ``(N, H, W, O)``."""
        return yat_conv_nhwc(x, self.kernel[...], self.bias[...], self.alpha[...][0])


# --------------------------------------------------------------------------------------
# Attention: (B, L, H, d) einsums (no head transposes) and a hand-written VJP
# --------------------------------------------------------------------------------------
def _attn_probs(q, k, c):
    dot = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    qq = jnp.einsum("bqhd,bqhd->bhq", q, q)[..., None]
    kk = jnp.einsum("bkhd,bkhd->bhk", k, k)[..., None, :]
    den = jnp.maximum(qq + kk - 2 * dot, 0.0) + EPS
    r = dot / den
    return jax.nn.softmax(c * dot * r, axis=-1), dot, den, r


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def yat_attention_blhd(q, k, v, alpha, scale):
    """``q, k, v (B, L, H, d)`` -> ``(B, L, H, d)``, softmax of yat scores."""
    p = _attn_probs(q, k, alpha * scale)[0]
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


def _attn_fwd(q, k, v, alpha, scale):
    out = yat_attention_blhd(q, k, v, alpha, scale)
    return out, (q, k, v, alpha, out)


def _attn_bwd(scale, res, g):
    q, k, v, alpha, out = res
    c = alpha * scale
    p, dot, den, r = _attn_probs(q, k, c)  # recomputed: nothing L x L is saved
    dv = jnp.einsum("bhqk,bqhd->bkhd", p, g)
    dp = jnp.einsum("bqhd,bkhd->bhqk", g, v)
    delta = jnp.einsum("bqhd,bqhd->bhq", g, out)[..., None]
    a = p * (dp - delta)
    ar = a * r
    d_alpha = scale * jnp.sum(ar * dot)
    u = c * ar
    h = jnp.where(den > EPS, u * r, 0.0)
    s = 2 * (u + h)
    h_rows = jnp.transpose(jnp.sum(h, axis=-1), (0, 2, 1))[..., None]
    h_cols = jnp.transpose(jnp.sum(h, axis=-2), (0, 2, 1))[..., None]
    dq = jnp.einsum("bhqk,bkhd->bqhd", s, k) - 2 * q * h_rows
    dk = jnp.einsum("bhqk,bqhd->bkhd", s, q) - 2 * k * h_cols
    return dq, dk, dv, d_alpha


yat_attention_blhd.defvjp(_attn_fwd, _attn_bwd)


class ProtoYatAttention(nnx.Module):
    """``nnx.LinearGeneral``-free multi-head yat self-attention on (B, L, H, d) einsums."""

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
        heads = (b, length, self.num_heads, e // self.num_heads)
        q, k, v = (p(x).reshape(heads) for p in (self.query, self.key, self.value))
        scale = 1.0 / math.sqrt(heads[-1])
        y = yat_attention_blhd(q, k, v, self.alpha[...][0], scale)
        return self.out(y.reshape(b, length, e))


def dense_proto(sz: Sizes, rngs: nnx.Rngs):
    """Proposal: dense with a hand-written VJP in nnx's kernel layout."""
    x = jax.random.normal(jax.random.key(1), (sz.dense_batch, sz.dense_in), jnp.float32)
    return ProtoYatNMN(sz.dense_in, sz.dense_out, rngs=rngs), x


def conv_proto(sz: Sizes, rngs: nnx.Rngs):
    """Proposal: conv kept channels last."""
    shape = (sz.conv_batch, sz.conv_hw, sz.conv_hw, sz.conv_in)
    x = jax.random.normal(jax.random.key(2), shape, jnp.float32)
    return ProtoYatConv(sz.conv_in, sz.conv_out, sz.conv_k, rngs=rngs), x


def attn_proto(sz: Sizes, rngs: nnx.Rngs):
    """Proposal: (B, L, H, d) attention with a hand-written, recomputing VJP."""
    shape = (sz.attn_batch, sz.attn_len, sz.attn_dim)
    x = jax.random.normal(jax.random.key(3), shape, jnp.float32)
    return ProtoYatAttention(sz.attn_heads, sz.attn_dim, rngs=rngs), x


JAX_PROTOTYPES = {
    "dense": {"proto_vjp": ("prototype: custom_vjp, (in, out) kernel", dense_proto)},
    "conv": {"proto_nhwc": ("prototype: channels last end to end", conv_proto)},
    "attention": {"proto_vjp": ("prototype: BLHD einsums + custom_vjp", attn_proto)},
}


def check() -> float:
    """Compare values and gradients of each prototype with ``nmn_array.yat*`` (float32)."""
    import nmn_array

    key = jax.random.key(0)
    ks = jax.random.split(key, 8)
    worst = 0.0

    def rel(a, b):
        return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))

    def report(name, f_proto, f_ref, args):
        y0, g0 = jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(f_ref(*a))), argnums=(0, 1, 2, 3))(
            *args
        )
        y1, g1 = jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(f_proto(*a))), argnums=(0, 1, 2, 3))(
            *args
        )
        err = max([rel(y1, y0)] + [rel(a, b) for a, b in zip(g1, g0)])
        print(f"{name}: max relative error (value and gradients) {err:.2e}")
        return err

    x = jax.random.normal(ks[0], (6, 5))
    kern = jax.random.normal(ks[1], (5, 4))
    b = jax.random.normal(ks[2], (4,)) * 0.1
    a = jnp.float32(1.3)
    worst = max(
        worst,
        report(
            "dense proto_vjp",
            yat_dense_io,
            lambda x, k, b, a: nmn_array.yat(x, k.T, b, alpha=a),
            (x, kern, b, a),
        ),
    )
    x = jax.random.normal(ks[3], (2, 6, 6, 3))
    kern = jax.random.normal(ks[4], (3, 3, 3, 4))
    worst = max(
        worst,
        report(
            "conv proto_nhwc",
            yat_conv_nhwc,
            lambda x, k, b, a: nmn_array.yat_conv(
                x,
                jnp.transpose(k, (3, 2, 0, 1)),
                b,
                padding="same",
                data_format="channels_last",
                alpha=a,
            ),
            (x, kern, b, a),
        ),
    )
    q, k, v = (jax.random.normal(ks[5 + i], (2, 7, 3, 4)) for i in range(3))

    def ref_attn(q, k, v, a):
        t = (0, 2, 1, 3)
        out = nmn_array.yat_attention(
            jnp.transpose(q, t), jnp.transpose(k, t), jnp.transpose(v, t), alpha=a
        )
        return jnp.transpose(out, t)

    worst = max(
        worst,
        report(
            "attention proto_vjp",
            lambda q, k, v, a: yat_attention_blhd(q, k, v, a, 0.5),
            ref_attn,
            (q, k, v, a),
        ),
    )
    return worst


if __name__ == "__main__":
    check()
