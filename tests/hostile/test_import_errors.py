"""The ImportError a user sees when a framework module cannot load names the real cause."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from nmn_array.frameworks._common import require


def _import_in_subprocess(module: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
    )


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed")
def test_keras_with_a_backend_that_fails_to_import_names_it():
    """Keras installed, KERAS_BACKEND=mlx (not a backend this Keras can load): the error is
    an ImportError with Keras' own message and the backend, not "keras is not installed"."""
    done = _import_in_subprocess("nmn_array.frameworks.keras", KERAS_BACKEND="mlx")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: keras is installed but failed to import"), last
    assert "'mlx'" in last and "Unable to import backend" in last, last
    assert "not installed" not in last, last
    assert "KERAS_BACKEND" in last and "nmn-array[keras]" in last, last


def test_absent_package_says_not_installed_and_names_the_extra():
    with pytest.raises(ImportError, match=r"nmn_array_absent_pkg is not installed.*nmn-array\["):
        require("nmn_array_absent_pkg")


def test_installed_but_broken_package_carries_the_original_error(tmp_path, monkeypatch):
    """A real package on sys.path whose import fails: the message keeps the original error
    and does not claim the package is missing."""
    pkg = tmp_path / "nmn_array_broken_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise ImportError('libbroken.so: cannot open shared object')\n"
    )
    (pkg / "sub.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        require("nmn_array_broken_pkg")
    text = str(info.value)
    assert "is installed but failed to import" in text and "libbroken.so" in text, text
    assert "not installed" not in text
    with pytest.raises(
        ImportError, match=r"nmn_array_broken_pkg is installed but .*sub.*libbroken"
    ):
        require("nmn_array_broken_pkg.sub")
