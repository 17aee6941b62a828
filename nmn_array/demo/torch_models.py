"""The demo's models in PyTorch: yat layers from ``nmn_array.frameworks.torch``."""

from __future__ import annotations

import numpy as np

from nmn_array.demo.train import Config, ModelSpec


def version() -> str:
    """``torch <version>``."""
    import torch

    return f"torch {torch.__version__}"


def configure_before_import(threads: int) -> None:
    """Nothing to set before PyTorch starts (see :func:`configure`)."""


def configure(threads: int) -> None:
    """Use ``threads`` CPU threads. These models are tiny: splitting each op over several
    threads costs more in synchronisation than it gains, and on a busy machine it is 10-30x
    slower than one thread (measured on 2 shared cores)."""
    import torch

    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Make initialisation reproducible (the batch order is seeded by the training loop)."""
    import torch

    torch.manual_seed(seed)


def _network(spec: ModelSpec, config: Config):
    import torch.nn as nn

    from nmn_array.frameworks.torch import YatConv2D, YatNMN

    h = config.hidden
    c1, c2 = config.channels
    if not spec.conv:
        if spec.yat:
            # No activation: the yat product is the non-linearity.
            return nn.Sequential(YatNMN(64, h), YatNMN(h, 10))
        return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, 10))
    image = nn.Unflatten(1, (1, 8, 8))
    if spec.yat:
        return nn.Sequential(
            image,
            YatConv2D(1, c1, 3, padding=1),
            nn.AvgPool2d(2),
            YatConv2D(c1, c2, 3, padding=1),
            nn.AvgPool2d(2),
            nn.Flatten(),
            YatNMN(c2 * 4, 10),
        )
    return nn.Sequential(
        image,
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4, 10),
    )


class TorchModel:
    """A ``torch.nn.Sequential`` with an Adam optimiser; with ``autocast`` (``"bfloat16"``
    or ``"float16"``) its forward passes run under ``torch.autocast("cpu", ...)``: torch's
    own layers in that dtype, the yat layers in float32 (docs/mixed_precision.md)."""

    def __init__(
        self,
        spec: ModelSpec,
        config: Config,
        first_rows: np.ndarray | None,
        autocast: str | None = None,
    ) -> None:
        import torch

        if autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast must be None, 'bfloat16' or 'float16', got {autocast!r}")
        self.autocast = autocast
        seed_everything(config.seed)
        self.net = _network(spec, config)
        if first_rows is not None:
            with torch.no_grad():  # YatNMN.weight is (out, in): one neuron per row
                self.net[0].weight.copy_(torch.from_numpy(first_rows))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.n_params = sum(p.numel() for p in self.net.parameters())

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        import torch
        import torch.nn.functional as F

        self.net.train()
        with self._amp():
            loss = F.cross_entropy(self.net(torch.from_numpy(x)), torch.from_numpy(y).long())
        # backward after the autocast region, as torch documents
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        self.net.eval()
        with torch.no_grad(), self._amp():
            return self.net(torch.from_numpy(x)).float().numpy()

    def _amp(self):
        import torch

        dtype = getattr(torch, self.autocast or "bfloat16")
        return torch.autocast("cpu", dtype=dtype, enabled=self.autocast is not None)

    def prototypes(self) -> np.ndarray | None:
        # YatNMN stores neurons as rows: weight (out, in), as nmn.torch does.
        return self.net[0].weight.detach().numpy().copy()


def build(
    spec: ModelSpec,
    config: Config,
    first_rows: np.ndarray | None = None,
    *,
    autocast: str | None = None,
) -> TorchModel:
    """The model ``spec`` with fresh parameters seeded by ``config.seed``; ``first_rows``
    (hidden, 64), if given, replaces the neurons of the yat MLP's first layer; ``autocast``
    (``"bfloat16"``, ``"float16"`` or None) trains and evaluates under ``torch.autocast``."""
    return TorchModel(spec, config, first_rows, autocast)
