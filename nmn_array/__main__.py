"""``python -m nmn_array`` is the ``nmn-array`` command."""

from nmn_array.cli import main

raise SystemExit(main())
