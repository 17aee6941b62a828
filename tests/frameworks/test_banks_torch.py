"""Shared kernel banks (``tie_kernel_bank``) of the torch YatNMN and YatConv1D/2D/3D (issue 11).

The oracle for the seeded tests is nmn.torch 0.3.5's own tied layers: built after the same
``torch.manual_seed``, ours must draw the same bank, biases and outputs. Every test uses its
own bank id (nmn's registries are class attributes that live as long as the process) and
clears our registry, so that no bank leaks from one test into another.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
nmn_torch = pytest.importorskip("nmn.torch")

from nmn_array.frameworks import torch as ours  # noqa: E402

from tests.frameworks import _banks  # noqa: E402
from tests.frameworks._parity import RTOL_F64, assert_parity  # noqa: E402

F64 = torch.float64
CONVS = ["YatConv1D", "YatConv2D", "YatConv3D"]
SPATIAL = {1: (7,), 2: (5, 6), 3: (4, 5, 3)}


_fresh_banks = _banks.fresh_banks(ours._BANKS)
bank_id = _banks.bank_id


def _dense(units: int, bank_id: str, module=ours, **kw):
    kw.setdefault("param_dtype", F64)
    return module.YatNMN(4, units, tie_kernel_bank=True, kernel_bank_id=bank_id, **kw)


def _conv(name: str, units: int, bank_id: str, module=ours, **kw):
    kw = {"dtype": F64, "groups": 2, "padding": 1, **kw}
    layer = getattr(module, name)
    return layer(4, units, 3, tie_kernel_bank=True, kernel_bank_id=bank_id, **kw)


def _x_dense(seed: int = 1):
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _x_conv(name: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, *SPATIAL[int(name[-2])], generator=g, dtype=F64)


def _pair(kind: str, bank_id: str, small: int = 2, large: int = 6, **kw):
    """Two tied layers of one bank (``small`` units first, ``large`` second: the bank grows),
    their input, and a maker of an untied twin of a layer."""
    if kind == "YatNMN":
        layers = [_dense(n, bank_id, **kw) for n in (small, large)]
        x = _x_dense()

        def twin(layer):
            return ours.YatNMN(4, layer.out_features, param_dtype=F64, **kw)

    else:
        layers = [_conv(kind, n, bank_id, **kw) for n in (small, large)]
        x = _x_conv(kind)

        def twin(layer):
            return getattr(ours, kind)(
                4, layer.out_channels, 3, groups=2, padding=1, dtype=F64, **kw
            )

    return layers, x, twin


def _units(layer) -> int:
    return layer.out_features if isinstance(layer, ours.YatNMN) else layer.out_channels


def _untied_copy(layer, twin):
    """``twin(layer)`` holding ``layer``'s parameters, its kernel the bank slice (a copy)."""
    copy = twin(layer)
    state = dict(layer.state_dict())
    state["weight"] = state["weight"][: _units(layer)].clone()
    copy.load_state_dict(state, strict=True)
    return copy


KINDS = ["YatNMN"] + CONVS


@pytest.mark.parametrize("kind", KINDS)
def test_tied_layers_share_one_parameter(kind, bank_id):
    (a, b), x, _ = _pair(kind, bank_id)
    assert a.weight is b.weight and a.weight.shape[0] == 6
    # a model holding both lists the bank once, so an optimiser steps it once
    model = torch.nn.ModuleList([a, b])
    assert sum(p is a.weight for p in model.parameters()) == 1
    before = b(x).detach()
    with torch.no_grad():
        a.weight[0].mul_(-2.0)  # through one layer ...
    assert torch.equal(b.weight[0], a.weight[0])  # ... seen by the other
    assert not torch.equal(b(x), before)


@pytest.mark.parametrize("weight_normalized", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_tied_layer_equals_untied_layer_on_the_bank_slice(kind, weight_normalized, bank_id):
    kw = {"weight_normalized": weight_normalized}
    layers, x, twin = _pair(kind, bank_id, **kw)
    for layer in layers:
        out, ref = layer(x), _untied_copy(layer, twin)(x)
        assert out.shape[-1 if kind == "YatNMN" else 1] == _units(layer)
        assert torch.equal(out, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_of_all_users_add_up_in_the_bank(kind, bank_id):
    (a, b), x, twin = _pair(kind, bank_id, small=2, large=4)
    (a(x).sum() + (b(x) ** 2).sum()).backward()
    ta, tb = _untied_copy(a, twin), _untied_copy(b, twin)
    ta(x).sum().backward()
    (tb(x) ** 2).sum().backward()
    expected = torch.zeros_like(a.weight)
    expected[:2] += ta.weight.grad
    expected[:4] += tb.weight.grad
    assert a.weight.grad.abs().sum() > 0 and ta.weight.grad.abs().sum() > 0
    torch.testing.assert_close(a.weight.grad, expected, rtol=1e-14, atol=0.0)
    # the rows only the larger layer uses get its gradient alone
    assert torch.equal(a.weight.grad[2:4], tb.weight.grad[2:])
    assert not a.weight.grad[4:].any()  # the rows nobody uses get none
    torch.testing.assert_close(a.bias.grad, ta.bias.grad, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_growth_before_first_use_keeps_the_old_units(kind, bank_id):
    make = (
        (lambda n: _dense(n, bank_id)) if kind == "YatNMN" else (lambda n: _conv(kind, n, bank_id))
    )
    a = make(2)
    old = a.weight.detach().clone()
    b = make(6)
    assert a.weight is b.weight and tuple(a.weight.shape[:1]) == (6,)
    assert torch.equal(a.weight[:2], old)
    assert a.weight[2:].abs().sum() > 0  # the new rows are initialised, not empty memory
    if kind != "YatNMN":
        # torch's Conv*d initialiser, U(+-1/sqrt(fan_in)), also for the new filters
        assert a.weight[2:].abs().max() <= 1.0 / math.sqrt(a.weight[0].numel())
    assert (
        a(_x_dense() if kind == "YatNMN" else _x_conv(kind)).shape[:2][
            -1 if kind == "YatNMN" else 1
        ]
        == 2
    )


@pytest.mark.parametrize("kind", KINDS)
def test_growth_after_use_raises_and_leaves_the_bank(kind, bank_id):
    (a, b), x, _ = _pair(kind, bank_id, small=2, large=4)
    a(x)
    bank = a.weight.detach().clone()
    with pytest.raises(ValueError, match="cannot grow to 6.*used already.*kernel_bank_size=6"):
        _pair(kind, bank_id, small=6, large=6)
    assert torch.equal(a.weight, bank) and a.weight is b.weight
    c = _dense(4, bank_id) if kind == "YatNMN" else _conv(kind, 4, bank_id)  # no growth: fine
    assert c.weight is a.weight


@pytest.mark.parametrize("kind", KINDS)
def test_bank_size_below_the_units_raises(kind, bank_id):
    make = _dense if kind == "YatNMN" else (lambda *a, **kw: _conv(kind, *a, **kw))
    for size in (2, 0):  # nmn reads 0 as "unset"; it is a size too small here
        with pytest.raises(
            ValueError, match=rf"kernel_bank_size \({size}\) must be at least the units \(4\)"
        ):
            make(4, bank_id, kernel_bank_size=size)
    assert tuple(make(4, bank_id, kernel_bank_size=4).weight.shape[:1]) == (4,)


def test_explicit_bank_size_and_separate_banks(bank_id):
    a = _dense(2, bank_id, kernel_bank_size=7)
    assert tuple(a.weight.shape) == (7, 4) and a(_x_dense()).shape == (3, 2)
    # another id, input size, dtype, initialiser or positive_init: another bank
    others = [
        _dense(2, bank_id + "-other"),
        ours.YatNMN(5, 2, param_dtype=F64, tie_kernel_bank=True, kernel_bank_id=bank_id),
        _dense(2, bank_id, param_dtype=torch.float32),
        _dense(2, bank_id, kernel_init=torch.nn.init.orthogonal_),
        _dense(2, bank_id, positive_init=True),
    ]
    assert all(o.weight is not a.weight for o in others)
    assert (
        _dense(2, bank_id, kernel_init=torch.nn.init.xavier_normal_).weight is a.weight
    )  # the default
    assert (others[-1].weight >= 0).all()
    c1, c2 = _conv("YatConv2D", 2, bank_id), _conv("YatConv2D", 2, bank_id, groups=1)
    assert c1.weight is not c2.weight and c1.weight is not _conv("YatConv1D", 2, bank_id).weight


def test_an_untied_layer_has_its_own_weight_and_the_old_settings_are_kept(bank_id):
    layer = ours.YatNMN(4, 3, kernel_bank_size=8, kernel_bank_id=bank_id)
    assert tuple(layer.weight.shape) == (3, 4) and not layer.tie_kernel_bank
    assert (layer.kernel_bank_size, layer.kernel_bank_id) == (8, bank_id)
    assert ours.YatNMN(4, 3, kernel_bank_id=bank_id).weight is not layer.weight


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("move", ["double", "half", "to_float32", "parent_to"])
def test_moving_a_tied_layer_raises(kind, move, bank_id):
    (a, _), x, _ = _pair(kind, bank_id)
    calls = {
        "double": a.double,
        "half": a.half,
        "to_float32": lambda: a.to(torch.float32),
        "parent_to": lambda: torch.nn.Sequential(a).to("cpu"),
    }
    with pytest.raises(RuntimeError, match="tie_kernel_bank=True.*device/dtype migration"):
        calls[move]()
    assert a.weight.dtype == F64 and a(x).dtype == F64


def test_untied_layers_still_move():
    assert ours.YatNMN(4, 3).double().weight.dtype == F64
    assert ours.YatConv1D(2, 4, 3).half().weight.dtype == torch.float16


def test_lazy_layers_of_one_bank_must_agree(bank_id):
    a = _dense(2, bank_id, lazy=True)
    assert not a.weight.requires_grad
    assert _dense(3, bank_id, freeze_kernel=True).weight is a.weight
    with pytest.raises(ValueError, match="must agree on lazy/freeze_kernel"):
        _dense(2, bank_id)


def test_tied_conv_mask_and_dropconnect_apply_to_the_slice(bank_id):
    name = "YatConv2D"
    mask = (torch.arange(4 * 2 * 9).reshape(4, 2, 3, 3) % 3 > 0).to(F64)
    layer = _conv(
        name, 4, bank_id, kernel_bank_size=6, mask=mask, use_dropconnect=True, drop_rate=0.3
    )
    assert tuple(layer.mask.shape) == (4, 2, 3, 3)
    with pytest.raises(ValueError, match=r"mask must have the weight's shape \(4, 2, 3, 3\)"):
        _conv(name, 4, bank_id, mask=torch.ones(6, 2, 3, 3, dtype=F64))
    x = _x_conv(name)
    layer.eval()
    ref = _conv(name, 4, bank_id + "-ref", mask=mask)
    ref.load_state_dict(dict(layer.state_dict(), weight=layer.weight[:4].detach().clone()))
    assert torch.equal(layer(x), ref(x))
    layer.train()
    torch.manual_seed(3)
    dropped = layer(x)
    torch.manual_seed(3)
    keep = torch.bernoulli(torch.full((4, 2, 3, 3), 0.7, dtype=F64)).bool()
    with torch.no_grad():
        ref.weight.copy_(torch.where(keep, ref.weight / 0.7, 0.0))
    torch.testing.assert_close(dropped, ref(x), rtol=1e-14, atol=1e-300)


# --- seeded parity with nmn.torch 0.3.5's tied layers ----------------------------------
def _seeded(build, seed: int = 0):
    torch.manual_seed(seed)
    return build()


@pytest.mark.parametrize("positive_init", [False, True])
@pytest.mark.parametrize("weight_normalized", [False, True])
def test_seeded_dense_banks_match_nmn(positive_init, weight_normalized, bank_id):
    kw = dict(positive_init=positive_init, weight_normalized=weight_normalized)

    def build(module):
        # the second layer grows the bank before its first use, the third only slices it
        return [_dense(n, bank_id, module=module, **kw) for n in (2, 5, 3)]

    theirs, mine = _seeded(lambda: build(nmn_torch)), _seeded(lambda: build(ours))
    x = _x_dense()
    assert mine[0].weight is mine[2].weight and theirs[0].weight is theirs[2].weight
    for t, m in zip(theirs, mine):
        assert torch.equal(m.weight, t.weight) and torch.equal(m.bias, t.bias)
        assert_parity(m(x), t(x), RTOL_F64, f"tied YatNMN {_units(m)} units")
    with pytest.raises(ValueError):  # both refuse growth after use
        _dense(6, bank_id, module=nmn_torch, **kw)
    with pytest.raises(ValueError, match="used already"):
        _dense(6, bank_id, **kw)


BIASES = {
    "bias": {},
    "no_bias": {"bias": False},
    "scalar_bias": {"scalar_bias": True},
    "constant_bias": {"constant_bias": 0.5},
}


@pytest.mark.parametrize("bias", list(BIASES))
@pytest.mark.parametrize("name", CONVS)
def test_seeded_conv_banks_match_nmn(name, bias, bank_id):
    kw = BIASES[bias]

    def build(module):
        sizes = (2, 6, 4)
        return [_conv(name, n, bank_id, module=module, kernel_bank_size=6, **kw) for n in sizes]

    theirs, mine = _seeded(lambda: build(nmn_torch)), _seeded(lambda: build(ours))
    x = _x_conv(name)
    for t, m in zip(theirs, mine):
        assert m.weight is mine[0].weight and torch.equal(m.weight, t.weight)
        assert (m.bias is None) == (t.bias is None) == (bias in ("no_bias", "constant_bias"))
        if m.bias is not None:
            shape = (1,) if bias == "scalar_bias" else (_units(m),)
            assert tuple(m.bias.shape) == shape and torch.equal(m.bias, t.bias)
        assert_parity(m(x), t(x), RTOL_F64, f"tied {name} {_units(m)} filters")
        # nmn's state_dict loads strictly into ours (and back)
        m.load_state_dict(t.state_dict(), strict=True)
        t.load_state_dict(m.state_dict(), strict=True)


@pytest.mark.parametrize("name", CONVS)
def test_conv_growth_draws_torch_conv_init_where_nmn_draws_kaiming_relu(name, bank_id):
    """The one deliberate difference: nmn fills a grown conv bank's new filters with
    kaiming_uniform(relu), U(+-sqrt(6/fan_in)); ours with the Conv*d initialiser of the first
    filters, U(+-1/sqrt(fan_in)). Same draws, so the new filters differ by a factor sqrt(6)."""

    def build(module):
        return [_conv(name, n, bank_id, module=module) for n in (2, 6)]

    theirs, mine = _seeded(lambda: build(nmn_torch)), _seeded(lambda: build(ours))
    assert torch.equal(mine[0].weight[:2], theirs[0].weight[:2])
    torch.testing.assert_close(mine[0].weight[2:] * math.sqrt(6.0), theirs[0].weight[2:])
    for t, m in zip(theirs, mine):
        assert torch.equal(m.bias, t.bias)
