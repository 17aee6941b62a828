"""Learnable epsilon in every framework module: validated at construction, stored in at
least float32, and exact in float64.

The raw parameter is ``softplus^-1(epsilon)`` (Decision 11). An epsilon the storage dtype
cannot hold as a normal number used to be accepted and to give inf (or an unrelated error)
at the first call; nmn raises a ValueError at construction, and so do we. float16/bfloat16
layers keep the raw value in float32 (nmn's rule), also after ``.half()`` / ``.to()``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.frameworks._parity import to_numpy

BAD = [(1e-46, "float32"), (1e39, "float32"), (5e-324, "float64")]


def _softplus(raw: float) -> float:
    return raw + math.log1p(math.exp(-raw)) if raw > 0 else math.log1p(math.exp(raw))


def _torch_layers(epsilon: float, dtype) -> list:
    from nmn_array.frameworks import torch as ours

    kw = {"epsilon": epsilon, "learnable_epsilon": True, "dtype": dtype}
    return [
        lambda: ours.YatNMN(4, 3, epsilon=epsilon, learnable_epsilon=True, param_dtype=dtype),
        lambda: ours.YatConv2D(2, 3, 3, **kw),
        lambda: ours.YatConvTranspose1D(2, 3, 3, **kw),
    ]


def _nnx_layers(epsilon: float, dtype) -> list:
    from flax import nnx
    from nmn_array.frameworks import nnx as ours

    kw = {"epsilon": epsilon, "learnable_epsilon": True, "param_dtype": dtype}
    return [
        lambda: ours.YatNMN(4, 3, **kw, rngs=nnx.Rngs(0)),
        lambda: ours.YatConv(2, 3, (3,), **kw, rngs=nnx.Rngs(0)),
        lambda: ours.YatConvTranspose(2, 3, (3,), **kw, rngs=nnx.Rngs(0)),
        lambda: ours.Embed(5, 4, **kw, rngs=nnx.Rngs(0)),
    ]


def _linen_layers(epsilon: float, dtype) -> list:
    from nmn_array.frameworks import linen as ours

    kw = {"epsilon": epsilon, "learnable_epsilon": True, "param_dtype": dtype}
    return [lambda: ours.YatNMN(3, **kw), lambda: ours.YatConv1D(3, (3,), **kw)]


def _tf_layers(epsilon: float, dtype) -> list:
    from nmn_array.frameworks import tf as ours

    kw = {"epsilon": epsilon, "learnable_epsilon": True, "dtype": dtype}
    return [lambda: ours.YatNMN(3, **kw), lambda: ours.YatConv1D(3, 3, **kw)]


def _dtype(framework: str, name: str):
    if framework == "torch":
        import torch

        return getattr(torch, name)
    if framework == "tf":
        import tensorflow as tf

        return getattr(tf, name)
    import jax.numpy as jnp

    return getattr(jnp, name)


LAYERS = {"torch": _torch_layers, "nnx": _nnx_layers, "linen": _linen_layers, "tf": _tf_layers}


@pytest.mark.parametrize("framework", sorted(LAYERS))
@pytest.mark.parametrize(("epsilon", "dtype"), BAD)
def test_unrepresentable_epsilon_is_refused_at_construction(framework, epsilon, dtype):
    for make in LAYERS[framework](epsilon, _dtype(framework, dtype)):
        with pytest.raises(ValueError, match="learnable epsilon"):
            make()


@pytest.mark.parametrize("framework", ["nnx", "linen"])
def test_jax_float64_parameters_need_x64(framework):
    import jax

    with jax.enable_x64(False):
        for make in LAYERS[framework](1e-5, _dtype(framework, "float64")):
            with pytest.raises(ValueError, match="jax_enable_x64"):
                make()


@pytest.mark.parametrize("convert", ["half", "to_bfloat16", "to_float64"])
def test_torch_casts_keep_the_raw_epsilon_in_float32_or_wider(convert):
    import torch
    from nmn_array.frameworks.torch import YatNMN

    layer = YatNMN(4, 3, learnable_epsilon=True, epsilon=1e-7)
    raw = float(layer.epsilon_param.detach()[0])
    if convert == "half":
        layer, want = layer.half(), torch.float32
    elif convert == "to_bfloat16":
        layer, want = layer.to(torch.bfloat16), torch.float32
    else:
        layer, want = layer.to(torch.float64), torch.float64
    assert layer.epsilon_param.dtype == want
    assert float(layer.epsilon_param.detach()[0]) == pytest.approx(raw, rel=1e-7)
    x = torch.randn(2, 4).to(layer.weight.dtype).requires_grad_(True)
    out = layer(x)
    out.float().sum().backward()
    assert out.dtype == layer.weight.dtype
    assert bool(torch.isfinite(layer.epsilon_param.grad).all())


@pytest.mark.parametrize("epsilon", [2.0**-1022, 1e-300, 1e150])
def test_float64_epsilon_is_exact(epsilon):
    """A float64 layer holds its raw epsilon to float64 precision (1 ulp-level)."""
    import jax.numpy as jnp
    import tensorflow as tf
    import torch
    from flax import nnx
    from nmn_array.frameworks import nnx as fnnx
    from nmn_array.frameworks import tf as ftf
    from nmn_array.frameworks import torch as ftorch

    layers = {
        "torch": ftorch.YatNMN(
            4, 3, learnable_epsilon=True, epsilon=epsilon, param_dtype=torch.float64
        ),
        "nnx": fnnx.YatNMN(
            4, 3, learnable_epsilon=True, epsilon=epsilon, param_dtype=jnp.float64,
            rngs=nnx.Rngs(0),
        ),
        "tf": ftf.YatNMN(3, learnable_epsilon=True, epsilon=epsilon, dtype=tf.float64),
    }  # fmt: skip
    layers["tf"].build((None, 4))
    for name, layer in layers.items():
        param = layer.epsilon_param
        raw = to_numpy(param[...] if name == "nnx" else param)
        assert raw.dtype == np.float64, name
        assert math.isclose(_softplus(float(raw[0])), epsilon, rel_tol=1e-13), name
