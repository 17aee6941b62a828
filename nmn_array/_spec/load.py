"""Reading spec files: discovery, YAML parsing, validation and the in-memory model.

A spec file describes one function or layer family. A file with ``variants`` yields one
:class:`Unit` per variant (e.g. ``yat_conv`` -> ``yat_conv1d``, ``yat_conv2d``,
``yat_conv3d``), and each unit becomes one generated test file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmn_array._spec import schema

__all__ = [
    "DEFAULT_EXAMPLES",
    "SpecFile",
    "TargetEntry",
    "Unit",
    "find_root",
    "load_file",
    "load_tree",
]

#: max_examples when neither the spec nor the property sets one (the ``ci`` profile's).
DEFAULT_EXAMPLES = 25


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest directory upward holding ``spec/`` and ``pyproject.toml``.

    Raises
    ------
    FileNotFoundError
        When no such directory exists above ``start`` (default: the current directory).
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "spec").is_dir() and (candidate / "pyproject.toml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no repository root (a directory with spec/ and pyproject.toml) above {here}; pass --root"
    )


def _yaml_load(text: str, source: str) -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a test dependency
        raise ImportError('reading spec files needs pyyaml: pip install "nmn-array[spec]"') from exc

    class _UniqueKeyLoader(yaml.SafeLoader):
        """A SafeLoader that rejects duplicate keys (YAML would silently keep the last)."""

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise schema.SpecError(
                    f"{source}: key '{key}': expected each key once, got a duplicate "
                    f"(line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _UniqueKeyLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping
    )
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise schema.SpecError(f"{source}: not valid YAML: {exc}") from None


@dataclass(frozen=True)
class SpecFile:
    """One parsed and validated spec file."""

    relpath: str
    """Path relative to the repository root, POSIX style (``spec/functions/yat.yaml``)."""
    key: str
    """Path relative to the spec directory (``functions/yat.yaml``): how tests load it."""
    sha256: str
    data: Mapping[str, Any]

    def units(self) -> list[Unit]:
        variants = self.data.get("variants")
        if not variants:
            return [Unit(self, None)]
        return [Unit(self, v) for v in variants]


@dataclass(frozen=True)
class TargetEntry:
    """One parametrized target of a property: ``backend:dtype`` with its budget and marks."""

    backend: str
    dtype: str
    examples: int
    skip: str | None = None
    xfail: Mapping[str, Any] | None = None

    @property
    def id(self) -> str:
        return f"{self.backend}:{self.dtype}"


@dataclass(frozen=True)
class Unit:
    """A spec file, or one variant of it: what one generated test file covers."""

    file: SpecFile
    variant: Mapping[str, Any] | None

    @property
    def data(self) -> Mapping[str, Any]:
        return self.file.data

    @property
    def name(self) -> str:
        return self.variant["name"] if self.variant else self.data["name"]

    @property
    def variant_name(self) -> str | None:
        return self.variant["name"] if self.variant else None

    @property
    def fixed(self) -> Mapping[str, Any]:
        """Parameter values fixed by the variant."""
        return dict(self.variant["set"]) if self.variant else {}

    @property
    def test_file(self) -> str:
        return f"test_{self.name}.py"

    def properties(self) -> list[str]:
        """The spec's properties in the canonical order of :data:`schema.PROPERTIES`."""
        props = self.data["properties"]
        return [p for p in schema.PROPERTIES if p in props]

    def options(self, prop: str) -> Mapping[str, Any]:
        return self.data["properties"].get(prop) or {}

    def backends(self, prop: str) -> list[str]:
        """Backends (or, for module_equals_function, frameworks) a property runs on."""
        options = self.options(prop)
        if prop == "module_equals_function":
            return sorted(options.get("frameworks") or self.data.get("modules", {}))
        all_backends = self.data["backends"]
        if "backends" in options:
            chosen = list(options["backends"])
        elif prop == "cross_backend":
            chosen = [b for b in all_backends if b != "numpy"]
        elif prop == "portable_equals_native":
            chosen = [b for b, o in all_backends.items() if o["path"] == "native"]
        elif prop == "jit_equals_eager":
            chosen = [b for b, o in all_backends.items() if o.get("jit")]
        elif prop in ("grad_finite", "grad_matches_finite_differences"):
            chosen = [b for b, o in all_backends.items() if o.get("autodiff")]
        else:
            chosen = list(all_backends)
        return sorted(chosen)

    def dtypes(self, prop: str) -> list[str]:
        options = self.options(prop)
        if "dtypes" in options:
            return sorted(options["dtypes"])
        if prop == "grad_matches_finite_differences":
            return ["float64"]
        spec_dtypes = self.data["dtypes"]
        if prop == "large_inputs_finite":
            return sorted(d for d in spec_dtypes if d in schema.LOW_PRECISION)
        if prop in schema.LOW_PRECISION_PROPERTIES or prop == "module_equals_function":
            return sorted(spec_dtypes)
        # other properties compare computations of the library with each other, whose
        # tolerances are written for float32/float64: low precision only where listed
        return sorted(d for d in spec_dtypes if d not in schema.LOW_PRECISION)

    def examples(self, prop: str, backend: str, dtype: str | None = None) -> int:
        """The hypothesis budget of one target, before profile scaling: the backend's budget,
        capped by the spec's ``hypothesis.dtypes`` entry for ``dtype``."""
        budget = self._backend_examples(prop, backend)
        cap = self.data.get("hypothesis", {}).get("dtypes", {}).get(dtype)
        return budget if cap is None else min(budget, int(cap))

    def _backend_examples(self, prop: str, backend: str) -> int:
        """The hypothesis budget of one (property, backend) pair, before profile scaling."""
        options = self.options(prop)
        hyp = self.data.get("hypothesis", {})
        if backend in options.get("backend_examples", {}):
            return int(options["backend_examples"][backend])
        base = options.get("max_examples")
        if base is None and self.variant:
            base = self.variant.get("max_examples")
        if base is None:
            base = hyp.get("max_examples", DEFAULT_EXAMPLES)
        per_backend = hyp.get("backends", {}).get(backend)
        return int(base if per_backend is None else min(base, per_backend))

    def _matching(self, section: str, prop: str, backend: str, dtype: str) -> Any:
        for item in self.data.get(section, ()):
            if item["property"] != prop:
                continue
            if item.get("backend") not in (None, backend):
                continue
            if item.get("dtype") not in (None, dtype):
                continue
            if item.get("variant") not in (None, self.variant_name):
                continue
            return item
        return None

    def targets(self, prop: str) -> list[TargetEntry]:
        """Every target of ``prop``, sorted by id."""
        out = []
        for backend in self.backends(prop):
            dtypes = self.dtypes(prop)
            if prop == "module_equals_function":
                module = self.data.get("modules", {}).get(backend, {})
                dtypes = [d for d in dtypes if d in module.get("dtypes", dtypes)]
            if backend in schema.BACKEND_DTYPES:
                # a backend without the format gets no target at all (not a skipped one)
                dtypes = [
                    d
                    for d in dtypes
                    if d not in schema.LOW_PRECISION or d in schema.BACKEND_DTYPES[backend]
                ]
            for dtype in dtypes:
                skip = self._matching("skips", prop, backend, dtype)
                xfail = self._matching("xfails", prop, backend, dtype)
                out.append(
                    TargetEntry(
                        backend,
                        dtype,
                        self.examples(prop, backend, dtype),
                        skip=skip["reason"] if skip else None,
                        xfail=xfail,
                    )
                )
        return sorted(out, key=lambda t: t.id)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_file(path: Path, root: Path, spec_dir: Path) -> SpecFile:
    """Parse and validate one spec file (raises :class:`schema.SpecError`)."""
    raw = path.read_bytes()
    relpath = path.resolve().relative_to(root.resolve()).as_posix()
    key = path.resolve().relative_to(spec_dir.resolve()).as_posix()
    data = _yaml_load(raw.decode("utf-8"), relpath)
    schema.validate(data, relpath)
    return SpecFile(relpath=relpath, key=key, sha256=_sha256(raw), data=data)


def spec_paths(spec_dir: Path) -> Iterator[Path]:
    """Every ``*.yaml`` file under ``spec_dir``, sorted by relative path."""
    yield from sorted(spec_dir.rglob("*.yaml"), key=lambda p: p.relative_to(spec_dir).as_posix())


def load_tree(root: Path, spec_dir: Path | None = None) -> list[SpecFile]:
    """Load every spec file; all schema errors of all files are raised together."""
    spec_dir = spec_dir or root / "spec"
    files, errors = [], []
    for path in spec_paths(spec_dir):
        try:
            files.append(load_file(path, root, spec_dir))
        except schema.SpecError as exc:
            errors.append(str(exc))
    if errors:
        raise schema.SpecError("\n".join(errors))
    names: dict[str, str] = {}
    for f in files:
        for unit in f.units():
            if unit.name in names:
                raise schema.SpecError(
                    f"{f.relpath}: key 'name': expected a name unique across spec files, got "
                    f"{unit.name!r} (also in {names[unit.name]})"
                )
            names[unit.name] = f.relpath
    return files
