"""``nmn-array bench`` / ``python -m benchmarks``: our layers side by side with the native
layers and with nmn 0.3.5.

Every suite runs in a worker process of its own, started with the thread limits in its
environment (2 threads by default): PyTorch, JAX under ``jax.jit`` and TensorFlow under
``tf.function``. Within a suite, the compared cases are timed round-robin after a warm-up,
so each ratio is a ratio of medians measured side by side in this one run; torch also runs
each layer pair under ``torch.compile`` and under bfloat16 autocast. Peak memory of
each PyTorch case is measured in a separate process per case (resident set size). The run
prints a table of cases, the ratios with their targets (PASS/MISS) and the scaling study.
It writes files only where asked: the JSON to ``--json PATH`` (the scaling plot next to it)
or ``bench.json`` and ``bench_scaling.png`` into ``--out DIR``; by default nothing.

``--study long`` runs the long-context attention study of issue 13 instead (torch and JAX,
batch 1, 256 to ``--max-tokens`` tokens; :mod:`.long`), with its targets, a table of time
and peak memory against length and ``<name>_long.png``; ``--study all`` runs both.

A suite whose framework is not installed is skipped with one line naming what is missing
(and the pip command), as are the nmn 0.3.5 cases without nmn. Exit codes: 0 every suite
that could run ran (including when some were skipped); 1 a worker failed (one line each;
``--verbose`` prints their tracebacks); 2 a usage error.

Examples
--------
``python -m benchmarks --smoke --json out/smoke.json`` runs tiny sizes in well under a minute.
``python -m benchmarks --study long --max-tokens 16384 --out out`` measures the long-context
scaling table up to 16384 tokens (long: a 16384-token step takes minutes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import long, report
from ._common import DEFAULT_THREADS, sizes_for, thread_env
from .memory import MALLOC_ENV

PACKAGE = __package__ or "nmn_array.benchmarks"

#: Torch cases whose peak memory is measured (group, name).
MEMORY_CASES = (
    ("dense", "ours"),
    ("dense", "native"),
    ("dense", "nmn"),
    ("conv", "ours"),
    ("conv", "native"),
    ("conv", "nmn"),
    ("attention", "ours"),
    ("attention", "sdpa"),
    ("attention", "mha"),
    ("attention", "mha_fast"),
    ("attention", "nmn"),
    ("attention", "refined"),
    ("attention", "expanded"),
)

SUITES = ("torch", "jax", "tf", "memory")
#: ``--study``: the layer benchmarks (default), the long-context study, or both.
STUDIES = ("layers", "long", "all")

#: What each suite imports (top-level packages) and the nmn-array extras that install it.
REQUIRES = {
    "torch": (("torch",), "torch"),
    "jax": (("jax", "flax"), "nnx"),
    "tf": (("tensorflow", "keras"), "tf,keras"),
    "memory": (("torch",), "torch"),
}
#: nmn 0.3.5, compared where installed: its cases are named "nmn" in every suite.
NMN = "nmn"


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (an entry ``None`` in
    ``sys.modules`` blocks it, as Python documents)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(suites: Sequence[str]) -> dict[str, str]:
    """Suite -> one-line reason it cannot run, for the suites whose packages are missing.

    Examples
    --------
    >>> missing_requirements([])
    {}
    """
    out = {}
    for suite in suites:
        modules, extra = REQUIRES[suite]
        absent = [m for m in modules if not _installed(m)]
        if absent:
            out[suite] = (
                f"skipping the {suite} suite: {' and '.join(absent)} "
                f"{'is' if len(absent) == 1 else 'are'} not installed "
                f'(pip install "nmn-array[{extra}]")'
            )
    return out


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nmn-array bench",
        description="Forward+backward benchmarks of the yat layers against native layers "
        "and nmn 0.3.5 (ratios of medians of interleaved repetitions, one run).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--json",
        metavar="PATH",
        help="write the results as JSON to PATH and the plots next to it as "
        "<name>_scaling.png and (--study long) <name>_long.png (default: write nothing)",
    )
    where.add_argument(
        "--out",
        metavar="DIR",
        help="write bench.json, bench_scaling.png and (--study long) bench_long.png into DIR "
        "(default: write nothing)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1-2 repetitions")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="CPU threads per framework")
    p.add_argument(
        "--only",
        default=",".join(SUITES),
        help=f"comma-separated subset of {','.join(SUITES)} (default: all)",
    )
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling study")
    p.add_argument(
        "--study",
        choices=STUDIES,
        default="layers",
        help="layers: dense/conv/attention against native layers and nmn (default); "
        "long: the long-context attention study (issue 13); all: both",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="longest sequence of the long study (default 4096; --smoke: 64); the "
        "lengths run are those of the study up to it (256, 512, ..., 16384)",
    )
    p.add_argument(
        "--min-tokens",
        type=int,
        default=0,
        help="shortest sequence of the long study (default: all up to --max-tokens), e.g. "
        "to measure only the largest points of the scaling table",
    )
    p.add_argument("--quiet", action="store_true", help="print only the ratios")
    p.add_argument("--verbose", action="store_true", help="print the traceback of a failed worker")
    args = p.parse_args(argv)
    args.suites = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(args.suites) - set(SUITES))
    if bad:
        p.error(f"unknown suite(s) {bad}; choose from {list(SUITES)}")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    sz = _sizes(args)
    if args.max_tokens is None:
        args.max_tokens = sz.long_max
    if not long.lengths(sz, (args.min_tokens, args.max_tokens)):
        p.error(
            f"--min-tokens {args.min_tokens} .. --max-tokens {args.max_tokens} leaves no "
            f"length of the long study ({', '.join(map(str, sz.long_lengths))})"
        )
    args.span = (args.min_tokens, args.max_tokens)
    return args


def _sizes(args: argparse.Namespace) -> Any:
    """The :class:`~._common.Sizes` of the run (smoke or full)."""
    return sizes_for("smoke" if args.smoke else "full")


def _worker_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(thread_env(threads))
    if extra:
        env.update(extra)
    if "." not in PACKAGE:  # run as `python -m benchmarks` from the repository root
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _run_worker(
    kind: str, args: argparse.Namespace, extra_args: list[str], env_extra: dict | None = None
) -> dict[str, Any]:
    """Start one worker process and return its JSON result (``error`` on failure)."""
    fd, out = tempfile.mkstemp(prefix=f"bench_{kind}_", suffix=".json")
    os.close(fd)
    cmd = [
        sys.executable,
        "-m",
        f"{PACKAGE}._worker",
        kind,
        "--mode",
        "smoke" if args.smoke else "full",
        "--threads",
        str(args.threads),
        "--out",
        out,
        *extra_args,
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            env=_worker_env(args.threads, env_extra),
            capture_output=True,
            text=True,
            # a long-study step at 16384 tokens alone can take minutes
            timeout=300 if args.smoke else (4 * 3600 if kind.startswith("long") else 3600),
        )
        try:
            with open(out) as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = {"error": f"worker exited with status {proc.returncode}"}
        if "error" in result:
            result["stderr"] = proc.stderr[-4000:]
    except subprocess.TimeoutExpired:
        result = {"error": f"worker {kind} {extra_args} timed out"}
    finally:
        if os.path.exists(out):
            os.unlink(out)
    result.setdefault("worker", {})["wall_s"] = time.perf_counter() - t0
    result["worker"]["cmd"] = " ".join(cmd[2:])
    return result


def _tasks(
    suites: Sequence[str], args: argparse.Namespace, skip: Sequence[str] = ()
) -> list[tuple[str, list[str], dict | None]]:
    """The worker processes to start for ``suites``, leaving out the case names in ``skip``."""
    tasks: list[tuple[str, list[str], dict | None]] = []
    skips = [a for name in skip for a in ("--skip", name)]
    layers = args.study in ("layers", "all")
    cases = [(g, n) for g, n in MEMORY_CASES if n not in skip] if layers else []
    if args.study in ("long", "all"):
        limit = ["--min-tokens", str(args.min_tokens), "--max-tokens", str(args.max_tokens)]
        if "jax" in suites:
            tasks.append(("long-jax", limit, None))
        if "torch" in suites:
            tasks.append(("long-torch", limit, None))
        cases += long.memory_cases(_sizes(args), args.span)
    # longest first, so that the two lanes of smoke mode finish together (torch compiles
    # its torch.compile cases, which takes longest)
    if "torch" in suites and layers:
        tasks.append(("torch", (["--scaling"] if not args.no_scaling else []) + skips, None))
    if "tf" in suites and layers:
        tasks.append(("tf", skips, None))
    if "jax" in suites and layers:
        tasks.append(("jax", skips, None))
    if "memory" in suites and cases:
        if args.smoke:
            # smoke mode checks the path, not the numbers: one process for all cases
            flags = [a for g, n in cases for a in ("--case", f"{g}/{n}")]
            tasks.append(("memory", flags, MALLOC_ENV))
        else:
            for group, name in cases:
                tasks.append(("memory", ["--case", f"{group}/{name}"], MALLOC_ENV))
    return tasks


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; returns 0, or 1 if a worker failed (the others still report).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``); see ``--help``.
    """
    args = _parse(argv)
    t_start = time.perf_counter()
    missing = missing_requirements(args.suites)
    for line in missing.values():
        print(line)
    skip = []
    if not _installed(NMN):
        print('skipping the nmn 0.3.5 cases: nmn is not installed (pip install "nmn==0.3.5")')
        skip.append(NMN)
    sz = _sizes(args)
    run_long = args.study in ("long", "all")
    # printed under the long study's table and kept in the JSON
    notes = long.skip_reasons(sz, args.span) if run_long else []
    tasks = _tasks([s for s in args.suites if s not in missing], args, skip)
    if not tasks:
        print("nothing to run: every requested suite was skipped")
        return 0
    if args.smoke:
        # timings are not judged in smoke mode: overlap the workers' imports
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda t: _run_worker(t[0], args, t[1], t[2]), tasks))
    else:
        # timing suites strictly one after another; memory workers do not time anything
        results = [_run_worker(k, args, a, e) for k, a, e in tasks if k != "memory"]
        mem_tasks = [t for t in tasks if t[0] == "memory"]
        with ThreadPoolExecutor(max_workers=2) as pool:
            results += list(pool.map(lambda t: _run_worker(t[0], args, t[1], t[2]), mem_tasks))

    cases, scaling, memory, errors, workers = [], [], [], [], []
    failed, checks = [], []
    for (kind, extra, _), res in zip(tasks, results):
        workers.append({"kind": kind, "args": extra, **res.get("worker", {})})
        if "error" in res:
            errors.append({"kind": kind, "args": extra, **res})
            continue
        cases += res.get("cases", [])
        scaling += res.get("scaling", [])
        memory += res.get("memory", [])
        failed += res.get("failed_cases", [])
        checks += res.get("compile_checks", [])

    targets = (report.RATIOS if args.study != "long" else ()) + (
        long.ratios(sz) if run_long else ()
    )
    ratios = report.compute_ratios(cases, memory, judge=not args.smoke, ratios=targets)
    json_path = os.path.join(args.out, "bench.json") if args.out else args.json
    png = long_png = None
    if json_path is not None:
        json_path = os.path.abspath(json_path)  # the JSON names the plots by this path
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
        stem = os.path.splitext(json_path)[0]
        png = report.plot_scaling(scaling, stem + "_scaling.png")
        if run_long:
            long_png = long.plot(cases, memory, stem + "_long.png")
    wall = time.perf_counter() - t_start
    payload = {
        "meta": {
            "mode": "smoke" if args.smoke else "full",
            "command": " ".join(
                ["python", "-m", PACKAGE, *(argv if argv is not None else sys.argv[1:])]
            ),
            "threads": args.threads,
            "study": args.study,
            "tokens": list(args.span) if run_long else None,
            "sizes": sz.to_dict(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "wall_s": wall,
            "workers": workers,
            "attention_batch": sz.attn_batch,
            "note": "times are forward+backward medians of interleaved repetitions; "
            "ratios are ratios of medians measured side by side in this run",
        },
        "cases": cases,
        "memory": memory,
        "ratios": ratios,
        "scaling": scaling,
        "plot": png,
        "long": long.rows(cases, memory) if run_long else [],
        "long_plot": long_png,
        "long_skipped": notes,
        "errors": errors,
        "failed_cases": failed,
        "compile_checks": checks,
        "skipped": {"suites": missing, "cases": skip},
    }
    if json_path is not None:
        with open(json_path, "w") as f:
            json.dump(payload, f, indent=1)

    if not args.quiet:
        layers = (
            f"attention batch {sz.attn_batch}, {sz.attn_len} tokens, width {sz.attn_dim}, "
            f"{sz.attn_heads} heads"
        )
        study = (
            f"long-context study: batch {sz.long_batch}, "
            f"{', '.join(map(str, long.lengths(sz, args.span)))} tokens, "
            f"width {sz.attn_dim}, {sz.attn_heads} heads"
        )
        what = {"layers": layers, "long": study, "all": f"{layers}; {study}"}[args.study]
        print(
            f"# nmn_array benchmarks ({payload['meta']['mode']}, {args.threads} threads, {what})\n"
        )
        print(report.cases_table(cases, memory))
        print()
    print(report.ratios_table(ratios))
    # one line per fullgraph check and per case that could not run (e.g. did not compile):
    # results of the run, not failures of the benchmark, so the exit code stays 0
    for line in report.compile_lines(checks, failed):
        print(line)
    if not args.quiet and args.study != "long":
        print()
        print(report.scaling_table(scaling))
    if not args.quiet and run_long:
        print()
        print(long.table(cases, memory, notes))
    for err in errors:
        first = str(err["error"]).strip().splitlines()[0]
        print(f"nmn-array bench: the {err['kind']} worker failed: {first}", file=sys.stderr)
        if args.verbose:
            print(err.get("traceback") or err.get("stderr", ""), file=sys.stderr)
    if errors and not args.verbose:
        print("nmn-array bench: rerun with --verbose for the tracebacks", file=sys.stderr)
    if json_path is None:
        print(f"\nfinished in {wall:.0f} s; nothing written (--json PATH or --out DIR saves it)")
    else:
        plots = " and ".join(p for p in (png, long_png) if p)
        print(f"\nwrote {json_path}" + (f" and {plots}" if plots else "") + f" in {wall:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
