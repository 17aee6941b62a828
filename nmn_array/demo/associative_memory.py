"""An energy-based associative memory of handwritten digits, with a yat synapse (HAMUX).

A HAMUX network of two neuron layers: an image layer of 64 pixels and a memory layer of one neuron per stored digit (softmax
Lagrangian with inverse temperature ``beta``), joined by one hypersynapse that stores the
digits. The image layer's Lagrangian is either the identity (its activation is its state,
the layer of HAMUX's dense associative memory) or ``tanh``'s (activations bounded to the
pixel range (-1, 1)). Recall starts the image layer's activation at a corrupted digit and
the memory layer at zero,
then descends the network's energy with Euler steps of HAMUX's dynamics
``x <- x - dt * dE/dg`` (``g`` the activations). With convex Lagrangians the energy never
increases in continuous time; with a small enough ``dt`` it never increases step by step
either, which :func:`recall` records and the tests check.

Two synapses are compared on the same network:

- yat (:class:`nmn_array.frameworks.hamux.YatSynapse`): ``E = -sum_j g_mem_j yat(g_img, W)_j``;
- dense (HAMUX's ``LinearSynapse``): ``E = -g_img W g_mem``, the dot-product synapse of
  dense associative memories (modern Hopfield networks).

Pixels are scaled to [-1, 1]; a corrupted digit has a fraction of its pixels replaced by
uniform noise on [-1, 1]. A digit counts as recalled when the settled image (the image
layer's activation) is closer (Euclidean) to its original than to any other stored digit;
the mean pixel error says how far the settled images are from the originals.

Run it with ``nmn-array demo hamux`` or ``python -m nmn_array.demo.associative_memory`` (needs
``nmn-array[hamux,demo]``).

Examples
--------
>>> result = recall("yat", n_memories=20, steps=100)
>>> result.accuracy >= 0.9 and result.max_energy_increase <= 0.0 + result.tolerance
True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The settings measured in docs/hamux.md (float64, 100 digits, 30% corrupted pixels), per
#: (synapse, image layer): beta from {3, 10, 30}, yat epsilon and alpha (the width and depth
#: of each stored digit's energy well) from a small grid, chosen on an earlier draw of the
#: corruption; docs/hamux.md has the beta sweep on the draw used here.
DEFAULTS: dict[tuple[str, str], dict[str, float]] = {
    ("yat", "identity"): {"beta": 10.0, "epsilon": 16.0, "alpha": 0.75},
    ("dense", "identity"): {"beta": 30.0},
    ("yat", "tanh"): {"beta": 10.0, "epsilon": 8.0, "alpha": 0.25},
    ("dense", "tanh"): {"beta": 30.0},
}
SYNAPSES = ("yat", "dense")
IMAGE_LAYERS = ("identity", "tanh")
#: tanh's initial states: arctanh of the corrupted image, clipped so that they stay finite.
TANH_CLIP = 0.95


def digit_patterns(n: int = 100, seed: int = 0) -> np.ndarray:
    """``n`` distinct digits of scikit-learn's bundled set (offline), chosen at random with
    ``seed``, as float64 rows of 64 pixels scaled from 0..16 to [-1, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits().data
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(data), size=n, replace=False)
    return data[idx] / 8.0 - 1.0


def corrupt(patterns: np.ndarray, fraction: float = 0.3, seed: int = 1) -> np.ndarray:
    """``patterns`` with each pixel replaced, with probability ``fraction``, by uniform
    noise on [-1, 1] (the pixel range)."""
    rng = np.random.default_rng(seed)
    hit = rng.random(patterns.shape) < fraction
    return np.where(hit, rng.uniform(-1.0, 1.0, patterns.shape), patterns)


def build_ham(
    synapse: Any,
    n_memories: int,
    n_pixels: int = 64,
    beta: float = 1.0,
    image_layer: str = "identity",
) -> Any:
    """The two-layer HAMUX network ``image -- synapse -- memory``, vectorised over a batch."""
    import hamux

    neurons = {
        "image": hamux.NeuronLayer(
            hamux.lagr_identity if image_layer == "identity" else hamux.lagr_tanh,
            (n_pixels,),
        ),
        "memory": hamux.NeuronLayer(
            functools.partial(hamux.lagr_softmax, beta=beta), (n_memories,)
        ),
    }
    ham = hamux.HAM(
        neurons=neurons,
        hypersynapses={"store": synapse},
        connections=[(("image", "memory"), "store")],
    )
    return ham.vectorize()


def make_synapse(kind: str, patterns: np.ndarray, **params: float) -> Any:
    """The synapse storing ``patterns`` (``(n, d)``): ``"yat"`` or ``"dense"``."""
    import hamux
    import jax.numpy as jnp

    from nmn_array.frameworks.hamux import YatSynapse

    if kind == "yat":
        return YatSynapse.from_patterns(
            patterns, alpha=params["alpha"], epsilon=params["epsilon"], dtype=patterns.dtype
        )
    if kind == "dense":
        # HAMUX's LinearSynapse stores W as (image, memory): one pattern per column.
        return hamux.LinearSynapse(W=jnp.asarray(patterns.T))
    raise ValueError(f"synapse must be one of {SYNAPSES}, got {kind!r}")


def settle(ham: Any, image: np.ndarray, n_memories: int, *, steps: int, dt: float) -> tuple:
    """Descend ``ham``'s energy from the image layer's state at ``image`` (``(batch, d)``)
    and the memory layer at zero, with ``steps`` Euler steps of size ``dt``.

    Returns
    -------
    states : dict of arrays, the final neuron states.
    energies : ndarray, shape (steps + 1, batch), the energy of each sample before every
        step and after the last.
    """
    import jax
    import jax.numpy as jnp

    dtype = image.dtype
    xs = {
        "image": jnp.asarray(image),
        "memory": jnp.zeros((image.shape[0], n_memories), dtype=dtype),
    }

    @jax.jit
    def step(xs: dict) -> tuple:
        gs = ham.activations(xs)
        energy, grads = ham.dEdact(gs, xs, return_energy=True)
        return jax.tree.map(lambda x, g: x - dt * g, xs, grads), energy

    @jax.jit
    def energy_of(xs: dict) -> Any:
        return ham.energy(ham.activations(xs), xs)

    energies = []
    for _ in range(steps):
        xs, energy = step(xs)
        energies.append(np.asarray(energy))
    energies.append(np.asarray(energy_of(xs)))
    return xs, np.stack(energies)


@dataclass(frozen=True)
class Recall:
    """The outcome of :func:`recall` for one synapse."""

    synapse: str
    image_layer: str
    accuracy: float  # fraction of corrupted digits whose settled image is nearest its original
    corrupted_accuracy: float  # the same for the corrupted inputs themselves (no dynamics)
    pixel_error: float  # mean |settled image - original| per pixel
    corrupted_pixel_error: float  # the same for the corrupted inputs
    max_energy_increase: float  # largest E(t+1) - E(t) over steps and samples
    tolerance: float  # the float rounding allowance that increase is checked against
    energies: np.ndarray  # (steps + 1, batch)
    params: dict


def nearest_accuracy(images: np.ndarray, patterns: np.ndarray) -> float:
    """Fraction of rows ``i`` of ``images`` whose nearest row of ``patterns`` is row ``i``."""
    d = ((images[:, None, :] - patterns[None, :, :]) ** 2).sum(-1)
    return float(np.mean(d.argmin(axis=1) == np.arange(len(images))))


def recall(
    synapse: str = "yat",
    *,
    image_layer: str = "identity",
    n_memories: int = 100,
    fraction: float = 0.3,
    steps: int = 400,
    dt: float = 0.05,
    seed: int = 0,
    **params: float,
) -> Recall:
    """Store ``n_memories`` digits, corrupt ``fraction`` of the pixels of each, let the
    network settle, and measure recall.

    Everything is float64 (explicitly, whatever JAX's x64 flag says about defaults, it must
    be on): the energy check compares steps whose decrease ends near float rounding.
    ``params`` override :data:`DEFAULTS` (``beta``; for yat also ``alpha``, ``epsilon``).
    """
    import jax.numpy as jnp

    # JAX's x64 flag decides whether float64 arrays exist at all: without it they are
    # silently float32.
    if jnp.asarray(0.0).dtype != jnp.float64:
        raise RuntimeError("recall() runs in float64: set JAX_ENABLE_X64=1 (or jax_enable_x64)")
    if synapse not in SYNAPSES:
        raise ValueError(f"synapse must be one of {SYNAPSES}, got {synapse!r}")
    if image_layer not in IMAGE_LAYERS:
        raise ValueError(f"image_layer must be one of {IMAGE_LAYERS}, got {image_layer!r}")
    settings = {**DEFAULTS[synapse, image_layer], **params}
    patterns = digit_patterns(n_memories, seed)
    noisy = corrupt(patterns, fraction, seed + 1)
    syn = make_synapse(synapse, patterns, **settings)
    ham = build_ham(syn, n_memories, patterns.shape[1], settings["beta"], image_layer)
    start = (
        noisy if image_layer == "identity" else np.arctanh(np.clip(noisy, -TANH_CLIP, TANH_CLIP))
    )
    states, energies = settle(ham, start, n_memories, steps=steps, dt=dt)
    image = np.asarray(ham.activations(states)["image"])
    increase = float(np.max(np.diff(energies, axis=0)))
    # Each energy is a float64 sum of O(100) terms of magnitude up to |E|; two evaluations
    # of the same value may differ by a few ulps of |E|. 1e-12 relative is ~4500 ulps,
    # far above that rounding and far below any real increase (a too-large dt gives
    # increases of order 1 and more).
    tolerance = 1e-12 * float(np.max(np.abs(energies)) + 1.0)
    return Recall(
        synapse=synapse,
        image_layer=image_layer,
        accuracy=nearest_accuracy(image, patterns),
        corrupted_accuracy=nearest_accuracy(noisy, patterns),
        pixel_error=float(np.mean(np.abs(image - patterns))),
        corrupted_pixel_error=float(np.mean(np.abs(noisy - patterns))),
        max_energy_increase=increase,
        tolerance=tolerance,
        energies=energies,
        params=settings,
    )


def report(
    *, n_memories: int = 100, fraction: float = 0.3, steps: int = 400, seed: int = 0
) -> list[str]:
    """One line per (image layer, synapse): recall, pixel error and the energy check, with
    ``n_memories`` stored digits and ``fraction`` of their pixels corrupted; what
    ``nmn-array demo hamux`` prints."""
    lines = [
        f"{n_memories} stored digits, {fraction:.0%} of the pixels replaced by noise, "
        f"{steps} Euler steps of dt 0.05 (float64), seed {seed}"
    ]
    for layer in IMAGE_LAYERS:
        for kind in SYNAPSES:
            r = recall(kind, image_layer=layer, n_memories=n_memories, fraction=fraction,
                       steps=steps, seed=seed)  # fmt: skip
            settings = ", ".join(f"{k} {v:g}" for k, v in r.params.items())
            lines.append(
                f"{layer:>8} image, {kind:>5} synapse: recall {r.accuracy:.2f} "
                f"(corrupted inputs {r.corrupted_accuracy:.2f}), pixel error "
                f"{r.pixel_error:.3f} (corrupted {r.corrupted_pixel_error:.3f}), max energy "
                f"increase {r.max_energy_increase:.1e} (tolerance {r.tolerance:.1e}); {settings}"
            )
    return lines


def main() -> None:
    """Print :func:`report` at its defaults (the figures of docs/hamux.md)."""
    print("\n".join(report()))


if __name__ == "__main__":
    main()
