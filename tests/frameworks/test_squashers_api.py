"""The squashers of each framework module take nmn 0.3.5's arguments: ``epsilon`` by
position, ``axis=None`` (torch: ``dim=``) for all elements; outputs equal nmn's."""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.frameworks._parity import RTOL_F64, assert_parity  # noqa: E402

FRAMEWORKS = ("torch", "nnx", "linen", "keras", "tf", "mlx")


def _array(framework: str, a: np.ndarray):
    if framework == "torch":
        import torch

        return torch.from_numpy(a)
    if framework in ("nnx", "linen"):
        import jax.numpy as jnp

        return jnp.asarray(a)
    if framework == "mlx":
        import mlx.core as mx

        return mx.array(a, dtype=mx.float64)
    import tensorflow as tf

    return tf.constant(a)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("axis", [-1, 0, None])
def test_softermax_takes_nmns_arguments(framework, axis):
    ours = importlib.import_module(f"nmn_array.frameworks.{framework}")
    ref = importlib.import_module(f"nmn.{framework}")
    x = _array(framework, np.random.default_rng(1).random((3, 4)) * 3)
    name = "dim" if framework == "torch" else "axis"
    got = ours.softermax(x, 2.0, 1e-6, **{name: axis})
    assert_parity(got, ref.softermax(x, 2.0, 1e-6, **{name: axis}), RTOL_F64, framework)
    for squash in ("softer_sigmoid", "soft_tanh"):
        got = getattr(ours, squash)(x, 1.5)
        assert_parity(got, getattr(ref, squash)(x, 1.5), RTOL_F64, f"{framework}:{squash}")


def test_torch_softermax_axis_alias_and_conflict():
    import torch
    from nmn_array.frameworks.torch import softermax

    x = torch.rand(3, 4, dtype=torch.float64)
    assert torch.equal(softermax(x, axis=0), softermax(x, dim=0))
    with pytest.raises(TypeError, match="dim=1 and axis=0"):
        softermax(x, dim=1, axis=0)
