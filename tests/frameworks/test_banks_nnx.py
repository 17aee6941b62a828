"""Shared kernel banks of the NNX YatNMN and YatConv (``tie_kernel_bank``, issue 11): shared
storage, the slice, gradients adding up in the bank, growth, errors, and parity with nmn.nnx
0.3.5's tied layers seeded alike."""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation  # noqa: E402

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
N = pytest.importorskip("nmn.nnx")

from nmn_array.frameworks import nnx as M  # noqa: E402

from tests.frameworks import _banks  # noqa: E402
from tests.frameworks._parity import RTOL_F32, assert_parity  # noqa: E402

jnp = jax.numpy
F64 = jnp.float64

pytestmark = pytest.mark.skipif(
    not jax.config.jax_enable_x64, reason="float64 checks need JAX_ENABLE_X64=1 (tests/conftest)"
)

#: name: (our class, nmn's class, in_features, other positional arguments, keyword
#: arguments, input shape); out_features is given per test.
LAYERS = {
    "dense": (M.YatNMN, N.YatNMN, 4, (), {}, (3, 4)),
    "conv": (M.YatConv, N.YatConv, 3, ((3, 3),), {"padding": "VALID"}, (2, 5, 5, 3)),
}


# ours and nmn's class-level registries
_fresh_banks = _banks.fresh_banks(M._BANKS, N.YatNMN._KERNEL_BANKS, N.YatConv._KERNEL_BANKS)


def _layer(name, units, cls=0, seed=0, **kwargs):
    ours, ref, in_features, args, base, _ = LAYERS[name]
    return (ours, ref)[cls](
        in_features,
        units,
        *args,
        rngs=nnx.Rngs(seed),
        **{**base, "tie_kernel_bank": True, **kwargs},
    )


def _x(name, seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), LAYERS[name][5], dtype)


class _Pair(nnx.Module):
    """Two layers in one model, as a user ties them."""

    def __init__(self, a, b):
        self.a, self.b = a, b


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_tied_layers_share_one_variable(name):
    a = _layer(name, 5, kernel_bank_size=6)
    b = _layer(name, 3, seed=1)
    assert a.kernel is b.kernel and a.kernel[...].shape[-1] == 6
    x = _x(name)
    before = b(x)
    a.kernel[...] = a.kernel[...] * 2.0  # an in-place change through one layer ...
    np.testing.assert_array_equal(np.asarray(b.kernel[...]), np.asarray(a.kernel[...]))
    assert not np.allclose(np.asarray(b(x)), np.asarray(before))  # ... the other one sees
    # the model holds the bank once
    state = nnx.state(_Pair(a, b), nnx.Param)
    assert "kernel" in state["a"] and "kernel" not in state["b"]


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("options", [{}, {"use_bias": False, "weight_normalized": True}])
def test_tied_layer_equals_untied_layer_with_the_bank_slice(name, options):
    kwargs = {"param_dtype": F64, **options}
    _layer(name, 6, **kwargs)  # the bank's first user, larger than the layer below
    tied = _layer(name, 4, seed=3, **kwargs)
    untied = _layer(name, 4, seed=3, **{**kwargs, "tie_kernel_bank": False})
    untied.kernel[...] = tied.kernel[...][..., :4]
    for var in ("bias", "alpha"):
        if getattr(tied, var) is not None:
            getattr(untied, var)[...] = getattr(tied, var)[...]
    x = _x(name, dtype=F64)
    np.testing.assert_array_equal(np.asarray(tied(x)), np.asarray(untied(x)))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradients_of_both_users_add_up_in_the_bank(name):
    model = _Pair(_layer(name, 5, param_dtype=F64), _layer(name, 3, seed=1, param_dtype=F64))
    x = _x(name, dtype=F64)

    def grad(use_a, use_b):
        def loss(m):
            return use_a * jnp.sum(m.a(x) ** 2) + use_b * jnp.sum(m.b(x) ** 2)

        return nnx.grad(loss)(model)["a"]["kernel"][...]

    both, only_a, only_b = grad(1.0, 1.0), grad(1.0, 0.0), grad(0.0, 1.0)
    assert float(jnp.abs(only_b[..., :3]).max()) > 0  # b's gradient reaches the bank ...
    np.testing.assert_array_equal(np.asarray(only_b[..., 3:]), 0.0)  # ... its units only
    np.testing.assert_allclose(np.asarray(both), np.asarray(only_a + only_b), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_growth_before_use_keeps_the_old_units(name):
    a = _layer(name, 3)
    old = np.asarray(a.kernel[...])
    b = _layer(name, 5, seed=1)
    assert b.kernel is a.kernel and a.kernel[...].shape[-1] == 5
    np.testing.assert_array_equal(np.asarray(a.kernel[...])[..., :3], old)
    assert not np.allclose(np.asarray(a.kernel[...])[..., 3:], 0.0)  # new units drawn
    assert a(_x(name)).shape[-1] == 3 and b(_x(name)).shape[-1] == 5


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_growth_after_use_raises(name):
    a = _layer(name, 3)
    nnx.jit(lambda m, x: m(x))(a, _x(name))  # a compiled step fixes the bank's shape
    with pytest.raises(ValueError, match=r"has 3 units and cannot grow to 5 \(it was used"):
        _layer(name, 5, seed=1)
    assert a.kernel[...].shape[-1] == 3  # unchanged
    assert _layer(name, 2, seed=1).kernel is a.kernel  # a smaller layer still attaches


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bank_size_smaller_than_the_units_raises(name):
    with pytest.raises(ValueError, match=r"kernel_bank_size \(2\) must be at least the units"):
        _layer(name, 3, kernel_bank_size=2)


def test_lazy_kernel_with_a_bank_raises():
    for flag in ("lazy", "freeze_kernel"):
        with pytest.raises(ValueError, match="cannot be used with tie_kernel_bank"):
            _layer("dense", 3, **{flag: True})


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_that_differ_get_their_own_banks(name):
    a = _layer(name, 3)
    others = [
        _layer(name, 3, kernel_bank_id="other"),
        _layer(name, 3, param_dtype=F64),
        _layer(name, 3, positive_init=True),
        _layer(name, 3, kernel_init=jax.nn.initializers.lecun_normal()),
    ]
    ours, _, in_features, args, base, _ = LAYERS[name]
    others.append(ours(in_features + 1, 3, *args, tie_kernel_bank=True, rngs=nnx.Rngs(0)))
    assert all(o.kernel is not a.kernel for o in others)
    assert len({id(o.kernel) for o in others}) == len(others)
    assert _layer(name, 2).kernel is a.kernel  # and a matching one shares


# --------------------------------------------------------------------------------------
# Parity with nmn.nnx 0.3.5 (its tied layers draw the bank with the first layer's
# rngs.params and new units with the growing layer's, as ours)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("dropconnect", [False, True])
def test_seeded_parity_with_nmn_tied_layers(name, dropconnect):
    extra = {"use_dropconnect": True, "drop_rate": 0.5} if dropconnect else {}
    # first layer with a bank size, a smaller one, then one that grows the bank before use
    plan = [(4, 0, {"kernel_bank_size": 5}), (2, 1, {}), (7, 2, {"positive_init": False})]
    layers = [
        [_layer(name, units, cls, seed, **{**kw, **extra}) for units, seed, kw in plan]
        for cls in (0, 1)
    ]
    ours, ref = layers
    assert ours[0].kernel is ours[2].kernel and ref[0].kernel is ref[2].kernel
    np.testing.assert_array_equal(np.asarray(ours[0].kernel[...]), np.asarray(ref[0].kernel[...]))
    x = _x(name)
    for i, (o, r) in enumerate(zip(ours, ref, strict=True)):
        np.testing.assert_array_equal(np.asarray(o.bias[...]), np.asarray(r.bias[...]))
        assert_parity(o(x), r(x), RTOL_F32, f"{name} tied layer {i}")
        if dropconnect:  # the same draws, and eval mode without them
            assert_parity(
                o(x, deterministic=True), r(x, deterministic=True), RTOL_F32, f"{name} eval {i}"
            )
