"""The pure functions on Dask arrays that never exist in one piece (issue 18).

``nmn_array.yat`` of ``ROWS`` rows of 64 features against 256 neurons, chunked over rows,
computed lazily and reduced lazily: each block of the input is generated inside its own
task (``map_blocks`` of a NumPy generator seeded by the block's index, so any block can be
regenerated alone), and only reductions are computed: per block, the maximum, minimum and
sum of the rows' maxima; the 256 column sums; and the row maxima of a few sampled blocks.

- Memory: the run happens in a fresh subprocess (threaded scheduler, 2 threads) that reports
  its peak resident set size (``VmHWM``, see :func:`_peak_rss`). The input would take
  ``ROWS * 64 * 8`` bytes in one piece (1.43 GiB) and the output four times that (5.72
  GiB); the whole process, interpreter and libraries included, must stay under
  ``PEAK_BOUND`` (512 MiB), so neither ever existed. One output block is 19.5 MiB, and the
  yat of a block holds a handful of temporaries of that size (dot product, distance, its
  refinement, numerator, ratio) per thread: the bound is a few blocks' worth, whatever
  ``ROWS``.
- Values: the sampled blocks are regenerated here and their yat computed by NumPy with the
  distance summed directly (``sum((x - w)^2)``, not the expanded form), itself checked on a
  few rows against the naive reference ``tests.reference.yat_ref``.
- dask.distributed: the same computation, smaller, on a ``LocalCluster`` of 2 worker
  processes on 127.0.0.1 (no dashboard), equals the threaded scheduler's result.

Both subprocesses (``python -m tests.scaling.test_dask_scale big|cluster OUT``, the
``__main__`` block below) are killed with their children if they outlive their timeout
(``tests._bounded.run_module``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nmn_array
from tests._bounded import run_module

ROWS, CLUSTER_ROWS, CHUNK, FEATURES, UNITS = 3_000_000, 100_000, 10_000, 64, 256
SEED, ALPHA, EPSILON = 18, 1.3, 1e-5
PEAK_BOUND = 640 * 2**20  # bytes: the subprocess's whole peak RSS (measured: about 400 MiB)
RTOL = 1e-12  # float64; the expanded and the direct distance differ by rounding only
TIMEOUT = {"big": 240, "cluster": 180}  # seconds (measured: about 15 s and 4 s)


def block(i: int) -> np.ndarray:
    """Input block ``i``: ``(CHUNK, FEATURES)`` standard normal, from its own seed."""
    return np.random.default_rng([SEED, 0, i]).standard_normal((CHUNK, FEATURES))


def weights() -> tuple[np.ndarray, np.ndarray]:
    """The 256 neurons ``(UNITS, FEATURES)`` and their bias ``(UNITS,)``."""
    rng = np.random.default_rng([SEED, 1])
    return 0.5 * rng.standard_normal((UNITS, FEATURES)), 0.1 * rng.standard_normal(UNITS)


def sample(blocks: int) -> list[int]:
    """The blocks checked against NumPy: the first, the last and two others."""
    middle = np.random.default_rng([SEED, 2]).choice(np.arange(1, blocks - 1), 2, replace=False)
    return sorted({0, blocks - 1, *map(int, middle)})


def _generated(block_info: Any = None) -> np.ndarray:
    return block(block_info[None]["chunk-location"][0])


def _block_stats(row_max: np.ndarray) -> np.ndarray:
    return np.array([row_max.max(), row_max.min(), row_max.sum()])


def lazy_reductions(rows: int) -> dict[str, Any]:
    """The Dask graph: yat of the generated input, and the reductions computed from it."""
    import dask.array as da

    blocks = rows // CHUNK
    x = da.map_blocks(_generated, chunks=((CHUNK,) * blocks, (FEATURES,)), dtype=np.float64)
    w, b = (da.from_array(a) for a in weights())
    y = nmn_array.yat(x, w, b, alpha=ALPHA, epsilon=EPSILON)
    assert isinstance(y, da.Array) and y.chunks[0] == (CHUNK,) * blocks  # lazy, row blocks
    row_max = y.max(axis=1)
    stats = row_max.map_blocks(_block_stats, chunks=((3,) * blocks,), dtype=np.float64)
    out = {"block_stats": stats, "column_sums": y.sum(axis=0)}
    out.update({f"row_max_{i}": row_max.blocks[i] for i in sample(blocks)})
    return out


def _peak_rss() -> int:
    """This process's peak resident set size in bytes: ``VmHWM`` of /proc/self/status.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it over from the parent across fork and
    exec, so a subprocess of a large pytest worker reported the worker's peak (6586 MiB in a
    CI run, before any Dask work), not its own; ``VmHWM`` belongs to the new program's own
    address space.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM line in /proc/self/status: the memory check needs Linux")


def _save(out: Path, name: str, arrays: dict[str, Any], **figures: Any) -> None:
    np.savez(out / f"{name}.npz", **arrays)
    (out / f"{name}.json").write_text(json.dumps(figures))


def _run_big(out: Path) -> None:
    """The large run, threaded scheduler with 2 threads; its time and peak memory."""
    import dask

    graph = lazy_reductions(ROWS)
    before, start = _peak_rss(), time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        (results,) = dask.compute(graph)
    seconds = time.perf_counter() - start
    _save(out, "big", results, seconds=seconds, peak_rss=_peak_rss(), peak_before=before)


def _run_cluster(out: Path) -> None:
    """The small run on the threaded scheduler, then on a LocalCluster of 2 processes."""
    import dask
    from distributed import Client, LocalCluster

    graph = lazy_reductions(CLUSTER_ROWS)
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        (threaded,) = dask.compute(graph)
    threaded_seconds, start = time.perf_counter() - start, time.perf_counter()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, worker_dashboard_address=None,
    )  # fmt: skip
    with cluster, Client(cluster, timeout="60s") as client:
        started = time.perf_counter() - start
        (distributed,) = dask.compute(graph, scheduler=client)
        workers = sorted(client.scheduler_info()["workers"])
    arrays = {f"threaded_{k}": v for k, v in threaded.items()}
    arrays.update({f"distributed_{k}": v for k, v in distributed.items()})
    _save(
        out, "cluster", arrays, threaded_seconds=threaded_seconds, workers=workers,
        cluster_seconds=time.perf_counter() - start, startup_seconds=started,
    )  # fmt: skip


def _run(job: str, tmp: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run ``job`` in a fresh subprocess (killed with its children after its timeout)."""
    run_module("tests.scaling.test_dask_scale", job, str(tmp), cwd=tmp, timeout=TIMEOUT[job])
    with np.load(tmp / f"{job}.npz") as data:
        arrays = dict(data)
    return arrays, json.loads((tmp / f"{job}.json").read_text())


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    return _run("big", tmp_path_factory.mktemp("dask_big"))


def numpy_yat(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The yat in NumPy, the squared distance summed directly (in slices of 256 rows)."""
    dist = np.empty((x.shape[0], w.shape[0]))
    for start in range(0, x.shape[0], 256):
        diff = x[start : start + 256, None, :] - w[None, :, :]
        dist[start : start + 256] = np.einsum("ijk,ijk->ij", diff, diff)
    return ALPHA * (x @ w.T + b) ** 2 / (np.maximum(dist, 0.0) + EPSILON)


def test_peak_memory_stays_under_a_few_blocks(big: tuple[dict, dict]) -> None:
    _, figures = big
    one_piece_input = ROWS * FEATURES * 8
    assert PEAK_BOUND < one_piece_input / 2  # the input alone could not fit: honest sizes
    assert figures["peak_rss"] <= PEAK_BOUND, (
        f"peak RSS {figures['peak_rss'] / 2**20:.0f} MiB > {PEAK_BOUND / 2**20:.0f} MiB "
        f"(one output block: {CHUNK * UNITS * 8 / 2**20:.1f} MiB)"
    )


def test_sampled_blocks_equal_numpy(big: tuple[dict, dict]) -> None:
    from tests.reference import yat_ref

    arrays, _ = big
    w, b = weights()
    blocks = ROWS // CHUNK
    stats = arrays["block_stats"].reshape(blocks, 3)
    for i in sample(blocks):
        x = block(i)
        want = numpy_yat(x, w, b)
        # the vectorised NumPy reference is the naive one, on a few rows
        rows = [0, CHUNK // 2, CHUNK - 1]
        ref = yat_ref(x[rows], w, b, alpha=ALPHA, epsilon=EPSILON)
        np.testing.assert_allclose(want[rows], ref, rtol=RTOL, atol=0)
        np.testing.assert_allclose(arrays[f"row_max_{i}"], want.max(axis=1), rtol=RTOL, atol=0)
        row_max = want.max(axis=1)
        expected = [row_max.max(), row_max.min(), row_max.sum()]
        np.testing.assert_allclose(stats[i], expected, rtol=RTOL, atol=0)


def test_every_block_was_reduced(big: tuple[dict, dict]) -> None:
    """All blocks ran (none empty, none repeated) and the two reductions over all rows
    agree: the column sums add up to the sum of every row's values, which bounds the sum of
    the rows' maxima from above and ``UNITS`` times it from below."""
    arrays, _ = big
    stats = arrays["block_stats"].reshape(ROWS // CHUNK, 3)
    assert np.isfinite(stats).all() and (stats[:, 1] > 0).all()
    assert len(np.unique(stats[:, 2])) == ROWS // CHUNK
    total, maxima = arrays["column_sums"].sum(), stats[:, 2].sum()
    assert arrays["column_sums"].shape == (UNITS,)
    assert maxima < total < UNITS * maxima


def test_local_cluster_equals_threaded(tmp_path: Path) -> None:
    arrays, figures = _run("cluster", tmp_path)
    assert len(figures["workers"]) == 2
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in figures["workers"])
    names = [k.removeprefix("threaded_") for k in arrays if k.startswith("threaded_")]
    assert {"block_stats", "column_sums"} <= set(names)
    for name in names:
        got, want = arrays[f"distributed_{name}"], arrays[f"threaded_{name}"]
        np.testing.assert_array_equal(got, want, err_msg=name)


if __name__ == "__main__":
    {"big": _run_big, "cluster": _run_cluster}[sys.argv[1]](Path(sys.argv[2]))
