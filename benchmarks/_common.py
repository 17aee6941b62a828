"""Shared machinery of the benchmark workers: sizes, thread settings and the interleaved timer.

Nothing here imports a framework: the thread environment has to be set before PyTorch,
JAX or TensorFlow is first imported, and each suite runs in its own worker process.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Default number of CPU threads every framework may use.
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and repetition counts of one benchmark mode.

    Attributes
    ----------
    dense_batch, dense_in, dense_out : int
        Dense layer: ``x (dense_batch, dense_in)`` -> ``(dense_batch, dense_out)``.
    conv_batch, conv_in, conv_out, conv_hw, conv_k : int
        2-D convolution: ``x (conv_batch, conv_in, conv_hw, conv_hw)``, kernel ``conv_k``,
        padding ``conv_k // 2`` (same size output).
    attn_batch, attn_len, attn_dim, attn_heads : int
        Self-attention on ``x (attn_batch, attn_len, attn_dim)`` with ``attn_heads`` heads.
    reps : dict
        Timed repetitions per group (``dense``, ``conv``, ``attention``, ``scaling``, and
        ``long`` for each length of the long-context study).
    budget_s : dict
        Seconds of timed rounds after which a group (or the whole scaling study, whose
        points are interleaved in one round-robin) stops early, so that a heavily loaded
        machine cannot stretch the run without bound.
    warmup : int
        Untimed calls of every case before the timed rounds (JAX compiles here).
    dense_batches, conv_batches, attn_lengths : tuple of int
        Points of the scaling study (batch size for dense and conv, sequence length for
        attention); empty tuples skip a study.
    long_batch : int
        Batch size of the long-context study (1, as in issue 13).
    long_lengths : tuple of int
        Sequence lengths of the long-context study (``--study long``): self-attention of
        ``x (long_batch, L, attn_dim)`` with ``attn_heads`` heads at every ``L`` up to
        ``--max-tokens`` (default ``long_max``).
    long_short, long_mid, long_len : int
        The lengths the issue-13 targets are judged at (256, 1024 and 4096 tokens in full
        mode); each must be in ``long_lengths``.
    long_window : tuple of int or None
        ``window=(left, right)`` of the local-attention case (at ``long_len``).
    long_block : int, "auto" or None
        ``block_size`` of our blocked cases (``"auto"``, the modules' default, in full mode;
        a small int in smoke mode, so that the tiny lengths run the blocked path).
    long_materialised_max : int
        Longest sequence at which the materialised path (``block_size=None``) is run; above
        it the case is skipped with a printed reason (its score matrices alone would fill
        the memory).
    long_single_from : int
        From this length on, one timed round and no warm-up (a step takes minutes).
    """

    dense_batch: int = 256
    dense_in: int = 512
    dense_out: int = 512
    conv_batch: int = 16
    conv_in: int = 64
    conv_out: int = 64
    conv_hw: int = 32
    conv_k: int = 3
    attn_batch: int = 4
    attn_len: int = 256
    attn_dim: int = 256
    attn_heads: int = 8
    reps: dict = field(
        default_factory=lambda: {
            "dense": 60,
            "conv": 15,
            "attention": 30,
            "scaling": 15,
            "long": 10,
        }
    )
    budget_s: dict = field(
        default_factory=lambda: {
            "dense": 40.0,
            "conv": 90.0,
            "attention": 90.0,
            "scaling": 120.0,
            "long": 60.0,
        }
    )
    warmup: int = 3
    dense_batches: tuple = (32, 64, 128, 256, 512, 1024)
    conv_batches: tuple = (2, 4, 8, 16)
    attn_lengths: tuple = (64, 128, 256, 512, 1024)
    long_batch: int = 1
    long_lengths: tuple = (256, 512, 1024, 2048, 4096, 8192, 16384)
    long_max: int = 4096
    long_short: int = 256
    long_mid: int = 1024
    long_len: int = 4096
    long_window: tuple = (128, 0)
    long_block: Any = "auto"
    long_materialised_max: int = 4096
    long_single_from: int = 8192

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the sizes."""
        return asdict(self)


FULL = Sizes()

SMOKE = Sizes(
    dense_batch=8,
    dense_in=16,
    dense_out=16,
    conv_batch=2,
    conv_in=4,
    conv_out=4,
    conv_hw=8,
    conv_k=3,
    attn_batch=2,
    attn_len=16,
    attn_dim=32,
    attn_heads=4,
    reps={"dense": 2, "conv": 2, "attention": 2, "scaling": 1, "long": 2},
    warmup=1,
    dense_batches=(4, 8),
    conv_batches=(1, 2),
    attn_lengths=(8, 16),
    # every branch of the long study at tiny sizes: blocked path (block 16), the
    # materialised case skipped above 32 tokens, one round without warm-up at 64
    long_lengths=(16, 32, 64),
    long_max=64,
    long_short=16,
    long_mid=32,
    long_len=64,
    long_window=(8, 0),
    long_block=16,
    long_materialised_max=32,
    long_single_from=64,
)


def sizes_for(mode: str) -> Sizes:
    """The :class:`Sizes` of ``mode`` (``"full"`` or ``"smoke"``)."""
    if mode == "full":
        return FULL
    if mode == "smoke":
        return SMOKE
    raise ValueError(f"mode must be 'full' or 'smoke', got {mode!r}")


def thread_env(threads: int = DEFAULT_THREADS) -> dict[str, str]:
    """Environment variables that cap every framework's thread pools at ``threads``.

    They must be in the environment before the frameworks are imported, which is why each
    suite runs in a fresh worker process started with this environment.
    """
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "KERAS_BACKEND": "tensorflow",
        "PYTHONWARNINGS": "ignore",
    }


def pin_cpus(threads: int = DEFAULT_THREADS) -> list[int]:
    """Restrict this process to ``threads`` CPUs when more are available.

    XLA sizes its CPU thread pool from the CPUs the process may run on, so pinning (before
    JAX is imported) is what caps it; PyTorch and TensorFlow are capped by their own settings
    as well. Returns the CPUs the process may use afterwards.
    """
    if not hasattr(os, "sched_getaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > threads:
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


def select(
    cases: Mapping[str, Mapping[str, Any]], skip: Collection[str] = ()
) -> dict[str, dict[str, Any]]:
    """``cases`` (group -> name -> entry) without the case names in ``skip`` (e.g. ``nmn``
    when nmn 0.3.5 is not installed)."""
    return {
        group: {name: e for name, e in entries.items() if name not in skip}
        for group, entries in cases.items()
    }


Step = Callable[[], Any]


def interleaved(
    steps: Mapping[str, Step],
    *,
    reps: int,
    warmup: int,
    budget_s: float | None = None,
) -> dict[str, tuple[list[float], list[float]]]:
    """Time ``steps`` round-robin: every round calls each step once, in a rotated order.

    Parameters
    ----------
    steps : mapping of name to a zero-argument callable
        Each call runs one forward + backward pass and blocks until it is finished.
    reps : int
        Timed rounds.
    warmup : int
        Untimed rounds before timing (compilation, allocator and thread-pool warm-up).
    budget_s : float, optional
        Stop after the round in which this many seconds of timed rounds have passed (at least
        three rounds are always timed when ``reps >= 3``).

    Returns
    -------
    dict
        Name -> ``(wall, cpu)``: two lists of seconds, one entry per timed round. ``wall`` is
        wall-clock time; ``cpu`` is the CPU time of the whole process (all threads) during the
        call, which preemption by other processes does not inflate. Rounds interleave the
        cases, so a slow phase of the shared machine hits all of them alike.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        for r in range(reps):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                c0 = time.process_time()
                t0 = time.perf_counter()
                steps[name]()
                t1 = time.perf_counter()
                c1 = time.process_time()
                times[name][0].append(t1 - t0)
                times[name][1].append(c1 - c0)
            if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
                break
    finally:
        if was_enabled:
            gc.enable()
    return times


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, quartiles and minimum of a list of seconds, in milliseconds."""
    ms = sorted(s * 1e3 for s in samples)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": ms[0],
        "n": len(ms),
    }


def record(
    suite: str,
    group: str,
    name: str,
    label: str,
    samples: tuple[list[float], list[float]],
    **extra: Any,
) -> dict[str, Any]:
    """One JSON record of a timed case from its ``(wall, cpu)`` samples in seconds."""
    wall, cpu = samples
    rec = {"suite": suite, "group": group, "name": name, "label": label}
    rec.update(summarize(wall))
    rec["cpu_median_ms"] = statistics.median(cpu) * 1e3
    rec["samples_ms"] = [s * 1e3 for s in wall]
    rec["cpu_samples_ms"] = [s * 1e3 for s in cpu]
    rec.update(extra)
    return rec
