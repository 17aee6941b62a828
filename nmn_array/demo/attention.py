"""``nmn-array demo attention``: six attention variants side by side on the synthetic copy
and reverse tasks of the SLAY paper, with an attention-only model (PyTorch).

Tasks (data drawn on the fly, a fresh batch every step)
    A sequence ``x`` of ``seq_len`` tokens (16) drawn uniformly from ``vocab`` symbols (16),
    a separator, then the target ``y``: ``y = x`` (copy) or ``y = x`` reversed (reverse).
    The model reads ``[x, sep, y]`` without its last token and predicts every next token
    (causal attention, teacher forcing); the loss is the cross-entropy on the ``seq_len``
    positions that predict ``y`` (the rest of the sequence is random and unpredictable).
Accuracy
    Per-token accuracy on the output half: the fraction of the ``seq_len`` tokens of ``y``
    whose arg-max prediction (given the true prefix) is right, over ``eval_size`` (512)
    held-out sequences drawn with a different seed. Chance is ``1 / vocab``.
Model
    :mod:`nmn_array.demo.attention_models_torch`: token + learned position embeddings,
    2 pre-norm attention-only blocks, ``d_model`` 64, 4 heads of 16, LayerNorm, linear
    read-out; the same initialisation seed and the same batches for every variant.
Variants
    softmax (SDPA), exact yat, exact spherical yat (:func:`nmn_array.yat_attention`), and
    SLAY, MAY, RAY (:func:`nmn_array.linear_attention.performer_attention`, causal, 128
    random features per token each, fixed projections).
Training
    ``steps`` (200) Adam steps of batch 64, learning rate 3e-3 with 20 warm-up steps and
    cosine decay, gradient norm clipped at 1. The twelve runs (2 tasks x 6 variants) are
    spread over ``workers`` processes (2) of one thread each.

The SLAY paper reports reverse-task accuracies of 0.51 (softmax), 0.42 (SLAY) and 0.33
(exact spherical yat); its model, sequence length and training budget are not this
demo's (three minutes of CPU), so the figures are printed beside ours for orientation, not
as a target.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from typing import Any

from nmn_array.demo import registry

#: Reverse-task accuracies of the SLAY paper.
PAPER_REVERSE = {"softmax": 0.51, "slay": 0.42, "spherical_yat": 0.33}
#: Printed names of the variants.
LABELS = {
    "softmax": "softmax (SDPA)",
    "yat": "exact yat",
    "spherical_yat": "exact spherical yat",
    "slay": "SLAY (linear)",
    "maclaurin": "MAY (linear)",
    "radial": "RAY (linear)",
}


#: Variants from the slowest to train to the fastest (measured), to balance the workers.
SLOW_FIRST = ("maclaurin", "slay", "radial", "softmax", "spherical_yat", "yat")


@dataclass(frozen=True)
class AttentionConfig:
    """Sizes and training settings of one run (every variant and task alike)."""

    seq_len: int = 16
    vocab: int = 16
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    steps: int = registry.ATTENTION_STEPS
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 20
    clip: float = 1.0
    eval_size: int = 512
    seed: int = 0


#: ``--quick`` (tests): the same model, short sequences, a few steps.
QUICK = {"seq_len": 6, "vocab": 8, "steps": registry.ATTENTION_QUICK_STEPS, "eval_size": 64}
QUICK.update(batch_size=16, warmup=2)


def make_batch(task: str, config: AttentionConfig, size: int, generator: Any) -> tuple[Any, Any]:
    """``size`` sequences of ``task``: inputs and next-token targets, int64 ``(size, 2T)``.

    Examples
    --------
    >>> import torch
    >>> x, y = make_batch("reverse", AttentionConfig(seq_len=3), 1, torch.Generator().manual_seed(0))
    >>> x.shape, y[0, 3:].tolist() == x[0, :3].flip(0).tolist()
    (torch.Size([1, 6]), True)
    """
    import torch

    t = config.seq_len
    x = torch.randint(0, config.vocab, (size, t), generator=generator)
    y = x if task == "copy" else x.flip(1)
    sep = torch.full((size, 1), config.vocab, dtype=x.dtype)
    seq = torch.cat([x, sep, y], dim=1)
    return seq[:, :-1], seq[:, 1:]


def output_accuracy(logits: Any, targets: Any, seq_len: int) -> float:
    """Per-token accuracy on the output half: the fraction of the last ``seq_len`` targets
    of every sequence that the arg-max of ``logits (B, 2T, V)`` predicts.

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([[5, 8, 1, 2]]); logits = torch.nn.functional.one_hot(y, 9).float()
    >>> logits[0, 3] = logits[0, 3].flip(0)  # a wrong guess at the last position
    >>> output_accuracy(logits, y, 2)
    0.5
    """
    pred = logits[:, -seq_len:].argmax(-1)
    return float((pred == targets[:, -seq_len:]).double().mean())


def _learning_rate(step: int, config: AttentionConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_one(task: str, variant: str, config: AttentionConfig) -> dict[str, Any]:
    """Train one model of ``variant`` on ``task``; its held-out accuracy, final training
    loss (nats, output half), parameter count and seconds."""
    import torch
    import torch.nn.functional as F

    from nmn_array.demo.attention_models_torch import build

    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build(
        variant,
        vocab=config.vocab + 1,
        length=2 * config.seq_len,
        d_model=config.d_model,
        heads=config.heads,
        layers=config.layers,
    )
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    data = torch.Generator().manual_seed(config.seed * 1000 + registry.ATTENTION_TASKS.index(task))
    t = config.seq_len
    losses = []
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = _learning_rate(step, config)
        x, y = make_batch(task, config, config.batch_size, data)
        logits = model(x)[:, t:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, t:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        losses.append(float(loss.detach()))
    held_out = torch.Generator().manual_seed(10_000 + config.seed)
    x, y = make_batch(task, config, config.eval_size, held_out)
    with torch.no_grad():
        accuracy = output_accuracy(model(x), y, t)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "task": task,
        "variant": variant,
        "accuracy": accuracy,
        "train_loss": sum(tail) / len(tail),
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - t0,
    }


def _job(args: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """One run in a worker process of one thread."""
    import torch

    torch.set_num_threads(1)
    task, variant, config = args
    return train_one(task, variant, AttentionConfig(**config))


def format_table(results: list[dict[str, Any]], config: AttentionConfig) -> str:
    """Markdown table: one row per variant, accuracy per task, the paper's reverse figure.

    Examples
    --------
    >>> rows = [{"task": "copy", "variant": "yat", "accuracy": 0.5, "seconds": 1.0}]
    >>> print(format_table(rows, AttentionConfig()).splitlines()[-1])
    | exact yat | 0.500 | - | 1 |
    """
    tasks = [t for t in registry.ATTENTION_TASKS if any(r["task"] == t for r in results)]
    got = {(r["task"], r["variant"]): r for r in results}
    lines = [
        f"| attention | {' | '.join(f'{t} acc.' for t in tasks)} | paper, reverse | seconds |",
        "|---|" + "---:|" * len(tasks) + "---:|---:|",
    ]
    for variant in registry.ATTENTION_VARIANTS:
        rows = [got.get((t, variant)) for t in tasks]
        if not any(rows):
            continue
        cells = ["-" if r is None else f"{r['accuracy']:.3f}" for r in rows]
        paper = PAPER_REVERSE.get(variant)
        seconds = sum(r["seconds"] for r in rows if r is not None)
        lines.append(
            f"| {LABELS[variant]} | {' | '.join(cells)} | "
            f"{'-' if paper is None else f'{paper:.2f}'} | {seconds:.0f} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class AttentionOptions:
    """Command-line options of ``nmn-array demo attention``."""

    steps: int | None = None
    seed: int = 0
    quick: bool = False
    workers: int = 2
    tasks: tuple[str, ...] = registry.ATTENTION_TASKS
    variants: tuple[str, ...] = registry.ATTENTION_VARIANTS
    quiet: bool = False


def check_options(opts: AttentionOptions) -> None:
    """ValueError naming the option for a task or variant that does not exist, or a
    non-positive count."""
    for name, given, known in (
        ("--tasks", opts.tasks, registry.ATTENTION_TASKS),
        ("--variants", opts.variants, registry.ATTENTION_VARIANTS),
    ):
        bad = [g for g in given if g not in known]
        if bad or not given:
            raise ValueError(
                f"{name} must name one or more of {', '.join(known)}, got {','.join(given)!r}"
            )
    for name, value in (("--steps", opts.steps), ("--workers", opts.workers)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def config_of(opts: AttentionOptions) -> AttentionConfig:
    """The :class:`AttentionConfig` the options ask for."""
    config = AttentionConfig(seed=opts.seed)
    if opts.quick:
        config = replace(config, **QUICK)
    if opts.steps is not None:
        config = replace(config, steps=opts.steps, warmup=min(config.warmup, opts.steps))
    return config


def execute(opts: AttentionOptions, *, out: Any = print) -> dict[str, Any]:
    """Run every (task, variant) of ``opts``; the config, results, table and wall time."""
    check_options(opts)
    config = config_of(opts)
    jobs = [(t, v, asdict(config)) for t in opts.tasks for v in opts.variants]
    # the slowest runs first, so that the workers finish together
    jobs.sort(key=lambda j: SLOW_FIRST.index(j[1]))

    def progress(r: dict[str, Any]) -> None:
        if not opts.quiet:
            out(
                f"  {r['task']:8s} {LABELS[r['variant']]:20s} accuracy {r['accuracy']:.3f} "
                f"({r['seconds']:.0f} s)"
            )

    t0 = time.perf_counter()
    results = []
    if opts.workers == 1:
        for task, variant, _ in jobs:
            results.append(train_one(task, variant, config))
            progress(results[-1])
    else:
        # spawn: a fork of a process that already ran torch's thread pool can deadlock
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=opts.workers, mp_context=ctx) as pool:
            for future in as_completed([pool.submit(_job, job) for job in jobs]):
                results.append(future.result())
                progress(results[-1])
    wall = time.perf_counter() - t0
    return {
        "config": config,
        "results": results,
        "table": format_table(results, config),
        "wall_s": wall,
    }


def run(opts: AttentionOptions, *, started: float | None = None, out: Any = print) -> int:
    """Print the settings, the table and the wall time; returns 0."""
    config = config_of(opts)
    out(
        f"attention-only model: {config.layers} layers, d_model {config.d_model}, "
        f"{config.heads} heads; sequences of {config.seq_len} tokens over {config.vocab} "
        f"symbols, {config.steps} steps of batch {config.batch_size}, accuracy per token on "
        f"the output half of {config.eval_size} held-out sequences (chance "
        f"{1 / config.vocab:.3f}); {opts.workers} worker process(es)"
    )
    report = execute(opts, out=out)
    out("")
    out(report["table"])
    total = time.perf_counter() - started if started is not None else report["wall_s"]
    out(
        f"\ntrained {len(report['results'])} models in {report['wall_s']:.0f} s ({total:.0f} s in all)"
    )
    return 0
