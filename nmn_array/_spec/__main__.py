"""``python -m nmn_array._spec`` runs the spec tool (``nmn-array spec``)."""

from nmn_array._spec.cli import main

raise SystemExit(main())
