"""Smoke test of the benchmarks: ``python -m nmn_array.benchmarks --smoke`` runs every case at
tiny sizes in a subprocess and writes a JSON report with finite numbers for all of them, only
where ``--out`` asks; without ``--json``/``--out`` it writes nothing, and a framework that
cannot be imported is skipped with one line.

No timing is asserted: the sizes are too small and the machine is shared. Every framework
(torch, jax + flax, tensorflow + keras), nmn 0.3.5 and matplotlib must be installed for the
full smoke run (as for the other backends' tests).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: (suite, group, name) of every timed case the report must contain.
TIMED = {
    ("torch", "dense", "ours"),
    ("torch", "dense", "native"),
    ("torch", "dense", "nmn"),
    ("torch", "conv", "ours"),
    ("torch", "conv", "native"),
    ("torch", "conv", "nmn"),
    ("torch", "attention", "ours"),
    ("torch", "attention", "sdpa"),
    ("torch", "attention", "mha"),
    ("torch", "attention", "mha_fast"),
    ("torch", "attention", "nmn"),
    ("jax", "dense", "ours"),
    ("jax", "dense", "native"),
    ("jax", "dense", "nmn"),
    ("jax", "conv", "ours"),
    ("jax", "conv", "native"),
    ("jax", "conv", "nmn"),
    ("jax", "attention", "ours"),
    ("jax", "attention", "native"),
    ("jax", "attention", "nmn"),
    ("tf", "dense", "ours"),
    ("tf", "dense", "ours_fn"),
    ("tf", "dense", "native"),
    ("tf", "dense", "nmn"),
    ("tf", "conv", "ours"),
    ("tf", "conv", "ours_fn"),
    ("tf", "conv", "native"),
    ("tf", "conv", "nmn"),
}

#: Torch cases whose peak memory is measured.
MEMORY = {(s, g, n) for s, g, n in TIMED if s == "torch"}

#: Scaling studies and the cases of each.
SCALING = {
    "dense-batch": {"ours", "native", "nmn"},
    "conv-batch": {"ours", "native", "nmn"},
    "attention-seq": {"ours", "sdpa", "nmn"},
}

#: Ratios with a target, by label prefix (the full list lives in benchmarks/report.py).
TARGETED = {
    "torch dense / Linear+ReLU",
    "torch conv2d / Conv2d+ReLU",
    "torch attention / SDPA module",
    "torch attention peak mem / nn.MHA",
    "torch dense: nmn 0.3.5 / ours",
    "torch conv2d: nmn 0.3.5 / ours",
    "torch attention: nmn 0.3.5 / ours",
    "jax dense / nnx.Linear+relu",
    "jax conv / nnx.Conv+relu",
    "jax dense: nmn 0.3.5 / ours",
    "jax conv: nmn 0.3.5 / ours",
    "jax attention: nmn 0.3.5 / ours",
}


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def files_under(directory: Path) -> set[str]:
    """Every file below ``directory``, as relative POSIX paths."""
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def run_bench(*args: str, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """``nmn-array bench *args`` in a fresh process started in ``cwd`` (``prelude`` first)."""
    code = (
        f"{prelude}\nfrom nmn_array.cli import main\nraise SystemExit(main({['bench', *args]!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=900,  # < 60 s on an idle 2-core machine; generous for a loaded CI box
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the smoke benchmark once for the module, in an empty working directory, with
    ``--out results``, and load its JSON."""
    cwd = tmp_path_factory.mktemp("bench_cwd")
    proc = run_bench("--smoke", "--out", "results", cwd=cwd)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    data = json.loads((cwd / "results" / "bench.json").read_text())
    data["_stdout"] = proc.stdout
    data["_dir"] = (cwd / "results").resolve()
    data["_files"] = files_under(cwd)
    return data


def test_writes_only_into_out_dir(report: dict) -> None:
    assert report["_files"] == {"results/bench.json", "results/bench_scaling.png"}


def test_no_worker_failed(report: dict) -> None:
    assert report["errors"] == []
    assert report["meta"]["mode"] == "smoke"


def test_every_timed_case_is_finite(report: dict) -> None:
    got = {(c["suite"], c["group"], c["name"]): c for c in report["cases"]}
    missing = TIMED - set(got)
    assert not missing, f"cases missing from the report: {sorted(missing)}"
    for key in TIMED:
        case = got[key]
        for field in ("median_ms", "q1_ms", "q3_ms", "min_ms", "cpu_median_ms"):
            assert _finite(case[field]) and case[field] >= 0, (key, field, case[field])
        assert case["n"] >= 1 and len(case["samples_ms"]) == case["n"]
        assert all(_finite(s) for s in case["samples_ms"])


def test_every_memory_case_is_finite(report: dict) -> None:
    got = {(m["suite"], m["group"], m["name"]): m for m in report["memory"]}
    missing = MEMORY - set(got)
    assert not missing, f"memory cases missing: {sorted(missing)}"
    for key in MEMORY:
        assert _finite(got[key]["peak_mb"]) and got[key]["peak_mb"] >= 0, key
        assert _finite(got[key]["baseline_mb"]) and got[key]["baseline_mb"] > 0, key


def test_scaling_study_and_plot(report: dict) -> None:
    for study, names in SCALING.items():
        rows = [r for r in report["scaling"] if r["group"] == study]
        assert rows, f"no rows for scaling study {study}"
        assert {r["name"] for r in rows} == names
        assert len({r["x"] for r in rows}) >= 2
        assert all(_finite(r["median_ms"]) for r in rows)
    assert report["plot"] and Path(report["plot"]).is_file()
    assert Path(report["plot"]).resolve().parent == report["_dir"]


def test_targeted_ratios_reported(report: dict) -> None:
    ratios = {r["label"]: r for r in report["ratios"]}
    missing = TARGETED - set(ratios)
    assert not missing, f"ratios missing: {sorted(missing)}"
    for label in TARGETED:
        r = ratios[label]
        assert r["target"] is not None
        assert r["status"] == "-"  # smoke mode does not judge
        if r["measure"] == "time":
            assert _finite(r["value"]) and r["value"] > 0, (label, r["value"])
    assert "| ratio |" in report["_stdout"]


def test_missing_framework_is_skipped_in_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    """JAX is made unimportable in the fresh process with ``sys.modules["jax"] = None``
    (Python's documented way to block an import; nothing is faked), as on a machine without
    it: the jax suite is skipped with one line naming jax and the pip command, the memory
    suite still runs, the exit code is 0, and with neither ``--json`` nor ``--out`` no file
    appears in the working directory."""
    proc = run_bench(
        "--smoke",
        "--only",
        "jax,memory",
        cwd=tmp_path,
        prelude="import sys; sys.modules['jax'] = None",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("skipping")]
    assert skipped == [
        'skipping the jax suite: jax is not installed (pip install "nmn-array[nnx]")'
    ], proc.stdout
    assert "| torch attention peak mem / nn.MHA | memory |" in proc.stdout  # memory ran
    assert files_under(tmp_path) == set()
    assert "nothing written" in proc.stdout
