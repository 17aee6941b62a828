"""Random feature maps whose inner products estimate the spherical yat kernel.

On unit vectors ``q``, ``k`` with ``s = q . k`` the spherical yat score is the kernel

    kappa(s) = (s + b)^2 / (C - 2 s),    C = 2 + epsilon,

and a feature map ``phi`` with ``phi(q) . phi(k) ~= kappa(s)`` turns attention into two
matrix products (:func:`nmn_array.linear_attention.yat_linear_attention`). Three maps, as nmn 0.3.5 defines
them (formulas in ``docs/linear_attention.md``):

``slay``
    Spherical yat-performer: squared anchor projections times positive random features of
    ``exp(2 s_r s)`` at Gauss-Laguerre nodes ``s_r``. Positive; no bias ``b``.
``maclaurin`` (MAY)
    Random Maclaurin features: products of ``N_r`` Rademacher projections, the degree
    ``N_r`` drawn in proportion to the Maclaurin coefficients of ``kappa``. Unbiased for
    ``kappa`` truncated at degree ``nmax``; sign-indefinite.
``radial`` (RAY)
    A degree-2 sketch of ``(s + b)^2`` times random Fourier features of ``1/(C - 2 s)``
    (Gauss-Laguerre over ``t`` in ``exp(-t (epsilon + |z - z'|^2))``); sign-indefinite.

Each map has a projection builder that draws its random arrays once, from a NumPy
``Generator`` (or an int seed), and returns them as a ``dict`` of NumPy arrays with nmn's
key names. Modules store them as non-trainable state, so a checkpoint fixes them; the
feature functions accept the arrays of any library (or NumPy arrays, converted once).
"""

from __future__ import annotations

import math
from typing import Any

from nmn_array import _validation as _v
from nmn_array._namespace import array_namespace, clip, device_kw, float32_under_autocast

__all__ = [
    "maclaurin_coefficients",
    "maclaurin_features",
    "maclaurin_projection",
    "radial_features",
    "radial_projection",
    "slay_features",
    "slay_projection",
]

#: nmn's clip of the positive random features' exponent (keeps exp finite in float32).
PRF_CLIP = 20.0


def _generator(rng: Any) -> Any:
    import numpy as np

    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, int) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {rng!r}")


def slay_projection(
    head_dim: int,
    *,
    num_anchor_features: int = 16,
    num_prf_features: int = 8,
    num_quad_nodes: int = 1,
    epsilon: float = 1e-5,
    rng: Any = None,
) -> dict[str, Any]:
    """Draw the random arrays of the SLAY feature map (:func:`slay_features`).

    Parameters
    ----------
    head_dim : int
        The dimension ``d`` of the vectors the map is applied to.
    num_anchor_features, num_prf_features, num_quad_nodes : int
        ``P`` anchors on the unit sphere, ``M`` positive random features per node, ``R``
        Gauss-Laguerre nodes (nmn's names and defaults); ``R * P * M`` features in all.
    epsilon : float
        The kernel's ``C = 2 + epsilon``.
    rng : numpy.random.Generator, int or None

    Returns
    -------
    dict
        ``"anchors"`` (P, d), ``"projections"`` (R, M, d), ``"quad_nodes"`` (R,) and
        ``"quad_weights"`` (R,): float64 NumPy arrays.

    Examples
    --------
    >>> from nmn_array.random_features import slay_projection
    >>> {k: v.shape for k, v in slay_projection(8, rng=0).items()}
    {'anchors': (16, 8), 'projections': (1, 8, 8), 'quad_nodes': (1,), 'quad_weights': (1,)}
    """
    import numpy as np

    d = _v.check_positive_int(head_dim, "head_dim")
    p = _v.check_positive_int(num_anchor_features, "num_anchor_features")
    m = _v.check_positive_int(num_prf_features, "num_prf_features")
    r = _v.check_positive_int(num_quad_nodes, "num_quad_nodes")
    c = 2.0 + _v.check_positive(epsilon, "epsilon")
    gen = _generator(rng)
    nodes, weights = np.polynomial.laguerre.laggauss(r)
    anchors = gen.standard_normal((p, d))
    anchors = anchors / (np.linalg.norm(anchors, axis=-1, keepdims=True) + 1e-8)
    return {
        "anchors": anchors,
        "projections": gen.standard_normal((r, m, d)),
        "quad_nodes": nodes / c,
        "quad_weights": weights / c,
    }


def maclaurin_coefficients(bias: float, epsilon: float, nmax: int) -> Any:
    """Maclaurin coefficients ``a_0..a_nmax`` of ``kappa(s) = (s + b)^2 / (C - 2 s)``.

    ``a_n = beta_(n-2) + 2 b beta_(n-1) + b^2 beta_n`` with ``beta_n = (2/C)^n / C``; all are
    >= 0 for ``b >= 0``.

    Examples
    --------
    >>> from nmn_array.random_features import maclaurin_coefficients
    >>> maclaurin_coefficients(0.0, 2.0, 3).tolist()  # C = 4: s^2/(4 - 2s) = s^2/4 + s^3/8..
    [0.0, 0.0, 0.25, 0.125]
    """
    import numpy as np

    b = _v.check_nonnegative(bias, "bias")
    c = 2.0 + _v.check_positive(epsilon, "epsilon")
    n = _v.check_positive_int(nmax, "nmax")
    beta = (2.0 / c) ** np.arange(n + 1) / c
    a = b * b * beta
    a[1:] += 2.0 * b * beta[:-1]
    a[2:] += beta[:-2]
    return a


def maclaurin_projection(
    head_dim: int,
    *,
    num_features: int = 256,
    bias: float = 1.0,
    epsilon: float = 1e-5,
    nmax: int = 40,
    rng: Any = None,
) -> dict[str, Any]:
    """Draw the random arrays of the MAY feature map (:func:`maclaurin_features`).

    Parameters
    ----------
    head_dim : int
    num_features : int
        ``M``, the number of features (nmn's ``performer_num_features``).
    bias : float >= 0
        The kernel's ``b``.
    epsilon : float > 0
        The kernel's ``C = 2 + epsilon``.
    nmax : int
        The truncation degree of the Maclaurin series.
    rng : numpy.random.Generator, int or None

    Returns
    -------
    dict
        ``"omegas"`` (M, nmax, d) Rademacher signs, ``"degrees"`` (M,) int64 with
        ``P(N_r = n) = a_n / Z``, and ``"Z"`` () the sum of the coefficients.

    Examples
    --------
    >>> from nmn_array.random_features import maclaurin_projection
    >>> p = maclaurin_projection(4, num_features=3, nmax=5, rng=0)
    >>> p["omegas"].shape, p["degrees"].shape, p["Z"].shape
    ((3, 5, 4), (3,), ())
    """
    import numpy as np

    d = _v.check_positive_int(head_dim, "head_dim")
    m = _v.check_positive_int(num_features, "num_features")
    a = maclaurin_coefficients(bias, epsilon, nmax)
    gen = _generator(rng)
    z = a.sum()
    degrees = gen.choice(a.size, size=m, p=a / z).astype(np.int64)
    omegas = np.where(gen.random((m, a.size - 1, d)) < 0.5, 1.0, -1.0)
    return {"omegas": omegas, "degrees": degrees, "Z": np.asarray(z)}


def radial_projection(
    head_dim: int,
    *,
    sketch_m: int = 128,
    num_radial: int = 8,
    radial_dim: int = 64,
    bias: float = 1.0,
    epsilon: float = 1e-5,
    rng: Any = None,
) -> dict[str, Any]:
    """Draw the random arrays of the RAY feature map (:func:`radial_features`).

    Parameters
    ----------
    head_dim : int
    sketch_m : int
        ``m`` rows of each of the two Gaussian sketches of ``(s + b)^2``.
    num_radial, radial_dim : int
        ``J`` Gauss-Laguerre nodes, ``D`` random Fourier features per node;
        ``m * J * D`` features in all.
    bias : float >= 0
    epsilon : float > 0
    rng : numpy.random.Generator, int or None

    Returns
    -------
    dict
        ``"W1"``, ``"W2"`` (m, d + 1), ``"omegas"`` (J, D, d + 1) with node ``j``'s rows
        drawn from ``N(0, 2 t_j)``, ``"phases"`` (J, D) uniform on ``[0, 2 pi)``,
        ``"coef"`` (J,) the quadrature weights and ``"bias"`` ().

    Examples
    --------
    >>> from nmn_array.random_features import radial_projection
    >>> p = radial_projection(4, sketch_m=2, num_radial=3, radial_dim=5, rng=0)
    >>> p["W1"].shape, p["omegas"].shape, p["phases"].shape, p["coef"].shape
    ((2, 5), (3, 5, 5), (3, 5), (3,))
    """
    import numpy as np

    d = _v.check_positive_int(head_dim, "head_dim") + 1
    m = _v.check_positive_int(sketch_m, "sketch_m")
    j = _v.check_positive_int(num_radial, "num_radial")
    dim = _v.check_positive_int(radial_dim, "radial_dim")
    b = _v.check_nonnegative(bias, "bias")
    eps = _v.check_positive(epsilon, "epsilon")
    gen = _generator(rng)
    tau, weights = np.polynomial.laguerre.laggauss(j)
    t = tau / eps
    return {
        "W1": gen.standard_normal((m, d)),
        "W2": gen.standard_normal((m, d)),
        "omegas": gen.standard_normal((j, dim, d)) * np.sqrt(2.0 * t)[:, None, None],
        "phases": gen.uniform(0.0, 2.0 * np.pi, (j, dim)),
        "coef": weights / eps,
        "bias": np.asarray(b),
    }


#: The arrays of each feature map's projection (nmn's key names), in the order modules
#: store them.
PROJECTION_KEYS = {
    "slay": ("anchors", "projections", "quad_nodes", "quad_weights"),
    "maclaurin": ("omegas", "degrees", "Z"),
    "radial": ("W1", "W2", "omegas", "phases", "coef", "bias"),
}


def _prepare(x: Any, projection: Any, kind: str, normalize: bool, epsilon: Any):
    """Namespace, compute-dtype ``x`` (unit rows if ``normalize``) and the projection's
    arrays in that namespace, dtype and device (integer ``degrees`` kept integral)."""
    if not hasattr(projection, "keys"):
        raise TypeError(f"projection must be a dict of arrays, got {type(projection).__name__}")
    missing = [k for k in PROJECTION_KEYS[kind] if k not in projection]
    if missing:
        raise ValueError(
            f"projection is not a {kind} projection: it lacks {missing} "
            f"(it has {sorted(projection)})"
        )
    _v.check_bool(normalize, "normalize")
    epsilon = _v.plain(epsilon)
    _v.check_known_sizes(x=x)
    xp = array_namespace(x)
    dtype = _v.compute_dtype(xp, x, "x")
    _v.check_epsilon(epsilon, xp, dtype)
    xc = _v.as_compute(xp, x, dtype)
    if normalize:
        xc = xc / xp.sqrt(xp.sum(xc * xc, axis=-1, keepdims=True) + epsilon)
    # Static leading axes fold into one, so each product is one 2-D matmul (NumPy runs a
    # batched matmul as a loop of small ones); _unflatten restores them.
    lead = _v.shape_of(xc)[:-1]
    sizes = [n for n in lead if isinstance(n, int)]
    if len(lead) != 1 and len(sizes) == len(lead):
        xc = xp.reshape(xc, (math.prod(sizes), xc.shape[-1]))
    dev = device_kw(xp, x)
    arrays = {}
    for key in PROJECTION_KEYS[kind]:
        value = projection[key]
        if key == "degrees":
            arrays[key] = xp.asarray(value, **dev)
        elif hasattr(value, "dtype") and _v.is_low_precision(xp, value.dtype):
            # a float16 projection being trained: its gradient saturates at float16's range
            # on the way back, like x's, instead of overflowing to inf
            arrays[key] = _v.as_compute(xp, xp.asarray(value, **dev), dtype)
        else:
            arrays[key] = xp.asarray(value, dtype=dtype, **dev)
    return xp, xc, arrays, lead


def _unflatten(xp: Any, out: Any, lead: tuple, x: Any) -> Any:
    """Features ``(N, F)`` back to ``(*lead, F)``, in the dtype of ``x``."""
    if len(lead) != 1 and all(isinstance(n, int) for n in lead):
        out = xp.reshape(out, (*lead, out.shape[-1]))
    return _v.cast_back(xp, out, x.dtype)


def _check_dim(x: Any, width: int, kind: str) -> None:
    d = _v.shape_of(x)[-1] if len(x.shape) else None
    if d is not None and d != width:
        raise ValueError(
            f"x has {d} features in its last axis but the {kind} projection was built for "
            f"head_dim={width}"
        )


@float32_under_autocast
def slay_features(x: Any, projection: Any, *, normalize: bool = True, epsilon: Any = 1e-6) -> Any:
    """SLAY features of ``x (..., d)``: ``(..., R * P * M)``, positive.

    Feature ``(p, m, r)`` (flattened with ``r`` fastest, nmn's NNX order) is
    ``sqrt(w_r) * (a_p . x)^2 / sqrt(P) * exp(clip(sqrt(2 s_r) w_(r,m) . x - s_r)) / sqrt(M)``
    with ``x`` first scaled to ``x / sqrt(|x|^2 + epsilon)`` if ``normalize``.

    Parameters
    ----------
    x : array (..., d)
    projection : dict
        From :func:`slay_projection` (NumPy arrays or arrays of ``x``'s library).
    normalize : bool
    epsilon : float > 0

    Returns
    -------
    array (..., R * P * M), the dtype of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.random_features import slay_features, slay_projection
    >>> slay_features(np.ones((3, 8)), slay_projection(8, rng=0)).shape
    (3, 128)
    """
    xp, xc, a, lead = _prepare(x, projection, "slay", normalize, epsilon)
    _check_dim(xc, a["anchors"].shape[-1], "slay")
    p = a["anchors"].shape[0]
    r, m, d = a["projections"].shape
    poly = xp.matmul(xc, xp.matrix_transpose(a["anchors"])) ** 2 / math.sqrt(p)  # (..., P)
    flat = xp.reshape(a["projections"], (r * m, d))
    proj = xp.reshape(xp.matmul(xc, xp.matrix_transpose(flat)), (*xc.shape[:-1], r, m))
    nodes = a["quad_nodes"][:, None]
    prf = xp.exp(clip(xp, proj * xp.sqrt(2.0 * nodes) - nodes, min=-PRF_CLIP, max=PRF_CLIP))
    prf = prf * (xp.sqrt(a["quad_weights"])[:, None] / math.sqrt(m))  # (..., R, M)
    prf = xp.permute_dims(prf, (*range(prf.ndim - 2), prf.ndim - 1, prf.ndim - 2))  # (.., M, R)
    out = poly[..., :, None, None] * prf[..., None, :, :]  # (..., P, M, R)
    out = xp.reshape(out, (*xc.shape[:-1], p * m * r))
    return _unflatten(xp, out, lead, x)


@float32_under_autocast
def maclaurin_features(
    x: Any, projection: Any, *, normalize: bool = True, epsilon: Any = 1e-6
) -> Any:
    """MAY features of ``x (..., d)``: ``(..., M)``.

    ``phi_r(x) = sqrt(Z / M) * prod_(l < N_r) (omega_(r,l) . x)`` (degree 0: the constant
    ``sqrt(Z / M)``), ``x`` first scaled to ``x / sqrt(|x|^2 + epsilon)`` if ``normalize``.
    ``E[phi(q) . phi(k)]`` is the kernel's Maclaurin series up to ``nmax``.

    Parameters
    ----------
    x : array (..., d)
    projection : dict
        From :func:`maclaurin_projection`. ``omegas`` may hold more rows per feature than
        the largest degree (nmn's PyTorch layout has ``nmax + 1``); the extra rows are unused.
    normalize : bool
    epsilon : float > 0

    Returns
    -------
    array (..., M), the dtype of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.random_features import maclaurin_features, maclaurin_projection
    >>> maclaurin_features(np.ones((3, 8)), maclaurin_projection(8, rng=0)).shape
    (3, 256)
    """
    xp, xc, a, lead = _prepare(x, projection, "maclaurin", normalize, epsilon)
    _check_dim(xc, a["omegas"].shape[-1], "maclaurin")
    omegas, degrees = a["omegas"], a["degrees"]
    m, rows, d = omegas.shape
    one = xp.ones((), dtype=xc.dtype, **device_kw(xp, xc))
    # (rows * d, M), made contiguous by the reshape: each step's (d, M) block is then a
    # plain matrix for BLAS (a strided slice of (M, rows, d) is not, and is ~50x slower).
    stacked = xp.reshape(xp.permute_dims(omegas, (1, 2, 0)), (rows * d, m))
    # One factor at a time: an (..., M) array per degree instead of (..., M, nmax) at once.
    out = xp.broadcast_to(xp.sqrt(a["Z"] / m), (*xc.shape[:-1], m))
    for step in range(rows):
        factor = xp.matmul(xc, stacked[step * d : (step + 1) * d, :])
        out = out * xp.where(degrees > step, factor, one)
    return _unflatten(xp, out, lead, x)


@float32_under_autocast
def radial_features(x: Any, projection: Any, *, normalize: bool = True, epsilon: Any = 1e-6) -> Any:
    """RAY features of ``x (..., d)``: ``(..., m * J * D)``.

    With ``z = [x, sqrt(b)]``: ``psi(z) = (W1 z) * (W2 z) / sqrt(m)`` (``E[psi . psi'] =
    (z . z')^2 = (s + b)^2``) times, per node ``j``,
    ``sqrt(2 / D) cos(Omega_j z + phase_j) sqrt(coef_j)``; flattened with the radial index
    fastest (nmn's order). ``x`` is first scaled to ``x / sqrt(|x|^2 + epsilon)`` if
    ``normalize``.

    Parameters
    ----------
    x : array (..., d)
    projection : dict
        From :func:`radial_projection`.
    normalize : bool
    epsilon : float > 0

    Returns
    -------
    array (..., m * J * D), the dtype of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.random_features import radial_features, radial_projection
    >>> p = radial_projection(8, sketch_m=4, num_radial=2, radial_dim=3, rng=0)
    >>> radial_features(np.ones((3, 8)), p).shape
    (3, 24)
    """
    xp, xc, a, lead = _prepare(x, projection, "radial", normalize, epsilon)
    _check_dim(xc, a["W1"].shape[-1] - 1, "radial")
    m = a["W1"].shape[0]
    j, dim, width = a["omegas"].shape
    root_b = xp.broadcast_to(xp.sqrt(a["bias"]), (*xc.shape[:-1], 1))
    z = xp.concat([xc, root_b], axis=-1)
    psi = xp.matmul(z, xp.matrix_transpose(a["W1"])) * xp.matmul(z, xp.matrix_transpose(a["W2"]))
    psi = psi / math.sqrt(m)
    angles = xp.matmul(z, xp.matrix_transpose(xp.reshape(a["omegas"], (j * dim, width))))
    angles = xp.reshape(angles, (*xc.shape[:-1], j, dim)) + a["phases"]
    weight = xp.sqrt(clip(xp, a["coef"], min=0.0))[:, None] * math.sqrt(2.0 / dim)
    rff = xp.reshape(xp.cos(angles) * weight, (*xc.shape[:-1], j * dim))
    out = xp.reshape(psi[..., :, None] * rff[..., None, :], (*xc.shape[:-1], m * j * dim))
    return _unflatten(xp, out, lead, x)
