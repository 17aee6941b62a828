"""The distributions hold the whole package: build the sdist and, from it, the wheel (as
``python -m build`` does), then compare them with the source tree.

Editable installs (what ``make setup`` does) import from the source tree, so a module left
out of ``[tool.setuptools] packages`` is invisible to every other test: a wheel without
``nmn_array._native`` once failed every torch call with ModuleNotFoundError. The expected
contents are derived from the tree and from pyproject.toml, never listed here, so a new
module or subpackage is checked the day it is added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: What the sdist must carry besides the packages so that its tests run from it.
SDIST_DIRS = ("tests", "spec", "docs", "scripts", "requirements")
SDIST_FILES = ("LICENSE", "README.md", "Makefile", "pyproject.toml", "MANIFEST.in")
#: Top-level entries of a working tree that a fresh clone does not have. A stale
#: ``*.egg-info/SOURCES.txt`` is read back into the next sdist (and its files into the wheel
#: as package data), which once hid a package missing from ``packages``: build from a copy.
_NOT_IN_A_CLONE = (".git", ".venv", "build", "dist", "out", "*.egg-info", ".*_cache", ".hypothesis")


def _tree_files(directory: Path) -> list[Path]:
    """Files under ``directory`` a distribution should carry: no caches, no hidden files."""
    found = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if not path.is_file() or path.suffix in (".pyc", ".pyo"):
            continue
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        found.append(path)
    return found


def expected_wheel_modules(root: Path = ROOT) -> dict[str, Path]:
    """Wheel path -> source file for every ``.py`` file under each ``package-dir`` root, and
    every declared package-data file.

    ``package-dir`` maps an import name to a directory (``nmn_array.frameworks`` ->
    ``frameworks/``); every module below that directory, at any depth, belongs in the wheel
    under the import name's path.
    """
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    expected: dict[str, Path] = {}
    for package, directory in mapping.items():
        base = root / directory
        # A root nested in another root (none today) is covered by its own entry.
        nested = {root / d for p, d in mapping.items() if p != package and (root / d) != base}
        for source in _tree_files(base):
            if source.suffix != ".py" or any(n in source.parents for n in nested):
                continue
            rel = source.relative_to(base).as_posix()
            expected[f"{package.replace('.', '/')}/{rel}"] = source
    # data files declared in [tool.setuptools.package-data] (py.typed), by exact name
    for package, files in PYPROJECT["tool"]["setuptools"].get("package-data", {}).items():
        base = root / mapping.get(package, package.replace(".", "/"))
        for name in files:
            expected[f"{package.replace('.', '/')}/{name}"] = base / name
    return expected


def clean_copy(destination: Path) -> Path:
    """Copy the source tree to ``destination`` as a fresh clone would have it."""
    top_level = shutil.ignore_patterns(*_NOT_IN_A_CLONE)
    caches = shutil.ignore_patterns("__pycache__", "*.pyc")

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(caches(directory, names))
        if Path(directory) == ROOT:
            skipped |= set(top_level(directory, names))
        return skipped

    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def test_packages_list_every_subpackage() -> None:
    # setuptools still ships an unlisted subpackage's files as package data when the sdist
    # happens to carry them (and warns that this will stop): require the explicit entry.
    setuptools_config = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools_config["packages"])
    mapping = setuptools_config["package-dir"]
    found = {name.rsplit("/", 1)[0].replace("/", ".") for name in expected_wheel_modules()}
    assert set(mapping) <= found
    missing = sorted(found - listed)
    assert not missing, f"packages missing from [tool.setuptools] packages: {missing}"


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the sdist and the wheel (from the sdist) once from a clean copy of the tree.

    The tests compare the distributions with that copy, not with the working tree, which
    other tests running in parallel may change meanwhile.
    """
    out = tmp_path_factory.mktemp("dist")
    source = clean_copy(tmp_path_factory.mktemp("clone") / "nmn-array")
    # --no-isolation: build with the pinned setuptools of this venv (requirements/ci.txt),
    # offline and in seconds.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout[-3000:]}\n{result.stderr}"
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel, "source": source}


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _dist_info(names: set[str]) -> str:
    (info,) = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
    return info


def test_wheel_holds_every_module_and_nothing_else(dists: dict[str, Path]) -> None:
    names = _wheel_names(dists["wheel"])
    info = _dist_info(names)
    shipped = {name for name in names if not name.startswith(info + "/")}
    expected = set(expected_wheel_modules(dists["source"]))
    missing = sorted(expected - shipped)
    assert not missing, (
        f"modules missing from the wheel (add their packages to [tool.setuptools] packages "
        f"in pyproject.toml): {missing}"
    )
    stray = sorted(shipped - expected)
    assert not stray, f"files in the wheel that are not modules of the package tree: {stray}"


def test_wheel_modules_match_the_sources(dists: dict[str, Path]) -> None:
    # Modules missing from the wheel are reported by the test above; here: stale copies.
    with zipfile.ZipFile(dists["wheel"]) as zf:
        shipped = set(zf.namelist())
        compared = 0
        for name, source in expected_wheel_modules(dists["source"]).items():
            if name in shipped:
                assert zf.read(name) == source.read_bytes(), f"{name} differs from {source}"
                compared += 1
    assert compared > 0


def test_wheel_metadata_license_and_entry_point(dists: dict[str, Path]) -> None:
    names = _wheel_names(dists["wheel"])
    info = _dist_info(names)
    with zipfile.ZipFile(dists["wheel"]) as zf:
        assert zf.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert "nmn-array = nmn_array.cli:main" in entry_points
    assert "Permission is hereby granted, free of charge" in (ROOT / "LICENSE").read_text()


def test_sdist_holds_tests_spec_docs_and_packages(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    source = dists["source"]
    wanted = set(SDIST_FILES)
    for directory in SDIST_DIRS:
        wanted |= {p.relative_to(source).as_posix() for p in _tree_files(source / directory)}
    modules = expected_wheel_modules(source).values()
    wanted |= {module.relative_to(source).as_posix() for module in modules}
    missing = sorted(wanted - members)
    assert not missing, f"files missing from the sdist (see MANIFEST.in): {missing}"


def test_wheel_imports_native_and_frameworks_from_itself(
    dists: dict[str, Path], tmp_path: Path
) -> None:
    # Unpacked wheel first on sys.path. The editable install's finder would serve a module the
    # wheel lacks from the source tree, so each module's file must lie inside the unpacked wheel.
    site = tmp_path / "site"
    with zipfile.ZipFile(dists["wheel"]) as zf:
        zf.extractall(site)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import nmn_array, nmn_array._native, nmn_array._native.torch_yat\n"
        "import nmn_array.frameworks, nmn_array.frameworks.torch\n"
        "for m in ('nmn_array', 'nmn_array._native.torch_yat', 'nmn_array.frameworks.torch'):\n"
        "    print(sys.modules[m].__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    files = result.stdout.split()
    assert len(files) == 3
    for file in files:
        assert Path(file).resolve().is_relative_to(site.resolve()), file
