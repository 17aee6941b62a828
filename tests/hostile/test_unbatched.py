"""torch modules on unbatched input, exactly where their torch.nn base classes accept it."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nmn_array.frameworks import torch as ours  # noqa: E402

F64 = torch.float64
CONVS = [
    (ours.YatConv1D, torch.nn.Conv1d, 1),
    (ours.YatConv2D, torch.nn.Conv2d, 2),
    (ours.YatConv3D, torch.nn.Conv3d, 3),
    (ours.YatConvTranspose1D, torch.nn.ConvTranspose1d, 1),
    (ours.YatConvTranspose2D, torch.nn.ConvTranspose2d, 2),
    (ours.YatConvTranspose3D, torch.nn.ConvTranspose3d, 3),
]


@pytest.mark.parametrize("cls, base, nd", CONVS, ids=lambda c: getattr(c, "__name__", ""))
def test_conv_accepts_unbatched_input_like_its_base(cls, base, nd):
    torch.manual_seed(0)
    layer = cls(3, 4, 2, stride=1, dtype=F64)
    x = torch.randn(2, 3, *([5] * nd), dtype=F64)
    batched = layer(x)
    for i in range(2):
        single = layer(x[i])  # (C, *spatial): accepted by torch.nn.Conv{nd}d too
        assert single.shape == batched.shape[1:]
        torch.testing.assert_close(single, batched[i], rtol=1e-12, atol=1e-12)
    # the base class accepts the same ranks
    base(3, 4, 2, dtype=F64)(x[0])


@pytest.mark.parametrize("cls, base, nd", CONVS, ids=lambda c: getattr(c, "__name__", ""))
def test_conv_wrong_rank_names_the_input(cls, base, nd):
    layer = cls(3, 4, 2, dtype=F64)
    for shape in ((3,) * nd, (1, 1, 3) + (5,) * nd):
        x = torch.zeros(shape, dtype=F64)
        with pytest.raises((ValueError, RuntimeError)):
            base(3, 4, 2, dtype=F64)(x)  # torch refuses these ranks too
        with pytest.raises(ValueError, match=r"input.*" + re.escape(str(tuple(shape)))) as e:
            layer(x)
        assert " w " not in str(e.value) and "`w`" not in str(e.value)


def test_conv_transpose_unbatched_with_output_size():
    torch.manual_seed(1)
    layer = ours.YatConvTranspose2D(3, 2, 3, stride=2, dtype=F64)
    x = torch.randn(3, 4, 4, dtype=F64)
    y = layer(x, output_size=[10, 10])
    assert y.shape == (2, 10, 10)
    torch.testing.assert_close(y, layer(x[None], output_size=[10, 10])[0])


def test_attention_accepts_unbatched_input():
    """(L, E) in, (L, E) out, as torch.nn.MultiheadAttention; the mask broadcasts to
    (H, Lq, Lk)."""
    torch.manual_seed(2)
    mha = ours.MultiHeadYatAttention(8, 2, dtype=F64)
    rot = ours.RotaryYatAttention(8, 2, 16, dtype=F64)
    q, kv = torch.randn(2, 5, 8, dtype=F64), torch.randn(2, 7, 8, dtype=F64)
    mask = torch.rand(2, 5, 7) > 0.3
    mask[:, 0] = True
    self_mask = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    for i in range(2):
        out = mha(q[i], kv[i], mask=mask)
        assert out.shape == (5, 8)
        torch.testing.assert_close(out, mha(q[i : i + 1], kv[i : i + 1], mask=mask)[0])
        r = rot(q[i], mask=self_mask)
        assert r.shape == (5, 8)
        torch.testing.assert_close(r, rot(q, mask=self_mask)[i])


def test_attention_wrong_rank_names_the_input():
    mha = ours.MultiHeadYatAttention(8, 2, dtype=F64)
    rot = ours.RotaryYatAttention(8, 2, 16, dtype=F64)
    with pytest.raises(ValueError, match=r"query.*\(8,\)"):
        mha(torch.zeros(8, dtype=F64))
    with pytest.raises(ValueError, match=r"query.*\(1, 2, 5, 8\)"):
        mha(torch.zeros(1, 2, 5, 8, dtype=F64))
    with pytest.raises(ValueError, match=r"key.*\(1, 5, 8\)"):
        mha(torch.zeros(5, 8, dtype=F64), torch.zeros(1, 5, 8, dtype=F64))
    with pytest.raises(ValueError, match=r"x.*\(8,\)"):
        rot(torch.zeros(8, dtype=F64))
    assert np.isfinite(mha(torch.zeros(5, 8, dtype=F64)).detach().numpy()).all()
