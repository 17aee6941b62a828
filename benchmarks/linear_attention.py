"""Linear-time yat attention against exact yat attention and SDPA (issue 15).

``python -m nmn_array.benchmarks.linear_attention`` (``python -m benchmarks.linear_attention``
from the repository root) times the forward + backward of ``out.sum()`` with respect to
``q, k, v (1, 4, L, 64)`` (batch 1, 4 heads, head dim 64, float32, PyTorch CPU) at
``L`` = 1k to 32k tokens for:

- SLAY, MAY and RAY: :func:`nmn_array.linear_attention.performer_attention` (the readout
  :func:`~nmn_array.yat_linear_attention` with :func:`~nmn_array.linear_attention.performer_features`),
  non-causal and causal (chunked prefix sums, ``chunk_size=64``), 128 features per token
  each (:data:`FEATURES`; nmn's default feature counts are measured apart, at 1024 tokens);
- exact blocked yat attention, :func:`nmn_array.yat_attention` with its default
  ``block_size="auto"`` (non-causal), up to ``--exact-max-tokens`` (16k by default: one
  step at 32k would take tens of minutes on 2 cores);
- ``torch.nn.functional.scaled_dot_product_attention`` (non-causal).

Time: at each length the cases run round-robin in one worker process (so every ratio at a
length is measured side by side), ``reps`` rounds after a warm-up below ``single_from``
tokens, one round above it (after a warm-up of every case at a few tokens, which pays the
lazy initialisation). Peak memory: one process per (length, case), as in
:mod:`.memory` (tracemalloc does not see PyTorch's allocator, so the measure is the resident
set): a warm-up of the case at a few tokens, then the kernel's high-water mark is reset
(``/proc/self/clear_refs``) and one full step reports ``VmHWM - VmRSS(before)``, the most
memory the step held at once beyond its inputs. Workers start with ``MALLOC_MMAP_THRESHOLD_``
fixed so freed tensors go back to the kernel. The run prints a markdown table of time and
of peak memory against length, the fitted memory exponent between 4k and 32k tokens
(least-squares slope of log memory on log length; target <= 1.1) and the speed-up of each
linear variant over exact yat at 16k tokens (target >= 10x), and writes
``linear_attention.json``, ``linear_attention.md`` and ``linear_attention.png`` into
``--out DIR`` (nothing without ``--out``).

Examples
--------
``python -m benchmarks.linear_attention --smoke --out out`` runs tiny sizes in seconds;
``python -m benchmarks.linear_attention --out out`` is the full study (about 20 minutes on
2 cores, most of it exact yat attention at 8k and 16k tokens).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

from ._common import DEFAULT_THREADS, interleaved, pin_cpus, record, thread_env
from ._worker import write_result
from .memory import MALLOC_ENV
from .report import _fmt

PACKAGE = __package__ or "nmn_array.benchmarks"

#: The feature maps, by ``performer_kind``, with their printed names.
KINDS = {"slay": "SLAY", "maclaurin": "MAY", "radial": "RAY"}

#: ``performer_projection`` arguments of each map in the study: 128 features per token for
#: all three. SLAY's are nmn's defaults (16 anchors x 8 random features x 1 node); nmn's
#: MAY defaults (256 features, degree up to 40) hold ~40 (L, 256) products per head for the
#: backward and RAY's (m * J * D = 128 * 8 * 64 = 65536 features per token) a
#: (L, 65536) array per head: neither fits at 16k tokens (measured at 1024, see DEFAULTS).
FEATURES: dict[str, dict[str, int]] = {
    "slay": {"num_anchor_features": 16, "num_prf_features": 8, "num_quad_nodes": 1},
    "maclaurin": {"performer_num_features": 128, "performer_nmax": 8},
    "radial": {"performer_sketch_m": 16, "performer_num_radial": 2, "performer_radial_dim": 4},
}

#: Cases measured at nmn's default feature counts (one length, ``Config.defaults_tokens``).
DEFAULTS = ("maclaurin_default", "radial_default")

#: Printed label of every case.
LABELS = {
    **{k: f"{v} (128 features)" for k, v in KINDS.items()},
    **{f"{k}_causal": f"{v} causal" for k, v in KINDS.items()},
    "exact": 'exact yat, yat_attention(block_size="auto")',
    "sdpa": "F.scaled_dot_product_attention",
    "maclaurin_default": "MAY, nmn defaults (256 features, nmax 40)",
    "radial_default": "RAY, nmn defaults (128 x 8 x 64 = 65536 features)",
}

#: Columns of the tables, in order.
COLUMNS = ("slay", "maclaurin", "radial", "slay_causal", "maclaurin_causal", "radial_causal")
COLUMNS += ("exact", "sdpa")

#: The targets of issue 15.
MEMORY_EXPONENT_MAX = 1.1
SPEEDUP_MIN = 10.0


@dataclass(frozen=True)
class Config:
    """Sizes of one run.

    Attributes
    ----------
    lengths : tuple of int
        Sequence lengths ``L``.
    heads, head_dim, batch : int
    exact_max : int
        Longest ``L`` at which exact yat attention runs.
    fit_from, fit_to : int
        Lengths between which the memory exponent is fitted.
    speedup_at : int
        Length at which the speed-up over exact yat is judged.
    defaults_tokens : int
        Length of the nmn-defaults cases (0: not run).
    reps, warmup : int
        Timed rounds and warm-up rounds below ``single_from``.
    single_from : int
        From this length on: one timed round (warm-up at ``warmup_tokens`` instead).
    warmup_tokens : int
        Length of the warm-up call of the memory and single-round workers.
    budget_s : float
        Seconds of timed rounds after which a length stops early (at least three rounds).
    chunk_size : int
        Chunk length of the causal readout.
    """

    lengths: tuple = (1024, 2048, 4096, 8192, 16384, 32768)
    heads: int = 4
    head_dim: int = 64
    batch: int = 1
    exact_max: int = 16384
    fit_from: int = 4096
    fit_to: int = 32768
    speedup_at: int = 16384
    defaults_tokens: int = 1024
    reps: int = 5
    warmup: int = 1
    single_from: int = 8192
    warmup_tokens: int = 128
    budget_s: float = 30.0
    chunk_size: int = 64


FULL = Config()
SMOKE = Config(
    lengths=(16, 32, 64),
    exact_max=32,
    fit_from=16,
    fit_to=64,
    speedup_at=32,
    defaults_tokens=16,
    reps=2,
    warmup=1,
    single_from=64,
    warmup_tokens=8,
    budget_s=5.0,
    chunk_size=8,
)


def config_for(smoke: bool) -> Config:
    """The :class:`Config` of a smoke or a full run."""
    return SMOKE if smoke else FULL


def case_names(cfg: Config, length: int) -> list[str]:
    """The cases timed and measured at ``length`` (exact yat up to ``cfg.exact_max``)."""
    return [*COLUMNS[:6], *(["exact"] if length <= cfg.exact_max else []), "sdpa"]


# --------------------------------------------------------------------------------------
# Worker side (imports torch)
# --------------------------------------------------------------------------------------
def _projection(kind: str, head_dim: int, defaults: bool) -> dict[str, Any]:
    """The projection of ``kind`` as float32 torch tensors (``degrees`` stays int64)."""
    import torch

    from nmn_array.linear_attention import performer_projection

    options = {} if defaults else FEATURES[kind]
    out = {}
    for key, value in performer_projection(kind, head_dim, rng=0, **options).items():
        integral = value.dtype.kind in "iu"
        out[key] = torch.as_tensor(value, dtype=torch.int64 if integral else torch.float32)
    return out


def attention_fn(name: str, cfg: Config) -> Any:
    """``f(q, k, v) -> out`` of case ``name``."""
    import torch.nn.functional as F

    import nmn_array
    from nmn_array.linear_attention import performer_attention

    if name == "exact":
        return lambda q, k, v: nmn_array.yat_attention(q, k, v)
    if name == "sdpa":
        return F.scaled_dot_product_attention
    kind = name.split("_")[0]
    projection = _projection(kind, cfg.head_dim, name.endswith("_default"))
    causal = name.endswith("_causal")

    def linear(q: Any, k: Any, v: Any) -> Any:
        return performer_attention(
            q, k, v, kind, projection, causal=causal, chunk_size=cfg.chunk_size
        )

    return linear


def inputs(cfg: Config, length: int) -> tuple[Any, Any, Any]:
    """Seeded ``q, k, v (batch, heads, length, head_dim)`` float32 leaves."""
    import torch

    gen = torch.Generator().manual_seed(length)
    shape = (cfg.batch, cfg.heads, length, cfg.head_dim)
    return tuple(torch.randn(shape, generator=gen).requires_grad_(True) for _ in range(3))


def make_step(fn: Any, qkv: tuple[Any, ...]) -> tuple[Any, dict[str, bool]]:
    """One forward + backward of ``fn(q, k, v).sum()`` (gradients reset to None first),
    and a dict filled by each call with whether the output and the gradients were finite."""
    import torch

    seen = {"finite": True}

    def step() -> None:
        for t in qkv:
            t.grad = None
        out = fn(*qkv)
        out.sum().backward()
        ok = bool(torch.isfinite(out).all()) and all(
            bool(torch.isfinite(t.grad).all()) for t in qkv
        )
        seen["finite"] = seen["finite"] and ok

    return step, seen


def time_length(cfg: Config, length: int, names: Sequence[str]) -> list[dict[str, Any]]:
    """Time ``names`` at ``length`` round-robin; one record per case."""
    single = length >= cfg.single_from
    if single:  # pay the lazy initialisation of every case at a few tokens
        small = inputs(cfg, cfg.warmup_tokens)
        for name in names:
            make_step(attention_fn(name, cfg), small)[0]()
    qkv = inputs(cfg, length)
    steps, finite = {}, {}
    for name in names:
        steps[name], finite[name] = make_step(attention_fn(name, cfg), qkv)
    times = interleaved(
        steps,
        reps=1 if single else cfg.reps,
        warmup=0 if single else cfg.warmup,
        budget_s=cfg.budget_s,
    )
    return [
        record(
            "torch",
            f"linear-{length}",
            name,
            LABELS[name],
            samples,
            x=length,
            finite=finite[name]["finite"],
        )
        for name, samples in times.items()
    ]


def measure_once(cfg: Config, length: int, name: str) -> dict[str, Any]:
    """Peak resident memory of one step of ``name`` at ``length`` beyond the memory held
    before it (inputs, projections), after a warm-up step at ``cfg.warmup_tokens``."""
    from . import memory

    fn = attention_fn(name, cfg)
    make_step(fn, inputs(cfg, cfg.warmup_tokens))[0]()
    step, finite = make_step(fn, inputs(cfg, length))
    gc.collect()
    if memory._reset_high_water_mark():
        base = memory._status_kb("VmRSS")
        step()
        peak = memory._status_kb("VmHWM")
        method = "VmHWM after clear_refs"
    else:  # ru_maxrss cannot be reset: its rise over the warm-up's peak
        base = memory._maxrss_kb()
        step()
        peak = memory._maxrss_kb()
        method = "ru_maxrss delta"
    return {
        "suite": "torch",
        "group": f"linear-{length}",
        "name": name,
        "label": LABELS[name],
        "x": length,
        "peak_mb": max(peak - base, 0) / 1024.0,
        "baseline_mb": base / 1024.0,
        "method": method,
        "finite": finite["finite"],
    }


def _worker(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.linear_attention --worker")
    p.add_argument("what", choices=("time", "memory"))
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--case", action="append", required=True)
    p.add_argument("--exact-max-tokens", type=int, required=True)
    p.add_argument("--single", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    def compute() -> dict[str, Any]:
        pin_cpus(args.threads)
        import torch

        torch.set_num_threads(args.threads)
        cfg = replace(config_for(args.smoke), exact_max=args.exact_max_tokens)
        if args.single:
            cfg = replace(cfg, single_from=0)
        if args.what == "time":
            result: dict[str, Any] = {"cases": time_length(cfg, args.tokens, args.case)}
        else:
            result = {"memory": [measure_once(cfg, args.tokens, n) for n in args.case]}
        result["versions"] = {"torch": torch.__version__}
        return result

    return write_result(args.out, compute)


# --------------------------------------------------------------------------------------
# Parent side (no torch import): workers, fits, tables, plot
# --------------------------------------------------------------------------------------
def fit_exponent(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``log y`` on ``log x`` (None with fewer than two usable
    points; a zero or negative ``y`` is not usable).

    Examples
    --------
    >>> round(fit_exponent([(1, 3.0), (2, 6.0), (4, 12.0)]), 6)
    1.0
    >>> round(fit_exponent([(1, 1.0), (2, 4.0), (4, 16.0), (8, 64.0)]), 6)
    2.0
    """
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y is not None and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _index(records: list[dict], key: str) -> dict[tuple[int, str], float]:
    return {(r["x"], r["name"]): r[key] for r in records if key in r}


def _status(value: float | None, ok: bool, judge: bool) -> str:
    return "-" if value is None or not judge else ("PASS" if ok else "MISS")


def summary(
    cfg: Config, cases: list[dict], memory: list[dict], *, judge: bool = True
) -> list[dict[str, Any]]:
    """Per linear case: memory exponent over ``[fit_from, fit_to]`` and speed-up over exact
    yat at ``speedup_at``, each with its status (PASS/MISS; "-" when not measured or not
    ``judge``: smoke sizes say nothing about the targets)."""
    times, mems = _index(cases, "median_ms"), _index(memory, "peak_mb")
    out = []
    for name in COLUMNS[:6]:
        pts = [
            (n, mems[(n, name)])
            for n in cfg.lengths
            if cfg.fit_from <= n <= cfg.fit_to and mems.get((n, name), 0) > 0
        ]
        exponent = fit_exponent(pts) if len(pts) >= 2 else None
        exact = times.get((cfg.speedup_at, "exact"))
        mine = times.get((cfg.speedup_at, name))
        speedup = exact / mine if exact and mine else None
        out.append(
            {
                "name": name,
                "memory_exponent": exponent,
                "fit_points": [p[0] for p in pts],
                "exponent_status": _status(
                    exponent, exponent is not None and exponent <= MEMORY_EXPONENT_MAX, judge
                ),
                "speedup_vs_exact": speedup,
                "speedup_status": _status(
                    speedup, speedup is not None and speedup >= SPEEDUP_MIN, judge
                ),
            }
        )
    return out


def tables(
    cfg: Config,
    cases: list[dict],
    memory: list[dict],
    notes: Sequence[str],
    *,
    judge: bool = True,
) -> str:
    """The markdown report: time and peak memory against length, targets, defaults."""
    times, mems = _index(cases, "median_ms"), _index(memory, "peak_mb")
    rounds = _index(cases, "n")
    head = "| tokens | " + " | ".join(LABELS[c].split(" (")[0] for c in COLUMNS)
    head = head.replace('exact yat, yat_attention(block_size="auto")', "exact yat")
    head = head.replace("F.scaled_dot_product_attention", "SDPA")
    rule = "|---:|" + "---:|" * len(COLUMNS)
    lines = [
        f"**linear-time yat attention** (torch CPU, float32, batch {cfg.batch}, {cfg.heads} "
        f"heads, head dim {cfg.head_dim}; forward + backward of out.sum() w.r.t. q, k, v; "
        f"128 features per token for SLAY, MAY and RAY: {json.dumps(FEATURES)}; causal = "
        f"chunked prefix sums, chunk {cfg.chunk_size}; exact yat = yat_attention with "
        'block_size="auto", non-causal; SDPA non-causal)',
        "",
        "Median milliseconds (rounds in brackets):",
        "",
        head + " |",
        rule,
    ]
    for n in cfg.lengths:
        cells = []
        for c in COLUMNS:
            t = times.get((n, c))
            cells.append("-" if t is None else f"{t:,.0f} ({rounds[(n, c)]})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Peak memory of one step beyond its inputs, MiB:", "", head + " |", rule]
    for n in cfg.lengths:
        cells = [_fmt(mems.get((n, c)), ",.1f") for c in COLUMNS]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| variant | memory exponent {cfg.fit_from}-{cfg.fit_to} (<= {MEMORY_EXPONENT_MAX}) "
        f"| | speed-up over exact yat at {cfg.speedup_at} (>= {SPEEDUP_MIN:g}x) | |",
        "|---|---:|---|---:|---|",
    ]
    for row in summary(cfg, cases, memory, judge=judge):
        lines.append(
            f"| {LABELS[row['name']].split(' (')[0]} | {_fmt(row['memory_exponent'], '.3f')} "
            f"| {row['exponent_status']} | {_fmt(row['speedup_vs_exact'], '.1f')} "
            f"| {row['speedup_status']} |"
        )
    defaults = [(r, mems.get((r["x"], r["name"]))) for r in cases if r["name"] in DEFAULTS]
    if defaults:
        lines += ["", "nmn's default feature counts (non-causal):", ""]
        for rec, mib in defaults:
            mem = "-" if mib is None else f"{mib:,.1f} MiB"
            lines.append(
                f"- {rec['label']} at {rec['x']} tokens: {rec['median_ms']:,.0f} ms, {mem}"
            )
    not_finite = sorted({(r["x"], r["name"]) for r in cases + memory if r.get("finite") is False})
    if not_finite:
        lines += ["", f"NOT FINITE (output or gradient): {not_finite}"]
    lines += [""] + list(notes) if notes else []
    return "\n".join(lines)


def plot(cfg: Config, cases: list[dict], memory: list[dict], path: str) -> str | None:
    """Log-log plot of time and peak memory against length; the path, or None when
    matplotlib is missing or there is nothing to plot."""
    times, mems = _index(cases, "median_ms"), _index(memory, "peak_mb")
    if not times:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, data, ylabel in ((axes[0], times, "median ms"), (axes[1], mems, "peak MiB")):
        for c in COLUMNS:
            pts = [(n, data[(n, c)]) for n in cfg.lengths if data.get((n, c))]
            if pts:
                style = "--" if c.endswith("_causal") else "-"
                label = LABELS[c].split(" (")[0].replace(', yat_attention(block_size="auto")', "")
                ax.plot(*zip(*pts), style, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens L")
        ax.set_ylabel(f"forward + backward, {ylabel}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("time")
    axes[1].set_title("peak memory beyond inputs")
    axes[1].legend(fontsize=7)
    fig.suptitle(
        f"torch CPU float32, batch {cfg.batch}, {cfg.heads} heads, head dim {cfg.head_dim}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run_worker(what: str, length: int, names: Sequence[str], args: argparse.Namespace) -> dict:
    fd, out = tempfile.mkstemp(prefix=f"linear_{what}_", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, "-m", f"{PACKAGE}.linear_attention", "--worker", what]
    cmd += ["--threads", str(args.threads), "--tokens", str(length), "--out", out]
    cmd += ["--exact-max-tokens", str(args.exact_max_tokens)]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--single"] if args.single else []
    for name in names:
        cmd += ["--case", name]
    env = {**os.environ, **thread_env(args.threads), **MALLOC_ENV}
    if "." not in PACKAGE:  # run as `python -m benchmarks.linear_attention` from the root
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3 * 3600)
        try:
            with open(out) as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = {
                "error": f"worker exited with status {proc.returncode}: {proc.stderr[-2000:]}"
            }
    except subprocess.TimeoutExpired:
        result = {"error": f"{what} worker at {length} tokens timed out"}
    finally:
        if os.path.exists(out):
            os.unlink(out)
    result["wall_s"] = time.perf_counter() - t0
    result["what"], result["tokens"], result["names"] = what, length, list(names)
    if not args.quiet:
        state = "failed" if "error" in result else "done"
        print(
            f"  {what} {length} tokens {','.join(names)}: {state} in {result['wall_s']:.0f} s",
            flush=True,
        )
    return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m nmn_array.benchmarks.linear_attention",
        description="Time and peak memory of SLAY, MAY and RAY linear-time yat attention "
        "against exact blocked yat attention and SDPA, from 1k to 32k tokens (torch CPU).",
    )
    p.add_argument("--out", metavar="DIR", help="write linear_attention.{json,md,png} here")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (16 to 64 tokens)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="CPU threads")
    p.add_argument(
        "--exact-max-tokens",
        type=int,
        default=None,
        help="longest length of exact yat attention (default 16384; smoke 32)",
    )
    p.add_argument(
        "--lengths",
        type=lambda t: tuple(int(n) for n in t.split(",")),
        default=None,
        help="comma-separated sequence lengths (default 1024,2048,...,32768; smoke 16,32,64)",
    )
    p.add_argument(
        "--defaults-tokens",
        type=int,
        default=None,
        help="length of the nmn-defaults cases, 0 to skip them (default 1024; smoke 16)",
    )
    p.add_argument(
        "--single",
        action="store_true",
        help="one timed round at every length (after a warm-up at a few tokens)",
    )
    p.add_argument("--no-memory", action="store_true", help="time only")
    p.add_argument(
        "--overlap",
        action="store_true",
        help="run the memory workers while the timing workers run (faster; the timings "
        "then share the CPUs with one memory worker, the ratios at a length are still "
        "measured side by side)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    cfg = config_for(args.smoke)
    if args.exact_max_tokens is None:
        args.exact_max_tokens = cfg.exact_max
    if args.lengths is not None and (not args.lengths or min(args.lengths) < 1):
        p.error(f"--lengths must be positive integers, got {args.lengths}")
    if args.defaults_tokens is not None and args.defaults_tokens < 0:
        p.error(f"--defaults-tokens must be >= 0, got {args.defaults_tokens}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; 0, or 1 if a worker failed (the others still report)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    args = _parse(argv)
    cfg = replace(config_for(args.smoke), exact_max=args.exact_max_tokens)
    notes = []
    if args.lengths is not None:
        cfg = replace(cfg, lengths=tuple(sorted(args.lengths)))
    if args.defaults_tokens is not None:
        cfg = replace(cfg, defaults_tokens=args.defaults_tokens)
    if args.single:
        cfg = replace(cfg, single_from=0)
        notes.append("--single: one timed round at every length")
    t0 = time.perf_counter()
    if cfg.exact_max < max(cfg.lengths):
        notes.append(
            f"exact yat attention not run above {cfg.exact_max} tokens (--exact-max-tokens): "
            "its time grows as L^2"
        )
    if args.overlap:
        notes.append("--overlap: the memory workers ran one at a time beside the timing workers")
    # timing workers one after another (nothing else runs meanwhile), then memory workers
    timing = [(n, case_names(cfg, n)) for n in cfg.lengths]
    if cfg.defaults_tokens:
        timing.append((cfg.defaults_tokens, list(DEFAULTS)))
    mem_tasks = []
    if not args.no_memory:
        if args.smoke:  # smoke mode checks the path, not the numbers: one process a length
            mem_tasks = list(timing)
        else:
            mem_tasks = [(n, [name]) for n, names in timing for name in names]
        # the linear variants (the targets) first, the longest first in each part
        mem_tasks.sort(key=lambda t: (t[1][0] in ("exact", "sdpa"), -t[0]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        background = []
        if args.overlap:  # one memory lane beside the timing workers
            background = [pool.submit(lambda: [_run_worker("memory", *t, args) for t in mem_tasks])]
        results = [_run_worker("time", n, names, args) for n, names in timing]
        if args.overlap:
            results += background[0].result()
        else:
            results += list(pool.map(lambda t: _run_worker("memory", *t, args), mem_tasks))
    cases = [c for r in results for c in r.get("cases", [])]
    memory = [m for r in results for m in r.get("memory", [])]
    errors = [r for r in results if "error" in r]
    text = tables(cfg, cases, memory, notes, judge=not args.smoke)
    wall = time.perf_counter() - t0
    print(text)
    payload = {
        "meta": {
            "mode": "smoke" if args.smoke else "full",
            "config": asdict(cfg),
            "features": FEATURES,
            "threads": args.threads,
            "wall_s": wall,
            "cpu_count": os.cpu_count(),
            "versions": next((r["versions"] for r in results if "versions" in r), {}),
        },
        "cases": cases,
        "memory": memory,
        "summary": summary(cfg, cases, memory, judge=not args.smoke),
        "notes": notes,
        "errors": errors,
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(os.path.abspath(args.out), "linear_attention")
        payload["plot"] = plot(cfg, cases, memory, stem + ".png")
        with open(stem + ".json", "w") as f:
            json.dump(payload, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(text + "\n")
        print(
            f"\nwrote {stem}.json, .md"
            + (", .png" if payload["plot"] else "")
            + f" in {wall:.0f} s"
        )
    else:
        print(f"\nfinished in {wall:.0f} s; nothing written (--out DIR saves it)")
    for err in errors:
        first = str(err["error"]).strip().splitlines()[0]
        print(
            f"linear_attention: the {err['what']} worker at {err['tokens']} tokens failed: {first}",
            file=sys.stderr,
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
