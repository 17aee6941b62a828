"""The attention demo's model in PyTorch: an attention-only causal transformer whose
attention is one of six variants (``nmn-array demo attention``).

Token and learned position embeddings (width ``d_model``), then ``layers`` pre-norm blocks
``x + out(attention(LayerNorm(x)))`` with no MLP, then LayerNorm and a linear read-out. The
attention of every variant is causal and is one call of a library function on the heads
``q, k, v (B, H, L, d_model / H)``:

``softmax``        ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``
``yat``            :func:`nmn_array.yat_attention` (``causal=True``)
``spherical_yat``  :func:`nmn_array.yat_attention` (``spherical=True, causal=True``)
``slay``, ``maclaurin``, ``radial``
                   :func:`nmn_array.linear_attention.performer_attention` (``causal=True``,
                   chunked prefix sums) with a fixed projection from
                   :func:`~nmn_array.linear_attention.performer_projection`, one per layer,
                   held as a buffer (not trained)
"""

from __future__ import annotations

import functools
from typing import Any

from nmn_array.demo.registry import ATTENTION_VARIANTS

#: ``performer_projection`` arguments of the linear variants: 128 features per token each
#: (SLAY: nmn's defaults; MAY: 128 features up to degree 8 instead of 256 up to 40; RAY:
#: 16 x 2 x 4 instead of nmn's 128 x 8 x 64 = 65536 features, which would hold a
#: (B * H * L, 65536) array per layer). The same counts as the benchmark.
FEATURES: dict[str, dict[str, int]] = {
    "slay": {"num_anchor_features": 16, "num_prf_features": 8, "num_quad_nodes": 1},
    "maclaurin": {"performer_num_features": 128, "performer_nmax": 8},
    "radial": {"performer_sketch_m": 16, "performer_num_radial": 2, "performer_radial_dim": 4},
}


@functools.cache
def _classes() -> tuple[type, type]:
    """The two module classes, defined on first use so that importing this file is cheap."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import nmn_array
    from nmn_array.linear_attention import performer_attention, performer_projection

    class DemoAttention(nn.Module):
        """Causal multi-head self-attention of one variant on ``x (B, L, d_model)``."""

        def __init__(self, d_model: int, heads: int, variant: str, seed: int) -> None:
            super().__init__()
            if variant not in ATTENTION_VARIANTS:
                raise ValueError(
                    f"variant must be one of {', '.join(ATTENTION_VARIANTS)}, got {variant!r}"
                )
            if d_model % heads:
                raise ValueError(f"d_model={d_model} is not a multiple of heads={heads}")
            self.heads, self.variant = heads, variant
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.out = nn.Linear(d_model, d_model)
            self.kind = variant if variant in FEATURES else None
            if self.kind is not None:
                arrays = performer_projection(
                    self.kind, d_model // heads, rng=seed, **FEATURES[self.kind]
                )
                self.names = tuple(arrays)
                for key, value in arrays.items():
                    dtype = torch.int64 if value.dtype.kind in "iu" else torch.float32
                    self.register_buffer(f"proj_{key}", torch.as_tensor(value, dtype=dtype))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """``x (B, L, d_model)`` -> ``(B, L, d_model)``."""
            b, length, width = x.shape
            heads = self.qkv(x).reshape(b, length, 3, self.heads, width // self.heads)
            q, k, v = heads.permute(2, 0, 3, 1, 4)  # each (B, H, L, d)
            if self.variant == "softmax":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif self.kind is None:
                spherical = self.variant == "spherical_yat"
                y = nmn_array.yat_attention(q, k, v, causal=True, spherical=spherical)
            else:
                projection = {key: getattr(self, f"proj_{key}") for key in self.names}
                y = performer_attention(q, k, v, self.kind, projection, causal=True)
            return self.out(y.transpose(1, 2).reshape(b, length, width))

    class AttentionOnlyLM(nn.Module):
        """Embeddings, ``layers`` pre-norm attention blocks (no MLP), LayerNorm, read-out."""

        def __init__(
            self, vocab: int, length: int, d_model: int, heads: int, layers: int, variant: str
        ) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            self.position = nn.Parameter(torch.randn(length, d_model) * 0.02)
            self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(layers))
            self.blocks = nn.ModuleList(
                DemoAttention(d_model, heads, variant, seed=i) for i in range(layers)
            )
            self.final = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            """Token ids ``(B, L)`` -> logits ``(B, L, vocab)``."""
            x = self.embed(ids) + self.position[: ids.shape[1]]
            for norm, block in zip(self.norms, self.blocks):
                x = x + block(norm(x))
            return self.head(self.final(x))

    return DemoAttention, AttentionOnlyLM


def build(variant: str, *, vocab: int, length: int, d_model: int, heads: int, layers: int) -> Any:
    """A fresh :class:`AttentionOnlyLM` with ``variant`` attention in every layer."""
    return _classes()[1](vocab, length, d_model, heads, layers, variant)
