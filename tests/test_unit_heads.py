"""``nmn_array.attention.unit_heads``: the multi-head modules' normalize_qk (Decision 2)."""

from __future__ import annotations

import numpy as np
import pytest

from nmn_array.attention import unit_heads

RNG = np.random.default_rng(7)


def test_matches_torch_normalize_and_zero_heads_have_finite_gradients():
    import torch  # installed in every test environment; a failed import is an error

    x = torch.tensor(RNG.normal(size=(2, 3, 5)), dtype=torch.float64)
    x[0, 1] = 0.0
    x[1, 2] = 1e-14  # below the floor: divided by 1e-12, not by its norm
    x.requires_grad_(True)
    ours = unit_heads(x)
    ref = torch.nn.functional.normalize(x, dim=-1, eps=1e-12)
    np.testing.assert_allclose(ours.detach().numpy(), ref.detach().numpy(), rtol=1e-14, atol=0)
    (g,) = torch.autograd.grad((ours * torch.arange(5.0, dtype=x.dtype)).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * torch.arange(5.0, dtype=x.dtype)).sum(), x)
    assert torch.isfinite(g).all()
    np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_unit_length_and_dtype_kept(dtype):
    x = RNG.normal(size=(4, 6)).astype(dtype)
    out = unit_heads(x)
    assert out.dtype == x.dtype
    tol = {"float16": 2e-3, "float32": 1e-6, "float64": 1e-14}[dtype]
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=-1), 1.0, atol=tol)


@pytest.mark.parametrize("floor", [0.0, -1.0, float("nan"), True])
def test_bad_floor_raises(floor):
    with pytest.raises(ValueError, match="floor"):
        unit_heads(np.ones((2, 3)), floor=floor)
