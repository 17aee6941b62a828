"""Keras 3 ``keras.distribution.DataParallel`` on the JAX backend (issue 18; docs/scaling.md).

A model of the yat layers (YatConv2D, MultiHeadYatAttention, YatNMN) trains one batch with
``train_on_batch`` on one device, and again from the same weights with the batch split over
4 virtual CPU devices by ``DataParallel``: the loss and every weight after the step agree, in
float32 and float64. All of it runs in one subprocess with ``KERAS_BACKEND=jax``
(``tests/scaling/_keras_worker.py``), whatever backend the calling process has: the main
suite runs this file once (scripts/run_tests.sh, under its ``KERAS_BACKEND=tensorflow``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.scaling._worker import DTYPES, Results, reorder_tol, requires, run_worker, unit_roundoff

#: the worker takes ~17 s on 2 busy cores; the bound leaves room for a slow CI
TIMEOUT = 240


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Results:
    requires("keras")
    out: Path = tmp_path_factory.mktemp("keras_distribution")
    return run_worker("tests.scaling._keras_worker", out, timeout=TIMEOUT, KERAS_BACKEND="jax")


def test_jax_backend_with_four_cpu_devices(worker: Results) -> None:
    facts = worker.section("devices")
    assert facts["keras_backend"] == "jax" and facts["KERAS_BACKEND"] == "jax", facts
    assert facts["count"] == 4 and facts["platforms"] == ["cpu"], facts


@pytest.mark.parametrize("dtype", DTYPES)
def test_data_parallel_step_equals_single_device(worker: Results, dtype: str) -> None:
    section = f"dp_{dtype}"
    facts = worker.section(section)
    tol, u, lr = reorder_tol(dtype), unit_roundoff(dtype), facts["learning_rate"]
    loss = [float(worker.array(section, f"{run}/loss")) for run in ("single", "dp")]
    assert abs(loss[1] - loss[0]) <= tol * abs(loss[0]), loss
    initial = worker.group(section, "initial")
    single = worker.group(section, "single/weights")
    dp = worker.group(section, "dp/weights")
    assert single.keys() == dp.keys() == initial.keys() and len(single) >= 15, sorted(single)
    for key, w0 in initial.items():
        # SGD's first step is w0 - lr * g: compare the steps, g's reordering tolerance times lr
        # (relative to the weight's largest step), plus one rounding of each new weight
        step = single[key] - w0
        scale = float(np.max(np.abs(step)))
        assert scale > 0, f"{key}: the step changed nothing"
        allowed = tol * scale + 2 * u * np.abs(single[key])
        diff = np.abs(dp[key] - single[key])
        assert np.all(diff <= allowed), f"{key}: weights differ by {np.max(diff)} (lr {lr})"


@pytest.mark.parametrize("dtype", DTYPES)
def test_data_parallel_step_is_really_sharded(worker: Results, dtype: str) -> None:
    facts = worker.section(f"dp_{dtype}")
    assert facts["devices"] == [f"cpu:{i}" for i in range(4)], facts["devices"]
    assert facts["input"]["spec"][0] == "batch" and len(facts["input"]["shard_shapes"]) == 4
    # inside the compiled step: the batch and the logits split over the 4 devices, one
    # device without the distribution
    inside = dict(facts["dp_inside_step"])
    for probe in ("batch", "logits"):
        assert "spec=P('batch'" in inside[probe], (probe, inside[probe])
    assert all("replicated" in s for _, s in facts["single_inside_step"]), facts
    # every weight replicated on the 4 devices
    for v in facts["variables"]:
        assert v["replicated"] and v["devices"] == [0, 1, 2, 3], v
