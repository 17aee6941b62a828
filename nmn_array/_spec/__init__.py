"""The spec tool: YAML specs of every function and layer, and the tests generated from them.

``spec/*.yaml`` (at the repository root) is the single source of truth for the property
tests: :mod:`~nmn_array._spec.schema` validates a file, :mod:`~nmn_array._spec.load` reads
it into units and targets, :mod:`~nmn_array._spec.generate` writes ``tests/generated/`` and
``docs/capabilities.md``, and :mod:`~nmn_array._spec.cli` is the command line
(``nmn-array spec ...`` or ``python -m nmn_array._spec ...``). Private: the layout of the
spec files may change between releases.
"""
