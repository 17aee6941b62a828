"""Benchmarks of the yat layers against native layers and nmn 0.3.5 (``nmn-array bench``).

``python -m nmn_array.benchmarks`` (or ``python -m benchmarks`` from the repository root)
runs :func:`nmn_array.benchmarks.__main__.main`. Modules:

- ``__main__``: the command line; starts one worker process per suite and per memory case,
  prints the tables and writes the JSON and the scaling plot.
- ``_worker``: a worker process (torch, jax, tf suite or torch memory cases).
- ``_common``: sizes, thread environment, the interleaved timer.
- ``torch_cases``, ``jax_cases``, ``tf_cases``: the compared cases of each framework.
- ``memory``: peak resident memory of one step.
- ``report``: ratios, targets, tables, plot.
- ``profile``: operator profiles (torch) and XLA cost analysis (jax).

Inside this package only relative imports are used, so it works under both names.
"""
