"""Worker process of the benchmarks: one suite (torch, jax, tf), the torch or JAX part of the
long-context study (long-torch, long-jax) or one memory case.

Started by :mod:`.__main__` as ``python -m <package>._worker ...`` with the thread
environment already set, so no framework is imported before its thread limits are in place.
Writes its result as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

from ._common import pin_cpus, sizes_for


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks._worker")
    p.add_argument("kind", choices=("torch", "jax", "tf", "memory", "long-torch", "long-jax"))
    p.add_argument("--mode", choices=("full", "smoke"), default="full")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--case",
        action="append",
        default=[],
        help="group/name of a memory case (repeatable: measured one after another)",
    )
    p.add_argument("--scaling", action="store_true")
    p.add_argument("--min-tokens", type=int, default=0, help="shortest length, long study")
    p.add_argument("--max-tokens", type=int, default=None, help="longest length, long study")
    p.add_argument(
        "--skip", action="append", default=[], help="case name to leave out (repeatable)"
    )
    return p.parse_args(argv)


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("torch", "jax", "flax", "tensorflow", "keras", "nmn", "nmn_array", "numpy"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested suite or memory case and return its JSON-ready result."""
    cpus = pin_cpus(args.threads)
    sz = sizes_for(args.mode)
    t0 = time.perf_counter()
    if args.kind == "torch":
        from . import torch_cases

        torch_cases.setup_threads(args.threads)
        result = torch_cases.run_suite(sz, scaling=args.scaling, skip=args.skip)
    elif args.kind == "jax":
        from . import jax_cases

        result = jax_cases.run_suite(sz, skip=args.skip)
    elif args.kind == "long-torch":
        from . import torch_cases

        torch_cases.setup_threads(args.threads)
        result = torch_cases.run_long(sz, (args.min_tokens, args.max_tokens or sz.long_max))
    elif args.kind == "long-jax":
        from . import jax_cases

        result = jax_cases.run_long(sz, (args.min_tokens, args.max_tokens or sz.long_max))
    elif args.kind == "tf":
        from . import tf_cases

        tf_cases.setup_threads(args.threads)
        result = tf_cases.run_suite(sz, skip=args.skip)
    else:
        import torch

        from . import memory

        torch.set_num_threads(args.threads)
        result = {"memory": []}
        for case in args.case:
            group, name = case.split("/")
            rec = memory.torch_case(group, name, sz)
            rec["process"] = "own" if len(args.case) == 1 else "shared"
            result["memory"].append(rec)
    result["worker"] = {
        "kind": args.kind,
        "seconds": time.perf_counter() - t0,
        "cpus": cpus,
        "pid": os.getpid(),
        "versions": _versions(),
    }
    return result


def write_result(path: str, compute: Any) -> int:
    """Write ``compute()`` as JSON to ``path``; an exception is written as ``error`` (with its
    traceback) and gives exit status 1."""
    try:
        result = compute()
        status = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent process
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        status = 1
    with open(path, "w") as f:
        json.dump(result, f)
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors are written to the JSON as ``error`` and give exit status 1."""
    args = _parse(argv)
    return write_result(args.out, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
