"""The torch ``MultiHeadYatAttention`` at 4096 tokens: with the default ``block_size="auto"``
a forward + backward holds far less memory than one ``(heads, L, L)`` score matrix, which
the materialised path (``block_size=None``) must hold and does exceed.

Peak memory is the process's resident high-water mark beyond its state before the step
(:func:`nmn_array.benchmarks.memory.measure`, in a fresh process with mmapped large blocks,
so freed tensors leave the resident set). No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

LENGTH, EMBED, HEADS = 4096, 256, 8
#: one float32 (heads, L, L) score matrix, in MiB: 512
SCORES_MB = HEADS * LENGTH * LENGTH * 4 / 2**20
#: the bound the default path must stay under (a quarter of one score matrix)
BOUND_MB = SCORES_MB / 4

_SCRIPT = """
import json, sys, torch
from nmn_array.benchmarks.memory import measure
from nmn_array.frameworks.torch import MultiHeadYatAttention

torch.manual_seed(0)
block = None if sys.argv[1] == "None" else sys.argv[1]
layer = MultiHeadYatAttention({embed}, {heads}, block_size=block)
x = torch.randn(1, {length}, {embed}, requires_grad=True)

def step():
    out = layer(x)
    out.sum().backward()

def clear():
    for t in [*layer.parameters(), x]:
        t.grad = None

print(json.dumps(measure(step, clear)))
"""


def _peak_mb(block_size: str) -> float:
    from nmn_array.benchmarks.memory import MALLOC_ENV

    script = _SCRIPT.format(embed=EMBED, heads=HEADS, length=LENGTH)
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, block_size],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["method"] == "VmHWM after clear_refs", result
    return float(result["peak_mb"])


@pytest.mark.slow
def test_default_module_stays_under_a_bound_the_materialised_path_exceeds():
    blocked = _peak_mb("auto")
    materialised = _peak_mb("None")
    assert materialised > BOUND_MB, (materialised, BOUND_MB)
    assert blocked < BOUND_MB, f"blocked forward+backward peak {blocked:.1f} MiB >= {BOUND_MB}"
