"""The framework-neutral part of training: model catalogue, batches, progress bar, results.

Every framework module (``torch_models``, ``nnx_models``, ``keras_models``, ``tf_models``)
provides ``build(spec, config) -> Trainable``; :func:`fit` drives any of them with the same
batches in the same order, so the four models of a run differ only in their layers.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from nmn_array.demo.data import Digits


@dataclass(frozen=True)
class ModelSpec:
    """One of the demo's four models.

    Attributes
    ----------
    key : str
        Short name used in the table and the figure (``"yat-mlp"``).
    yat : bool
        True for the activation-free yat model, False for its ReLU baseline.
    conv : bool
        True for the CNNs, which see the digits as 8x8x1 images.
    layers : str
        The architecture in one line.
    """

    key: str
    yat: bool
    conv: bool
    layers: str


def model_specs(hidden: int = 64, channels: tuple[int, int] = (16, 32)) -> tuple[ModelSpec, ...]:
    """The four models: yat MLP, ReLU MLP, yat CNN, ReLU CNN (yat first in each pair).

    Examples
    --------
    >>> [s.key for s in model_specs()]
    ['yat-mlp', 'relu-mlp', 'yat-cnn', 'relu-cnn']
    """
    c1, c2 = channels
    flat = c2 * 2 * 2
    return (
        ModelSpec("yat-mlp", True, False, f"YatNMN 64->{hidden} -> YatNMN {hidden}->10"),
        ModelSpec("relu-mlp", False, False, f"Linear 64->{hidden} -> ReLU -> Linear {hidden}->10"),
        ModelSpec(
            "yat-cnn",
            True,
            True,
            f"YatConv2D 3x3 1->{c1} -> avgpool 2 -> YatConv2D 3x3 {c1}->{c2} -> avgpool 2 "
            f"-> YatNMN {flat}->10",
        ),
        ModelSpec(
            "relu-cnn",
            False,
            True,
            f"Conv2D 3x3 1->{c1} -> ReLU -> avgpool 2 -> Conv2D 3x3 {c1}->{c2} -> ReLU "
            f"-> avgpool 2 -> Linear {flat}->10",
        ),
    )


@dataclass(frozen=True)
class Config:
    """Hyper-parameters shared by all models of a run (Adam, cross-entropy on logits)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-3
    hidden: int = 64
    channels: tuple[int, int] = (16, 32)
    seed: int = 0


class Trainable(Protocol):
    """What :func:`fit` needs from a framework's model."""

    n_params: int

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimiser step on a batch (``x`` float32 (B, 64), ``y`` int32); the loss."""

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores for ``x`` (float32 (N, 64)) as a NumPy array (N, 10)."""

    def prototypes(self) -> np.ndarray | None:
        """The first yat dense layer's neurons as rows of 64 pixels, or None."""


@dataclass
class Result:
    """What one trained model reports: final test accuracy, size, time and curves."""

    spec: ModelSpec
    n_params: int
    seconds: float = 0.0
    train_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    prototypes: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        """Test accuracy after the last epoch (no early stopping on the test set)."""
        return self.test_acc[-1] if self.test_acc else float("nan")


def accuracy(model: Trainable, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` whose highest class score is the label ``y``."""
    return float(np.mean(np.argmax(model.logits(x), axis=-1) == y))


def batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of shuffled index batches; the last partial batch is dropped, so every step
    has the same shape and compiled frameworks (JAX, tf.function) trace once.

    Examples
    --------
    >>> [b.shape for b in batches(10, 4, np.random.default_rng(0))]
    [(4,), (4,)]
    """
    order = rng.permutation(n)
    steps = max(n // batch_size, 1)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def fit(
    model: Trainable,
    spec: ModelSpec,
    data: Digits,
    config: Config,
    *,
    progress: bool = True,
) -> Result:
    """Train ``model`` for ``config.epochs`` epochs and record its curves.

    The batch order depends only on ``config.seed``, so every model of a run sees the same
    batches. ``seconds`` is the wall time of the training steps, including any JIT
    compilation, and excludes the per-epoch test evaluation that draws the curves.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(config.seed)
    n = len(data.x_train)
    steps = max(n // config.batch_size, 1)
    result = Result(spec, model.n_params)
    bar = tqdm(
        total=config.epochs * steps,
        desc=f"{spec.key:<8}",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    with bar:
        for _ in range(config.epochs):
            losses = []
            start = time.perf_counter()
            for idx in batches(n, config.batch_size, rng):
                losses.append(model.train_step(data.x_train[idx], data.y_train[idx]))
                bar.update(1)
            result.seconds += time.perf_counter() - start
            result.train_loss.append(float(np.mean(losses)))
            result.test_acc.append(accuracy(model, data.x_test, data.y_test))
            bar.set_postfix(loss=f"{result.train_loss[-1]:.4f}", test=f"{result.test_acc[-1]:.3f}")
    result.prototypes = model.prototypes() if spec.yat and not spec.conv else None
    return result
