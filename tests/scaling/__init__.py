"""Scaling out on the frameworks' own engines (issue 18): JAX sharding and Keras distribution.

Each test file runs its multi-device work in one subprocess (``tests/scaling/_worker.py``),
so that the rest of the suite keeps JAX's single CPU device; see docs/scaling.md.
"""
