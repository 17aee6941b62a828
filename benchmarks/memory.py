"""Peak resident memory of one case, measured in a process of its own.

tracemalloc does not see PyTorch's allocations, so the measure is the process's resident set
(RSS). The worker builds the case, runs one untimed step (lazy initialisation, gradient
buffers), drops the gradients, resets the kernel's RSS high-water mark
(``/proc/self/clear_refs``), runs one more step and reports ``VmHWM - VmRSS(before)``: the
most memory the step held at once beyond what existed before it (parameters, inputs).

glibc keeps freed heap blocks unless told otherwise, which would hide the step's own
allocations in the baseline; the worker is therefore started with a fixed
``MALLOC_MMAP_THRESHOLD_`` so large tensors are mmapped and returned on free. Where the
high-water mark cannot be reset, the fallback skips the warm-up step and reports the
``ru_maxrss`` delta over a baseline taken after the imports and the case's construction.
"""

from __future__ import annotations

import gc
import resource
import sys
from typing import Any

#: Environment of a memory worker (added to the thread environment).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _maxrss_kb() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss


def measure(step: Any, clear_grads: Any) -> dict[str, Any]:
    """Peak RSS of one call of ``step`` beyond the memory held before it, in MiB.

    Parameters
    ----------
    step : callable
        One forward + backward pass.
    clear_grads : callable
        Sets every gradient to None (so the measured step allocates them, as a training
        step after ``zero_grad()`` does).
    """
    can_reset = _reset_high_water_mark()
    if can_reset:
        step()
        clear_grads()
        gc.collect()
        _reset_high_water_mark()
        base = _status_kb("VmRSS")
        step()
        peak = _status_kb("VmHWM")
        method = "VmHWM after clear_refs"
    else:
        gc.collect()
        base = _maxrss_kb()
        step()
        peak = _maxrss_kb()
        method = "ru_maxrss delta"
    return {
        "peak_mb": max(peak - base, 0) / 1024.0,
        "baseline_mb": base / 1024.0,
        "method": method,
    }


def torch_case(group: str, name: str, sz: Any) -> dict[str, Any]:
    """Peak memory of one torch case (run inside a memory worker)."""
    import torch

    from . import long
    from . import torch_cases as tc

    torch.manual_seed(0)
    label, factory = tc.case(group, name, sz)
    module, inputs = factory(sz)
    step = tc.make_step(module, inputs)

    def clear() -> None:
        for t in list(module.parameters()) + list(inputs):
            t.grad = None

    out = measure(step, clear)
    out.update({"suite": "torch", "group": group, "name": name, "label": label})
    if name == "ours":
        out["impl"] = tc.ours_impl()
    if long.length_of(group) is not None:
        out["x"] = long.length_of(group)
    return out
