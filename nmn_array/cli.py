"""The ``nmn-array`` command (also ``python -m nmn_array``).

Commands
--------
demo     activation-free yat networks on scikit-learn's digits, beside ReLU baselines;
         ``demo lm``: a yat transformer language model beside a standard one;
         ``demo attention``: copy and reverse tasks with exact and linear-time attention;
         ``demo hamux``: an energy-based associative memory of digits with a yat synapse
xor      one yat neuron separates XOR, one linear neuron cannot
doctor   installed array libraries and frameworks, and a check that they agree with NumPy
spec     generate, check or list the spec-driven tests (``nmn_array._spec.cli``)
bench    benchmarks against native layers and nmn (``nmn_array.benchmarks``)

Errors a user can fix (a missing framework or extra) are printed as one line on stderr with
exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Sequence

# TensorFlow prints C++ log lines at import; keep the command's output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROG = "nmn-array"

#: Commands implemented elsewhere: module, what it provides, and the extra its imports need.
DELEGATES = {
    "spec": ("nmn_array._spec.cli", "generate, check or list the spec-driven tests", "spec"),
    "bench": (
        "nmn_array.benchmarks.__main__",
        "benchmark the yat layers against native layers and nmn",
        "all",
    ),
}


def _error(command: str, message: str) -> int:
    """Print a one-line error for ``command`` on stderr and return exit code 2."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    print(f"{PROG} {command}: error: {first}", file=sys.stderr)
    return 2


def _delegate(command: str, argv: list[str]) -> int:
    """Run ``main(argv)`` of the module behind ``command``, imported only now."""
    module_name, summary, extra = DELEGATES[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            if argv[:1] in (["-h"], ["--help"]):
                print(f"usage: {PROG} {command} [args ...]\n\n{summary}.")
                print(f"\n({module_name} is not part of this installation yet.)")
                return 0
            return _error(command, f"not available in this installation ({module_name} is missing)")
        return _error(
            command,
            f'{missing} is not installed; install it with: pip install "nmn-array[{extra}]"',
        )
    except ImportError as exc:
        return _error(command, str(exc))
    entry = getattr(module, "main", None)
    if entry is None:
        return _error(command, f"{module_name} has no main(argv)")
    try:
        return int(entry(argv) or 0)
    except SystemExit as exc:  # argparse inside the delegate (--help, usage errors)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    from nmn_array.demo.run import DemoOptions, run

    opts = DemoOptions(
        framework=args.framework,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden=args.hidden,
        seed=args.seed,
        out=args.out,
        quick=args.quick,
        quiet=args.quiet,
        xor=not args.no_xor,
        threads=args.threads,
        init=args.init,
    )
    return run(opts, started=args.started)


def _non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _cmd_demo_lm(args: argparse.Namespace) -> int:
    from nmn_array.demo.lm import LMOptions, check_options, run

    _no_digits_options(args, "lm", "language-model")
    opts = LMOptions(
        framework=args.lm_framework,
        steps=args.lm_steps,
        seed=args.lm_seed,
        out=args.lm_out,
        quick=args.lm_quick,
        quiet=args.lm_quiet,
        threads=args.lm_threads,
        sample_chars=args.lm_sample_chars,
        temperature=args.lm_temperature,
        grid=args.lm_grid,
    )
    return _checked_run(check_options, run, opts, args)


def _checked_run(check, run, opts, args: argparse.Namespace) -> int:
    """``run(opts)`` after ``check(opts)``, whose ValueError is a usage error (exit 2)."""
    try:
        check(opts)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    return run(opts, started=args.started)


class _UsageError(Exception):
    """A combination of options that the parser cannot reject by itself."""


def _no_digits_options(args: argparse.Namespace, name: str, what: str) -> None:
    """Refuse options written before ``demo <name>``: they belong to the digits demo and
    would be ignored."""
    given = [
        a.option_strings[0]
        for a in args.digits_parser._actions
        if a.option_strings and a.dest != "help" and getattr(args, a.dest) != a.default
    ]
    if given:
        raise _UsageError(
            f"options before '{name}' belong to the digits demo ({', '.join(given)}); write the "
            f"options of the {what} demo after '{name}' (see nmn-array demo {name} --help)"
        )


def _names(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated list of names (checked by the demo)."""
    return tuple(t.strip().lower() for t in text.split(",") if t.strip())


def _cmd_demo_attention(args: argparse.Namespace) -> int:
    _no_digits_options(args, "attention", "attention")
    from nmn_array.demo import registry

    if not registry.FRAMEWORKS["torch"].installed():
        raise registry.MissingFramework(
            "the attention demo needs torch, which is not installed; install it with: "
            'pip install "nmn-array[torch]"'
        )
    from nmn_array.demo.attention import AttentionOptions, check_options, run

    opts = AttentionOptions(
        steps=args.att_steps,
        seed=args.att_seed,
        quick=args.att_quick,
        workers=args.att_workers,
        tasks=args.att_tasks,
        variants=args.att_variants,
        quiet=args.att_quiet,
    )
    return _checked_run(check_options, run, opts, args)


def _fraction(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _cmd_demo_hamux(args: argparse.Namespace) -> int:
    _no_digits_options(args, "hamux", "associative-memory")
    from nmn_array.demo import registry

    missing = [m for m in ("jax", "equinox", "hamux", "fastcore", "sklearn") if not _found(m)]
    if missing:
        raise registry.MissingFramework(
            f"the associative-memory demo needs {', '.join(missing)}, not installed; install "
            'it with: pip install "nmn-array[hamux,demo]"'
        )
    if args.hm_memories < 2 or args.hm_memories > 1797:
        raise _UsageError(
            f"--memories must be between 2 and 1797 (the digits in scikit-learn's set), "
            f"got {args.hm_memories}"
        )
    import jax

    jax.config.update("jax_enable_x64", True)  # the energy check runs in float64
    from nmn_array.demo.associative_memory import report

    lines = report(
        n_memories=args.hm_memories, fraction=args.hm_fraction, steps=args.hm_steps,
        seed=args.hm_seed,
    )  # fmt: skip
    print("\n".join(lines))
    return 0


def _found(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _add_demo_hamux(sub: argparse._SubParsersAction, demo: argparse.ArgumentParser) -> None:
    """``nmn-array demo hamux`` (destinations ``hm_*``, as ``lm_*`` for ``demo lm``)."""
    hm = sub.add_parser(
        "hamux",
        help="an energy-based associative memory of digits (HAMUX) with a yat synapse",
        description="Store scikit-learn digits in a HAMUX energy network (an image layer and "
        "a memory layer joined by one synapse), corrupt a fraction of each digit's pixels, "
        "let the network settle by descending its energy, and print how many digits are "
        "restored, for the yat synapse and HAMUX's dense (dot-product) synapse, with an "
        "identity and a tanh image layer; the energy is checked never to increase "
        "(docs/hamux.md). About 10 s on two cores at the defaults.",
    )
    hm.add_argument(
        "--memories", dest="hm_memories", metavar="N", type=int, default=100,
        help="stored digits (default 100)",
    )  # fmt: skip
    hm.add_argument(
        "--fraction", dest="hm_fraction", metavar="F", type=_fraction, default=0.3,
        help="fraction of corrupted pixels (default 0.3)",
    )  # fmt: skip
    hm.add_argument(
        "--steps", dest="hm_steps", metavar="N", type=_positive_int, default=400,
        help="Euler steps of the dynamics (default 400)",
    )  # fmt: skip
    hm.add_argument(
        "--seed", dest="hm_seed", metavar="SEED", type=int, default=0,
        help="seed of the stored digits and the corruption (default 0)",
    )  # fmt: skip
    hm.set_defaults(handler=_cmd_demo_hamux, digits_parser=demo)


def _add_demo_attention(sub: argparse._SubParsersAction, demo: argparse.ArgumentParser) -> None:
    """``nmn-array demo attention`` (destinations ``att_*``, as ``lm_*`` for ``demo lm``)."""
    from nmn_array.demo import registry

    tasks, variants = registry.ATTENTION_TASKS, registry.ATTENTION_VARIANTS
    att = sub.add_parser(
        "attention",
        help="copy and reverse tasks: softmax, exact yat and linear-time yat attention",
        description="Train an attention-only model (2 layers, d_model 64, 4 heads; PyTorch) "
        "on the synthetic copy and reverse tasks of the SLAY paper with six attention "
        f"variants ({', '.join(variants)}) and print the per-token accuracy on the output "
        "half of held-out sequences beside the paper's reverse-task figures. About three "
        "minutes on two cores.",
    )
    att.add_argument(
        "--steps",
        dest="att_steps",
        metavar="N",
        type=_positive_int,
        help=f"training steps per model (default {registry.ATTENTION_STEPS}; "
        f"--quick: {registry.ATTENTION_QUICK_STEPS})",
    )
    att.add_argument(
        "--seed", dest="att_seed", metavar="SEED", type=int, default=0, help="seed (default 0)"
    )
    att.add_argument(
        "--quick", dest="att_quick", action="store_true", help="short sequences, few steps (tests)"
    )
    att.add_argument(
        "--workers",
        dest="att_workers",
        metavar="N",
        type=_positive_int,
        default=2,
        help="processes of one thread each (default 2; 1 trains in this process)",
    )
    att.add_argument(
        "--tasks",
        dest="att_tasks",
        metavar="LIST",
        type=_names,
        default=tasks,
        help=f"comma-separated subset of {','.join(tasks)} (default: both)",
    )
    att.add_argument(
        "--variants",
        dest="att_variants",
        metavar="LIST",
        type=_names,
        default=variants,
        help=f"comma-separated subset of {','.join(variants)} (default: all)",
    )
    att.add_argument("--quiet", dest="att_quiet", action="store_true", help="no progress lines")
    att.set_defaults(handler=_cmd_demo_attention, digits_parser=demo)


def _add_demo_lm(demo: argparse.ArgumentParser) -> None:
    """``nmn-array demo lm``: its options have ``lm_`` destinations, so that they never
    overwrite the digits demo's (argparse copies a subcommand's values over its parent's)."""
    from nmn_array.demo.registry import LM_DEFAULT_OUT as DEFAULT_OUT

    sub = demo.add_subparsers(dest="demo_command", metavar="{lm,attention,hamux}", required=False)
    lm = sub.add_parser(
        "lm",
        help="character-level language models: a yat transformer beside a standard one",
        description="Train a yat transformer (rotary yat attention, YatNMN feed-forward, no "
        "activation function, no normalisation) and a standard one (softmax attention, GELU "
        "MLP, LayerNorm) with the same parameter count, steps and batches as character-level "
        "language models of CPython's help texts (pydoc_data.topics, 90/10 split by "
        "position). Prints validation bits per character of both, a sample from the yat "
        "model decoded with the key/value cache, decode speed with the cache against "
        "recomputing the prefix (same tokens), and writes a PNG of the loss curves.",
    )
    lm.add_argument(
        "--framework", dest="lm_framework", metavar="NAME", help="torch or nnx (default torch)"
    )
    lm.add_argument(
        "--steps",
        dest="lm_steps",
        metavar="N",
        type=_positive_int,
        help="training steps (default 400)",
    )
    lm.add_argument(
        "--seed",
        dest="lm_seed",
        metavar="SEED",
        type=int,
        default=0,
        help="seed for init, batches, sampling",
    )
    lm.add_argument(
        "--out", dest="lm_out", metavar="PNG", default=DEFAULT_OUT, help=f"PNG ({DEFAULT_OUT})"
    )
    lm.add_argument(
        "--quick", dest="lm_quick", action="store_true", help="tiny models, 60 steps (tests)"
    )
    lm.add_argument(
        "--threads",
        dest="lm_threads",
        metavar="N",
        type=_positive_int,
        default=1,
        help="CPU threads (1)",
    )
    lm.add_argument(
        "--sample-chars",
        dest="lm_sample_chars",
        metavar="N",
        type=_positive_int,
        default=200,
        help="characters to sample after the prompt (default 200)",
    )
    lm.add_argument(
        "--temperature",
        dest="lm_temperature",
        metavar="T",
        type=_non_negative_float,
        default=0.8,
        help="sampling temperature; 0 is greedy (default 0.8)",
    )
    lm.add_argument(
        "--grid",
        dest="lm_grid",
        action="store_true",
        help="the 2-D variant: masked characters on pages, 2-D rotary and local 2-D attention, "
        "against 1-D positions (torch)",
    )
    lm.add_argument("--quiet", dest="lm_quiet", action="store_true", help="no progress lines")
    lm.set_defaults(handler=_cmd_demo_lm, digits_parser=demo)
    _add_demo_attention(sub, demo)
    _add_demo_hamux(sub, demo)


def _cmd_xor(args: argparse.Namespace) -> int:
    from nmn_array.demo import registry

    frameworks = tuple(registry.FRAMEWORKS)  # every framework module has a YatNMN
    if args.all:
        names = ["numpy"] + [n for n in frameworks if registry.FRAMEWORKS[n].installed()]
    elif args.framework == "numpy":
        names = ["numpy"]
    else:
        try:
            names = [registry.resolve(args.framework, frameworks).name]
        except registry.MissingFramework:
            if args.framework is not None:
                raise
            names = ["numpy"]  # no framework installed: the pure function still shows it
    if importlib.util.find_spec("numpy") is None:
        # every path of the XOR report (the scores, the linear neuron, the table) holds its
        # arrays in NumPy; a core install has none
        raise registry.MissingFramework(
            "xor needs numpy, which is not installed; install it with: pip install numpy"
        )
    from nmn_array.demo.xor import report

    for i, name in enumerate(names):
        if name != "numpy":
            try:
                importlib.import_module(f"nmn_array.frameworks.{name}")
            except ImportError as exc:
                raise registry.MissingFramework(str(exc).splitlines()[0]) from exc
        print(("\n" if i else "") + report(name))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nmn_array.doctor import run

    return run(check=not args.no_check, backends=args.backend)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nmn-array`` (``spec`` and ``bench`` are listed here but
    parsed by the modules they delegate to)."""
    from nmn_array.doctor import ARRAY_LIBRARIES  # the standard library only

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The yat product of Neural-Matter Networks on any array library: "
        "demo, XOR, environment check, spec-driven tests and benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    demo = sub.add_parser(
        "demo",
        help="train activation-free yat networks on digits beside ReLU baselines",
        description="Train a yat MLP and a yat CNN with no activation function anywhere, each "
        "beside a ReLU baseline of the same size, on scikit-learn's bundled 8x8 digits "
        "(fixed stratified 75/25 split). Prints a table of test accuracy, parameters and "
        "training time, and writes a PNG of the learning curves and of the first yat "
        "layer's neurons drawn as 8x8 images.",
    )
    demo.add_argument(
        "--framework",
        metavar="NAME",
        help="torch, nnx, keras or tf (default: the first installed of torch, nnx)",
    )
    demo.add_argument(
        "--epochs", type=_positive_int, help="training epochs (default 30; 2 with --quick)"
    )
    demo.add_argument(
        "--batch-size", type=_positive_int, default=64, help="batch size (default 64)"
    )
    demo.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (default 5e-3)")
    demo.add_argument(
        "--hidden", type=_positive_int, default=64, help="yat/ReLU MLP width (default 64)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for init and batches (default 0)")
    demo.add_argument(
        "--out", default="nmn-array-demo.png", help="PNG to write (default nmn-array-demo.png)"
    )
    demo.add_argument(
        "--quick", action="store_true", help="tiny run: small models, 256 images, 2 epochs"
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="CPU threads for the framework (default 1: fastest for these tiny models)",
    )
    demo.add_argument(
        "--init",
        choices=("images", "random"),
        default="images",
        help="yat-mlp first layer: start from training images (default) or the layer's "
        "own random initialiser",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument("--no-xor", action="store_true", help="skip the XOR section")
    demo.set_defaults(handler=_cmd_demo)
    _add_demo_lm(demo)

    xor = sub.add_parser(
        "xor",
        help="one yat neuron separates XOR, one linear neuron cannot",
        description="Score the four XOR points with one yat neuron w = (1, -1) (a YatNMN layer "
        "with one unit) and compare with the best linear neuron found by training.",
    )
    xor.add_argument(
        "--framework",
        metavar="NAME",
        help="numpy (the pure function), torch, nnx, linen, keras or tf "
        "(default: the first installed of torch, nnx, else numpy)",
    )
    xor.add_argument("--all", action="store_true", help="every installed framework")
    xor.set_defaults(handler=_cmd_xor)

    doctor = sub.add_parser(
        "doctor",
        help="installed array libraries/frameworks and a cross-backend agreement check",
        description="List the installed array libraries and frameworks with their versions; "
        "then import each framework module nmn_array.frameworks.<name> whose library is "
        "installed (available only if it imports), name the Keras backend, and compare "
        "nmn_array.yat, yat_conv and yat_attention on each installed array library with a "
        "float64 reference that computes the distance directly. Exit codes: 0 all OK; 1 a "
        "backend disagrees or fails, or a framework module does not import; 2 no array "
        "library to check (e.g. a core install without NumPy).",
    )
    doctor.add_argument(
        "--no-check", action="store_true", help="only list, import and compute nothing"
    )
    doctor.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        choices=tuple(ARRAY_LIBRARIES),
        help="check only this array library (repeatable; default: every installed one)",
    )
    doctor.set_defaults(handler=_cmd_doctor)

    for name, (_, summary, _) in DELEGATES.items():
        # Parsed by the delegate: `nmn-array spec --help` shows the delegate's own help.
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nmn-array`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Examples
    --------
    >>> main(["demo", "--framework", "mlx"])  # one line on stderr, then exit code 2
    2
    """
    started = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATES:
            return _delegate(argv[0], argv[1:])
        return _run(argv, started)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(argv: list[str], started: float) -> int:
    args = build_parser().parse_args(argv)
    args.started = started
    from nmn_array.demo.registry import MissingFramework

    try:
        return args.handler(args)
    except MissingFramework as exc:
        return _error(args.command, str(exc))
    except _UsageError as exc:
        return _error(args.command, str(exc))
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
