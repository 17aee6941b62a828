"""Yat hypersynapses for HAMUX energy networks (hypergraph associative memories).

A HAMUX hypersynapse is an Equinox module whose ``__call__(*activations)`` returns a scalar
energy; :class:`hamux.HAM` adds the energies of all its hypersynapses to its neurons'
(Legendre) energies and descends the total. The modules here hold a yat layer's parameters
and return minus the yat response of the first layer's activations, weighted by the second
layer's activations: the energy is low where the image is close to (and aligned with) a
stored pattern that the memory layer has selected. The yat arithmetic is one call of
:func:`nmn_array.yat` or :func:`nmn_array.yat_conv`; nothing is computed here.

They import Equinox only (install ``nmn-array[hamux]`` to get HAMUX itself, which builds the
network, and its undeclared dependency fastcore).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

import nmn_array

__all__ = ["YatConvSynapse", "YatSynapse"]


class YatSynapse(eqx.Module):
    """A dense yat hypersynapse between two HAMUX neuron layers.

    ``E(g1, g2) = -sum_j g2_j * yat(g1, W)_j`` with
    ``yat(g1, W)_j = alpha (g1.W_j + bias_j)^2 / (max(|g1 - W_j|^2, 0) + epsilon)``,
    the yat product of :func:`nmn_array.yat`. ``g1`` (shape ``(d,)``) is the activation of
    the first layer of the connection (e.g. an image), ``g2`` (shape ``(n,)``) that of the
    second (e.g. a memory layer with a softmax Lagrangian); ``W`` holds one pattern per row.
    It is a drop-in for HAMUX's ``LinearSynapse`` (whose energy is ``-g1 W g2`` with
    ``W`` of shape ``(d, n)``): use it in ``hamux.HAM(..., hypersynapses={...})`` unchanged,
    and ``ham.vectorize()`` maps it over a batch.

    Parameters
    ----------
    W : jax.Array, shape (n, d)
        The neurons (stored patterns), one per row.
    bias : jax.Array of shape (n,), float or None
        Added to the dot product inside the square.
    alpha : float or jax.Array of shape ()
        Multiplies the yat response (and so the synapse's share of the energy).
    epsilon : float or jax.Array of shape ()
        Added to the squared distance; it bounds the depth of the energy well at a stored
        pattern, ``-alpha |W_j|^4 / epsilon``, and so how steep the descent is near it.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from nmn_array.frameworks.hamux import YatSynapse
    >>> syn = YatSynapse(W=jnp.array([[1.0, 0.0], [0.0, 1.0]]), epsilon=1.0)
    >>> float(syn(jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0])))  # -(1*1)^2 / (0 + 1)
    -1.0
    >>> float(syn(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])))  # orthogonal pattern: 0
    -0.0
    """

    W: jax.Array
    bias: jax.Array | float | None = None
    alpha: jax.Array | float = 1.0
    epsilon: jax.Array | float = 1e-5

    def yat(self, g1: jax.Array) -> jax.Array:
        """The yat response ``yat(g1, W)`` of shape ``(..., n)``: what the second layer sees."""
        return nmn_array.yat(g1, self.W, self.bias, alpha=self.alpha, epsilon=self.epsilon)

    def __call__(self, g1: jax.Array, g2: jax.Array) -> jax.Array:
        """The interaction energy of activations ``g1`` ``(..., d)`` and ``g2`` ``(..., n)``:
        a scalar (summed over any leading axes, as HAMUX sums every energy it is given)."""
        return -jnp.sum(g2 * self.yat(g1))

    @classmethod
    def from_patterns(
        cls,
        patterns: Any,
        *,
        bias: Any = None,
        alpha: float = 1.0,
        epsilon: float = 1e-5,
        dtype: Any = None,
    ) -> YatSynapse:
        """A synapse that stores ``patterns`` (shape ``(n, d)``, one per row) as its ``W``.

        >>> import numpy as np
        >>> YatSynapse.from_patterns(np.eye(3), dtype="float32").W.shape
        (3, 3)
        """
        return cls(W=jnp.asarray(patterns, dtype=dtype), bias=bias, alpha=alpha, epsilon=epsilon)


class YatConvSynapse(eqx.Module):
    """A convolutional yat hypersynapse between two HAMUX neuron layers of images.

    ``E(g1, g2) = -sum g2 * yat_conv(g1, W)``: every patch of ``g1`` (an image of shape
    ``(H, W, C_in)``, HAMUX's channels-last layout without a batch axis, as its
    ``ConvSynapse``) against every filter, weighted by ``g2`` of shape
    ``(H', W', C_out)``, the output shape of :func:`nmn_array.yat_conv` with these
    ``stride`` and ``padding``. ``ham.vectorize()`` maps it over a batch.

    Parameters
    ----------
    W : jax.Array, shape (C_out, C_in, kh, kw)
        The filters, in :func:`nmn_array.yat_conv`'s (and HAMUX's ``ConvSynapse``'s) layout.
    bias : jax.Array of shape (C_out,), float or None
    stride : int or tuple of 2 ints
    padding : int, tuple or str
        Any padding :func:`nmn_array.yat_conv` accepts (``"same"``, ``"valid"``, ints).
    alpha, epsilon : float or jax.Array of shape ()

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from nmn_array.frameworks.hamux import YatConvSynapse
    >>> syn = YatConvSynapse(W=jnp.ones((2, 1, 3, 3)), padding="same", epsilon=1.0)
    >>> g1, g2 = jnp.ones((4, 4, 1)), jnp.ones((4, 4, 2))
    >>> syn.response(g1).shape
    (4, 4, 2)
    >>> bool(syn(g1, g2) < 0)
    True
    """

    W: jax.Array
    bias: jax.Array | float | None = None
    alpha: jax.Array | float = 1.0
    epsilon: jax.Array | float = 1e-5
    stride: int | tuple[int, ...] = eqx.field(static=True, default=1)
    padding: Any = eqx.field(static=True, default="same")

    def response(self, g1: jax.Array) -> jax.Array:
        """``yat_conv(g1, W)`` for one image ``g1`` ``(H, W, C_in)``: shape ``(H', W', C_out)``."""
        y = nmn_array.yat_conv(
            g1[None],
            self.W,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            data_format="channels_last",
            alpha=self.alpha,
            epsilon=self.epsilon,
        )
        return y[0]

    def __call__(self, g1: jax.Array, g2: jax.Array) -> jax.Array:
        """The interaction energy (a scalar) of one image ``g1`` and feature map ``g2``."""
        return -jnp.sum(g2 * self.response(g1))
