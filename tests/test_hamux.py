"""Yat hypersynapses in HAMUX energy networks (issue 17).

The synapses' energies against a direct float64 reference, their use inside ``hamux.HAM``
(gradients, jit, vectorised batches), and the digits associative memory of
:mod:`nmn_array.demo.associative_memory`: its energy never increases along the descent and
it restores corrupted digits; the recall of the yat and the dense (dot-product) synapse is
printed (``pytest -s``) and compared.

HAMUX and Equinox are required here (the ``hamux`` extra, pinned in requirements/ci.txt):
a missing one is an import error, not a skip. Runs in float64 (CI sets JAX_ENABLE_X64=1).
"""

from __future__ import annotations

import doctest
import functools

import equinox as eqx
import hamux
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nmn_array.frameworks import hamux as yat_hamux
from nmn_array.frameworks.hamux import YatConvSynapse, YatSynapse

import nmn_array
from nmn_array.demo import associative_memory as am


@pytest.fixture(autouse=True)
def _float64() -> None:
    # An error, not a skip: without x64, jnp.asarray turns the float64 references' inputs
    # into float32 and every tolerance below would be wrong.
    if jnp.asarray(0.0).dtype != jnp.float64:
        pytest.fail("tests/test_hamux.py runs in float64: set JAX_ENABLE_X64=1 (as CI does)")


# float64 throughout: the yat product against a direct reference agrees to rounding, which
# for these sizes (d <= 64, values O(1)) is far below 1e-10 relative.
RTOL = 1e-10


def _direct_yat(x: np.ndarray, w: np.ndarray, b, alpha: float, eps: float) -> np.ndarray:
    """Reference yat in float64 with the distance taken directly, ``|x - w|^2``."""
    dot = x @ w.T + (0.0 if b is None else b)
    dist = ((x[..., None, :] - w) ** 2).sum(-1)
    return alpha * dot**2 / (dist + eps)


def test_yat_synapse_energy_matches_direct_reference() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(7, 5)), rng.normal(size=7)
    g1, g2 = rng.normal(size=5), rng.random(7)
    syn = YatSynapse(W=jnp.asarray(w), bias=jnp.asarray(b), alpha=1.7, epsilon=0.3)
    want = -np.sum(g2 * _direct_yat(g1, w, b, 1.7, 0.3))
    got = float(syn(jnp.asarray(g1), jnp.asarray(g2)))
    assert got == pytest.approx(want, rel=RTOL)
    # the same energy is one call of the pure function: nothing else in the module
    pure = -jnp.sum(
        jnp.asarray(g2) * nmn_array.yat(jnp.asarray(g1), syn.W, syn.bias, alpha=1.7, epsilon=0.3)
    )
    assert got == pytest.approx(float(pure), rel=RTOL)


def test_yat_synapse_in_ham_gradient_jit_and_batch() -> None:
    """HAM's dE/dg through the yat synapse equals the gradient of the reference energy,
    eagerly, under jit, and per sample of a vectorised batch."""
    rng = np.random.default_rng(1)
    d, n, batch = 6, 4, 3
    w = rng.normal(size=(n, d))
    syn = YatSynapse(W=jnp.asarray(w), alpha=0.5, epsilon=0.2)
    neurons = {
        "a": hamux.NeuronLayer(hamux.lagr_identity, (d,)),
        "b": hamux.NeuronLayer(functools.partial(hamux.lagr_softmax, beta=2.0), (n,)),
    }
    ham = hamux.HAM(neurons=neurons, hypersynapses={"s": syn}, connections=[(("a", "b"), "s")])
    xs = {"a": jnp.asarray(rng.normal(size=d)), "b": jnp.asarray(rng.normal(size=n))}
    gs = ham.activations(xs)

    def reference_energy(ga, gb):
        dot = ga @ w.T
        dist = jnp.sum((ga[None, :] - w) ** 2, axis=-1)
        return -jnp.sum(gb * 0.5 * dot**2 / (dist + 0.2))

    want = jax.grad(reference_energy, argnums=(0, 1))(gs["a"], gs["b"])
    got = ham.dEdact(gs, xs)
    got_jit = eqx.filter_jit(lambda h, g, x: h.dEdact(g, x))(ham, gs, xs)
    for grads in (got, got_jit):
        # the neuron energies add x (the Legendre term) to dE/dg; the synapse adds the rest
        np.testing.assert_allclose(grads["a"] - xs["a"], want[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads["b"] - xs["b"], want[1], rtol=1e-9, atol=1e-12)

    # jitted: eager JAX compiles every small op on first use, seconds on a loaded CI runner
    @eqx.filter_jit
    def total_energy(h, x):
        return h.energy(h.activations(x), x)

    xb = {
        "a": jnp.asarray(rng.normal(size=(batch, d))),
        "b": jnp.asarray(rng.normal(size=(batch, n))),
    }
    energies = total_energy(ham.vectorize(), xb)
    assert energies.shape == (batch,)
    for i in range(batch):
        xi = {k: v[i] for k, v in xb.items()}
        assert float(energies[i]) == pytest.approx(float(total_energy(ham, xi)), rel=RTOL)


def _direct_conv_yat(img: np.ndarray, w: np.ndarray, alpha: float, eps: float) -> np.ndarray:
    """Reference 'same'-padded (odd kernel), stride-1 yat convolution of one channels-last
    image ``(H, W, C)`` with filters ``(O, C, k, k)``, by loops over patches."""
    h, wd, _ = img.shape
    k = w.shape[-1]
    p = k // 2
    padded = np.pad(img, ((p, p), (p, p), (0, 0)))
    out = np.empty((h, wd, w.shape[0]))
    for i in range(h):
        for j in range(wd):
            patch = padded[i : i + k, j : j + k, :].transpose(2, 0, 1)  # (C, k, k)
            for o in range(w.shape[0]):
                dot = np.sum(patch * w[o])
                out[i, j, o] = alpha * dot**2 / (np.sum((patch - w[o]) ** 2) + eps)
    return out


def test_yat_conv_synapse_energy_and_descent() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 2, 3, 3))
    g1, g2 = rng.normal(size=(5, 5, 2)), rng.random((5, 5, 3))
    syn = YatConvSynapse(W=jnp.asarray(w), alpha=0.1, epsilon=1.0, padding="same")
    want = -np.sum(g2 * _direct_conv_yat(g1, w, 0.1, 1.0))
    assert float(syn(jnp.asarray(g1), jnp.asarray(g2))) == pytest.approx(want, rel=RTOL)

    # In a HAM (image -- conv synapse -- feature map), Euler descent lowers the energy.
    neurons = {
        "img": hamux.NeuronLayer(hamux.lagr_identity, (5, 5, 2)),
        "feat": hamux.NeuronLayer(hamux.lagr_sigmoid, (5, 5, 3)),
    }
    ham = hamux.HAM(neurons=neurons, hypersynapses={"c": syn}, connections=[(("img", "feat"), "c")])
    ham = ham.vectorize()
    xs = {"img": jnp.asarray(rng.normal(size=(2, 5, 5, 2))), "feat": jnp.zeros((2, 5, 5, 3))}

    @jax.jit
    def step(xs):
        energy, grads = ham.dEdact(ham.activations(xs), xs, return_energy=True)
        return jax.tree.map(lambda x, g: x - 0.05 * g, xs, grads), energy

    trace = []
    for _ in range(30):
        xs, energy = step(xs)
        trace.append(np.asarray(energy))
    energies = np.stack(trace)
    assert np.all(np.isfinite(energies))
    # float64 rounding of O(10) energies is ~1e-14; allow 1e-10 relative
    assert np.all(np.diff(energies, axis=0) <= 1e-10 * (np.abs(energies[:-1]) + 1.0))
    assert np.all(energies[-1] < energies[0])  # and it does move


CONFIGS = [(kind, layer) for layer in am.IMAGE_LAYERS for kind in am.SYNAPSES]


@pytest.fixture(scope="module")
def recalls() -> dict[tuple[str, str], am.Recall]:
    """One settle per (synapse, image layer) on 100 stored digits at 30% corrupted pixels
    (a few seconds each)."""
    return {
        (kind, layer): am.recall(kind, image_layer=layer, n_memories=100, fraction=0.3)
        for kind, layer in CONFIGS
    }


@pytest.mark.parametrize("config", CONFIGS, ids=["-".join(c) for c in CONFIGS])
def test_digits_energy_never_increases(recalls, config) -> None:
    r = recalls[config]
    steps = np.diff(r.energies, axis=0)  # (steps, batch): every step of every digit
    # r.tolerance = 1e-12 * (max |E| + 1): float64 rounding of the energy sum, see recall()
    assert steps.max() <= r.tolerance, (config, steps.max(), r.tolerance)
    assert np.all(r.energies[-1] < r.energies[0] - 1.0)  # each digit's energy really fell


def test_energy_check_catches_a_too_large_step() -> None:
    """The monotonicity check is not vacuous: Euler steps far beyond the stable size make
    the yat network's energy rise."""
    r = am.recall("yat", n_memories=20, steps=20, dt=1.5)
    assert r.max_energy_increase > 1e3 * r.tolerance


def test_digits_restored_yat_vs_dense(recalls) -> None:
    print("\nrecall at 30% corrupted pixels, 100 stored digits:")
    for (kind, layer), r in recalls.items():
        print(
            f"  {layer:>8} image, {kind:>5} synapse: recall {r.accuracy:.2f} "
            f"(corrupted inputs by nearest neighbour {r.corrupted_accuracy:.2f}), mean pixel "
            f"error {r.pixel_error:.3f} (corrupted {r.corrupted_pixel_error:.3f})"
        )
    # Measured (docs/hamux.md): identity image layer yat 0.94, dense 0.86; tanh image layer
    # yat 0.95, dense 0.86. The bounds leave a few digits' margin.
    for layer in am.IMAGE_LAYERS:
        yat, dense = recalls["yat", layer], recalls["dense", layer]
        assert yat.accuracy >= 0.9, layer
        assert dense.accuracy >= 0.8, layer
        assert yat.accuracy > dense.accuracy, layer
        # restoring: the settled images are closer to the originals than the inputs were
        assert yat.pixel_error < yat.corrupted_pixel_error, layer
        assert dense.pixel_error < dense.corrupted_pixel_error, layer
    # With pixels bounded to (-1, 1) the yat memory restores the digits almost exactly
    # (measured 0.029 mean error per pixel, from 0.256); the dense one stops at 0.185.
    assert recalls["yat", "tanh"].pixel_error < 0.06
    assert recalls["yat", "tanh"].pixel_error < recalls["dense", "tanh"].pixel_error


@pytest.mark.parametrize("module", [yat_hamux, am], ids=["frameworks.hamux", "demo"])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_demo_command_prints_every_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    """``nmn-array demo hamux`` prints one line per (image layer, synapse) with the figures
    of :func:`nmn_array.demo.associative_memory.recall` at the same settings, and refuses
    bad sizes and digits-demo options in one line with exit code 2."""
    from nmn_array.cli import main

    assert main(["demo", "hamux", "--memories", "12", "--steps", "60", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("12 stored digits, 30% of the pixels")
    assert len(lines) == 1 + len(am.IMAGE_LAYERS) * len(am.SYNAPSES)
    r = am.recall("yat", image_layer="tanh", n_memories=12, steps=60, seed=3)
    yat_tanh = next(line for line in lines if "tanh image,   yat synapse" in line)
    assert f"recall {r.accuracy:.2f} (corrupted inputs {r.corrupted_accuracy:.2f})" in yat_tanh
    assert f"pixel error {r.pixel_error:.3f}" in yat_tanh
    for argv, message in [
        (["demo", "hamux", "--memories", "1"], "--memories must be between 2 and 1797"),
        (["demo", "--quick", "hamux"], "options before 'hamux' belong to the digits demo"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
