"""Flax mixed precision: NNX and Linen yat modules with ``dtype=bfloat16`` (the compute and
output dtype) over float32 parameters, or bfloat16 inputs (docs/mixed_precision.md)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
linen = pytest.importorskip("flax.linen")

from nmn_array.frameworks import linen as L  # noqa: E402
from nmn_array.frameworks import nnx as M  # noqa: E402

jnp = jax.numpy
BF16 = jnp.bfloat16
#: max |y_bf16 - y_f32| / max |y_f32| on the same float32 parameters: bfloat16 inputs
#: (2**-9 relative), outputs and, in attention, Flax's bfloat16 projections; measured at
#: most 8.4e-3 (Linen attention).
TOLERANCE = 2e-2

_RNG = np.random.default_rng(0)
X2 = jnp.asarray(_RNG.normal(size=(4, 16)), jnp.float32)
XC = jnp.asarray(_RNG.normal(size=(2, 8, 8, 3)), jnp.float32)
XA = jnp.asarray(_RNG.normal(size=(2, 6, 16)), jnp.float32)

NNX = {
    "YatNMN": (lambda **kw: M.YatNMN(16, 8, rngs=nnx.Rngs(0), **kw), X2),
    "YatConv": (lambda **kw: M.YatConv(3, 4, (3, 3), rngs=nnx.Rngs(0), **kw), XC),
    "MultiHeadAttention": (
        lambda **kw: M.MultiHeadAttention(2, 16, rngs=nnx.Rngs(0), decode=False, **kw),
        XA,
    ),
}
LINEN = {
    "YatNMN": (lambda **kw: L.YatNMN(8, **kw), X2),
    "YatConv2D": (lambda **kw: L.YatConv2D(4, (3, 3), **kw), XC),
    "MultiHeadAttention": (lambda **kw: L.MultiHeadAttention(2, qkv_features=16, **kw), XA),
}


def _scaled_error(y, ref) -> float:
    y, ref = np.asarray(y, np.float32), np.asarray(ref, np.float32)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def _finite(tree) -> bool:
    return all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("bf16_input", [False, True], ids=["f32-input", "bf16-input"])
@pytest.mark.parametrize("name", sorted(NNX))
def test_nnx_bfloat16_compute_over_float32_params(name, bf16_input):
    make, x = NNX[name]
    ref = make()
    y32 = ref(x)
    module = make(dtype=BF16)
    nnx.update(module, nnx.state(ref))
    xin = x.astype(BF16) if bf16_input else x
    y = module(xin)
    assert y.dtype == BF16
    params = jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    assert _scaled_error(y, y32) <= TOLERANCE

    def loss(m):
        return jnp.sum(m(xin).astype(jnp.float32) ** 2)

    assert _finite(nnx.grad(loss)(module))


@pytest.mark.parametrize("bf16_input", [False, True], ids=["f32-input", "bf16-input"])
@pytest.mark.parametrize("name", sorted(LINEN))
def test_linen_bfloat16_compute_over_float32_params(name, bf16_input):
    make, x = LINEN[name]
    params = make().init(jax.random.PRNGKey(0), x)
    y32 = make().apply(params, x)
    module = make(dtype=BF16)
    xin = x.astype(BF16) if bf16_input else x
    y = module.apply(params, xin)
    assert y.dtype == BF16
    assert _scaled_error(y, y32) <= TOLERANCE
    grads = jax.grad(lambda p: jnp.sum(module.apply(p, xin).astype(jnp.float32) ** 2))(params)
    assert _finite(grads)
    assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}
