"""XOR, the first example of the Neural-Matter Network papers.

One yat neuron separates XOR; one linear neuron cannot.

With the four points ``(0,0), (0,1), (1,0), (1,1)`` and labels ``0, 1, 1, 0``, take the
neuron ``w = (1, -1)`` with no bias. Its yat score ``(x.w)^2 / (|x - w|^2 + eps)`` has a
*squared* dot product on top, so it is exactly 0 for every input orthogonal to ``w``, and
both class-0 points are: ``(0,0).w = 0`` and ``(1,1).w = 1 - 1 = 0``. The class-1 points are
not: ``(0,1).w = -1`` and ``(1,0).w = 1``; their scores are ``1/(5+eps) ~ 0.2`` and
``1/(1+eps) ~ 1``. Any threshold between 0 and 0.2 classifies all four.

A linear neuron thresholds ``x.w + b``. Class 1 needs ``w2 + b > 0`` and ``w1 + b > 0``, so
``w1 + w2 + 2b > 0``; class 0 needs ``b <= 0`` and ``w1 + w2 + b <= 0``, so
``w1 + w2 + 2b <= 0``: a contradiction. At most 3 of the 4 points are right, whatever the
training; :func:`train_linear_neuron` shows it by training one.

Examples
--------
>>> scores = yat_scores("numpy")
>>> (scores > THRESHOLD).astype(int).tolist() == XOR_Y.tolist()
True
>>> train_linear_neuron()[0] <= 0.75
True
"""

from __future__ import annotations

import numpy as np

XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0], dtype=np.int32)
#: The yat neuron: orthogonal to both class-0 points, not to the class-1 points.
NEURON = (1.0, -1.0)
#: Class 1 iff the yat score exceeds this (any value in (0, 1/(5+eps)) works).
THRESHOLD = 0.1

#: Frameworks :func:`yat_scores` can use ("numpy" calls the pure function directly).
XOR_FRAMEWORKS = ("numpy", "torch", "nnx", "linen", "keras", "tf")


def yat_scores(framework: str = "numpy", x: np.ndarray = XOR_X) -> np.ndarray:
    """The scores of one yat neuron ``w = (1, -1)`` (no bias, alpha 1, default epsilon) on
    ``x``, computed by ``framework``'s ``YatNMN`` layer with one output unit.

    The weight is written into each framework's own parameter layout (torch, linen and tf
    store neurons as rows, nnx and keras as columns), so this also checks those layouts.

    Parameters
    ----------
    framework : {"numpy", "torch", "nnx", "linen", "keras", "tf"}
    x : ndarray, shape (n, 2), float32

    Returns
    -------
    ndarray, shape (n,), float32

    Examples
    --------
    >>> [round(float(s), 3) for s in yat_scores("numpy")]
    [0.0, 0.2, 1.0, 0.0]
    """
    w_row = np.asarray([NEURON], dtype=np.float32)  # (out=1, in=2)
    if framework == "numpy":
        import nmn_array

        return np.asarray(nmn_array.yat(x, w_row))[:, 0]
    if framework == "torch":
        import torch

        from nmn_array.frameworks.torch import YatNMN as TorchYatNMN

        layer = TorchYatNMN(2, 1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w_row))
            return layer(torch.from_numpy(x)).numpy()[:, 0]
    if framework == "nnx":
        import jax.numpy as jnp
        from flax import nnx

        from nmn_array.frameworks.nnx import YatNMN as NnxYatNMN

        layer = NnxYatNMN(2, 1, use_bias=False, rngs=nnx.Rngs(0))
        layer.kernel.value = jnp.asarray(w_row.T)  # nnx: kernel (in, out)
        return np.asarray(layer(jnp.asarray(x)))[:, 0]
    if framework == "linen":
        import jax
        import jax.numpy as jnp

        from nmn_array.frameworks.linen import YatNMN as LinenYatNMN

        layer = LinenYatNMN(features=1, use_bias=False)
        params = layer.init(jax.random.key(0), jnp.asarray(x))["params"]
        params = {**params, "kernel": jnp.asarray(w_row)}  # linen: kernel (features, in)
        return np.asarray(layer.apply({"params": params}, jnp.asarray(x)))[:, 0]
    if framework == "keras":
        import keras

        from nmn_array.frameworks.keras import YatNMN as KerasYatNMN

        layer = KerasYatNMN(1, use_bias=False)
        layer.build((None, 2))
        layer.kernel.assign(w_row.T)  # keras: kernel (in, units)
        return keras.ops.convert_to_numpy(layer(x))[:, 0]
    if framework == "tf":
        import tensorflow as tf

        from nmn_array.frameworks.tf import YatNMN as TfYatNMN

        layer = TfYatNMN(1, use_bias=False)
        layer(tf.constant(x))  # builds the kernel from the input size
        layer.kernel.assign(w_row)  # tf: kernel (features, in)
        return layer(tf.constant(x)).numpy()[:, 0]
    raise ValueError(f"framework must be one of {XOR_FRAMEWORKS}, got {framework!r}")


def train_linear_neuron(
    restarts: int = 20, epochs: int = 50, seed: int = 0
) -> tuple[float, np.ndarray, float]:
    """Train a linear neuron ``[x.w + b > 0]`` on XOR and return the best ``(accuracy, w, b)``.

    The pocket perceptron (perceptron updates, keeping the best weights seen) from
    ``restarts`` random starts. A logistic regression would not do: on XOR its loss is
    minimised by ``w = 0, b = 0``, whose thresholded predictions say nothing. The accuracy
    never exceeds 0.75, since no line separates XOR (see the module docstring).

    Examples
    --------
    >>> acc, w, b = train_linear_neuron(restarts=3)
    >>> acc
    0.75
    """
    x = XOR_X.astype(np.float64)
    target = 2.0 * XOR_Y - 1.0  # perceptron targets in {-1, +1}
    rng = np.random.default_rng(seed)

    def acc_of(w: np.ndarray, b: float) -> float:
        return float(np.mean(((x @ w + b) > 0).astype(int) == XOR_Y))

    best = (-1.0, np.zeros(2), 0.0)
    for _ in range(restarts):
        w, b = rng.normal(size=2), float(rng.normal())
        for _ in range(epochs):
            for i in rng.permutation(len(x)):
                if target[i] * (x[i] @ w + b) <= 0:  # misclassified (or on the line)
                    w = w + target[i] * x[i]
                    b = b + float(target[i])
                    acc = acc_of(w, b)
                    if acc > best[0]:
                        best = (acc, w.copy(), b)
        if acc_of(w, b) > best[0]:
            best = (acc_of(w, b), w.copy(), b)
    return best


def report(framework: str = "numpy") -> str:
    """The XOR section printed by ``nmn-array xor`` and at the start of ``nmn-array demo``.

    Examples
    --------
    >>> print(report("numpy"))  # doctest: +ELLIPSIS
    XOR with one neuron (numpy)...
    """
    scores = yat_scores(framework)
    yat_pred = (scores > THRESHOLD).astype(int)
    lin_acc, w, b = train_linear_neuron()
    lin_pred = ((XOR_X.astype(np.float64) @ w + b) > 0).astype(int)
    label = "nmn_array.yat" if framework == "numpy" else f"{framework} YatNMN(2 -> 1)"
    lines = [
        f"XOR with one neuron ({framework}): yat neuron w = {NEURON}, bias 0, "
        f"class 1 iff score > {THRESHOLD}",
        "   x1  x2  label   yat score  yat  linear",
    ]
    for (x1, x2), t, s, py, pl in zip(XOR_X, XOR_Y, scores, yat_pred, lin_pred):
        lines.append(f"  {x1:3.0f} {x2:3.0f}  {t:5d}  {s:10.4g}  {py:3d}  {pl:6d}")
    yat_ok = int(np.sum(yat_pred == XOR_Y))
    lines.append(
        f"  {label}: {yat_ok}/4 correct;  best linear neuron (pocket perceptron, "
        f"20 restarts): {round(lin_acc * 4)}/4 -- no line separates XOR"
    )
    return "\n".join(lines)
