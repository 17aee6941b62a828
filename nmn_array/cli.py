"""The ``nmn-array`` command (also ``python -m nmn_array``).

Commands
--------
demo     activation-free yat networks on scikit-learn's digits, beside ReLU baselines
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
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
