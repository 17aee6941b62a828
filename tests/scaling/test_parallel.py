"""nmn_array.parallel.yat_feature_sharded in one process: one shard, shards simulated with
``jax.vmap``'s named axis (its ``psum`` sums over the mapped axis, no devices needed), and
its argument errors. The multi-device runs are in test_jax_sharding.py."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import nmn_array
from nmn_array.parallel import yat_feature_sharded
from tests._assertions import assert_matches
from tests.backends import Backend
from tests.reference import yat_ref

RNG = np.random.default_rng(7)
X = RNG.normal(size=(5, 12))
W = RNG.normal(size=(4, 12))
B = RNG.normal(size=(4,))


def identity(parts: tuple) -> tuple:
    return parts


@pytest.mark.parametrize("distance", ["refined", "expanded"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bias": B, "alpha": 1.5, "epsilon": 1e-3}, {"distance_floor": 0.5}],
    ids=["plain", "bias-alpha-eps", "floor"],
)
def test_one_shard_is_yat(distance: str, kwargs: dict) -> None:
    got = yat_feature_sharded(X, W, all_sum=identity, distance=distance, **kwargs)
    assert_matches(got, yat_ref(X, W, **kwargs), "float64", str(kwargs))
    want = nmn_array.yat(X, W, distance=distance, **kwargs)
    np.testing.assert_array_equal(got, want)  # the same code path, the same operations


def test_vector_w_and_float32() -> None:
    x32 = X.astype(np.float32)
    got = yat_feature_sharded(x32, W[0].astype(np.float32), all_sum=identity)
    assert got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_array_equal(got, nmn_array.yat(x32, W[0].astype(np.float32)))


@pytest.mark.parametrize("distance", ["refined", "expanded"])
def test_all_sum_is_called_once_per_reduction(distance: str) -> None:
    calls: list[int] = []

    def counting(parts: tuple) -> tuple:
        calls.append(len(parts))
        return parts

    yat_feature_sharded(X, W, all_sum=counting, distance=distance)
    # (dot, |x|^2, |w|^2) in one call; the refined nearest distances in a second
    assert calls == ([3, 1] if distance == "refined" else [3]), calls


@pytest.mark.parametrize("distance", ["refined", "expanded"])
def test_shards_simulated_with_vmap_equal_yat(distance: str) -> None:
    jax = Backend("jax").module()  # the suite's policy: an error if required, else a skip

    shards = 3
    xs = np.stack(np.split(X, shards, axis=-1))  # (3, 5, 4): the features in three parts
    ws = np.stack(np.split(W, shards, axis=-1))  # (3, 4, 4)
    bias = jax.numpy.asarray(B)
    f = functools.partial(yat_feature_sharded, bias=bias, axis_name="s", distance=distance)
    out = jax.jit(jax.vmap(f, in_axes=(0, 0), axis_name="s"))(xs, ws)
    ref = yat_ref(X, W, B)
    for s in range(shards):  # every shard ends with the whole result
        assert_matches(out[s], ref, "float64", f"shard {s}")
    naive = sum(nmn_array.yat(xs[s], ws[s], B / shards) for s in range(shards))
    assert np.max(np.abs(naive - ref)) > 0.1 * np.max(np.abs(ref)), "the naive sum matched"


def test_exactly_one_reduction_is_required() -> None:
    with pytest.raises(ValueError, match="exactly one of axis_name .* and all_sum"):
        yat_feature_sharded(X, W)
    with pytest.raises(ValueError, match="axis_name='m'"):
        yat_feature_sharded(X, W, axis_name="m", all_sum=identity)
    with pytest.raises(TypeError, match="all_sum must be callable, got int"):
        yat_feature_sharded(X, W, all_sum=3)  # type: ignore[arg-type]


def test_bad_shapes_and_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"feature sizes differ: x has shape \(5, 12\)"):
        yat_feature_sharded(X, W[:, :6], all_sum=identity)
    with pytest.raises(ValueError, match="distance"):
        yat_feature_sharded(X, W, all_sum=identity, distance="direct")
    with pytest.raises(ValueError, match="bias must broadcast to the 4 output features"):
        yat_feature_sharded(X, W, np.ones(3), all_sum=identity)
    with pytest.raises(TypeError, match="spherical"):
        yat_feature_sharded(X, W, all_sum=identity, spherical=True)  # type: ignore[call-arg]
