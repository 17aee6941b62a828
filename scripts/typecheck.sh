#!/usr/bin/env bash
# Static type check (mypy, settings in pyproject.toml [tool.mypy]) of nmn_array and frameworks/.
# The installed package maps frameworks/ to nmn_array.frameworks (package-dir in
# pyproject.toml), which mypy cannot follow through the editable install's import hook; so
# this checks a tree of symlinks with that layout and prints the paths of the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-.venv/bin}
TREE=.mypy_cache/src
rm -rf "$TREE"
mkdir -p "$TREE/nmn_array"
for entry in nmn_array/*; do
  ln -s "$ROOT/$entry" "$TREE/nmn_array/"
done
ln -s "$ROOT/frameworks" "$TREE/nmn_array/frameworks"
cd "$TREE"
status=0
"$ROOT/$BIN/python" -m mypy --config-file "$ROOT/pyproject.toml" --cache-dir "$ROOT/.mypy_cache" \
  -p nmn_array | sed -e 's#^nmn_array/frameworks/#frameworks/#' || status=$?
exit "$status"
