"""The ``nmn-array`` command: help of every command, doctor, XOR, delegated commands, and the
one-line error for a framework that is not installed (never a traceback)."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmn_array.cli import main
from nmn_array.doctor import (
    FUNCTIONS,
    TOLERANCE,
    reference_yat,
    reference_yat_attention,
    reference_yat_conv,
    relative_error,
)

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("demo", "xor", "doctor", "spec", "bench")


def run_cli(
    *args: str, prelude: str = "", timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m nmn_array *args`` in a fresh process (``prelude`` runs first)."""
    code = f"{prelude}\nfrom nmn_array.cli import main\nraise SystemExit(main({list(args)!r}))"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def user_lines(stderr: str) -> list[str]:
    """stderr without the C++ log lines TensorFlow/absl print at import."""
    noise = ("WARNING: All log messages before absl", "I0000 ", "W0000 ", "E0000 ")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(noise)]


def test_console_script_is_installed() -> None:
    exe = shutil.which("nmn-array", path=str(Path(sys.executable).parent))
    assert exe is not None, "the nmn-array console script is not installed in this environment"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout


def test_python_dash_m() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nmn_array", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "usage: nmn-array" in proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main([command, "--help"])
    except SystemExit as exc:  # argparse exits after printing help
        code = exc.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage:" in out


def test_demo_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for option in ("--framework", "--epochs", "--quick", "--seed", "--out", "--quiet"):
        assert option in out


def test_unknown_framework_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--framework", "mlx"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "mlx" in lines[0] and "torch, nnx, keras, tf" in lines[0]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("framework", "blocked", "extra"),
    [("torch", "torch", "torch"), ("nnx", "flax", "nnx"), ("keras", "keras", "keras")],
)
def test_missing_framework_is_one_line_naming_the_extra(
    framework: str, blocked: str, extra: str
) -> None:
    """The library is made unimportable in a fresh process with ``sys.modules[name] = None``
    (Python's own way to block an import; nothing is faked), as on a machine without it."""
    proc = run_cli(
        "demo",
        "--framework",
        framework,
        prelude=f"import sys; sys.modules[{blocked!r}] = None",
    )
    assert proc.returncode == 2, proc.stderr
    lines = user_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert f'pip install "nmn-array[{extra}]"' in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_xor_command_numpy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["xor", "--framework", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "4/4 correct" in out and "3/4" in out


def check_rows(out: str) -> dict[tuple[str, str, str], tuple[float, str]]:
    """The agreement rows of the doctor's report: (backend, function, dtype) -> (error, status)."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[-1] in ("OK", "FAIL") and parts[2].startswith("float"):
            rows[parts[0], parts[1], parts[2]] = (float(parts[3]), parts[4])
    return rows


def framework_lines(out: str) -> dict[str, str]:
    """The lines of the doctor's "framework modules" section, by framework name."""
    lines = out.split("framework modules", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return {line.split()[0]: line for line in lines}


def test_doctor_lists_imports_and_agrees() -> None:
    """Every installed array library is checked in float32 and float64 (JAX in float64 only
    with x64) for the three functions, within the per-dtype tolerance; every framework whose
    library is installed is reported available because its module imported; the Keras line
    names the backend Keras reports."""
    proc = run_cli("doctor", env={"KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "array libraries" in out and "framework modules" in out
    rows = check_rows(out)
    for backend in ("numpy", "array_api_strict", "torch", "jax", "tensorflow", "dask", "mlx"):
        if importlib.util.find_spec(backend) is None:
            continue
        for function in FUNCTIONS:
            for dtype, tol in TOLERANCE.items():
                error, status = rows[backend, function, dtype]
                assert status == "OK" and 0 <= error <= tol, (backend, function, dtype, error)
    assert "FAIL" not in out
    frameworks = framework_lines(out)
    assert set(frameworks) == {"torch", "nnx", "linen", "keras", "tf", "equinox", "mlx", "hamux"}
    for line in frameworks.values():
        assert line.split(", ")[1].startswith("available"), line
    assert frameworks["keras"].endswith("backend jax (keras.backend.backend())")


def test_doctor_framework_available_only_if_our_module_imports() -> None:
    """torch is installed, but ``nmn_array.frameworks.torch`` cannot import (its helper module
    ``nmn_array.frameworks._common`` is blocked with ``sys.modules[name] = None``, as when a
    wheel lacks a subpackage): the doctor must report it as not importing and exit with 1,
    not call the framework available because the library is installed."""
    proc = run_cli(
        "doctor",
        "--backend",
        "numpy",
        prelude="import sys; sys.modules['nmn_array.frameworks._common'] = None",
        timeout=900,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = framework_lines(proc.stdout)["torch"]
    assert "nmn_array.frameworks.torch does not import: ModuleNotFoundError" in line, line
    assert "available" not in line
    assert "nmn_array.frameworks.torch does not import" in proc.stdout.splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_reference_yat_by_hand() -> None:
    """x = (3, 4); w0 = (0, 0), b0 = 1: (0 + 1)^2 / (25 + 0.5); w1 = x, b1 = 0: 25^2 / 0.5."""
    got = reference_yat([[3.0, 4.0]], [[0.0, 0.0], [3.0, 4.0]], [1.0, 0.0], 2.0, 0.5)
    assert got == [[2.0 * 1.0 / 25.5, 2.0 * 625.0 / 0.5]]


def test_reference_distance_is_direct() -> None:
    """x = (1e8, 1), w = (1e8, 0): |x - w|^2 = 1 exactly, while the expanded form
    |x|^2 + |w|^2 - 2 x.w gives 0 in float64 (1e16 + 1 is not representable). The reference
    must get (x.w)^2 / (1 + eps) to the last digit."""
    x, w = [1e8, 1.0], [1e8, 0.0]
    expanded = sum(a * a for a in x) + sum(b * b for b in w) - 2 * sum(a * b for a, b in zip(x, w))
    assert expanded == 0.0  # the cancellation the reference must not suffer
    got = reference_yat([x], [w], [0.0], 1.0, 1e-5)[0][0]
    assert got == pytest.approx(1e32 / (1.0 + 1e-5), rel=1e-15)


def test_reference_conv_is_yat_of_patches() -> None:
    """A 1x1 filter on one channel: every output is the scalar yat of one pixel; a 3x3 filter
    with padding 1 at the corner sees five zeros and the four pixels of the 2x2 image."""
    img = [[[[1.0, 2.0], [3.0, 4.0]]]]
    got = reference_yat_conv(img, [[[[2.0]]]], [0.5], 0, 1, 1e-5)
    want = [[[[(p * 2.0 + 0.5) ** 2 / ((p - 2.0) ** 2 + 1e-5) for p in row] for row in img[0][0]]]]
    assert got == want
    k = [[[[1.0] * 3] * 3]]
    corner = reference_yat_conv(img, k, [0.0], 1, 2, 1e-5)[0][0][0][0]
    patch = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 4.0]
    dist = sum((p - 1.0) ** 2 for p in patch)
    assert corner == pytest.approx(sum(patch) ** 2 / (dist + 1e-5), rel=1e-15)


def test_reference_attention_by_hand() -> None:
    """One key: the softmax weight is 1 and the output is its value. Two keys with scores
    s0 = (q.k0)^2 / (|q - k0|^2 + eps) / sqrt(d), s1 likewise: the softmax mix of the values."""
    assert reference_yat_attention(
        [[[[1.0, 2.0]]]], [[[[0.5, -1.0]]]], [[[[7.0, -3.0]]]], 1e-5
    ) == [[[[7.0, -3.0]]]]
    q, k0, k1 = [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]
    s0 = 2.0**2 / (1.0 + 1e-5) / math.sqrt(2)
    s1 = 0.0
    p0 = math.exp(s0) / (math.exp(s0) + math.exp(s1))
    got = reference_yat_attention([[[q]]], [[[k0, k1]]], [[[[1.0], [3.0]]]], 1e-5)
    assert got[0][0][0][0] == pytest.approx(p0 * 1.0 + (1 - p0) * 3.0, rel=1e-15)


def test_relative_error_and_tolerance_scale_with_the_dtype() -> None:
    assert relative_error([[1.0, 2.0]], [[1.0, 4.0]]) == 0.5
    assert relative_error([1.0], [1.0, 2.0]) == math.inf  # a shape mismatch is never OK
    assert relative_error([float("nan")], [1.0]) == math.inf
    assert TOLERANCE["float32"] / TOLERANCE["float64"] == 2.0**29


def test_doctor_no_check_imports_no_framework() -> None:
    proc = run_cli(
        "doctor",
        "--no-check",
        prelude="import atexit, sys\n"
        "atexit.register(lambda: print('LOADED', sorted(m for m in "
        "('torch', 'jax', 'tensorflow', 'keras', 'flax') if m in sys.modules)))",
        env={"KERAS_BACKEND": "torch"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout
    keras = framework_lines(proc.stdout)["keras"]
    assert keras.endswith("(not imported); backend torch (KERAS_BACKEND)"), keras


@pytest.mark.parametrize(("command", "module"), [("spec", "nmn_array._spec.cli")])
def test_delegated_command(command: str, module: str) -> None:
    present = importlib.util.find_spec(module) is not None
    proc = run_cli(command, "list")
    if present:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2
        lines = user_lines(proc.stderr)
        assert len(lines) == 1 and module in lines[0], proc.stderr
