"""The ``nmn-array`` command: help of every command, doctor, XOR, delegated commands, and the
one-line error for a framework that is not installed (never a traceback)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmn_array.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("demo", "xor", "doctor", "spec", "bench")


def run_cli(*args: str, prelude: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m nmn_array *args`` in a fresh process (``prelude`` runs first)."""
    code = f"{prelude}\nfrom nmn_array.cli import main\nraise SystemExit(main({list(args)!r}))"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
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


def test_doctor_lists_and_agrees() -> None:
    proc = run_cli("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "array libraries" in out and "framework modules" in out
    checked = [line.split()[0] for line in out.splitlines() if line.rstrip().endswith(" OK")]
    for backend in ("numpy", "array_api_strict", "torch", "jax", "tensorflow", "dask"):
        if importlib.util.find_spec(backend) is not None:
            assert backend in checked, f"{backend} was not checked:\n{out}"
    assert "FAIL" not in out


def test_doctor_no_check_imports_no_framework() -> None:
    proc = run_cli(
        "doctor",
        "--no-check",
        prelude="import atexit, sys\n"
        "atexit.register(lambda: print('LOADED', sorted(m for m in "
        "('torch', 'jax', 'tensorflow', 'keras', 'flax') if m in sys.modules)))",
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout


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
