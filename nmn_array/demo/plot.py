"""The demo's figure: learning curves and the first yat layer's neurons as 8x8 images.

Uses matplotlib's object API (``Figure`` + Agg canvas) rather than ``pyplot``, so it never
touches a display or the global backend of the calling program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nmn_array.demo.train import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLORS = {"yat-mlp": "C0", "relu-mlp": "C1", "yat-cnn": "C2", "relu-cnn": "C3"}


def new_figure(path: str | Path, size: tuple[float, float]) -> tuple[Figure, Path]:
    """A matplotlib ``Figure`` of ``size`` inches on an Agg canvas, and ``path`` made
    absolute with its folder created."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, path


def save_figure(results: Sequence[Result], path: str | Path, title: str = "") -> Path:
    """Write a PNG with test accuracy and training loss per epoch for every model, and the
    neurons of the yat MLP's first layer drawn as 8x8 prototype images.

    Returns the absolute path written.
    """
    fig, path = new_figure(path, (15, 4.8))
    # matplotlib's stub returns SubFigure | ndarray; a 1 x 2 grid is always the array.
    left, right = fig.subfigures(1, 2, width_ratios=(2, 1.1))  # type: ignore[misc]
    ax_acc, ax_loss = left.subplots(1, 2)
    for r in results:
        epochs = np.arange(1, len(r.test_acc) + 1)
        style = "-" if r.spec.yat else "--"
        color = _COLORS.get(r.spec.key)
        ax_acc.plot(epochs, r.test_acc, style, color=color, label=r.spec.key)
        ax_loss.plot(epochs, r.train_loss, style, color=color, label=r.spec.key)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    low = min((min(r.test_acc) for r in results if r.test_acc), default=0.0)
    ax_acc.set_ylim(max(0.0, min(low, 0.9) - 0.02), 1.0)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="training loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")

    protos = next((r.prototypes for r in results if r.prototypes is not None), None)
    if protos is not None:
        _draw_prototypes(right, protos)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


def _draw_prototypes(subfig, protos: np.ndarray, limit: int = 64) -> None:
    """Each neuron ``w_j`` (64 weights) as an 8x8 image: the digit-like shape it responds to
    most, since the yat product peaks where the input is close to ``w_j`` and aligned with it."""
    protos = protos[:limit]
    n = len(protos)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    axes = np.atleast_1d(subfig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, w in zip(axes, protos):
        ax.imshow(w.reshape(8, 8), cmap="gray_r", interpolation="nearest")
    subfig.suptitle(f"yat-mlp: first-layer neurons as 8x8 images ({n})")
