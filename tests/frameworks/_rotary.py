"""The torch ``RotaryYatAttention`` with random float64 weights, as the reference of the Keras
and TensorFlow rotary parity tests (it is itself checked against ``nmn.nnx`` in
test_torch.py), and its weights under the Keras/TF names; the cache's error checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from nmn_array.frameworks import torch as ours_torch

#: constructor arguments the parity tests cover (Keras/TF spelling: ``use_bias``)
ROTARY_CASES = [
    {},
    {"use_bias": True, "learnable_epsilon": True},
    {"normalization": "l1", "power": 2.0, "theta": 100.0},
    {"use_softermax": True, "constant_alpha": True, "use_out_proj": False},
    {"normalize_qk": True, "use_alpha": False, "epsilon": 1e-3},
    {"window": (2, 1), "block_size": 2},
]


def torch_rotary(
    embed_dim: int, num_heads: int, kwargs: dict, rng: np.random.Generator
) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """The torch module (max_seq_len 32, float64, random weights) and ``{name: value}`` of its
    weights under the Keras/TF names (``q_kernel`` (in, out), ..., ``alpha``,
    ``epsilon_param``)."""
    torch_kw = {("bias" if k == "use_bias" else k): v for k, v in kwargs.items()}
    module = ours_torch.RotaryYatAttention(embed_dim, num_heads, max_seq_len=32, **torch_kw)
    module = module.to(torch.float64)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.from_numpy(rng.normal(size=tuple(param.shape))))
        if module.alpha is not None:
            module.alpha.fill_(1.25)
        if module.epsilon_param is not None:
            module.epsilon_param.fill_(-3.0)
    names = dict(q_proj="q", k_proj="k", v_proj="v", o_proj="out")
    weights = {}
    for name, param in module.named_parameters():
        value = param.detach().numpy()
        layer, _, kind = name.partition(".")
        if kind == "weight":  # nn.Linear's (out, in)
            weights[f"{names[layer]}_kernel"] = value.T
        elif kind == "bias":
            weights[f"{names[layer]}_bias"] = value
        else:
            weights[name] = value
    return module, weights


def check_cache_errors(layer: Any, x: Any, heads: int) -> None:
    """The cache's errors on ``layer`` (an attention layer or module of ``heads`` heads,
    called on ``x`` of shape (2, 4, E) already): decode or reset before ``init_cache``, a bad
    size, a batch mismatch, a full cache (the last slot still fits), ``init_cache`` again."""
    with pytest.raises(ValueError, match="init_cache"):
        layer(x[:, :1], decode=True)
    with pytest.raises(ValueError, match="init_cache"):
        layer.reset_cache()
    with pytest.raises(ValueError, match="batch_size"):
        layer.init_cache(0, 3)
    layer.init_cache(2, 3)
    head_dim = x.shape[-1] // heads
    with pytest.raises(ValueError, match=rf"batch \(1\).*\(2, {heads}, 3, {head_dim}\)"):
        layer(x[:1, :1], decode=True)
    layer(x[:, :2], decode=True)
    with pytest.raises(ValueError, match="max_length=3, index=2, 2 new"):
        layer(x[:, 2:4], decode=True)
    layer(x[:, 2:3], decode=True)  # the last slot still fits
    layer.init_cache(1, 5)  # replaces the cache
    assert tuple(layer.cache_key.shape) == (1, heads, 5, head_dim)
