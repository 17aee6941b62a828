"""DropConnect and fixed kernel masks of the torch conv and transposed-conv layers (issue 11).

The oracle is nmn.torch 0.3.5's own layer with the same weights and the same torch seed: nmn
draws the kept weights as ``torch.bernoulli(torch.full_like(weight, 1 - drop_rate))`` in the
compute dtype (its source), so a seeded layer of ours must give nmn's output.
"""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")
nmn_torch = pytest.importorskip("nmn.torch")

from nmn_array.frameworks import torch as ours  # noqa: E402

import nmn_array  # noqa: E402
from tests.frameworks._parity import RTOL_F32, RTOL_F64, assert_parity  # noqa: E402

F64 = torch.float64
NAMES = [f"YatConv{nd}D" for nd in (1, 2, 3)] + [f"YatConvTranspose{nd}D" for nd in (1, 2, 3)]
SPATIAL = {1: (9,), 2: (6, 5), 3: (4, 5, 3)}


def _nd(name: str) -> int:
    return int(name[-2])


def _geometry(name: str) -> dict:
    """Groups, and a stride or padding that matters (the draw must not depend on them)."""
    return dict(groups=2, stride=2) if "Transpose" in name else dict(groups=2, padding=1)


def _x(name: str, seed: int = 1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, *SPATIAL[_nd(name)], generator=g, dtype=dtype)


def _ours(name: str, dtype=F64, **kw):
    torch.manual_seed(0)
    return getattr(ours, name)(4, 6, 3, **_geometry(name), **kw).to(dtype)


def _pair(name: str, dtype=F64, **kw):
    """nmn's layer and ours with the same weights and buffers (by name, strict)."""
    torch.manual_seed(0)
    theirs = getattr(nmn_torch, name)(4, 6, 3, **_geometry(name), **kw).to(dtype)
    mine = _ours(name, dtype, **kw)
    mine.load_state_dict(theirs.state_dict(), strict=True)
    return mine, theirs


def _twin(layer, name: str):
    """A layer of ours without DropConnect and mask holding ``layer``'s parameters."""
    twin = _ours(name, layer.weight.dtype)
    twin.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "mask"})
    return twin


def _keep(layer, seed: int, rate: float):
    """The keep pattern nmn draws after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return torch.bernoulli(torch.full_like(layer.weight, 1.0 - rate)).bool()


def _mask(name: str):
    shape = _ours(name).weight.shape
    g = torch.Generator().manual_seed(5)
    return (torch.rand(shape, generator=g, dtype=F64) > 0.3).to(F64)


@pytest.mark.parametrize("name", NAMES)
def test_eval_and_deterministic_equal_the_layer_without_dropconnect(name):
    layer = _ours(name, use_dropconnect=True, drop_rate=0.5)
    x = _x(name)
    want = _twin(layer, name)(x)
    assert torch.equal(layer(x, deterministic=True), want)  # training mode, deterministic
    assert torch.equal(_ours(name, drop_rate=0.5)(x), want)  # use_dropconnect=False
    assert torch.equal(_ours(name, use_dropconnect=True, drop_rate=0.0)(x), want)
    layer.eval()
    assert torch.equal(layer(x), want)
    layer.train()  # and the draw does act in training mode (else the above says nothing)
    assert not torch.equal(layer(x), want)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["dropconnect", "dropconnect+mask"])
@pytest.mark.parametrize("name", NAMES)
def test_training_equals_nmn_with_the_same_seed(name, with_mask, dtype):
    kw = dict(use_dropconnect=True, drop_rate=0.3)
    if with_mask:
        kw["mask"] = _mask(name).to(dtype)
    mine, theirs = _pair(name, dtype, **kw)
    x = _x(name, dtype=dtype)
    tol = RTOL_F64 if dtype == F64 else RTOL_F32
    outputs = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        got = mine(x)
        torch.manual_seed(seed)
        assert_parity(got, theirs(x), tol, f"{name}[seed {seed}, {dtype}, mask={with_mask}]")
        outputs.append(got)
    assert not torch.equal(outputs[0], outputs[1])  # the seed changes the draw


@pytest.mark.parametrize("name", NAMES)
def test_training_equals_the_core_call_with_the_drawn_kernel(name):
    rate = 0.4
    layer = _ours(name, use_dropconnect=True, drop_rate=rate)
    x = _x(name)
    torch.manual_seed(7)
    got = layer(x)
    keep = _keep(layer, 7, rate)
    assert 0 < int((~keep).sum()) < keep.numel()
    plain = _twin(layer, name)
    with torch.no_grad():
        plain.weight.copy_(nmn_array.drop_connect(layer.weight, keep, rate=rate))
    torch.testing.assert_close(got, plain(x), rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("name", NAMES)
def test_kernel_gradient_is_zero_exactly_where_dropped(name):
    rate = 0.5
    layer = _ours(name, use_dropconnect=True, drop_rate=rate, learnable_epsilon=True)
    torch.manual_seed(11)
    layer(_x(name)).square().sum().backward()
    keep = _keep(layer, 11, rate)
    grad = layer.weight.grad
    assert torch.isfinite(grad).all()
    assert (grad[~keep] == 0).all()
    assert (grad[keep] != 0).double().mean() > 0.9  # the kept weights learn
    for p in (layer.bias, layer.alpha, layer.epsilon_param):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("boolean", [False, True], ids=["float mask", "bool mask"])
@pytest.mark.parametrize("name", NAMES)
def test_fixed_mask_equals_the_masked_kernel(name, boolean):
    mask = _mask(name)
    layer = _ours(name, mask=mask.bool() if boolean else mask)
    assert "mask" in layer.state_dict()
    plain = _twin(layer, name)
    with torch.no_grad():
        plain.weight.mul_(mask)
    x = _x(name)
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-13, atol=0.0)
    assert not torch.equal(layer(x), _twin(layer, name)(x))  # the mask does matter


@pytest.mark.parametrize("rate", [-0.1, 1.0, math.nan])
@pytest.mark.parametrize("name", NAMES)
def test_bad_drop_rate_is_refused_at_construction(name, rate):
    with pytest.raises(ValueError, match="drop_rate"):
        _ours(name, use_dropconnect=True, drop_rate=rate)


@pytest.mark.parametrize("name", NAMES)
def test_mask_of_the_wrong_shape_is_refused(name):
    shape = tuple(_ours(name).weight.shape)
    wrong = torch.ones(shape[:-1] + (shape[-1] + 1,), dtype=F64)
    with pytest.raises(ValueError, match=r"mask must have the weight's shape"):
        _ours(name, mask=wrong)


@pytest.mark.parametrize("name", NAMES)
def test_functional_call_draws_as_the_module_and_differentiates(name):
    layer = _ours(name, use_dropconnect=True, drop_rate=0.3, mask=_mask(name))
    x = _x(name)
    params = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    params["weight"] = (params["weight"] * 1.5).requires_grad_()
    torch.manual_seed(3)
    got = torch.func.functional_call(layer, params, (x,), {"deterministic": False})
    other = copy.deepcopy(layer)
    other.load_state_dict({k: v.detach() for k, v in params.items()})
    torch.manual_seed(3)
    torch.testing.assert_close(got, other(x), rtol=1e-13, atol=0.0)
    got.sum().backward()
    grad = params["weight"].grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    deterministic = torch.func.functional_call(layer, params, (x,), {"deterministic": True})
    other.eval()
    torch.testing.assert_close(deterministic, other(x), rtol=1e-13, atol=0.0)
