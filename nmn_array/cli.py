"""The ``nmn-array`` command (placeholder until the demo lands: prints installed backends)."""

from __future__ import annotations

import argparse
import importlib.util

BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "tensorflow", "dask", "cupy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nmn-array", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="show which array libraries are installed")
    args = parser.parse_args(argv)
    if args.command == "demo":
        for name in BACKENDS:
            found = importlib.util.find_spec(name) is not None
            print(f"{name:18s} {'installed' if found else 'missing'}")
    return 0
