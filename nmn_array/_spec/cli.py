"""``nmn-array spec {generate,check,list,schema}``: the spec tool's command line.

``generate`` writes ``tests/generated/`` and ``docs/capabilities.md`` from ``spec/``;
``check`` exits 1 when any of them is stale, missing, extra or hand-edited; ``list`` prints
every unit x property x backend; ``schema`` writes the JSON Schema of a spec file (for
editors). Run it as ``python -m nmn_array._spec``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nmn_array._spec import generate as gen
from nmn_array._spec.load import find_root
from nmn_array._spec.schema import SpecError, json_schema

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmn-array spec",
        description="Generate and check the property tests described by spec/*.yaml.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="repository root (default: nearest directory upward with spec/ and pyproject.toml)",
    )
    parser.add_argument("--spec-dir", type=Path, default=None, help="default: <root>/spec")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: <root>/tests/generated"
    )
    parser.add_argument(
        "--docs", type=Path, default=None, help="default: <root>/docs/capabilities.md"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="write tests/generated/ and docs/capabilities.md")
    sub.add_parser("check", help="exit 1 if any generated file is not what the spec produces")
    sub.add_parser("list", help="print unit x property x backends")
    schema = sub.add_parser("schema", help="write the JSON Schema of a spec file (for editors)")
    schema.add_argument("--out", type=Path, default=None, help="default: standard output")
    return parser


def _resolve(base: Path, path: Path | None) -> Path | None:
    if path is None:
        return None
    return path if path.is_absolute() else base / path


def _write_schema(out: Path | None) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (0 ok, 1 check failed, 2 bad spec)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "schema":  # needs no repository: the schema is the models'
        return _write_schema(args.out)
    try:
        root = (args.root.resolve() if args.root else None) or find_root()
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    outputs = gen.Outputs.default(
        root,
        spec_dir=_resolve(Path.cwd(), args.spec_dir),
        out_dir=_resolve(Path.cwd(), args.out_dir),
        docs=_resolve(Path.cwd(), args.docs),
    )
    try:
        if args.command == "generate":
            changed, removed = gen.write(outputs)
            for path in changed:
                print(f"wrote {outputs.rel(path)}")
            for path in removed:
                print(f"removed {outputs.rel(path)}")
            if not changed and not removed:
                print("generated files are up to date")
            return 0
        if args.command == "check":
            problems = gen.check(outputs)
            for problem in problems:
                print(f"{problem}; fix: {gen.REGENERATE}", file=sys.stderr)
            if problems:
                print(
                    f"{len(problems)} generated file(s) out of date; run: {gen.REGENERATE}",
                    file=sys.stderr,
                )
                return 1
            print("generated files are up to date")
            return 0
        from nmn_array._spec.load import load_tree

        rows = gen.listing(load_tree(root, outputs.spec_dir))
        w0 = max((len(r[0]) for r in rows), default=4)
        w1 = max((len(r[1]) for r in rows), default=8)
        print(f"{'unit':{w0}}  {'property':{w1}}  backends[dtypes]")
        for unit, prop, targets in rows:
            print(f"{unit:{w0}}  {prop:{w1}}  {targets}")
        return 0
    except SpecError as exc:
        print(f"spec error:\n{exc}", file=sys.stderr)
        return 2
