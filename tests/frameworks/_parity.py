"""Helpers for parity tests of framework modules against nmn 0.3.5.

Shared by the torch / nnx / linen / keras / tf test files. Error metric: the largest absolute
difference divided by the largest magnitude of the reference output, which stays meaningful
when some outputs are near zero (yat outputs are >= 0 and often tiny).

Set ``NMN_ARRAY_PARITY_REPORT=<path>`` to append every recorded figure (one JSON object per
line: test id, layer/case, max scaled error, tolerance) to ``<path>``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

#: tolerances by dtype: float64 where nmn computes in float64, float32 otherwise
RTOL_F64 = 1e-10
RTOL_F32 = 1e-4


def fast_xla_compilation() -> None:
    """Ask XLA (CPU) for unoptimised code generation unless ``XLA_FLAGS`` already chooses.

    These tests run hundreds of tiny graphs once each, so LLVM's optimisation passes cost far
    more than they save (about 40% of the JAX test time). It takes effect only if no JAX
    backend has been initialised yet in the process; results are IEEE-identical in kind (no
    fast-math either way), so the tolerances are unaffected.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


def to_numpy(a: Any) -> np.ndarray:
    """A torch tensor, jax array, tf tensor or keras tensor as a float64-or-native numpy array."""
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu()
        if a.dtype.is_floating_point and a.dtype.itemsize < 4:
            a = a.float()
        return a.numpy()
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):  # tf
        return np.asarray(a.numpy())
    return np.asarray(a)


def scaled_error(ours: Any, ref: Any) -> float:
    """``max |ours - ref| / max |ref|`` (0 when both are all zero)."""
    a = to_numpy(ours).astype(np.float64)
    b = to_numpy(ref).astype(np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: ours {a.shape}, reference {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise AssertionError("non-finite values in the outputs")
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if scale == 0.0:
        return diff
    return diff / scale


def record(case: str, err: float, rtol: float) -> None:
    """Append a parity figure to ``$NMN_ARRAY_PARITY_REPORT`` (if set)."""
    path = os.environ.get("NMN_ARRAY_PARITY_REPORT")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    with open(path, "a") as fh:
        fh.write(json.dumps({"test": test, "case": case, "err": err, "rtol": rtol}) + "\n")


def assert_parity(ours: Any, ref: Any, rtol: float, case: str = "") -> float:
    """Check ``scaled_error(ours, ref) <= rtol``, record it, and return it."""
    err = scaled_error(ours, ref)
    record(case, err, rtol)
    assert err <= rtol, f"{case}: scaled error {err:.3e} > {rtol:.1e}"
    # a degenerate reference (all zeros) would make the check vacuous
    assert float(np.max(np.abs(to_numpy(ref)))) > 0.0, f"{case}: reference output is all zero"
    return err


def summarize(path: str) -> dict[str, float]:
    """Largest recorded error per (file, layer) prefix of the case names in a report file."""
    worst: dict[str, float] = {}
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            key = row["test"].split("::")[0].rsplit("/", 1)[-1] + ":" + row["case"].split("[")[0]
            worst[key] = max(worst.get(key, 0.0), row["err"])
    return worst
