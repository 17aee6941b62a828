"""The demo's models in Flax NNX: yat layers from ``nmn_array.frameworks.nnx``, trained
with optax Adam under ``nnx.jit``."""

from __future__ import annotations

import os
import sys

import numpy as np

from nmn_array.demo.train import Config, ModelSpec


def configure_before_import(threads: int) -> None:
    """Limit XLA's CPU thread pool to ``threads`` (read once, when JAX starts; has no effect
    if JAX is already imported). For these tiny models one thread is fastest, and on a shared
    machine much faster than several."""
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        extra = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
        extra += f"intra_op_parallelism_threads={threads}"
        os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()


def configure(threads: int) -> None:
    """Nothing left to do after import (see :func:`configure_before_import`)."""


def version() -> str:
    """``flax <version>, jax <version>``."""
    import flax
    import jax

    return f"flax {flax.__version__}, jax {jax.__version__}"


def _modules():
    """The four model classes, defined on first use so that importing this file is cheap."""
    from flax import nnx

    from nmn_array.frameworks.nnx import YatConv, YatNMN

    class YatMLP(nnx.Module):
        def __init__(self, c: Config, rngs: nnx.Rngs) -> None:
            self.hidden = YatNMN(64, c.hidden, rngs=rngs)
            self.out = YatNMN(c.hidden, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(self.hidden(x))  # no activation: the yat product is non-linear

    class ReluMLP(nnx.Module):
        def __init__(self, c: Config, rngs: nnx.Rngs) -> None:
            self.hidden = nnx.Linear(64, c.hidden, rngs=rngs)
            self.out = nnx.Linear(c.hidden, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.hidden(x)))

    def pool(x):
        return nnx.avg_pool(x, (2, 2), strides=(2, 2))

    class YatCNN(nnx.Module):
        def __init__(self, c: Config, rngs: nnx.Rngs) -> None:
            c1, c2 = c.channels
            self.conv1 = YatConv(1, c1, (3, 3), padding="SAME", rngs=rngs)
            self.conv2 = YatConv(c1, c2, (3, 3), padding="SAME", rngs=rngs)
            self.out = YatNMN(c2 * 4, 10, rngs=rngs)

        def __call__(self, x):
            x = x.reshape(-1, 8, 8, 1)
            x = pool(self.conv2(pool(self.conv1(x))))
            return self.out(x.reshape(x.shape[0], -1))

    class ReluCNN(nnx.Module):
        def __init__(self, c: Config, rngs: nnx.Rngs) -> None:
            c1, c2 = c.channels
            self.conv1 = nnx.Conv(1, c1, (3, 3), padding="SAME", rngs=rngs)
            self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="SAME", rngs=rngs)
            self.out = nnx.Linear(c2 * 4, 10, rngs=rngs)

        def __call__(self, x):
            x = x.reshape(-1, 8, 8, 1)
            x = pool(nnx.relu(self.conv1(x)))
            x = pool(nnx.relu(self.conv2(x)))
            return self.out(x.reshape(x.shape[0], -1))

    return {"yat-mlp": YatMLP, "relu-mlp": ReluMLP, "yat-cnn": YatCNN, "relu-cnn": ReluCNN}


class NnxModel:
    """An NNX module with an ``nnx.Optimizer`` (optax Adam) and jitted step and forward."""

    def __init__(self, spec: ModelSpec, config: Config, first_rows: np.ndarray | None) -> None:
        import jax.numpy as jnp
        import optax
        from flax import nnx

        self.model = _modules()[spec.key](config, nnx.Rngs(config.seed))
        if first_rows is not None:  # nnx YatNMN.kernel is (in, out): one neuron per column
            self.model.hidden.kernel.value = jnp.asarray(first_rows.T)
        self.optimizer = nnx.Optimizer(self.model, optax.adam(config.lr), wrt=nnx.Param)
        self.n_params = _count(self.model)
        self._jnp = jnp

        @nnx.jit
        def step(model, optimizer, x, y):
            def loss_fn(m):
                logits = m(x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        @nnx.jit
        def forward(model, x):
            return model(x)

        self._step = step
        self._forward = forward

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(
            self._step(self.model, self.optimizer, self._jnp.asarray(x), self._jnp.asarray(y))
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(self.model, self._jnp.asarray(x)))

    def prototypes(self) -> np.ndarray | None:
        # nnx YatNMN stores neurons as columns: kernel (in, out), as nmn.nnx does.
        return np.asarray(self.model.hidden.kernel[...]).T.copy()


def _count(model) -> int:
    import jax
    from flax import nnx

    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))))


def build(spec: ModelSpec, config: Config, first_rows: np.ndarray | None = None) -> NnxModel:
    """The model ``spec`` with fresh parameters seeded by ``config.seed``; ``first_rows``
    (hidden, 64), if given, replaces the neurons of the yat MLP's first layer."""
    return NnxModel(spec, config, first_rows)
