"""Smoke test of the benchmarks: ``python -m nmn_array.benchmarks --smoke`` runs every case at
tiny sizes in a subprocess and writes a JSON report with finite numbers for all of them.

No timing is asserted: the sizes are too small and the machine is shared. Every framework
(torch, jax + flax, tensorflow + keras), nmn 0.3.5 and matplotlib must be installed: a missing
one makes its worker fail, which fails this test (as for the other backends' tests).
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


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the smoke benchmark once for the module and load its JSON."""
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "nmn_array.benchmarks", "--smoke", "--json", str(out)],
        cwd=root,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=900,  # < 60 s on an idle 2-core machine; generous for a loaded CI box
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    data = json.loads(out.read_text())
    data["_stdout"] = proc.stdout
    data["_dir"] = out.parent
    return data


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
    assert Path(report["plot"]).parent == report["_dir"]


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
