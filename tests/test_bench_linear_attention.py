"""Smoke test of the linear-attention benchmark (issue 15): ``python -m
nmn_array.benchmarks.linear_attention --smoke --out DIR`` times and measures every case at
tiny lengths in worker processes and writes the table, the JSON and the plot; every linear
variant's output and gradients are finite. No timing is asserted (tiny sizes, shared
machine); the exponent fit is checked on known power laws."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from nmn_array.benchmarks import linear_attention as la  # noqa: E402

LINEAR = la.COLUMNS[:6]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cwd = tmp_path_factory.mktemp("linear_bench")
    proc = subprocess.run(
        [sys.executable, "-m", "nmn_array.benchmarks.linear_attention", "--smoke", "--out", "res"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((cwd / "res" / "linear_attention.json").read_text())
    data["_stdout"] = proc.stdout
    data["_md"] = (cwd / "res" / "linear_attention.md").read_text()
    data["_files"] = {p.relative_to(cwd).as_posix() for p in cwd.rglob("*") if p.is_file()}
    return data


def test_writes_the_three_files_only(smoke: dict) -> None:
    assert smoke["_files"] == {f"res/linear_attention.{e}" for e in ("json", "md", "png")}
    assert smoke["errors"] == [] and smoke["meta"]["mode"] == "smoke"


def test_every_case_timed_and_measured_at_every_length(smoke: dict) -> None:
    cfg = la.SMOKE
    for records, key in ((smoke["cases"], "median_ms"), (smoke["memory"], "peak_mb")):
        got = {(r["x"], r["name"]): r[key] for r in records}
        want = {(n, c) for n in cfg.lengths for c in la.case_names(cfg, n)}
        want |= {(cfg.defaults_tokens, c) for c in la.DEFAULTS}
        assert set(got) == want
        assert all(math.isfinite(v) and v >= 0 for v in got.values()), got
    # exact yat stops at --exact-max-tokens, with a note saying so
    assert (cfg.lengths[-1], "exact") not in {(r["x"], r["name"]) for r in smoke["cases"]}
    assert any("exact yat attention not run above 32 tokens" in n for n in smoke["notes"])


def test_linear_outputs_and_gradients_are_finite(smoke: dict) -> None:
    linear = [r for r in smoke["cases"] + smoke["memory"] if r["name"] in LINEAR + la.DEFAULTS]
    assert len(linear) == 2 * (len(LINEAR) * len(la.SMOKE.lengths) + len(la.DEFAULTS))
    assert all(r["finite"] is True for r in linear)
    assert "NOT FINITE" not in smoke["_md"]


def test_table_rows_and_summary(smoke: dict) -> None:
    md = smoke["_md"]
    assert md in smoke["_stdout"]
    header = (
        "| tokens | SLAY | MAY | RAY | SLAY causal | MAY causal | RAY causal | exact yat | SDPA |"
    )
    assert md.count(header) == 2  # time and memory
    for n in la.SMOKE.lengths:
        rows = [line for line in md.splitlines() if line.startswith(f"| {n} |")]
        assert len(rows) == 2 and all(len(r.split("|")) == 11 for r in rows), rows
    assert [r["name"] for r in smoke["summary"]] == list(LINEAR)
    for row in smoke["summary"]:
        # at 16-64 tokens a step may stay within pages already mapped (0 MiB): no fit then
        exponent = row["memory_exponent"]
        assert exponent is None or math.isfinite(exponent), row
        fitted = sorted(
            r["x"] for r in smoke["memory"] if r["name"] == row["name"] and r["peak_mb"] > 0
        )
        assert row["fit_points"] == fitted and (exponent is None) == (len(fitted) < 2)
        assert math.isfinite(row["speedup_vs_exact"]) and row["speedup_vs_exact"] > 0
        assert row["exponent_status"] == row["speedup_status"] == "-"  # smoke is not judged
    assert "MAY, nmn defaults (256 features, nmax 40) at 16 tokens" in md


def test_plot_written(smoke: dict) -> None:
    png = Path(smoke["plot"])
    assert png.name == "linear_attention.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_exponent_recovers_power_laws() -> None:
    xs = [4096, 8192, 16384, 32768]
    assert la.fit_exponent([(x, 3.0 * x) for x in xs]) == pytest.approx(1.0)
    assert la.fit_exponent([(x, 1e-6 * x**2) for x in xs]) == pytest.approx(2.0)
    assert la.fit_exponent([(x, 5.0 + 0.0 * x) for x in xs]) == pytest.approx(0.0)
    assert la.fit_exponent([(4096, 1.0)]) is None
    assert la.fit_exponent([(4096, 0.0), (8192, 1.0)]) is None  # one usable point


def test_summary_judges_the_targets() -> None:
    cfg = la.Config(lengths=(4096, 8192, 16384, 32768))
    cases = [{"x": 16384, "name": "exact", "median_ms": 1000.0}]
    cases += [{"x": 16384, "name": n, "median_ms": 50.0} for n in LINEAR]
    memory = [{"x": x, "name": "slay", "peak_mb": x / 100} for x in cfg.lengths]
    memory += [{"x": x, "name": "maclaurin", "peak_mb": (x / 100) ** 1.5} for x in cfg.lengths]
    rows = {r["name"]: r for r in la.summary(cfg, cases, memory)}
    assert rows["slay"]["exponent_status"] == "PASS"
    assert rows["maclaurin"]["exponent_status"] == "MISS"
    assert rows["maclaurin"]["memory_exponent"] == pytest.approx(1.5)
    assert rows["radial"]["exponent_status"] == "-"  # not measured
    assert rows["slay"]["speedup_vs_exact"] == pytest.approx(20.0)
    assert rows["slay"]["speedup_status"] == "PASS"
    slow = la.summary(cfg, [*cases[:1], {"x": 16384, "name": "slay", "median_ms": 200.0}], [])
    assert slow[0]["speedup_status"] == "MISS"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lengths", "0,16"], "--lengths must be positive integers, got (0, 16)"),
        (["--defaults-tokens", "-1"], "--defaults-tokens must be >= 0, got -1"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_bad_options_exit_2(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        la.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
