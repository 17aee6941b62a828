"""Benchmarks of the yat layers against native layers and nmn 0.3.5 (``nmn-array bench``)."""
