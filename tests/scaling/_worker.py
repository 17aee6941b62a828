"""The two halves of a scaling test: a worker subprocess that computes and records, and the
pytest side that starts it (bounded in time) and reads what it recorded.

A worker runs sections; each records arrays (``numpy.savez``) and facts (JSON), or the
traceback it raised, so one failing section fails its own tests and not the others'. The
assertions stay in the test files, where the float64 references and the bounds are computed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backends import Backend

ROOT = Path(__file__).resolve().parents[2]
DTYPES = ("float32", "float64")


def unit_roundoff(dtype: str) -> float:
    return float(np.finfo(dtype).eps) / 2


def reorder_tol(dtype: str) -> float:
    """Two computations of one gradient that differ only in the order of their batch sums
    (one device or four): 256 unit roundoffs of the largest entry of the array compared
    (measured: at most 15 in float32 and 20 in float64; docs/scaling.md)."""
    return 256 * unit_roundoff(dtype)


def sharding_facts(a: Any) -> dict[str, Any]:
    """Where a ``jax.Array`` lives: its partition spec, devices and per-device shapes."""
    s = a.sharding
    return {
        "spec": [None if p is None else str(p) for p in getattr(s, "spec", ())],
        "devices": sorted(d.id for d in s.device_set),
        "replicated": bool(s.is_fully_replicated),
        "shard_shapes": [list(x.data.shape) for x in a.addressable_shards],
    }


class Recorder:
    """The worker's side: ``with rec.section(name) as s: s["fact"] = ...; rec.save(...)``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.facts: dict[str, dict[str, Any]] = {}
        self.arrays: dict[str, np.ndarray] = {}

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[dict[str, Any]]:
        facts: dict[str, Any] = {}
        self.facts[name] = facts
        start = time.perf_counter()
        try:
            yield facts
        except Exception:
            facts["error"] = traceback.format_exc()
        facts["seconds"] = round(time.perf_counter() - start, 3)

    def save(self, section: str, key: str, value: Any) -> None:
        self.arrays[f"{section}/{key}"] = np.asarray(value)

    def dump(self) -> None:
        np.savez(self.out / "arrays.npz", **self.arrays)
        (self.out / "facts.json").write_text(json.dumps(self.facts, indent=1, default=str))


class Results:
    """The test's side: what one worker recorded."""

    def __init__(self, out: Path, seconds: float) -> None:
        self.seconds = seconds
        self.facts: dict[str, dict[str, Any]] = json.loads((out / "facts.json").read_text())
        with np.load(out / "arrays.npz") as data:
            self.arrays = {k: data[k] for k in data.files}

    def section(self, name: str) -> dict[str, Any]:
        """The facts of a section that ran without error (else the test fails with its
        traceback)."""
        assert name in self.facts, f"the worker recorded no section {name!r}: {list(self.facts)}"
        facts = self.facts[name]
        if "error" in facts:
            pytest.fail(f"worker section {name!r} raised:\n{facts['error']}", pytrace=False)
        return facts

    def array(self, section: str, key: str) -> np.ndarray:
        self.section(section)
        return self.arrays[f"{section}/{key}"]

    def group(self, section: str, prefix: str) -> dict[str, np.ndarray]:
        """Every array of ``section`` saved under ``prefix/``, by the rest of its key."""
        self.section(section)
        head = f"{section}/{prefix}/"
        return {k[len(head) :]: v for k, v in self.arrays.items() if k.startswith(head)}


def requires(*modules: str) -> None:
    """JAX under the suite's backend policy (``NMN_ARRAY_BACKENDS``: an error if required and
    missing, else a skip), then the other libraries the worker imports, as tests/frameworks
    does; checked here, before a subprocess is started for nothing."""
    Backend("jax").module()
    for name in modules:
        pytest.importorskip(name)


def run_worker(module: str, out: Path, *, timeout: float, **env: str) -> Results:
    """``python -m module out`` from the repository root with ``env`` added, CPU only; fails
    the calling test if it times out or exits non-zero."""
    full_env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONWARNINGS": "ignore",
        # unoptimised XLA code generation: compiling dominates these small steps (see
        # tests/frameworks/_parity.fast_xla_compilation); the parent's flags are dropped, as
        # they could set another device count (the worker sets its own)
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        **env,
    }
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", module, str(out)],
            cwd=ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{module} did not finish within {timeout} s:\n{exc.stderr}", pytrace=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        pytest.fail(
            f"{module} exited with {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}",
            pytrace=False,
        )
    return Results(out, seconds)


def main_dir() -> Path:
    """The worker's output directory, its one command-line argument."""
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m {sys.argv[0]} OUT_DIR")
    return Path(sys.argv[1])
