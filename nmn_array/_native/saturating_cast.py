"""float16 -> float32 casts whose gradient saturates instead of overflowing.

float16 inputs are computed in float32 (Decision 3). Near ``x == w`` a yat gradient easily
exceeds float16's largest value (65504), and the plain cast's backward (float32 cotangent
to float16) turns it into inf, then NaN in the optimiser. These casts clip the cotangent to
float16's range on the way back, as nmn does, so a float16 model keeps finite gradients.
Libraries without autodiff (NumPy, Dask, CuPy, array-api-strict) use the plain cast.

Examples
--------
>>> import torch
>>> x = torch.tensor([1.0], dtype=torch.float16, requires_grad=True)
>>> (upcast(torch, x, torch.float32) * 1e6).sum().backward()
>>> x.grad.item()
65504.0
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from nmn_array._namespace import is_jax, is_mlx, is_tf, is_torch

#: float16's largest finite value (bfloat16 has float32's range and needs no clipping)
FLOAT16_MAX = 65504.0


def _torch_tracing(torch: Any) -> bool:
    # Deployment graphs (TorchScript traces, ONNX export) take plain ops; they need no
    # backward, and a Python autograd Function in them cannot be saved.
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


@functools.cache
def _torch_upcast() -> Any:
    import torch

    class SaturatingUpcast(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(a: Any, dtype: Any) -> Any:
            return a.to(dtype)

        @staticmethod
        def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
            ctx.source, ctx.target = inputs[0].dtype, inputs[1]

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            # out of place and differentiable: double backward and torch.func see plain ops
            return grad.clamp(-FLOAT16_MAX, FLOAT16_MAX).to(ctx.source), None

        @staticmethod
        def jvp(ctx: Any, tangent: Any, _: Any) -> Any:
            return tangent.to(ctx.target)

    return SaturatingUpcast.apply


@functools.cache
def _jax_upcast(dtype: Any) -> Any:
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def upcast(a: Any) -> Any:
        return a.astype(dtype)

    def forward(a: Any) -> tuple[Any, Any]:
        # the residual is a zero-size array of the source dtype: the dtype, without the data
        return a.astype(dtype), jnp.zeros((0,), dtype=a.dtype)

    def backward(source: Any, grad: Any) -> tuple[Any]:
        return (jnp.clip(grad, -FLOAT16_MAX, FLOAT16_MAX).astype(source.dtype),)

    upcast.defvjp(forward, backward)
    return upcast


@functools.cache
def _tf_upcast(dtype: Any) -> Any:
    import tensorflow as tf

    @tf.custom_gradient
    def upcast(t: Any) -> Any:
        def grad(g: Any) -> Any:
            return tf.cast(tf.clip_by_value(g, -FLOAT16_MAX, FLOAT16_MAX), t.dtype)

        return tf.cast(t, dtype), grad

    return upcast


@functools.cache
def _mlx_upcast(dtype: Any) -> Any:
    import mlx.core as mx

    @mx.custom_function
    def upcast(a: Any) -> Any:
        return a.astype(dtype)

    @upcast.vjp
    def backward(primals: Any, cotangent: Any, output: Any) -> Any:
        # a one-argument custom function gets its primal bare, not in a tuple
        a = primals[0] if isinstance(primals, (tuple, list)) else primals
        return mx.clip(cotangent, -FLOAT16_MAX, FLOAT16_MAX).astype(a.dtype)

    return upcast


def upcast(xp: Any, a: Any, dtype: Any) -> Any:
    """``a`` (float16, an array of the autodiff namespace ``xp``) as ``dtype`` (float32 or
    wider) with a saturating gradient."""
    if is_torch(xp):
        torch = sys.modules["torch"]
        if not (torch.is_grad_enabled() and a.requires_grad) or _torch_tracing(torch):
            return a.to(dtype)
        return _torch_upcast()(a, dtype)
    if is_jax(xp):
        return _jax_upcast(dtype)(a)
    if is_tf(xp):
        return _tf_upcast(dtype)(sys.modules["tensorflow"].convert_to_tensor(a))
    if is_mlx(xp):
        return _mlx_upcast(dtype)(a)
    raise TypeError(f"no saturating cast for arrays of type {type(a).__name__}")
