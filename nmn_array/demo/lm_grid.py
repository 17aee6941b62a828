"""``nmn-array demo lm --grid``: a yat transformer over a 2-D grid of characters.

The help texts are laid out as pages of ``rows`` lines of ``cols`` characters (lines cut or
padded with spaces), so that characters above and below each other are neighbours, as in
HeptapodLM's design: 2-D rotary positions (row, column), local 2-D attention (each
character sees the characters within ``radius`` rows and columns,
:func:`nmn_array.local_window_mask`), and masked-character prediction (15 % of the
characters of a page are replaced by a mask token and predicted from the rest, in both
directions). The same model with 1-D positions (the row-major index) is trained beside it on
the same pages and masks; validation bits per masked character compare the two. PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nmn_array.demo.lm import LMConfig, LMOptions, format_table, save_figure, train
from nmn_array.demo.lm_data import CharText

#: Share of each page's characters that are masked and predicted.
MASK_RATE = 0.15
#: Targets that do not count (PyTorch's cross-entropy ``ignore_index`` default).
IGNORE = -100


@dataclass(frozen=True)
class Grid:
    """The page shape and the attention neighbourhood (rows, columns)."""

    rows: int = 8
    cols: int = 32
    radius: tuple[int, int] = (2, 4)
    #: RoPE base of both models: positions here stay below 256 (1-D) or 32 (2-D), where the
    #: usual 10000 leaves most pairs turning too slowly to tell neighbours apart
    theta: float = 100.0


#: The --quick sizes: small pages, a one-layer model, few steps.
QUICK_GRID = Grid(rows=4, cols=16, radius=(1, 2))
QUICK: dict[str, Any] = dict(embed=32, heads=2, layers=1, steps=60, batch_size=8, warmup=5, evals=4)


def page_lines(ids: np.ndarray, chars: str, cols: int) -> np.ndarray:
    """The text's lines as int32 ``(n_lines, cols)``: each line cut to ``cols`` characters or
    padded with spaces.

    Examples
    --------
    >>> chars = " \\nab"
    >>> page_lines(np.array([2, 3, 1, 3, 2, 2, 2, 1], np.int32), chars, 2).tolist()
    [[2, 3], [3, 2]]
    """
    newline, space = chars.index("\n"), chars.index(" ")
    cuts = np.flatnonzero(ids == newline)
    starts = np.concatenate([[0], cuts + 1])[: len(cuts)]
    out = np.full((len(cuts), cols), space, dtype=np.int32)
    for i, (a, b) in enumerate(zip(starts, cuts)):
        line = ids[a : min(b, a + cols)]
        out[i, : len(line)] = line
    return out


def masked_pages(
    lines: np.ndarray, starts: np.ndarray, rows: int, mask_id: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pages of ``rows`` lines from each of ``starts``, flattened row-major to ``(B, rows *
    cols)``, with :data:`MASK_RATE` of the characters (at least one per page) replaced by
    ``mask_id`` in the inputs; the targets hold the masked characters and :data:`IGNORE`.
    """
    pages = lines[starts[:, None] + np.arange(rows)[None, :]].reshape(len(starts), -1)
    hidden = rng.random(pages.shape) < MASK_RATE
    hidden[np.arange(len(pages)), rng.integers(0, pages.shape[1], len(pages))] = True
    x = np.where(hidden, mask_id, pages).astype(np.int32)
    y = np.where(hidden, pages, IGNORE).astype(np.int32)
    return x, y


def grid_positions(grid: Grid, two_d: bool) -> np.ndarray:
    """int64 (row, column) of each character of a page, ``(L, 2)``; or its row-major index
    ``(L,)`` for the 1-D model.

    Examples
    --------
    >>> grid_positions(Grid(2, 3), True)[4].tolist(), grid_positions(Grid(2, 3), False).tolist()
    ([1, 1], [0, 1, 2, 3, 4, 5])
    """
    index = np.arange(grid.rows * grid.cols)
    if not two_d:
        return index
    return np.stack([index // grid.cols, index % grid.cols], axis=-1)


def _network(grid: Grid, two_d: bool):
    """The torch model class: embedding (with a mask token) -> blocks of [RotaryYatAttention
    over the local 2-D neighbourhood + residual, YatNMN -> Linear + residual] -> Linear."""
    import torch
    import torch.nn as nn

    import nmn_array
    from nmn_array.frameworks.torch import RotaryYatAttention, YatNMN

    class GridYatLM(nn.Module):
        def __init__(self, c: LMConfig) -> None:
            super().__init__()
            length = grid.rows * grid.cols
            self.embed = nn.Embedding(c.vocab_size + 1, c.embed)  # the last id masks
            self.attn = nn.ModuleList(
                RotaryYatAttention(c.embed, c.heads, max_seq_len=length, theta=grid.theta)
                for _ in range(c.layers)
            )
            self.ff_in = nn.ModuleList(YatNMN(c.embed, c.yat_hidden) for _ in range(c.layers))
            self.ff_out = nn.ModuleList(nn.Linear(c.yat_hidden, c.embed) for _ in range(c.layers))
            self.head = nn.Linear(c.embed, c.vocab_size)
            mask = nmn_array.local_window_mask((grid.rows, grid.cols), grid.radius, xp=torch)
            self.register_buffer("mask", mask, persistent=False)
            self.register_buffer(
                "positions", torch.from_numpy(grid_positions(grid, two_d)), persistent=False
            )

        def forward(self, ids):
            x = self.embed(ids)
            for attn, ff_in, ff_out in zip(self.attn, self.ff_in, self.ff_out):
                x = x + attn(x, self.mask, positions=self.positions)
                x = x + ff_out(ff_in(x))  # no activation: YatNMN is non-linear
            return self.head(x)

    return GridYatLM


@dataclass
class GridRun:
    """What :func:`execute` did: the settings and both models' results."""

    config: LMConfig
    grid: Grid
    results: list
    figure: Path


def execute(opts: LMOptions, data: CharText, *, out=print) -> GridRun:
    """Train the 2-D and the 1-D model on the same pages and masks; print the table and
    write the figure (PyTorch; :func:`nmn_array.demo.lm.check_options` rejects others)."""
    from nmn_array.demo.lm_models_torch import TorchLM

    grid = QUICK_GRID if opts.quick else Grid()
    config = LMConfig(vocab_size=data.vocab_size, seed=opts.seed, yat_hidden=128, batch_size=8)
    config = replace(config, **QUICK) if opts.quick else config
    if opts.steps is not None:
        config = replace(config, steps=opts.steps, warmup=min(config.warmup, opts.steps // 10))
    if (config.embed // config.heads) % 4:
        raise ValueError(f"2-D rotary needs a head size divisible by 4, got {config}")
    lines = {
        part: page_lines(getattr(data, part), data.chars, grid.cols) for part in ("train", "val")
    }
    mask_id = data.vocab_size

    def draw(rng):
        starts = rng.integers(0, len(lines["train"]) - grid.rows, config.batch_size)
        return masked_pages(lines["train"], starts, grid.rows, mask_id, rng)

    def held_out(limit: int | None, seed: int):
        starts = np.arange(0, len(lines["val"]) - grid.rows, grid.rows)
        starts = starts[: len(starts) // config.batch_size * config.batch_size]
        if limit is not None:  # evenly spread over the held-out text
            starts = starts[np.linspace(0, len(starts) - 1, limit).round().astype(int)]
        return masked_pages(lines["val"], starts, grid.rows, mask_id, np.random.default_rng(seed))

    val, final = held_out(2 * config.batch_size, opts.seed + 1), held_out(None, opts.seed + 2)
    log = None if opts.quiet else lambda line: out(line, flush=True)
    out(f"nmn-array demo lm --grid: masked characters on {grid.rows} x {grid.cols} pages "
        f"(torch); {len(lines['train']):,} training lines, {len(final[0])} validation pages")  # fmt: skip
    out(f"  each model: embed {config.embed} -> {config.layers} x [RotaryYatAttention "
        f"({config.heads} heads, local {2 * grid.radius[0] + 1} x {2 * grid.radius[1] + 1} "
        f"neighbourhood) + residual, YatNMN {config.embed}->{config.yat_hidden} -> Linear + "
        f"residual] -> Linear; {config.steps} steps, batch {config.batch_size} pages")  # fmt: skip
    out(f"  'yat 2-D': rotary at (row, column); 'yat 1-D': rotary at the row-major index "
        f"(theta {grid.theta:g} for both)")  # fmt: skip
    out()
    results = []
    for name, two_d in (("yat 2-D", True), ("yat 1-D", False)):
        model = TorchLM(name, config, _network(grid, two_d))
        results.append(train(model, name, config, draw, val, final, log=log))
    out()
    out(format_table(results, "torch").replace("val bits/char", "bits/masked ch"))
    two, one = results
    diff = two.bits_per_char - one.bits_per_char
    out(f"\n2-D positions are {abs(diff):.3f} bits per masked character "
        f"{'worse' if diff > 0 else 'better'} than 1-D positions")  # fmt: skip
    path = save_figure(
        results, Path(opts.out), title=f"masked characters on pages ({grid.rows} x {grid.cols})"
    )
    out(f"figure: {path}")
    return GridRun(config, grid, results, path)
