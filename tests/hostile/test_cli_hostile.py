"""The command line on a core install: only nmn_array (from its wheel) and array-api-compat,
no NumPy and no framework, in a fresh virtual environment.

``nmn-array doctor``, ``xor`` and ``bench`` must answer with one-line messages naming what is
missing and the pip command, with their documented exit codes, never a traceback, and must
write nothing into the working directory.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Not part of a source tree to build from.
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", "out"
)

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment (30-60 s)


@pytest.fixture(scope="module")
def core_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh venv holding the nmn_array wheel (built from this tree) and
    array-api-compat, nothing else."""
    tmp = tmp_path_factory.mktemp("core_install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)  # the build writes build/ next to its sources
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp / "dist"), str(src)], check=True)
    wheel = next((tmp / "dist").glob("nmn_array-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    # array-api-compat (pure Python) made visible through a .pth naming a directory that holds
    # only it and its metadata: the test environment's other packages (NumPy) stay invisible.
    aac = tmp / "aac"
    aac.mkdir()
    dist = md.distribution("array-api-compat")
    package = Path(str(dist.locate_file("array_api_compat")))
    (aac / "array_api_compat").symlink_to(package, target_is_directory=True)
    metadata = next(f for f in dist.files or () if f.name == "METADATA")
    info = Path(str(dist.locate_file(metadata))).parent  # the .dist-info, for the version
    (aac / info.name).symlink_to(info, target_is_directory=True)
    site = next((tmp / "venv" / "lib").glob("python*/site-packages"))
    (site / "array_api_compat.pth").write_text(f"{aac}\n")
    return python


def run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m nmn_array *args`` in ``cwd`` with a clean environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        [str(python), "-m", "nmn_array", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_environment_is_a_core_install(core_python: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util as u, array_api_compat, nmn_array; "
        "print([m for m in ('numpy', 'torch', 'jax', 'tensorflow') if u.find_spec(m)])"
    )
    proc = subprocess.run(
        [str(core_python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_doctor_without_numpy(core_python: Path, tmp_path: Path) -> None:
    proc = run(core_python, tmp_path, "doctor")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr == ""
    hint = [line for line in proc.stdout.splitlines() if "no array library" in line]
    assert len(hint) == 1 and "pip install numpy" in hint[0], proc.stdout
    assert "  torch              -- needs torch: pip install" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_doctor_no_check_without_numpy(core_python: Path, tmp_path: Path) -> None:
    proc = run(core_python, tmp_path, "doctor", "--no-check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "" and "array_api_compat" in proc.stdout


@pytest.mark.parametrize("args", [(), ("--all",), ("--framework", "numpy")])
def test_xor_without_numpy(core_python: Path, tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = run(core_python, tmp_path, "xor", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "nmn-array xor: error: xor needs numpy, which is not installed; "
        "install it with: pip install numpy"
    ]


def test_bench_without_frameworks(core_python: Path, tmp_path: Path) -> None:
    proc = run(core_python, tmp_path, "bench", "--smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    for suite, what, extra in (
        ("torch", "torch is", "torch"),
        ("jax", "jax and flax are", "nnx"),
        ("tf", "tensorflow and keras are", "tf,keras"),
        ("memory", "torch is", "torch"),
    ):
        line = (
            f'skipping the {suite} suite: {what} not installed (pip install "nmn-array[{extra}]")'
        )
        assert line in lines, proc.stdout
    assert lines[-1] == "nothing to run: every requested suite was skipped"
    assert list(tmp_path.iterdir()) == []
