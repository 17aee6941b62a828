"""``nmn-array demo lm``: a yat transformer and a standard one of the same size, trained
side by side as character-level language models on CPython's help texts.

The framework modules (``lm_models_torch``, ``lm_models_nnx``) provide
``build(kind, config)`` for ``kind`` in ``"yat"`` and ``"standard"``; everything else here
is framework-neutral: the widths that give both models the same parameter count, the
learning-rate schedule, the batches (the same for both models), validation, sampling with
and without the key/value cache, the table and the figure.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nmn_array.demo import registry
from nmn_array.demo.lm_data import CharText, windows

DEFAULT_OUT = registry.LM_DEFAULT_OUT
PROMPT = "The for statement is used to "
#: Parameter counts of the two models must agree within this fraction.
PARAM_TOLERANCE = 0.02


@dataclass(frozen=True)
class LMConfig:
    """Sizes and training settings shared by both models of a run.

    ``hidden`` is the standard model's MLP width; ``yat_hidden`` (the yat feed-forward
    width) is chosen by :func:`match_widths` so that both models have the same number of
    parameters. ``max_len`` bounds positions while sampling (rotary ``max_seq_len``).
    """

    vocab_size: int
    context: int = 64
    embed: int = 64
    heads: int = 4
    layers: int = 2
    hidden: int = 256
    yat_hidden: int = 256
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    clip: float = 1.0
    seed: int = 0
    max_len: int = 512
    evals: int = 12
    yat_norm: bool = False


#: The --quick sizes (for tests: a one-layer model of about 16,000 parameters).
QUICK: dict[str, Any] = {
    "context": 32,
    "embed": 32,
    "heads": 2,
    "layers": 1,
    "hidden": 64,
    "steps": 60,
}
QUICK.update(batch_size=16, warmup=5, evals=4)


class LanguageModel(Protocol):
    """What the training loop and the sampler need from a framework's model."""

    n_params: int

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimiser step on int32 ``(B, T)`` inputs and targets; the mean loss (nats)."""

    def eval_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean next-character cross-entropy (nats) of ``x`` against ``y``."""

    def last_logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits ``(V,)`` after the prefix ``ids`` (1-D), recomputed from scratch."""

    def start_decoding(self, max_length: int) -> None:
        """Empty key/value caches of ``max_length`` slots."""

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Feed the int32 tokens ``ids`` (1-D) through the caches; logits ``(V,)`` for the
        token after the last of them."""


def learning_rate(step: int, config: LMConfig) -> float:
    """Linear warm-up from 0 to ``lr`` over ``warmup`` steps, then cosine decay to
    ``lr / 10`` at ``steps`` (optax's ``warmup_cosine_decay_schedule``).

    Examples
    --------
    >>> c = LMConfig(vocab_size=10, steps=100, warmup=10, lr=1.0)
    >>> [round(learning_rate(s, c), 3) for s in (0, 5, 10, 100)]
    [0.0, 0.5, 1.0, 0.1]
    """
    if step < config.warmup:
        return config.lr * step / config.warmup
    span = max(config.steps - config.warmup, 1)
    progress = min((step - config.warmup) / span, 1.0)
    end = config.lr / 10
    return end + (config.lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def match_widths(models, config: LMConfig) -> LMConfig:
    """``config`` with the ``yat_hidden`` whose yat model has as many parameters as the
    standard one (parameters grow linearly with that width; the nearest integer is taken).

    Raises
    ------
    ValueError
        If no positive width gets within :data:`PARAM_TOLERANCE`.
    """
    target = models.count_params("standard", config)
    low, high = (models.count_params("yat", replace(config, yat_hidden=h)) for h in (16, 32))
    per_unit = (high - low) / 16
    width = round(16 + (target - low) / per_unit)
    matched = replace(config, yat_hidden=max(width, 1))
    got = models.count_params("yat", matched)
    if width < 1 or abs(got - target) > PARAM_TOLERANCE * target:
        raise ValueError(
            f"cannot match the standard model's {target:,} parameters with the yat model "
            f"(embed={config.embed}, layers={config.layers}, hidden={config.hidden}): "
            f"yat_hidden={width} gives {got:,}"
        )
    return matched


@dataclass
class LMResult:
    """One trained model: size, training time and the loss curves (nats per character)."""

    kind: str
    n_params: int
    seconds: float = 0.0
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    final_val: float = float("nan")

    @property
    def bits_per_char(self) -> float:
        """Validation loss on the whole validation text, in bits per character."""
        return self.final_val / math.log(2)


def validation_windows(ids: np.ndarray, length: int, limit: int | None = None, multiple: int = 1):
    """The validation text cut into consecutive windows of ``length`` characters (inputs and
    next characters, int32 ``(N, length)``), as many as fit rounded down to a ``multiple``
    (so that every evaluation batch has one shape: compiled frameworks trace once); only
    ``limit`` evenly spaced ones if given.

    Examples
    --------
    >>> x, y = validation_windows(np.arange(16, dtype=np.int32), 5)
    >>> x.tolist(), y[:, -1].tolist()
    ([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], [5, 10, 15])
    >>> len(validation_windows(np.arange(16, dtype=np.int32), 5, multiple=2)[0])
    2
    """
    n = (len(ids) - 1) // length // multiple * multiple
    x = ids[: n * length].reshape(n, length)
    y = ids[1 : n * length + 1].reshape(n, length)
    if limit is not None and limit < n:
        keep = np.linspace(0, n - 1, limit).round().astype(int)
        x, y = x[keep], y[keep]
    return x, y


def evaluate(model: LanguageModel, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Mean loss (nats per character) of ``model`` over the windows ``x``/``y``, evaluated
    in batches of ``batch_size`` (the last one may be shorter)."""
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        total += model.eval_loss(xb, yb) * len(xb)
    return total / len(x)


def fit(model: LanguageModel, kind: str, data: CharText, config: LMConfig, *, log=None) -> LMResult:
    """Train ``model`` for ``config.steps`` steps on random training windows (the same ones
    for every model of a run: they depend only on ``config.seed``), evaluating on a fixed
    subset of the validation windows ``config.evals`` times, then on all of them (but the
    last partial batch: at most ``batch_size - 1`` windows of the 10 % held out).

    ``seconds`` is the wall time of the training steps (JIT compilation included, the
    evaluations excluded). ``log``, if given, is called with one progress line per
    evaluation.
    """
    return train(
        model,
        kind,
        config,
        lambda rng: windows(data.train, config.batch_size, config.context, rng),
        validation_windows(data.val, config.context, limit=4 * config.batch_size),
        validation_windows(data.val, config.context, multiple=config.batch_size),
        log=log,
    )


def train(model: LanguageModel, kind: str, config: LMConfig, draw, val, final, *, log=None):
    """The training loop of :func:`fit`: ``config.steps`` steps on ``draw(rng)`` batches
    (``rng`` seeded by ``config.seed``), ``config.evals`` evaluations on the ``(x, y)``
    arrays ``val`` and one on ``final`` at the end; an :class:`LMResult`."""
    rng = np.random.default_rng(config.seed)
    result = LMResult(kind, model.n_params)
    marks = set(np.linspace(0, config.steps, config.evals + 1).round().astype(int)[1:])
    losses: list[float] = []
    for step in range(1, config.steps + 1):
        x, y = draw(rng)
        start = time.perf_counter()
        losses.append(model.train_step(x, y))
        result.seconds += time.perf_counter() - start
        if step in marks:
            result.steps.append(step)
            result.train_loss.append(float(np.mean(losses)))
            result.val_loss.append(evaluate(model, val[0], val[1], config.batch_size))
            losses = []
            if log is not None:
                log(
                    f"  {kind:<8} step {step:>5}/{config.steps}  train "
                    f"{result.train_loss[-1] / math.log(2):.3f}  val "
                    f"{result.val_loss[-1] / math.log(2):.3f} bits/char  "
                    f"({result.seconds:.0f} s)"
                )
    result.final_val = evaluate(model, final[0], final[1], config.batch_size)
    return result


def pick(logits: np.ndarray, u: float, temperature: float) -> int:
    """The token whose cumulative softmax probability (at ``temperature``; 0: greedy) first
    exceeds ``u`` in [0, 1).

    Examples
    --------
    >>> pick(np.log(np.array([0.2, 0.5, 0.3])), 0.6, 1.0), pick(np.zeros(3) + [0, 1, 0], 0.0, 0)
    (1, 1)
    """
    if temperature == 0:
        return int(np.argmax(logits))
    z = (logits - logits.max()) / temperature
    p = np.exp(z)
    cdf = np.cumsum(p / p.sum())
    return min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)


def sample(
    model: LanguageModel,
    prompt: np.ndarray,
    n: int,
    *,
    seed: int,
    temperature: float,
    cached: bool,
) -> tuple[list[int], float]:
    """``n`` new tokens after ``prompt`` (int32 ids) and the seconds they took.

    ``cached``: the prompt goes through the key/value caches (at once where the framework's
    cache takes several tokens), then each new token; otherwise every new token recomputes
    the whole prefix. The random draws
    depend only on ``seed``, so both ways give the same tokens when the logits agree.
    """
    if len(prompt) < 1:
        raise ValueError("the prompt must have at least one character")
    draws = np.random.default_rng(seed).random(n)
    ids = [int(t) for t in prompt]
    start = time.perf_counter()
    if cached:
        model.start_decoding(len(prompt) + n)
        logits = model.decode(np.asarray(ids, dtype=np.int32))
    for i in range(n):
        if not cached:
            logits = model.last_logits(np.asarray(ids, dtype=np.int32))
        ids.append(pick(logits, draws[i], temperature))
        if cached and i + 1 < n:
            logits = model.decode(np.asarray(ids[-1:], dtype=np.int32))
    return ids[len(prompt) :], time.perf_counter() - start


def compare_decoding(
    model: LanguageModel, prompt: np.ndarray, n: int, *, seed: int, temperature: float
) -> tuple[list[int], float, float]:
    """Sample ``n`` tokens with the cache and by recomputing the prefix, twice each (the
    first round compiles what the framework compiles; the second is timed); returns the
    tokens and the seconds of the timed cached and uncached rounds.

    Raises
    ------
    RuntimeError
        If the four samples are not the same tokens.
    """
    rounds = [
        sample(model, prompt, n, seed=seed, temperature=temperature, cached=cached)
        for _ in range(2)
        for cached in (True, False)
    ]
    tokens = rounds[0][0]
    for (other, _), how in zip(rounds[1:], ("uncached", "cached again", "uncached again")):
        if other != tokens:
            raise RuntimeError(
                f"sampling with the key/value cache and {how} gave different tokens for seed "
                f"{seed}: {tokens} vs {other}"
            )
    return tokens, rounds[2][1], rounds[3][1]


def format_table(results: list[LMResult], framework: str) -> str:
    """Both models side by side.

    Examples
    --------
    >>> print(format_table([LMResult("yat", 1000, 2.0, final_val=math.log(4))], "torch"))
    model     framework  params  val bits/char  train time
    yat       torch       1,000          2.000       2.0 s
    """
    lines = ["model     framework  params  val bits/char  train time"]
    for r in results:
        lines.append(
            f"{r.kind:<9} {framework:<10}{r.n_params:>7,} {r.bits_per_char:14.3f} "
            f"{r.seconds:9.1f} s"
        )
    return "\n".join(lines)


def save_figure(results: list[LMResult], path: str | Path, title: str = "") -> Path:
    """A PNG of training and validation loss (bits per character) against steps for both
    models; returns the absolute path written."""
    from nmn_array.demo.plot import new_figure

    fig, path = new_figure(path, (7.5, 4.8))
    ax = fig.subplots()
    for color, r in zip(("C0", "C1"), results):
        bits = 1 / math.log(2)
        ax.plot(r.steps, np.array(r.train_loss) * bits, ":", color=color, label=f"{r.kind} train")
        ax.plot(r.steps, np.array(r.val_loss) * bits, "-", color=color, label=f"{r.kind} val")
    ax.set(xlabel="step", ylabel="bits per character", title=title or None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return path


@dataclass(frozen=True)
class LMOptions:
    """The command-line options of ``nmn-array demo lm``."""

    framework: str | None = None
    steps: int | None = None
    seed: int = 0
    out: str = DEFAULT_OUT
    quick: bool = False
    quiet: bool = False
    threads: int = 1
    sample_chars: int = 200
    temperature: float = 0.8
    grid: bool = False


@dataclass
class LMRun:
    """What :func:`execute` did: the settings, both trained models and their results, the
    yat model's sample and the seconds of cached and uncached decoding, the figure."""

    config: LMConfig
    data: CharText
    models: dict
    results: list[LMResult]
    tokens: list[int]
    cached_seconds: float
    full_seconds: float
    figure: Path


def run(opts: LMOptions, *, started: float | None = None, out=print) -> int:
    """Run the demo (:func:`execute`) and print the total time; returns the exit code."""
    started = time.perf_counter() if started is None else started
    execute(opts, out=out)
    out(f"total wall time: {time.perf_counter() - started:.1f} s")
    return 0


def check_options(opts: LMOptions) -> None:
    """ValueError naming the option for a bad combination of :class:`LMOptions`."""
    if opts.sample_chars < 1:
        raise ValueError(f"sample_chars must be >= 1, got {opts.sample_chars}")
    if opts.steps is not None and opts.steps < 1:
        raise ValueError(f"steps must be >= 1, got {opts.steps}")
    if opts.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {opts.temperature}")
    if opts.grid and opts.framework not in (None, "torch"):
        raise ValueError(f"--grid runs on torch only, got --framework {opts.framework}")


def execute(opts: LMOptions, *, out=print) -> Any:
    """Train both models, print the table, sample, time decoding, write the figure (an
    :class:`LMRun`); with ``opts.grid`` the 2-D variant instead (:mod:`.lm_grid`).

    ``out`` is called as ``print`` is, with each line of the report and (unless
    ``opts.quiet``) the progress lines.

    Raises
    ------
    nmn_array.demo.registry.MissingFramework
        (one-line message) when the framework or a demo library is missing.
    ValueError
        For bad options.
    """
    from nmn_array.demo.run import check_demo_libraries, load_framework

    check_options(opts)
    fw = registry.resolve(opts.framework, registry.LM_FRAMEWORKS)
    check_demo_libraries()
    models = importlib.import_module(f"nmn_array.demo.lm_models_{fw.name}")
    models.configure_before_import(opts.threads)
    load_framework(fw)
    models.configure(opts.threads)

    from nmn_array.demo.lm_data import load_text

    data = load_text()
    if opts.grid:
        from nmn_array.demo import lm_grid

        return lm_grid.execute(opts, data, out=out)
    sizes = QUICK if opts.quick else {}
    # rotary max_seq_len: the prompt and the sample must fit
    max_len = len(PROMPT) + opts.sample_chars
    config = LMConfig(vocab_size=data.vocab_size, seed=opts.seed, max_len=max_len, **sizes)
    if opts.steps is not None:
        config = replace(config, steps=opts.steps, warmup=min(config.warmup, opts.steps // 10))
    config = match_widths(models, config)
    log = None if opts.quiet else lambda line: out(line, flush=True)

    out(f"nmn-array demo lm: character-level language models, framework {fw.name} "
        f"({models.version()})")  # fmt: skip
    out(f"{data}; context {config.context}, batch {config.batch_size}, {config.steps} steps "
        f"of Adam (lr {config.lr:g}, warm-up {config.warmup}, cosine to lr/10, clip "
        f"{config.clip:g}), seed {config.seed}")  # fmt: skip
    out(f"  yat       embed {config.embed} -> {config.layers} x [RotaryYatAttention "
        f"({config.heads} heads, causal) + residual, YatNMN {config.embed}->"
        f"{config.yat_hidden} -> Linear ->{config.embed} + residual] -> Linear; "
        "no activation, no normalisation")  # fmt: skip
    out(f"  standard  embed {config.embed} + learned positions -> {config.layers} x "
        f"[LayerNorm, softmax attention ({config.heads} heads, causal) + residual, LayerNorm, "
        f"Linear {config.embed}->{config.hidden} -> GELU -> Linear + residual] -> LayerNorm "
        "-> Linear")  # fmt: skip
    out()
    results, trained = [], {}
    for kind in ("yat", "standard"):
        model = models.build(kind, config)
        trained[kind] = model
        results.append(fit(model, kind, data, config, log=log))
    out()
    out(format_table(results, fw.name))
    yat, standard = results
    diff = yat.bits_per_char - standard.bits_per_char
    out(f"\nparameters: yat {yat.n_params:,}, standard {standard.n_params:,} "
        f"({100 * (yat.n_params / standard.n_params - 1):+.2f} %); the yat model is "
        f"{abs(diff):.3f} bits/char {'worse' if diff > 0 else 'better'}")  # fmt: skip

    prompt = data.encode(PROMPT)
    tokens, cached_s, full_s = compare_decoding(
        trained["yat"], prompt, opts.sample_chars, seed=opts.seed, temperature=opts.temperature
    )
    n = opts.sample_chars
    out(f"\nyat sample (temperature {opts.temperature:g}, seed {opts.seed}, KV cache):")
    out(PROMPT + data.decode(tokens))
    out(f"\ndecode, {n} characters after a {len(prompt)}-character prompt (same tokens both ways):")
    out(f"  with the KV cache:       {n / cached_s:8.1f} tokens/s")
    out(f"  recomputing the prefix:  {n / full_s:8.1f} tokens/s  "
        f"(cache {full_s / cached_s:.1f}x faster)")  # fmt: skip
    if opts.quick:
        out("\n(--quick is a smoke run: tiny models and few steps; the numbers mean little)")
    path = save_figure(
        results, Path(opts.out), title=f"character LM on pydoc topics ({fw.name}, seed {opts.seed})"
    )
    out(f"figure: {path}")
    return LMRun(config, data, trained, results, tokens, cached_s, full_s, path)
