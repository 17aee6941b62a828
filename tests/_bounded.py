"""Run a test's worker module in a fresh Python process with a hard time limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, cwd: Path, timeout: float) -> str:
    """``python -m module *args`` in ``cwd`` with the repository on ``PYTHONPATH``; returns
    its output (stdout and stderr). A non-zero exit fails the test with the output's end;
    past ``timeout`` seconds the process and everything it started (its own session:
    worker processes, spawned ranks) are killed and the test fails."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"python -m {module} {' '.join(args)} took over {timeout} s:\n{log[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"python -m {module} {' '.join(args)}: exit {proc.returncode}:\n{log[-4000:]}")
    return log
