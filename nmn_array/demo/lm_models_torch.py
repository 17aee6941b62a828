"""The language-model demo's two transformers in PyTorch.

``yat``: token embedding, then blocks of [``RotaryYatAttention`` (causal through its
``window``) + residual, ``YatNMN`` -> ``nn.Linear`` feed-forward with no activation function +
residual], then a linear read-out; the attention and yat layers come from
``nmn_array.frameworks.torch``. ``standard``: learned positions, pre-norm blocks of softmax
attention (``F.scaled_dot_product_attention``) and a GELU MLP, LayerNorm.
"""

from __future__ import annotations

import numpy as np

from nmn_array.demo.lm import LMConfig


def version() -> str:
    """``torch <version>``."""
    import torch

    return f"torch {torch.__version__}"


def configure_before_import(threads: int) -> None:
    """Nothing to set before PyTorch starts (see :func:`configure`)."""


def configure(threads: int) -> None:
    """Use ``threads`` CPU threads for PyTorch's kernels."""
    import torch

    torch.set_num_threads(threads)


def _networks():
    """The two model classes, defined on first use so that importing this file is cheap."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from nmn_array.frameworks.torch import RotaryYatAttention, YatNMN

    class YatBlock(nn.Module):
        def __init__(self, c: LMConfig) -> None:
            super().__init__()
            # window (context - 1, 0): causal, and a query never sees further back than the
            # training windows did, so sampling past `context` characters stays in-distribution
            self.attn = RotaryYatAttention(
                c.embed, c.heads, max_seq_len=c.max_len, window=(c.context - 1, 0)
            )
            self.ff_in = YatNMN(c.embed, c.yat_hidden)
            self.ff_out = nn.Linear(c.yat_hidden, c.embed)
            # yat_norm: pre-norm RMSNorm (no learnable gain) before both sub-blocks
            self.norm = nn.RMSNorm(c.embed, elementwise_affine=False) if c.yat_norm else None

        def forward(self, x, decode: bool = False):
            norm = (lambda t: t) if self.norm is None else self.norm
            h = norm(x)
            x = x + (self.attn(h, decode=True) if decode else self.attn(h))
            return x + self.ff_out(self.ff_in(norm(x)))  # no activation: YatNMN is non-linear

    class YatLM(nn.Module):
        def __init__(self, c: LMConfig) -> None:
            super().__init__()
            self.embed = nn.Embedding(c.vocab_size, c.embed)
            self.blocks = nn.ModuleList(YatBlock(c) for _ in range(c.layers))
            self.head = nn.Linear(c.embed, c.vocab_size)

        def forward(self, ids, decode: bool = False):
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x, decode)
            return self.head(x)

    class Block(nn.Module):
        def __init__(self, c: LMConfig) -> None:
            super().__init__()
            self.heads = c.heads
            self.norm1, self.norm2 = nn.LayerNorm(c.embed), nn.LayerNorm(c.embed)
            self.qkv = nn.Linear(c.embed, 3 * c.embed, bias=False)
            self.out = nn.Linear(c.embed, c.embed, bias=False)
            self.mlp = nn.Sequential(
                nn.Linear(c.embed, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.embed)
            )

        def forward(self, x):
            b, length, e = x.shape
            q, k, v = self.qkv(self.norm1(x)).split(e, dim=-1)
            q, k, v = (t.reshape(b, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(a.transpose(1, 2).reshape(b, length, e))
            return x + self.mlp(self.norm2(x))

    class StandardLM(nn.Module):
        def __init__(self, c: LMConfig) -> None:
            super().__init__()
            self.embed = nn.Embedding(c.vocab_size, c.embed)
            self.position = nn.Embedding(c.context, c.embed)
            self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
            self.norm = nn.LayerNorm(c.embed)
            self.head = nn.Linear(c.embed, c.vocab_size)

        def forward(self, ids):
            positions = torch.arange(ids.shape[1], device=ids.device)
            x = self.embed(ids) + self.position(positions)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

    return {"yat": YatLM, "standard": StandardLM}


def count_params(kind: str, config: LMConfig) -> int:
    """Parameters of model ``kind`` ("yat" or "standard") under ``config``."""
    return sum(p.numel() for p in _networks()[kind](config).parameters())


class TorchLM:
    """A model with Adam, gradient clipping and the run's learning-rate schedule."""

    def __init__(self, kind: str, config: LMConfig, network=None) -> None:
        """``network(config)`` builds the net (default: model ``kind`` of this file)."""
        import torch

        torch.manual_seed(config.seed)
        self.kind, self.config = kind, config
        self.net = (network or _networks()[kind])(config)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.n_params = sum(p.numel() for p in self.net.parameters())
        self._step = 0

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        import torch
        import torch.nn.functional as F

        from nmn_array.demo.lm import learning_rate

        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self._step, self.config)
        self._step += 1
        self.net.train()
        logits = self.net(torch.from_numpy(x))
        loss = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).long().flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.clip)
        self.opt.step()
        return float(loss.detach())

    def eval_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean next-character cross-entropy (nats) over every position of ``x``."""
        import torch
        import torch.nn.functional as F

        self.net.eval()
        with torch.no_grad():
            logits = self.net(torch.from_numpy(x))
            loss = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).long().flatten())
        return float(loss)

    def last_logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits ``(V,)`` after the whole prefix ``ids`` (1-D), recomputed from scratch."""
        import torch

        self.net.eval()
        with torch.no_grad():
            return self.net(torch.from_numpy(ids[None, :]))[0, -1].double().numpy()

    def start_decoding(self, max_length: int) -> None:
        """An empty key/value cache of ``max_length`` slots in every attention layer."""
        for block in self.net.blocks:
            block.attn.init_cache(1, max_length)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Feed the tokens ``ids`` (1-D; several at once: a prefill) through the caches;
        logits ``(V,)`` for the token after the last."""
        import torch

        self.net.eval()
        with torch.no_grad():
            logits = self.net(torch.from_numpy(ids[None, :]), decode=True)
            return logits[0, -1].double().numpy()


def build(kind: str, config: LMConfig) -> TorchLM:
    """Model ``kind`` ("yat" or "standard") with fresh parameters seeded by ``config.seed``."""
    return TorchLM(kind, config)
