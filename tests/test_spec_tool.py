"""The spec tool (``python -m nmn_array._spec``): generate, check, list and the schema.

Each test that edits something works on a copy of ``spec/``, ``tests/generated/`` and
``docs/capabilities.md`` in a temporary directory, so the real tree is never touched.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nmn_array.cli
from nmn_array._spec import cli, generate, schema
from nmn_array._spec.load import find_root, load_tree
from tests.harness import checks

ROOT = find_root(Path(__file__).resolve().parent)
FIX = "python -m nmn_array._spec generate"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A scratch repository: a copy of the spec, the generated tests and the docs table."""
    shutil.copytree(ROOT / "spec", tmp_path / "spec")
    shutil.copytree(
        ROOT / "tests" / "generated",
        tmp_path / "tests" / "generated",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "capabilities.md", tmp_path / "docs" / "capabilities.md")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    return tmp_path


def run(root: Path, *args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def check_with_mistake(tree: Path, relpath: str, old: str, new: str, capsys) -> tuple[int, str]:
    """Plant one mistake (``old`` -> ``new``) in a scratch spec file, run ``check``: (code, err)."""
    spec = tree / relpath
    text = spec.read_text()
    assert old in text
    spec.write_text(text.replace(old, new, 1))
    code, _, err = run(tree, "check", capsys=capsys)
    return code, err


def defined_tests(root: Path) -> dict[str, set[str]]:
    """Generated file name -> names of the test functions it defines."""
    names = {}
    for path in sorted((root / "tests" / "generated").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        names[path.name] = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return names


def test_check_passes_on_the_committed_tree(capsys):
    code, out, err = run(ROOT, "check", capsys=capsys)
    assert code == 0, err
    assert "up to date" in out


def test_generate_is_deterministic(tree, capsys):
    before = {p: p.read_bytes() for p in (tree / "tests" / "generated").glob("*.py")}
    code, out, _ = run(tree, "generate", capsys=capsys)
    assert code == 0
    assert "up to date" in out  # a copy of a current tree regenerates to the same bytes
    after = {p: p.read_bytes() for p in (tree / "tests" / "generated").glob("*.py")}
    assert before == after
    files = load_tree(tree)
    _, first = generate.expected_outputs(generate.Outputs.default(tree))
    _, second = generate.expected_outputs(generate.Outputs.default(tree))
    assert first == second and len(files) >= 9


def test_removing_a_property_removes_exactly_its_tests(tree, capsys):
    spec = tree / "spec" / "functions" / "yat.yaml"
    text = spec.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("  eps_monotone:"))
    spec.write_text(text.replace(line + "\n", ""))
    before = defined_tests(tree)
    untouched = {
        p.name: p.read_bytes()
        for p in (tree / "tests" / "generated").glob("test_*.py")
        if p.name != "test_yat.py"
    }
    code, out, _ = run(tree, "generate", capsys=capsys)
    assert code == 0 and "wrote tests/generated/test_yat.py" in out
    after = defined_tests(tree)
    removed = before["test_yat.py"] - after["test_yat.py"]
    assert removed and all(n.startswith("test_yat__eps_monotone") for n in removed)
    assert not after["test_yat.py"] - before["test_yat.py"]
    assert {n for n in before["test_yat.py"] if n.startswith("test_yat__eps_monotone")} == removed
    for name, data in untouched.items():
        assert (tree / "tests" / "generated" / name).read_bytes() == data, name
    code, _, _ = run(tree, "check", capsys=capsys)
    assert code == 0


def test_hand_edit_fails_check_naming_file_and_command(tree, capsys):
    target = tree / "tests" / "generated" / "test_softermax.py"
    target.write_text(target.read_text().replace("examples(20)", "examples(2)", 1))
    code, _, err = run(tree, "check", capsys=capsys)
    assert code == 1
    assert "tests/generated/test_softermax.py: hand-edited" in err
    assert FIX in err


def test_spec_change_without_regenerating_fails_check(tree, capsys):
    spec = tree / "spec" / "functions" / "soft_tanh.yaml"
    spec.write_text(spec.read_text().replace("max_examples: 20", "max_examples: 19"))
    code, _, err = run(tree, "check", capsys=capsys)
    assert code == 1
    assert "tests/generated/test_soft_tanh.py: stale (spec/functions/soft_tanh.yaml changed" in err
    assert "docs/capabilities.md: stale" in err
    assert FIX in err
    assert run(tree, "generate", capsys=capsys)[0] == 0
    assert run(tree, "check", capsys=capsys)[0] == 0


def test_missing_and_extra_files_fail_check(tree, capsys):
    (tree / "tests" / "generated" / "test_rotary_embedding.py").unlink()
    (tree / "tests" / "generated" / "test_handwritten.py").write_text("def test_x():\n    pass\n")
    code, _, err = run(tree, "check", capsys=capsys)
    assert code == 1
    assert "tests/generated/test_rotary_embedding.py: missing" in err
    assert "tests/generated/test_handwritten.py: extra" in err
    code, out, _ = run(tree, "generate", capsys=capsys)
    assert "removed tests/generated/test_handwritten.py" in out
    assert run(tree, "check", capsys=capsys)[0] == 0


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (
            "  matches_reference:\n    params:",
            "  matches_refrence:\n    params:",
            "properties.matches_refrence",
            "a key that is one of 'matches_reference'",
        ),
        (
            "  D: {range: [1, 6], note: features}",
            "  D: {range: one to six, note: features}",
            "dims.D.range",
            "expected a list of two values [low, high]",
        ),
        (
            "  spherical: {type: bool}",
            "  spherical: {type: boolean}",
            "params.spherical.type",
            "expected one of 'int', 'float', 'bool'",
        ),
        (
            '  x: {shape: ["*L", D]}',
            '  x: {shape: ["*L", E]}',
            "arrays.x.shape",
            "expected names from dims or params",
        ),
        (
            "policy: yat_ratio",
            "polcy: yat_ratio",
            "tolerances.polcy",
            "no such key here; allowed keys:",
        ),
        (
            "  orthogonal_zero: {backends: [numpy, torch], dtypes: [float64]}",
            "  rows_normalized: {backends: [numpy, torch], dtypes: [float64]}",
            "properties.rows_normalized",
            "a property implemented for family 'dense'",
        ),
    ],
)
def test_schema_errors_name_file_key_and_form(tree, capsys, old, new, key, expected):
    code, err = check_with_mistake(tree, "spec/functions/yat.yaml", old, new, capsys)
    assert code == 2
    assert f"spec/functions/yat.yaml: key '{key}'" in err
    assert expected in err


def test_schema_error_for_a_missing_required_key():
    with pytest.raises(schema.SpecError) as info:
        schema.validate({"name": "x", "kind": "function"}, "spec/functions/x.yaml")
    message = str(info.value)
    assert "spec/functions/x.yaml: key 'arrays': expected a required key" in message
    assert "spec/functions/x.yaml: key 'tolerances': expected a required key" in message


def test_list_prints_units_properties_and_backends(capsys):
    code, out, _ = run(ROOT, "list", capsys=capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert ["yat", "matches_reference"] in [r[:2] for r in rows]
    assert any(r[:2] == ["yat_conv3d", "portable_equals_native"] for r in rows)
    assert any("torch[f32,f64]" in " ".join(r) for r in rows)


def test_generated_files_are_thin_and_headed():
    for path in sorted((ROOT / "tests" / "generated").glob("test_*.py")):
        text = path.read_text()
        assert text.startswith("# GENERATED by nmn_array._spec"), path
        assert "spec sha256: " in text.splitlines()[1]
        assert FIX in text.splitlines()[2]
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                assert len(node.body) == 1, f"{path.name}::{node.name} is not a one-line body"


def test_generated_code_is_ruff_clean():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment")
    generated = str(ROOT / "tests" / "generated")
    lint = subprocess.run([str(ruff), "check", generated], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(ruff), "format", "--check", generated], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_harness_implements_every_schema_property():
    implemented = set(checks.CHECKS) | {"module_equals_function"}
    assert implemented == set(schema.PROPERTIES)


def test_capabilities_table_lists_every_unit():
    text = (ROOT / "docs" / "capabilities.md").read_text()
    for spec in load_tree(ROOT):
        for unit in spec.units():
            assert f"## `{unit.name}`" in text


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "nmn_array._spec", "--root", str(ROOT), "check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


# -- coverage: every public function and layer class has a spec entry ----------------------

#: The framework modules and the base classes their layers derive from.
FRAMEWORK_BASES = {
    "torch": ("torch", "torch.nn:Module"),
    "nnx": ("flax", "flax.nnx:Module"),
    "linen": ("flax", "flax.linen:Module"),
    "keras": ("keras", "keras.layers:Layer"),
    "tf": ("tensorflow", "tensorflow:Module"),
    "equinox": ("equinox", "equinox:Module"),
    "mlx": ("mlx.core", "mlx.nn:Module"),
}
#: Frameworks whose dependency CI always installs (requirements/ci.txt): a failing import
#: is an error there, not a skip.
REQUIRED_FRAMEWORKS = ("equinox", "mlx")


def spec_classes(files) -> dict[str, set[str]]:
    """Framework -> the ``module:Class`` paths the layer specs list (variants formatted)."""
    listed: dict[str, set[str]] = {fw: set() for fw in FRAMEWORK_BASES}
    for f in files:
        if f.data["kind"] != "layer":
            continue
        for unit in f.units():
            for fw, module in f.data.get("modules", {}).items():
                listed[fw].add(module["class"].format(**unit.fixed))
    return listed


def public_layer_classes(framework: str) -> dict[str, type]:
    """``Name -> class`` for the layer classes in the framework module's ``__all__``; a name
    that aliases another public class (``YatDense`` = ``YatNMN``) is listed once."""
    import importlib

    dependency, base_path = FRAMEWORK_BASES[framework]
    if framework not in REQUIRED_FRAMEWORKS:
        pytest.importorskip(dependency)
    module = importlib.import_module(f"nmn_array.frameworks.{framework}")
    base_module, base_name = base_path.split(":")
    base = getattr(importlib.import_module(base_module), base_name)
    by_class: dict[int, list[str]] = {}
    for name in sorted(module.__all__):
        obj = getattr(module, name)
        if isinstance(obj, type) and issubclass(obj, base):
            by_class.setdefault(id(obj), []).append(name)
    out: dict[str, type] = {}
    for names in by_class.values():
        cls = getattr(module, names[0])
        out[cls.__name__ if cls.__name__ in names else names[0]] = cls
    return dict(sorted(out.items()))


def uncovered_layer_classes(root: Path, framework: str) -> list[str]:
    """The public layer classes of ``framework`` that no spec under ``root`` lists."""
    from tests.harness.spec import resolve

    covered = {id(resolve(path)) for path in spec_classes(load_tree(root))[framework]}
    classes = public_layer_classes(framework)
    assert classes, f"nmn_array.frameworks.{framework} exports no layer class"
    return [
        f"nmn_array.frameworks.{framework}:{name}"
        for name, cls in classes.items()
        if id(cls) not in covered
    ]


def uncovered_functions(root: Path) -> list[str]:
    """The public functions of ``nmn_array`` that no spec/functions entry under ``root`` tests."""
    import nmn_array

    specified = {f.data["function"] for f in load_tree(root) if f.data["kind"] == "function"}
    functions = [
        f"nmn_array.{name}"
        for name in nmn_array.__all__
        if callable(obj := getattr(nmn_array, name)) and not isinstance(obj, type)
    ]
    assert functions, "nmn_array.__all__ names no function"
    return [name for name in functions if name not in specified]


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_BASES))
def test_every_public_layer_class_has_a_spec_entry(framework):
    missing = uncovered_layer_classes(ROOT, framework)
    assert not missing, (
        f"layer classes without a spec entry (a modules.{framework}.class in spec/layers/*.yaml): "
        + ", ".join(missing)
    )


def test_every_public_function_has_a_spec_entry():
    missing = uncovered_functions(ROOT)
    assert not missing, (
        "public functions without a spec entry (a spec/functions/*.yaml whose 'function' is "
        "the function): " + ", ".join(missing)
    )


def test_coverage_checks_name_what_is_missing(tree):
    listed = spec_classes(load_tree(tree))
    assert "nmn_array.frameworks.torch:YatConv2D" in listed["torch"]  # "{spatial_dims}" formatted
    torch_classes = public_layer_classes("torch")
    assert "YatNMN" in torch_classes and "YatDense" not in torch_classes  # an alias counts once
    assert uncovered_layer_classes(tree, "torch") == []
    for name in ("embed.yaml", "embed_lookup.yaml"):
        (tree / "spec" / "layers" / name).unlink()
    assert uncovered_layer_classes(tree, "torch") == ["nmn_array.frameworks.torch:YatEmbed"]
    assert uncovered_layer_classes(tree, "nnx") == ["nmn_array.frameworks.nnx:Embed"]
    (tree / "spec" / "functions" / "softermax.yaml").unlink()
    assert uncovered_functions(tree) == ["nmn_array.softermax"]


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (
            '    call: {args: [x], kwargs: {mask: "attention_mask(mask, causal, L)"}}\n  nnx:',
            "    call: {args: [x], result: out}\n  nnx:",
            "modules.torch.call.result",
            "no such key on a module call",
        ),
        (
            '  result: "zero_keyless(linear(merge_heads(out), wo, bo if use_bias else None), mask, '
            'causal)"',
            '  result: "zero_keyless(linear(merge_heads(out), w_out, bo if use_bias else None), '
            'mask, causal)"',
            "function_call.result",
            "names from dims, params, arrays, 'let' or 'out'",
        ),
        (
            '    q: "split_heads(linear(x, wq, bq if use_bias else None), H)"',
            '    x: "split_heads(linear(x, wq, bq if use_bias else None), H)"',
            "function_call.let.x",
            "a new name",
        ),
    ],
)
def test_schema_errors_in_function_call_let_and_result(tree, capsys, old, new, key, expected):
    code, err = check_with_mistake(tree, "spec/layers/attention.yaml", old, new, capsys)
    assert code == 2
    assert f"spec/layers/attention.yaml: key '{key}'" in err
    assert expected in err


# -- the pydantic models: error paths and the JSON Schema ---------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (  # an unknown key, two levels down
            "    call: {args: [x]}\n  nnx:",
            "    call: {args: [x], kwarg: {}}\n  nnx:",
            "modules.torch.call.kwarg",
            "expected no such key here; allowed keys: args, batch_axes, kwargs, let, method, result, "
            "got 'kwarg'",
        ),
        (  # a string where an integer belongs, inside a list
            "  N: {range: [1, 4]}",
            '  N: {range: [1, "4"]}',
            "dims.N.range[1]",
            "expected an integer >= 0, got '4'",
        ),
        (  # YAML true is not an integer (strict types: no coercion)
            "hypothesis: {max_examples: 6}",
            "hypothesis: {max_examples: true}",
            "hypothesis.max_examples",
            "expected an integer >= 1, got True",
        ),
        (  # a value outside an enum
            "  torch: {path: native, autodiff: true}",
            "  torch: {path: natve, autodiff: true}",
            "backends.torch.path",
            "expected one of 'native', 'portable', got 'natve'",
        ),
        (  # a key outside an enum
            "  jax: {path: native, autodiff: true, jit: true}",
            "  jaxx: {path: native, autodiff: true, jit: true}",
            "backends.jaxx",
            "expected a key that is one of 'numpy', 'array_api_strict', 'torch'",
        ),
        (  # an expression that does not parse
            "    weights: {weight: w,",
            "    weights: {weight: w.T(),",
            "modules.torch.weights.weight",
            "only plain function names may be called), got 'w.T()'",
        ),
        (  # a cross reference (the model validator): output dtype names no input array
            'output: {shape: ["*L", N], dtype: x}',
            'output: {shape: ["*L", N], dtype: y}',
            "output.dtype",
            "expected the name of an input array (['alpha', 'bias', 'w', 'x']) or 'bool', got 'y'",
        ),
        (  # a cross reference: a dim's rank names no parameter
            "  L: {range: [1, 3], rank: [1, 2]}",
            "  L: {range: [1, 3], rank: spatial_dims}",
            "dims.L.rank",
            "expected a parameter name (one of ['alpha_mode', 'epsilon', 'spherical', "
            "'use_bias', 'weight_normalized']), got 'spatial_dims'",
        ),
    ],
)
def test_schema_errors_name_file_and_key_path_in_a_layer_spec(
    tree, capsys, old, new, key, expected
):
    code, err = check_with_mistake(tree, "spec/layers/dense.yaml", old, new, capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("spec/")]
    assert len(lines) == 1, err  # one mistake, one message
    assert lines[0].startswith(f"spec/layers/dense.yaml: key '{key}': "), lines[0]
    assert expected in lines[0]


def test_schema_reports_every_mistake_of_a_file():
    data = yaml.safe_load((ROOT / "spec" / "functions" / "yat.yaml").read_text())
    data["dims"]["D"]["range"] = [6, 1]
    data["tolerances"]["c"] = "four"
    del data["dtypes"]
    with pytest.raises(schema.SpecError) as info:
        schema.validate(data, "spec/functions/yat.yaml")
    assert sorted(str(info.value).splitlines()) == [
        "spec/functions/yat.yaml: key 'dims.D.range': expected a range [low, high] with "
        "low <= high, got [6, 1]",
        "spec/functions/yat.yaml: key 'dtypes': expected a required key (a list (at least 1) "
        "of one of 'float32', 'float64', 'float16', 'bfloat16')",
        "spec/functions/yat.yaml: key 'tolerances.c': expected a number, got 'four'",
    ]


def spec_data() -> dict[str, dict]:
    return {
        path.relative_to(ROOT).as_posix(): yaml.safe_load(path.read_text())
        for path in sorted((ROOT / "spec").rglob("*.yaml"))
    }


def test_models_keep_every_key_of_every_spec_file():
    """Round trip: what the models read back out is the file (nothing ignored or renamed)."""
    files = spec_data()
    assert len(files) >= 16
    for name, data in files.items():
        model = schema.validate(data, name)
        assert model.model_dump(by_alias=True, exclude_unset=True) == data, name


_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}


def json_schema_errors(node: dict, value, defs: dict, path: str = "") -> list[str]:
    """The violations of ``node`` (the JSON Schema keywords pydantic writes) by ``value``."""
    if "$ref" in node:
        node = {
            **defs[node["$ref"].rsplit("/", 1)[1]],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    errors = []
    kind = node.get("type")
    if kind and not (
        isinstance(value, _JSON_TYPES[kind])
        and not (kind in ("integer", "number") and isinstance(value, bool))
    ):
        return [f"{path}: not {kind}: {value!r}"]
    for keyword in ("oneOf", "anyOf"):
        if keyword in node:
            matches = [not json_schema_errors(alt, value, defs, path) for alt in node[keyword]]
            if (sum(matches) != 1) if keyword == "oneOf" else not any(matches):
                errors.append(f"{path}: {sum(matches)} of the {keyword} alternatives match")
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} not in {node['enum']}")
    if "pattern" in node and isinstance(value, str) and not re.search(node["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {node['pattern']}")
    if "minimum" in node and value < node["minimum"]:
        errors.append(f"{path}: {value!r} < {node['minimum']}")
    if isinstance(value, list):
        if not node.get("minItems", 0) <= len(value) <= node.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items")
        for i, item in enumerate(value):
            errors += json_schema_errors(node.get("items", {}), item, defs, f"{path}[{i}]")
    if isinstance(value, dict):
        errors += [f"{path}.{k}: required" for k in node.get("required", ()) if k not in value]
        for key, item in value.items():
            errors += json_schema_errors(node.get("propertyNames", {}), key, defs, f"{path}.{key}")
            sub = node.get("properties", {}).get(key, node.get("additionalProperties", True))
            if sub is False:
                errors.append(f"{path}.{key}: not allowed")
            elif sub is not True:
                errors += json_schema_errors(sub, item, defs, f"{path}.{key}")
    return errors


def test_schema_command_writes_the_models_json_schema(tmp_path, capsys):
    out = tmp_path / "editor" / "spec.schema.json"
    assert nmn_array.cli.main(["spec", "schema", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written == schema.json_schema()
    assert written["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert list(written["properties"]) == list(schema.Spec.model_fields)  # every top-level key
    stdout = subprocess.run(
        [sys.executable, "-m", "nmn_array._spec", "schema"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(stdout) == written


def test_json_schema_accepts_every_spec_file_and_flags_planted_mistakes():
    written = schema.json_schema()
    defs = written["$defs"]
    for name, data in spec_data().items():
        assert json_schema_errors(written, data, defs) == [], name
    data = spec_data()["spec/layers/dense.yaml"]
    data["modules"]["torch"]["call"]["kwarg"] = {}  # unknown key
    data["dims"]["N"]["range"] = [1, "4"]  # wrong type
    data["backends"]["torch"]["path"] = "natve"  # bad enum
    data["backends"]["jaxx"] = data["backends"].pop("jax")  # bad mapping key
    data["hypothesis"]["max_examples"] = 0  # out of range
    data["params"]["1x"] = {"type": "bool"}  # a key that is not an identifier
    del data["tolerances"]["float32"]  # missing required key
    assert sorted(json_schema_errors(written, data, defs)) == sorted(
        [
            ".dims.N.range[1]: not integer: '4'",
            ".params.1x: '1x' does not match ^(?:[A-Za-z_][A-Za-z0-9_]*)$",
            ".backends.jaxx: 'jaxx' not in ['numpy', 'array_api_strict', 'torch', 'jax', "
            "'tensorflow', 'dask', 'cupy', 'mlx']",
            ".backends.torch.path: 'natve' not in ['native', 'portable']",
            ".tolerances.float32: required",
            ".hypothesis.max_examples: 0 < 1",
            ".modules.torch.call.kwarg: not allowed",
        ]
    )


# -- float16 / bfloat16 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (
            "  float16: {rtol: 1.0e-6, atol: 1.0e-30}\n",
            "",
            "tolerances.float16",
            "expected a required key when dtypes lists 'float16'",
        ),
        (
            "dtypes: [float32, float64, float16, bfloat16]",
            "dtypes: [float32, float64]",
            "properties.large_inputs_finite",
            "expected a spec whose dtypes list float16 or bfloat16 on a backend that has it",
        ),
        (
            "  dtypes: {float16: 8, bfloat16: 8}",
            "  dtypes: {float8: 8, bfloat16: 8}",
            "hypothesis.dtypes.float8",
            "expected a key that is one of 'float32', 'float64', 'float16', 'bfloat16'",
        ),
    ],
)
def test_low_precision_schema_errors(tree, capsys, old, new, key, expected):
    code, err = check_with_mistake(tree, "spec/functions/yat.yaml", old, new, capsys)
    assert code == 2
    assert f"spec/functions/yat.yaml: key '{key}'" in err
    assert expected in err


def test_low_precision_targets_follow_the_backend_capability_table():
    """float16/bfloat16 targets exist exactly where the backend has the format (no skipped
    stand-ins), other properties stay float32/float64 unless they list a format, and the
    spec's per-dtype cap bounds the budget."""
    (unit,) = [u for f in load_tree(ROOT) for u in f.units() if u.name == "yat"]
    for prop in ("matches_reference", "large_inputs_finite", "batch_consistency"):
        targets = unit.targets(prop)
        assert all(t.skip is None for t in targets if t.dtype in schema.LOW_PRECISION)
        low = {(t.backend, t.dtype) for t in targets if t.dtype in schema.LOW_PRECISION}
        if prop == "batch_consistency":
            assert low == set()
            continue
        expected = {(b, d) for b in unit.backends(prop) for d in schema.BACKEND_DTYPES[b]}
        assert low == expected
        assert ("array_api_strict", "float16") not in low and ("numpy", "bfloat16") not in low
        cap = unit.data["hypothesis"]["dtypes"]
        assert all(t.examples <= cap[t.dtype] for t in targets if t.dtype in cap)
    assert {t.dtype for t in unit.targets("large_inputs_finite")} == set(schema.LOW_PRECISION)


def test_a_property_may_not_add_a_low_precision_dtype(tree, capsys):
    relpath = "spec/functions/local_window_mask.yaml"
    code, err = check_with_mistake(
        tree, relpath, "  cross_backend: {}", "  cross_backend: {dtypes: [float16]}", capsys
    )
    assert code == 2
    assert (
        f"{relpath}: key 'properties.cross_backend.dtypes': expected dtypes listed under the "
        "spec's 'dtypes' (['float64']), got 'float16'"
    ) in err
    assert (
        f"{relpath}: key 'tolerances.float16': expected a required key when "
        "properties.cross_backend.dtypes lists 'float16'"
    ) in err
