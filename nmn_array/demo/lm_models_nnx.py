"""The language-model demo's two transformers in Flax NNX, trained with optax under
``nnx.jit``.

``yat``: ``nnx.Embed``, then blocks of [``RotaryYatAttention`` (causal through its
``window``) + residual, ``YatNMN`` -> ``nnx.Linear`` feed-forward with no activation function +
residual], then a linear read-out; the attention and yat layers come from
``nmn_array.frameworks.nnx``. ``standard``: learned positions, pre-norm blocks of flax's
softmax ``nnx.MultiHeadAttention`` and a GELU MLP, LayerNorm.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nmn_array.demo.lm import LMConfig
from nmn_array.demo.nnx_models import configure, configure_before_import, version

__all__ = ["build", "configure", "configure_before_import", "count_params", "version"]


def _modules():
    """The two model classes, defined on first use so that importing this file is cheap."""
    import jax.numpy as jnp
    from flax import nnx

    from nmn_array.frameworks.nnx import RotaryYatAttention, YatNMN

    class YatBlock(nnx.Module):
        def __init__(self, c: LMConfig, rngs: nnx.Rngs) -> None:
            # window (context - 1, 0): causal, and a query never sees further back than the
            # training windows did, so sampling past `context` characters stays in-distribution
            self.attn = RotaryYatAttention(
                c.embed, c.heads, max_seq_len=c.max_len, window=(c.context - 1, 0), rngs=rngs
            )
            self.ff_in = YatNMN(c.embed, c.yat_hidden, rngs=rngs)
            self.ff_out = nnx.Linear(c.yat_hidden, c.embed, rngs=rngs)
            # yat_norm: pre-norm RMSNorm (no learnable gain) before both sub-blocks
            norm = nnx.RMSNorm(c.embed, use_scale=False, rngs=rngs) if c.yat_norm else None
            self.norm = nnx.data(norm)

        def __call__(self, x, decode: bool = False):
            norm = (lambda t: t) if self.norm is None else self.norm
            x = x + self.attn(norm(x), decode=decode)
            return x + self.ff_out(self.ff_in(norm(x)))  # no activation: YatNMN is non-linear

    class YatLM(nnx.Module):
        def __init__(self, c: LMConfig, rngs: nnx.Rngs) -> None:
            self.embed = nnx.Embed(c.vocab_size, c.embed, rngs=rngs)
            self.blocks = nnx.List([YatBlock(c, rngs) for _ in range(c.layers)])
            self.head = nnx.Linear(c.embed, c.vocab_size, rngs=rngs)

        def __call__(self, ids, decode: bool = False):
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x, decode)
            return self.head(x)

    class Block(nnx.Module):
        def __init__(self, c: LMConfig, rngs: nnx.Rngs) -> None:
            self.norm1 = nnx.LayerNorm(c.embed, rngs=rngs)
            self.norm2 = nnx.LayerNorm(c.embed, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                c.heads, c.embed, use_bias=False, decode=False, rngs=rngs
            )
            self.up = nnx.Linear(c.embed, c.hidden, rngs=rngs)
            self.down = nnx.Linear(c.hidden, c.embed, rngs=rngs)

        def __call__(self, x, mask):
            x = x + self.attn(self.norm1(x), mask=mask)
            return x + self.down(nnx.gelu(self.up(self.norm2(x)), approximate=False))

    class StandardLM(nnx.Module):
        def __init__(self, c: LMConfig, rngs: nnx.Rngs) -> None:
            self.embed = nnx.Embed(c.vocab_size, c.embed, rngs=rngs)
            self.position = nnx.Embed(c.context, c.embed, rngs=rngs)
            self.blocks = nnx.List([Block(c, rngs) for _ in range(c.layers)])
            self.norm = nnx.LayerNorm(c.embed, rngs=rngs)
            self.head = nnx.Linear(c.embed, c.vocab_size, rngs=rngs)

        def __call__(self, ids):
            x = self.embed(ids) + self.position(jnp.arange(ids.shape[1]))
            mask = nnx.make_causal_mask(ids)
            for block in self.blocks:
                x = block(x, mask)
            return self.head(self.norm(x))

    return {"yat": YatLM, "standard": StandardLM}


def _count(model) -> int:
    import jax
    from flax import nnx

    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))))


def count_params(kind: str, config: LMConfig) -> int:
    """Parameters of model ``kind`` ("yat" or "standard") under ``config``."""
    from flax import nnx

    # eval_shape: the structure without computing any initial value
    model = nnx.eval_shape(lambda: _modules()[kind](config, nnx.Rngs(0)))
    return _count(model)


def _bucket(length: int, limit: int) -> int:
    """The padded length a prefix of ``length`` tokens is recomputed at (a power of two,
    at least 16, at most ``limit``), so that ``jax.jit`` compiles a handful of shapes rather
    than one per length; the causal mask makes the padding invisible to the real positions.

    Examples
    --------
    >>> [_bucket(n, 229) for n in (1, 16, 17, 200)]
    [16, 16, 32, 229]
    """
    return min(max(16, 1 << (length - 1).bit_length()), max(limit, length))


class NnxLM:
    """An NNX model with an optax optimiser (Adam, clipping, the run's schedule)."""

    def __init__(self, kind: str, config: LMConfig) -> None:
        import jax.numpy as jnp
        import optax
        from flax import nnx

        self.kind, self.config = kind, config
        self.model = _modules()[kind](config, nnx.Rngs(config.seed))
        # the schedule of nmn_array.demo.lm.learning_rate, as optax computes it under jit
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.lr, config.warmup, config.steps, config.lr / 10
        )
        tx = optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(schedule))
        self.optimizer = nnx.Optimizer(self.model, tx, wrt=nnx.Param)
        self.n_params = _count(self.model)
        self._jnp = jnp
        # built on first use (see _pure); the state carries the caches between decode calls
        self._forward: Any = None
        self._decode: Any = None
        self._state: Any = None

        def loss_of(model, x, y):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @nnx.jit
        def step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(loss_of)(model, x, y)
            optimizer.update(model, grads)
            return loss

        self._step, self._loss = step, nnx.jit(loss_of)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        jnp = self._jnp
        return float(self._step(self.model, self.optimizer, jnp.asarray(x), jnp.asarray(y)))

    def eval_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean next-character cross-entropy (nats) over every position of ``x``."""
        return float(self._loss(self.model, self._jnp.asarray(x), self._jnp.asarray(y)))

    def _pure(self, decode: bool):
        """``model(ids, decode=decode)`` as a ``jax.jit`` function of the model's state,
        returning the logits and the new state (the caches): token-by-token sampling calls
        it hundreds of times, and ``nnx.jit`` re-walks the module graph on every call."""
        import jax
        from flax import nnx

        graphdef, _ = nnx.split(self.model)

        @jax.jit
        def run(state, ids):
            model = nnx.merge(graphdef, state)
            logits = model(ids, decode=True) if decode else model(ids)
            return logits, nnx.state(model)

        return run

    def last_logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits ``(V,)`` after the whole prefix ``ids`` (1-D), recomputed from scratch
        (padded to :func:`_bucket` of its length)."""
        from flax import nnx

        if self._forward is None:
            self._forward = self._pure(decode=False)
        padded = np.zeros((1, _bucket(len(ids), self.config.max_len)), dtype=np.int32)
        padded[0, : len(ids)] = ids
        logits, _ = self._forward(nnx.state(self.model), self._jnp.asarray(padded))
        return np.asarray(logits[0, len(ids) - 1], dtype=np.float64)

    def start_decoding(self, max_length: int) -> None:
        """An empty key/value cache of ``max_length`` slots in every attention layer."""
        from flax import nnx

        for block in self.model.blocks:
            block.attn.init_cache(1, max_length)
        if self._decode is None:  # built once the state holds the caches; reused after
            self._decode = self._pure(decode=True)
        self._state = nnx.state(self.model)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Feed the tokens ``ids`` (1-D) through the caches, one per call (NNX's decode
        takes one token at a time); logits ``(V,)`` for the token after the last."""
        if self._decode is None:
            raise ValueError("call start_decoding(max_length) before decode(ids)")
        for token in ids:
            token = self._jnp.full((1, 1), token, dtype=self._jnp.int32)
            logits, self._state = self._decode(self._state, token)
        return np.asarray(logits[0, -1], dtype=np.float64)


def build(kind: str, config: LMConfig) -> NnxLM:
    """Model ``kind`` ("yat" or "standard") with fresh parameters seeded by ``config.seed``."""
    return NnxLM(kind, config)
