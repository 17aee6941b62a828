"""JAX sharding on 4 virtual CPU devices (issue 18; docs/scaling.md).

Data parallel: one jitted training step of a Flax NNX yat network (YatConv2D,
MultiHeadYatAttention, YatNMN; optax SGD with momentum) with the batch sharded over a
4-device mesh (``AxisType.Auto``) equals the same step on one device: loss, every gradient
and every updated parameter, in float32 and float64. Tensor parallel: ``yat`` with the
neurons split over the devices equals the unsharded product, and so does
:func:`nmn_array.parallel.yat_feature_sharded` with the features split, near collisions
included, while the naive per-shard yat does not.

The devices exist only in the worker subprocess (``tests/scaling/_jax_worker.py``), run once
for this module; the assertions and the float64 references are here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests._assertions import assert_matches
from tests.reference import yat_ref
from tests.scaling._worker import DTYPES, Results, reorder_tol, requires, run_worker, unit_roundoff

#: the worker takes ~30 s on 2 busy cores; the bound leaves room for a slow CI
TIMEOUT = 240


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Results:
    requires("flax", "optax")
    out: Path = tmp_path_factory.mktemp("jax_sharding")
    return run_worker("tests.scaling._jax_worker", out, timeout=TIMEOUT)


def test_four_cpu_devices_and_an_auto_mesh(worker: Results) -> None:
    facts = worker.section("devices")
    assert facts["count"] == 4 and facts["platforms"] == ["cpu"], facts
    assert facts["axis_types"] == ["AxisType.Auto"], facts


# ---- data parallel -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_data_parallel_step_equals_single_device(worker: Results, dtype: str) -> None:
    section = f"dp_{dtype}"
    facts = worker.section(section)
    tol, u = reorder_tol(dtype), unit_roundoff(dtype)
    loss = {run: float(worker.array(section, f"{run}/loss")) for run in ("single", "sharded")}
    assert abs(loss["sharded"] - loss["single"]) <= tol * abs(loss["single"]), loss
    single, sharded = worker.group(section, "single/grads"), worker.group(section, "sharded/grads")
    assert single.keys() == sharded.keys() and len(single) >= 15, sorted(single)
    initial = worker.group(section, "initial")
    new_single = worker.group(section, "single/params")
    new_sharded = worker.group(section, "sharded/params")
    lr = facts["learning_rate"]
    for key, g in single.items():
        scale = float(np.max(np.abs(g)))
        assert scale > 0, f"{key}: zero gradient, the comparison would be empty"
        np.testing.assert_allclose(sharded[key], g, rtol=0, atol=tol * scale, err_msg=key)
        # SGD's first step moves by lr * g: its difference, plus one rounding of each result
        moved = np.abs(new_single[key] - initial[key])
        assert np.max(moved) > 0, f"{key}: the step changed nothing"
        allowed = lr * tol * scale + 2 * u * np.abs(new_single[key])
        diff = np.abs(new_sharded[key] - new_single[key])
        assert np.all(diff <= allowed), f"{key}: parameters differ by {np.max(diff)}"
    logits = [worker.array(section, f"{run}/logits") for run in ("single", "sharded")]
    np.testing.assert_allclose(logits[1], logits[0], rtol=tol, atol=tol * np.max(np.abs(logits[0])))


@pytest.mark.parametrize("dtype", DTYPES)
def test_data_parallel_step_is_really_sharded(worker: Results, dtype: str) -> None:
    facts = worker.section(f"dp_{dtype}")
    single, sharded = facts["single"], facts["sharded"]
    assert single["logits"]["devices"] == [0], single["logits"]
    assert sharded["input"]["spec"] == ["data"], sharded["input"]
    # the compiled step saw the batch split over 'data' (its inputs' sharding, not a copy)
    assert "'data'" in facts["inside_step"][-1] and "replicated" in facts["inside_step"][0], facts
    logits = sharded["logits"]
    assert logits["spec"] == ["data"] and logits["devices"] == [0, 1, 2, 3], logits
    assert logits["shard_shapes"] == [[2, 3]] * 4, logits
    for what in ("grads", "params"):  # summed over the devices, the same on every one
        for s in sharded[what]:
            assert s["replicated"] and s["devices"] == [0, 1, 2, 3], (what, s)


@pytest.mark.parametrize("function", ["yat", "yat_conv", "yat_attention", "rotary_embedding"])
def test_eager_calls_on_a_batch_sharded_array(worker: Results, function: str) -> None:
    """Outside jit the functions build constants and indices next to their inputs; those
    must not take a batch sharding (they used to: IndivisibleError)."""
    facts = worker.section("eager")[function]
    sharded = worker.array("eager", f"{function}/sharded")
    assert_matches(sharded, worker.array("eager", f"{function}/numpy"), "float64", function)
    assert facts["spec"][0] == "data" and len(facts["shard_shapes"]) == 4, facts


# ---- tensor parallel ---------------------------------------------------------------------
def yat_error_bound(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, epsilon: float, dtype: str, *, direct=False
) -> np.ndarray:
    """Elementwise rounding bound of one ``dtype`` computation of ``yat(x, w, b)`` (alpha 1)
    from float64 quantities of the same (rounded) inputs: docs/testing.md's ``yat_ratio``
    bound, ``k (|y| + (|y| E + 2 |s + b| Q) / (D + eps)) + (k Q)^2 / (D + eps) + 4 u |y|``
    with ``Q = |x|^2 + |w|^2``, ``k = 4 (d + 2) u`` and the distance's error ``k E``:
    ``E = Q`` for the expanded distance, ``E = D`` where it is computed directly (a sum of
    squares of exact differences: the refined nearest neuron)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    u = unit_roundoff(dtype)
    k = 4 * (x.shape[-1] + 2) * u
    s = x @ w.T + (0.0 if b is None else b.astype(np.float64))
    dist = np.sum((x[:, None, :] - w[None, :, :]) ** 2, axis=-1)
    q = np.sum(x * x, axis=-1)[:, None] + np.sum(w * w, axis=-1)[None, :]
    y = s * s / (dist + epsilon)
    e = dist if direct else q
    return (
        k * (y + (y * e + 2 * np.abs(s) * q) / (dist + epsilon))
        + (k * q) ** 2 / (dist + epsilon)
        + 4 * u * y
    )


def tp_inputs(worker: Results, dtype: str) -> tuple[np.ndarray, ...]:
    return tuple(worker.array(f"tp_{dtype}", f"input/{k}") for k in "xwb")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("how", ["rows_jit", "rows_shard_map", "features", "features_all_sum"])
def test_tensor_parallel_equals_unsharded(worker: Results, dtype: str, how: str) -> None:
    section = f"tp_{dtype}"
    x, w, b = tp_inputs(worker, dtype)
    bound = yat_error_bound(x, w, b, 1e-5, dtype)
    got, unsharded = worker.array(section, how), worker.array(section, "unsharded")
    ref = yat_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    # each side within one bound of the float64 reference, so of each other within two
    assert np.all(np.abs(got - ref) <= bound), f"{how}: {np.max(np.abs(got - ref) / bound)} bounds"
    assert np.all(np.abs(got - unsharded) <= 2 * bound), f"{how} vs unsharded"


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_parallel_outputs_live_where_expected(worker: Results, dtype: str) -> None:
    facts = worker.section(f"tp_{dtype}")
    for how in ("rows_jit", "rows_shard_map"):  # each device holds its neurons' outputs
        assert facts[how]["spec"] == [None, "model"], facts[how]
        assert facts[how]["shard_shapes"] == [[8, 4]] * 4, facts[how]
    # features: every device ends with the whole (summed) result
    assert facts["features"]["replicated"] and facts["features"]["devices"] == [0, 1, 2, 3]
    # one all-reduce of (dot, |x|^2, |w|^2), one of the refined nearest distances
    assert facts["all_sum_calls"] == [3, 1], facts["all_sum_calls"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nnx_layer_with_neuron_sharded_parameters(worker: Results, dtype: str) -> None:
    """A Flax NNX YatNMN whose kernel ``(in, out)`` and bias are split over the neurons, in
    one jitted call, equals the layer on one device; its output stays split the same way."""
    facts = worker.section(f"tp_{dtype}")
    single = worker.array(f"tp_{dtype}", "layer_single")
    got = worker.array(f"tp_{dtype}", "layer_rows")
    tol = reorder_tol(dtype)
    np.testing.assert_allclose(got, single, rtol=tol, atol=tol * np.max(np.abs(single)))
    params = facts["layer_params"]
    kernel = next(v for k, v in params.items() if "kernel" in k)
    assert kernel["spec"] == [None, "model"] and kernel["shard_shapes"] == [[32, 4]] * 4, kernel
    assert facts["layer_rows"]["spec"] == [None, "model"], facts["layer_rows"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_naive_per_shard_yat_is_wrong(worker: Results, dtype: str) -> None:
    """Summing the yat of each feature shard is not the yat of the whole vectors."""
    naive, unsharded = (
        worker.array(f"tp_{dtype}", "naive"),
        worker.array(f"tp_{dtype}", "unsharded"),
    )
    scale = float(np.max(np.abs(unsharded)))
    assert np.max(np.abs(naive - unsharded)) > 0.1 * scale, "the naive sum matched"


@pytest.mark.parametrize("dtype", DTYPES)
def test_feature_sharded_gradients_equal_unsharded(worker: Results, dtype: str) -> None:
    tol = reorder_tol(dtype)
    section = f"tp_{dtype}"
    for key in "xwb":
        g = worker.array(section, f"grad_unsharded/{key}")
        got = worker.array(section, f"grad_features/{key}")
        scale = float(np.max(np.abs(g)))
        assert scale > 0, key
        np.testing.assert_allclose(got, g, rtol=0, atol=tol * scale, err_msg=key)


def test_feature_sharded_keeps_the_near_collision_refinement(worker: Results) -> None:
    """float32, every input within ~1e-3 of a neuron (64 features, epsilon 1e-5): the
    expanded distance is mostly rounding error there; the refinement recomputes each
    input's nearest neuron directly, across the shards, and is as accurate as unsharded."""
    facts = worker.section("collision")
    x, w = worker.array("collision", "input/x"), worker.array("collision", "input/w")
    eps = facts["epsilon"]
    ref = yat_ref(x.astype(np.float64), w.astype(np.float64), epsilon=eps)
    nearest = np.argmin(np.sum((x[:, None, :] - w[None]) ** 2, axis=-1), axis=-1)
    rows = np.arange(len(x))
    general = yat_error_bound(x, w, None, eps, "float32")
    direct = yat_error_bound(x, w, None, eps, "float32", direct=True)[rows, nearest]
    for how in ("features", "unsharded"):
        got = worker.array("collision", f"refined/{how}")
        err = np.abs(got - ref)
        assert np.all(err <= general), how
        assert np.all(err[rows, nearest] <= direct), (how, err[rows, nearest] / direct)
    # the inputs do collide: without the refinement the nearest outputs are far off
    expanded = worker.array("collision", "expanded/features")
    worst = np.max(np.abs(expanded - ref)[rows, nearest] / direct)
    assert worst > 100, f"expanded only {worst} direct bounds off: not a collision"
