"""``nmn-array demo``: XOR, then four digit classifiers trained side by side, a table and a PNG."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nmn_array.demo import registry
from nmn_array.demo.registry import MissingFramework

#: Libraries the demo itself needs, beyond the framework (the ``demo`` extra).
DEMO_LIBRARIES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}
DEFAULT_OUT = "nmn-array-demo.png"
#: The yat MLP must reach this test accuracy (checked by the tests, printed by the demo).
TARGET_ACCURACY = 0.95


@dataclass(frozen=True)
class DemoOptions:
    """The command-line options of ``nmn-array demo`` (see ``nmn-array demo --help``)."""

    framework: str | None = None
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 5e-3
    hidden: int = 64
    seed: int = 0
    out: str = DEFAULT_OUT
    quick: bool = False
    quiet: bool = False
    xor: bool = True
    threads: int = 1
    init: str = "images"


def check_demo_libraries() -> None:
    """Raise :class:`MissingFramework` naming the ``demo`` extra if one of its libraries is
    missing (found with ``find_spec``, nothing imported)."""
    for module, dist in DEMO_LIBRARIES.items():
        if importlib.util.find_spec(module) is None:
            raise MissingFramework(
                f'the demo needs {dist}, which is not installed; install it with: pip install "nmn-array[demo]"'
            )


def load_framework(fw: registry.Framework) -> None:
    """Import ``nmn_array.frameworks.<fw>``; an ImportError (the framework module missing, or
    one of its libraries) becomes a one-line :class:`MissingFramework` message."""
    module = f"nmn_array.frameworks.{fw.name}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise MissingFramework(f"{module} is not part of this installation") from exc
        raise MissingFramework(str(exc).splitlines()[0]) from exc
    except ImportError as exc:
        raise MissingFramework(str(exc).splitlines()[0]) from exc


def prototype_init(data, count: int, seed: int):
    """``count`` distinct training images (float32 rows of 64 pixels), chosen by ``seed``.

    A yat neuron responds most to inputs near it and aligned with it, so starting the first
    layer from real images makes its neurons prototypes from the first step, and the
    trained neurons stay readable as digits in the figure.

    Examples
    --------
    >>> from nmn_array.demo.data import load_digits
    >>> prototype_init(load_digits(), 3, seed=0).shape
    (3, 64)
    """
    import numpy as np

    idx = np.random.default_rng(seed).choice(len(data.x_train), size=count, replace=False)
    return np.ascontiguousarray(data.x_train[idx])


def format_table(results, framework: str) -> str:
    """The results side by side: test accuracy, parameter count and training time.

    Examples
    --------
    >>> from nmn_array.demo.train import Result, model_specs
    >>> r = Result(model_specs()[0], 4812, 2.5, [0.5], [0.97])
    >>> print(format_table([r], "torch"))  # doctest: +NORMALIZE_WHITESPACE
    model     framework  activations  test acc  params  train time
    yat-mlp   torch      none           97.0 %   4,812       2.5 s
    """
    lines = ["model     framework  activations  test acc  params  train time"]
    for r in results:
        lines.append(
            f"{r.spec.key:<9} {framework:<10} {'none' if r.spec.yat else 'ReLU':<11} "
            f"{100 * r.accuracy:7.1f} % {r.n_params:>7,} {r.seconds:9.1f} s"
        )
    return "\n".join(lines)


def run(opts: DemoOptions, *, started: float | None = None) -> int:
    """Run the demo; returns the exit code. Raises :class:`MissingFramework` (one-line
    message) when the framework or a demo library is missing."""
    started = time.perf_counter() if started is None else started
    fw = registry.resolve(opts.framework)
    check_demo_libraries()
    models = importlib.import_module(f"nmn_array.demo.{fw.name}_models")  # imports no framework
    # Some settings (XLA's thread pool) are read once, when the framework starts.
    models.configure_before_import(opts.threads)
    load_framework(fw)
    models.configure(opts.threads)

    from nmn_array.demo.data import load_digits
    from nmn_array.demo.plot import save_figure
    from nmn_array.demo.train import Config, fit, model_specs
    from nmn_array.demo.xor import report

    # --quick: a couple of epochs on part of the data, for tests and smoke checks.
    epochs = opts.epochs if opts.epochs is not None else (2 if opts.quick else 30)
    hidden = min(opts.hidden, 16) if opts.quick else opts.hidden
    channels = (4, 8) if opts.quick else (16, 32)
    config = Config(
        epochs=epochs,
        batch_size=opts.batch_size,
        lr=opts.lr,
        hidden=hidden,
        channels=channels,
        seed=opts.seed,
    )
    progress = not opts.quiet and sys.stderr.isatty()
    out = print  # results go to stdout; the progress bar goes to stderr

    out(f"nmn-array demo: activation-free yat networks, framework {fw.name} ({models.version()})")
    if opts.xor:
        out()
        out(report(fw.name))
    data = load_digits(limit=256 if opts.quick else None)
    specs = model_specs(hidden, channels)
    out()
    out(
        f"{data}; {epochs} epochs of Adam (lr {opts.lr:g}, batch {opts.batch_size}), seed {opts.seed}"
    )
    for spec in specs:
        out(f"  {spec.key:<9} {spec.layers}")
    if opts.init == "images":
        out(
            f"  (the yat-mlp's {hidden} first-layer neurons start as {hidden} training images: "
            "yat neurons are prototypes; --init random keeps the layer's own initialiser)"
        )
    out()
    rows = prototype_init(data, hidden, opts.seed) if opts.init == "images" else None
    results = [
        fit(
            models.build(spec, config, rows if spec.yat and not spec.conv else None),
            spec,
            data,
            config,
            progress=progress,
        )
        for spec in specs
    ]
    out(format_table(results, fw.name))
    yat = results[0]
    if opts.quick:
        out(
            "\n(--quick is a smoke run: small models, few images and epochs; accuracies mean little)"
        )
    else:
        verdict = "reaches" if yat.accuracy >= TARGET_ACCURACY else "does NOT reach"
        out(
            f"\nThe yat MLP, with no activation function, {verdict} {100 * TARGET_ACCURACY:.0f} % "
            f"({100 * yat.accuracy:.1f} % vs {100 * results[1].accuracy:.1f} % for its ReLU "
            "baseline)."
        )
    path = save_figure(
        results,
        Path(opts.out),
        title=f"nmn_array demo on digits ({fw.name}, seed {opts.seed}, {epochs} epochs)",
    )
    out(f"figure: {path}")
    out(f"total wall time: {time.perf_counter() - started:.1f} s")
    return 0
