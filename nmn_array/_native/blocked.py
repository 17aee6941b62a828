"""The blocked attention of :mod:`nmn_array._blocked_attention` as a custom gradient of each
autodiff library, so its backward recomputes tiles instead of keeping them.

One ``pullback`` per library (its vector-Jacobian product of a tile's score function) and one
wrapper (``torch.autograd.Function``, ``jax.custom_vjp``, ``tf.custom_gradient``) that saves
only the inputs, the output and the per-query statistics. Libraries without autodiff run the
forward alone.

PyTorch's double backward (``create_graph=True``) differentiates the materialised path
instead, which holds the ``(Lq, Lk)`` scores again: higher derivatives are exact but not
O(L) in memory (docs/attention.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from nmn_array import _blocked_attention as blocked
from nmn_array._namespace import float32_under_autocast, is_jax, is_tf, is_torch


def run(xp: ModuleType, prob: blocked.Problem, q, k, v, extras: list, materialised: Callable):
    """The blocked attention output; ``materialised(q, k, v, *extras)`` computes the same
    with the whole score matrix (PyTorch's double backward)."""
    if is_torch(xp):
        return _LazyTorch.apply(prob, materialised, q, k, v, *extras)
    if is_jax(xp):
        return _jax(xp, prob, q, k, v, extras)
    if is_tf(xp):
        return _tf(xp, prob, q, k, v, extras)
    return blocked.forward(xp, prob, q, k, v, extras)[0]


def _filler(extras: list, index: list[int]) -> Callable[[Any], list]:
    """``fill(arrays)``: ``extras`` with the entries at ``index`` replaced by ``arrays``."""

    def fill(arrs) -> list:
        full = list(extras)
        for i, a in zip(index, arrs):
            full[i] = a
        return full

    return fill


def _primal_grads(
    xp, prob, primals, index, full, saved, dout, pullback, zeros_like, backward=blocked.backward
) -> list:
    """Cotangents of ``primals = (q, k, v, *extras at index)``, zeros where none flows."""
    q, k, v = primals[:3]
    wanted = [True, True, True] + [i in index for i in range(len(full))]
    grads = backward(xp, prob, q, k, v, full, saved, dout, pullback, wanted)
    picked = grads[:3] + [grads[3 + i] for i in index]
    return [zeros_like(p) if g is None else g for p, g in zip(primals, picked)]


def _scatter(n: int, index: list[int], values) -> list:
    out: list = [None] * n
    for i, g in zip(index, values):
        out[i] = g
    return out


# ------------------------------------------------------------------------------ torch


def _is_tensor_float(a: Any) -> bool:
    torch = sys.modules["torch"]
    return isinstance(a, torch.Tensor) and a.is_floating_point()


def _torch_pullback(fn, arrays):
    vjp = fn.closed_form(arrays[4], arrays[5]) if hasattr(fn, "closed_form") else None
    if vjp is not None:
        # the tile's closed-form pullback (no autograd graph)
        s, pull = vjp(*arrays[:4])
        return s, lambda ct: [*pull(ct), None, None]
    torch = sys.modules["torch"]
    index = [i for i, a in enumerate(arrays) if _is_tensor_float(a)]
    leaves = list(arrays)
    for i in index:
        leaves[i] = arrays[i].detach().requires_grad_()
    with torch.enable_grad():
        s = fn(*leaves)

    def pull(ct):
        grads = torch.autograd.grad(s, [leaves[i] for i in index], ct, allow_unused=True)
        return _scatter(len(arrays), index, grads)

    return s.detach(), pull


def _torch_class():
    import array_api_compat.torch as xp_torch
    import torch

    class Blocked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, prob, materialised, q, k, v, *extras):
            out, s1, s2 = blocked.forward(xp_torch, prob, q, k, v, list(extras))
            ctx.prob, ctx.materialised = prob, materialised
            ctx.floats = [None if isinstance(e, torch.Tensor) else e for e in extras]
            tensors = [e if isinstance(e, torch.Tensor) else None for e in extras]
            ctx.save_for_backward(q, k, v, out, s1, s2, *tensors)
            return out

        @staticmethod
        @float32_under_autocast  # backward() called inside an autocast region
        def backward(ctx, dout):
            q, k, v, out, s1, s2, *tensors = ctx.saved_tensors
            extras = [f if t is None else t for f, t in zip(ctx.floats, tensors)]
            wanted = list(ctx.needs_input_grad[2:])
            if torch.is_grad_enabled():
                grads = _torch_create_graph(ctx.materialised, [q, k, v, *extras], dout, wanted)
            else:
                grads = blocked.backward(
                    xp_torch, ctx.prob, q, k, v, extras, (out, s1, s2), dout,
                    _torch_pullback, wanted,
                )  # fmt: skip
            return (None, None, *grads)

    return Blocked


def _torch_create_graph(materialised, inputs, dout, wanted):
    """Gradients that can be differentiated again: autograd over the materialised path."""
    torch = sys.modules["torch"]
    index = [i for i, (a, w) in enumerate(zip(inputs, wanted)) if w]
    with torch.enable_grad():
        out = materialised(*inputs)
        grads = torch.autograd.grad(
            out, [inputs[i] for i in index], dout, create_graph=True, allow_unused=True
        )
    return _scatter(len(inputs), index, grads)


class _LazyTorch:
    """``apply`` of the torch Function, built on first use (torch imported only then)."""

    _cls: Any = None

    @classmethod
    def apply(cls, *args):
        if cls._cls is None:
            cls._cls = _torch_class()
        return cls._cls.apply(*args)


def torch_transforms_active() -> bool:
    """True inside ``torch.func`` transforms (grad, vmap, jacrev), which need the ``ctx``-free
    Function protocol: the materialised path serves them."""
    torch = sys.modules.get("torch")
    probe = getattr(getattr(torch, "_C", None), "_are_functorch_transforms_active", None)
    return bool(probe()) if probe is not None else False


# -------------------------------------------------------------------------------- jax


def _jax_pullback(fn, arrays):
    import jax
    import jax.numpy as jnp

    index = [
        i for i, a in enumerate(arrays)
        if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)
    ]  # fmt: skip

    def part(*xs):
        full = list(arrays)
        for i, x in zip(index, xs):
            full[i] = x
        return fn(*full)

    s, vjp = jax.vjp(part, *[arrays[i] for i in index])
    return s, lambda ct: _scatter(len(arrays), index, vjp(ct))


def _jax(xp, prob, q, k, v, extras):
    import jax

    from nmn_array._native import blocked_jax

    index = [i for i, e in enumerate(extras) if isinstance(e, jax.Array)]
    fill = _filler(extras, index)

    @jax.custom_vjp
    def attend(q, k, v, *arrs):
        return blocked_jax.forward(xp, prob, q, k, v, fill(arrs))[0]

    def fwd(q, k, v, *arrs):
        saved = blocked_jax.forward(xp, prob, q, k, v, fill(arrs))
        return saved[0], (q, k, v, arrs, saved)

    def bwd(res, dout):
        q, k, v, arrs, saved = res
        primals = [q, k, v, *arrs]
        return tuple(
            _primal_grads(
                xp,
                prob,
                primals,
                index,
                fill(arrs),
                saved,
                dout,
                _jax_pullback,
                xp.zeros_like,
                blocked_jax.backward,
            )
        )

    attend.defvjp(fwd, bwd)
    return attend(q, k, v, *[extras[i] for i in index])


# ------------------------------------------------------------------------- tensorflow


def _tf_pullback(fn, arrays):
    import tensorflow as tf

    index = [i for i, a in enumerate(arrays) if isinstance(a, tf.Tensor) and a.dtype.is_floating]
    with tf.GradientTape() as tape:
        for i in index:
            tape.watch(arrays[i])
        s = fn(*arrays)

    def pull(ct):
        grads = tape.gradient(s, [arrays[i] for i in index], output_gradients=ct)
        return _scatter(len(arrays), index, grads)

    return s, pull


def _tf(xp, prob, q, k, v, extras):
    import tensorflow as tf

    index = [i for i, e in enumerate(extras) if isinstance(e, tf.Tensor)]
    fill = _filler(extras, index)

    @tf.custom_gradient
    def attend(q, k, v, *arrs):
        full = fill(arrs)
        saved = blocked.forward(xp, prob, q, k, v, full)

        def grad(dout):
            primals = [q, k, v, *arrs]
            return _primal_grads(
                xp, prob, primals, index, full, saved, dout, _tf_pullback, tf.zeros_like
            )

        return saved[0], grad

    return attend(q, k, v, *[extras[i] for i in index])
