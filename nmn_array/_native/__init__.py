"""Native fast paths: library-specific kernels that compute exactly what the standard-only
code computes, with fewer passes over memory. Each is tested against the portable path in
outputs and gradients (tests/test_native_paths.py)."""
