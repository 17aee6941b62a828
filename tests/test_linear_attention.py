"""Linear-time attention: the readout is exact where it is algebra, the feature maps equal
nmn 0.3.5's on copied projections, and the random estimators are checked statistically.

The readout claims ``out = (phi(q) phi(k)^T) v / rowsum`` exactly (up to rounding), so it is
compared with that matrix computed explicitly, in float64, on every backend. The feature maps
are random: their kernel estimates are tested for bias against closed forms with three
standard errors over fixed seeds, and ``test_planted_bug_*`` show that a wrong estimator fails
the same check.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest

import nmn_array
from nmn_array import random_features as rf
from nmn_array.linear_attention import (
    performer_attention,
    performer_features,
    performer_projection,
    yat_linear_attention,
)

KINDS = ("slay", "maclaurin", "radial")
#: Small projections (RAY's defaults have 65536 features) that keep the tests fast.
SMALL = {
    "slay": dict(num_anchor_features=6, num_prf_features=4, num_quad_nodes=2),
    "maclaurin": dict(performer_num_features=32, performer_nmax=12),
    "radial": dict(performer_sketch_m=6, performer_num_radial=3, performer_radial_dim=5),
}


def small_projection(kind: str, d: int, seed: int = 1, epsilon: float = 1.0) -> dict:
    return performer_projection(kind, d, rng=seed, epsilon=epsilon, **SMALL[kind])


def explicit(q, k, v, phi, *, causal=False, mask=None, epsilon=1e-6):
    """The definition, materialised in NumPy: normalised ``phi(q) phi(k)^T`` weights."""
    scores = phi(q) @ np.swapaxes(phi(k), -1, -2)
    if causal:
        scores = np.where(np.tri(q.shape[-2], dtype=bool), scores, 0.0)
    if mask is not None:
        scores = np.where(mask, scores, 0.0)
    den = scores.sum(-1, keepdims=True)
    return scores @ v / np.where(den < 0, den - epsilon, den + epsilon)


def prefix_form(q, k, v, phi, epsilon=1e-6):
    """Causal attention token by token with running sums (the recurrent form)."""
    fq, fk = phi(q), phi(k)
    state = np.zeros((*q.shape[:-2], fk.shape[-1], v.shape[-1]))
    norm = np.zeros((*q.shape[:-2], fk.shape[-1]))
    out = []
    for t in range(q.shape[-2]):
        state = state + fk[..., t, :, None] * v[..., t, None, :]
        norm = norm + fk[..., t, :]
        den = np.sum(fq[..., t, :] * norm, axis=-1, keepdims=True)
        num = np.einsum("...f,...fv->...v", fq[..., t, :], state)
        out.append(num / np.where(den < 0, den - epsilon, den + epsilon))
    return np.stack(out, axis=-2)


def inputs(seed=0, lead=(2, 3), lq=11, lk=11, d=8, dv=5):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((*lead, lq, d)),
        rng.standard_normal((*lead, lk, d)),
        rng.standard_normal((*lead, lk, dv)),
    )


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# -- the readout is exact --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("chunk_size", [3, 64])
def test_readout_equals_explicit_attention(backend, kind, causal, chunk_size):
    q, k, v = inputs()
    phi = performer_features(kind, small_projection(kind, 8))
    mask = np.random.default_rng(3).random((2, 1, 1, 11)) < 0.7
    want = explicit(q, k, v, phi, causal=causal, mask=mask)
    b = backend
    got = yat_linear_attention(
        *(b.from_numpy(t) for t in (q, k, v)),
        phi,
        causal=causal,
        mask=b.from_numpy(mask),
        chunk_size=chunk_size,
    )
    assert isinstance(got, b.array_type())
    assert rel(b.to_numpy(got), want) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_causal_chunks_equal_token_by_token_prefix_sums(kind, chunk_size):
    q, k, v = inputs(seed=5, lq=13, lk=13)
    phi = performer_features(kind, small_projection(kind, 8))
    got = yat_linear_attention(q, k, v, phi, causal=True, chunk_size=chunk_size)
    assert rel(got, prefix_form(q, k, v, phi)) < 1e-10


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_empty_sequences_give_empty_outputs(causal):
    q, k, v = inputs(lq=0, lk=0)
    phi = performer_features("slay", small_projection("slay", 8))
    out = yat_linear_attention(q, k, v, phi, causal=causal)
    assert out.shape == (2, 3, 0, 5)


def test_causal_output_ignores_later_tokens():
    q, k, v = inputs(seed=2, lq=12, lk=12)
    phi = performer_features("slay", small_projection("slay", 8))
    out = yat_linear_attention(q, k, v, phi, causal=True, chunk_size=5)
    k2, v2 = k.copy(), v.copy()
    k2[..., 7:, :] += 3.0
    v2[..., 7:, :] -= 2.0
    out2 = yat_linear_attention(q, k2, v2, phi, causal=True, chunk_size=5)
    np.testing.assert_array_equal(out[..., :7, :], out2[..., :7, :])
    assert not np.allclose(out[..., 7:, :], out2[..., 7:, :])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_masked_keys_change_nothing(causal):
    q, k, v = inputs(seed=4)
    mask = np.ones((1, 1, 1, 11), dtype=bool)
    mask[..., 2] = mask[..., 9] = False
    phi = performer_features("maclaurin", small_projection("maclaurin", 8))
    out = yat_linear_attention(q, k, v, phi, causal=causal, mask=mask)
    k2, v2 = k.copy(), v.copy()
    k2[..., [2, 9], :] = 5.0
    v2[..., [2, 9], :] = -7.0
    out2 = yat_linear_attention(q, k2, v2, phi, causal=causal, mask=mask)
    np.testing.assert_allclose(out, out2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_of_chunked_causal_equal_explicit(ad_backend, kind):
    """Gradients through the chunked prefix sums equal those of the materialised form."""
    b = ad_backend
    q, k, v = inputs(seed=6, lead=(2,), lq=9, lk=9, d=8, dv=3)
    proj = small_projection(kind, 8)
    phi = performer_features(kind, proj)

    def linear(q, k, v):
        return yat_linear_attention(q, k, v, phi, causal=True, chunk_size=4)

    def materialised(q, k, v):
        xp = nmn_array._namespace.array_namespace(q)
        fq, fk = phi(q), phi(k)
        s = xp.matmul(fq, xp.matrix_transpose(fk))
        lower = np.tri(9, dtype=bool)
        s = xp.where(b.from_numpy(lower), s, 0.0 * s)
        den = xp.sum(s, axis=-1, keepdims=True)
        return xp.matmul(s, v) / xp.where(den < 0, den - 1e-6, den + 1e-6)

    got = b.grad(linear, [q, k, v])
    want = b.grad(materialised, [q, k, v])
    for g, w in zip(got, want):
        assert rel(g, w) < 1e-9


def test_float32_readout_is_bounded():
    """float32 against float64 on the same inputs: SLAY (positive features) stays within
    a fixed relative bound however long the sequence (no error growth with L)."""
    phi64 = performer_features("slay", small_projection("slay", 16))
    for length in (64, 1024):
        q, k, v = inputs(seed=7, lead=(2,), lq=length, lk=length, d=16, dv=4)
        want = yat_linear_attention(q, k, v, phi64, causal=True)
        got = yat_linear_attention(*(t.astype(np.float32) for t in (q, k, v)), phi64, causal=True)
        assert got.dtype == np.float32
        assert rel(got, want) < 1e-4, length


# -- the feature maps equal nmn's on copied projections ----------------------------------


@pytest.fixture(scope="module")
def nnx_performer():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from nmn.nnx.layers.attention import maclaurin_yat, radial_yat, spherical_yat_performer

    return jax.numpy, maclaurin_yat, radial_yat, spherical_yat_performer


def test_slay_features_equal_nmn_nnx(nnx_performer):
    jnp, _, _, slay = nnx_performer
    p = rf.slay_projection(8, num_quad_nodes=3, num_anchor_features=5, num_prf_features=4, rng=2)
    theirs = {k: jnp.asarray(a) for k, a in p.items()}
    theirs.update(num_prf_features=4, num_anchor_features=5)
    x = np.random.default_rng(0).standard_normal((2, 7, 3, 8))
    want = np.asarray(slay.yat_tp_features(jnp.asarray(x), theirs, normalize=True, epsilon=1e-5))
    got = rf.slay_features(x, p, epsilon=1e-5)
    assert got.shape == want.shape == (2, 7, 3, 60)
    assert rel(got, want) < 1e-12


def test_maclaurin_features_equal_nmn_nnx_and_torch(nnx_performer):
    jnp, may, _, _ = nnx_performer
    p = rf.maclaurin_projection(8, num_features=64, nmax=20, rng=2)
    theirs = {k: jnp.asarray(a) for k, a in p.items()}
    theirs.update(num_features=64)
    x = np.random.default_rng(1).standard_normal((2, 7, 3, 8))
    want = np.asarray(may.maclaurin_features(jnp.asarray(x), theirs))
    assert rel(rf.maclaurin_features(x, p), want) < 1e-12
    np.testing.assert_allclose(
        may.maclaurin_coeffs(0.7, 1e-3, 30), rf.maclaurin_coefficients(0.7, 1e-3, 30), rtol=1e-14
    )
    # nmn's PyTorch layout keeps nmax + 1 sign rows per feature; the extra row is unused
    import torch
    from nmn.torch.attention import performer_yat as tp

    signs = np.concatenate([p["omegas"], np.ones((64, 1, 8))], axis=1)
    theirs_t = {"omegas": torch.asarray(signs), "degrees": torch.asarray(p["degrees"])}
    theirs_t.update(Z=torch.asarray(p["Z"]), num_features=64, nmax=20)
    want_t = tp.maclaurin_features(torch.asarray(x), theirs_t).numpy()
    assert rel(rf.maclaurin_features(x, {**p, "omegas": signs}), want_t) < 1e-12


def test_radial_features_equal_nmn_nnx(nnx_performer):
    jnp, _, ray, _ = nnx_performer
    p = rf.radial_projection(8, sketch_m=6, num_radial=3, radial_dim=5, bias=0.5, rng=2)
    theirs = {k: jnp.asarray(a) for k, a in p.items()}
    theirs.update(bias=0.5, sketch_m=6, radial_dim=5, num_radial=3)
    x = np.random.default_rng(2).standard_normal((2, 7, 3, 8))
    want = np.asarray(ray.radial_features(jnp.asarray(x), theirs))
    assert rel(rf.radial_features(x, p), want) < 1e-10


def test_builders_are_deterministic_under_a_seed():
    for kind in KINDS:
        a, b, c = (small_projection(kind, 8, seed=s) for s in (5, 5, 6))
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert any(not np.array_equal(a[key], c[key]) for key in a), kind
    gen = np.random.default_rng(9)
    first = rf.maclaurin_projection(4, num_features=8, rng=gen)
    second = rf.maclaurin_projection(4, num_features=8, rng=gen)  # the generator moved on
    assert not np.array_equal(first["omegas"], second["omegas"])


# -- the estimators, statistically ------------------------------------------------------

#: Pairs of unit vectors with these cosines; fixed seeds make every figure reproducible.
COSINES = (-0.6, -0.2, 0.0, 0.3, 0.6)


def unit_pairs(d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(d)
    q /= np.linalg.norm(q)
    pairs = []
    for s in COSINES:
        o = rng.standard_normal(d)
        o -= (o @ q) * q
        o /= np.linalg.norm(o)
        pairs.append((q, s * q + math.sqrt(1 - s * s) * o))
    return pairs


def kernel_estimates(features, build, d, seeds):
    """``phi(q) . phi(k)`` for each pair (rows) and each projection seed (columns)."""
    pairs = unit_pairs(d)
    out = np.empty((len(pairs), len(seeds)))
    for j, seed in enumerate(seeds):
        proj = build(seed)
        for i, (q, k) in enumerate(pairs):
            out[i, j] = features(q, proj, normalize=False) @ features(k, proj, normalize=False)
    return out


def z_scores(estimates, target):
    """(mean - target) / standard error, per pair."""
    n = estimates.shape[1]
    se = estimates.std(axis=1, ddof=1) / math.sqrt(n)
    return (estimates.mean(axis=1) - target) / se


def spherical_kernel(s, bias, epsilon):
    s = np.asarray(s)
    return (s + bias) ** 2 / (2.0 + epsilon - 2.0 * s)


def maclaurin_series(s, bias, epsilon, nmax):
    a = rf.maclaurin_coefficients(bias, epsilon, nmax)
    return np.polynomial.polynomial.polyval(np.asarray(s), a)


MAY = dict(num_features=64, bias=1.0, epsilon=1.0, nmax=30)
SEEDS = range(200)


def test_maclaurin_estimator_is_unbiased_for_the_spherical_kernel():
    est = kernel_estimates(
        rf.maclaurin_features, lambda s: rf.maclaurin_projection(16, rng=s, **MAY), 16, SEEDS
    )
    exact = spherical_kernel(COSINES, MAY["bias"], MAY["epsilon"])
    # the series truncated at nmax = 30 is exact to rounding for |s| <= 0.6 and C = 3
    assert np.allclose(maclaurin_series(COSINES, 1.0, 1.0, 30), exact, rtol=1e-9)
    z = z_scores(est, exact)
    assert np.all(np.abs(z) < 3.0), z


def test_planted_bug_wrong_maclaurin_coefficient_fails_the_check(monkeypatch):
    """Degrees drawn from coefficients with beta_n = (2/C)^(n+1)/C (one power too many):
    the same 200 seeds and the same three standard errors reject it."""
    right = rf.maclaurin_coefficients

    def wrong(bias, epsilon, nmax):
        a = right(bias, epsilon, nmax)
        a[2:] *= 2.0 / (2.0 + epsilon)
        return a

    monkeypatch.setattr(rf, "maclaurin_coefficients", wrong)
    est = kernel_estimates(
        rf.maclaurin_features, lambda s: rf.maclaurin_projection(16, rng=s, **MAY), 16, SEEDS
    )
    z = z_scores(est, spherical_kernel(COSINES, MAY["bias"], MAY["epsilon"]))
    assert np.max(np.abs(z)) > 3.0, z


def slay_limit_kernel(s, d, epsilon, nodes):
    """E over SLAY's projections of ``phi(q) . phi(k)`` for unit q, k with ``q . k = s``:
    anchors uniform on the sphere give ``E[(a.q)^2 (a.k)^2] = (1 + 2 s^2) / (d (d + 2))``,
    the positive random features ``E = exp(2 s_r s)``, summed with the quadrature weights."""
    c = 2.0 + epsilon
    t, w = np.polynomial.laguerre.laggauss(nodes)
    s = np.asarray(s)[..., None]
    return (1 + 2 * s[..., 0] ** 2) / (d * (d + 2)) * np.sum(w / c * np.exp(2 * t / c * s), -1)


SLAY = dict(num_anchor_features=16, num_prf_features=8, num_quad_nodes=2, epsilon=1.0)


def slay_estimates():
    return kernel_estimates(
        rf.slay_features, lambda s: rf.slay_projection(16, rng=s, **SLAY), 16, SEEDS
    )


def test_slay_estimator_is_unbiased_for_its_own_kernel():
    """SLAY is unbiased for the kernel its construction defines (anchors and a Gauss-Laguerre
    quadrature), which is not the spherical yat kernel: ``test_slay_is_biased_...``."""
    z = z_scores(slay_estimates(), slay_limit_kernel(COSINES, 16, 1.0, 2))
    assert np.all(np.abs(z) < 3.0), z


def test_slay_is_biased_for_the_spherical_yat_kernel():
    """The documented limitation: against ``s^2 / (C - 2 s)`` (scaled to agree at s = 0.6,
    since a constant factor cancels in attention) the same estimates are many standard
    errors off. A correct check must say so, or it could not tell SLAY from MAY."""
    est = slay_estimates()
    exact = spherical_kernel(COSINES, 0.0, 1.0)
    exact = exact * est[-1].mean() / exact[-1]
    assert np.max(np.abs(z_scores(est, exact))) > 10.0


def test_planted_bug_slay_prf_without_its_shift_fails_the_check(monkeypatch):
    """Positive random features without the ``- s_r`` in the exponent estimate
    ``exp(2 s_r (1 + s))``: the unbiasedness check rejects them."""
    right = rf.slay_projection

    def shifted(*args, **kwargs):
        p = right(*args, **kwargs)
        # the exponent's -s_r becomes -s_r/2: each feature gains exp(s_r / 2)
        p["quad_weights"] = p["quad_weights"] * np.exp(p["quad_nodes"])
        return p

    monkeypatch.setattr(rf, "slay_projection", shifted)
    z = z_scores(slay_estimates(), slay_limit_kernel(COSINES, 16, 1.0, 2))
    assert np.max(np.abs(z)) > 3.0, z


def exact_spherical_attention(q, k, v, bias, epsilon):
    unit = lambda x: x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)  # noqa: E731
    w = spherical_kernel(unit(q) @ np.swapaxes(unit(k), -1, -2), bias, epsilon)
    return w @ v / w.sum(-1, keepdims=True)


def median_error(kind, counts, q, k, v, target, seeds=range(5), epsilon=1.0):
    errors = []
    for c in counts:
        runs = []
        for seed in seeds:
            proj = performer_projection(kind, q.shape[-1], rng=seed, epsilon=epsilon, **c)
            out = yat_linear_attention(q, k, v, performer_features(kind, proj))
            runs.append(np.linalg.norm(out - target) / np.linalg.norm(target))
        errors.append(float(np.median(runs)))
    return errors


@pytest.mark.parametrize(
    ("kind", "counts", "bias"),
    [
        ("maclaurin", [dict(performer_num_features=m) for m in (64, 1024)], 1.0),
        (
            "radial",
            [
                dict(performer_sketch_m=4, performer_num_radial=2, performer_radial_dim=4),
                dict(performer_sketch_m=32, performer_num_radial=8, performer_radial_dim=16),
            ],
            1.0,
        ),
    ],
)
def test_attention_error_falls_as_features_grow(kind, counts, bias):
    """Against exact spherical yat attention (same bias and epsilon), the relative L2 error
    of the output falls at least 2x from the smallest to the largest feature count."""
    q, k, v = inputs(seed=8, lead=(4,), lq=64, lk=64, d=16, dv=8)
    target = exact_spherical_attention(q, k, v, bias, 1.0)
    small, large = median_error(kind, counts, q, k, v, target)
    assert large * 2 <= small, (small, large)


def test_slay_attention_error_falls_against_its_own_kernel():
    q, k, v = inputs(seed=8, lead=(4,), lq=64, lk=64, d=16, dv=8)
    unit = lambda x: x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)  # noqa: E731
    s = unit(q) @ np.swapaxes(unit(k), -1, -2)
    w = slay_limit_kernel(s, 16, 1.0, 1)
    target = w @ v / w.sum(-1, keepdims=True)
    counts = [dict(num_anchor_features=p, num_prf_features=m) for p, m in ((4, 2), (128, 64))]
    small, large = median_error("slay", counts, q, k, v, target)
    assert large * 2 <= small, (small, large)


# -- the module-facing helpers and errors -------------------------------------------------


def test_performer_attention_scales_the_output_by_alpha():
    q, k, v = inputs(seed=9)
    proj = small_projection("radial", 8)
    plain = performer_attention(q, k, v, "radial", proj)
    np.testing.assert_allclose(
        performer_attention(q, k, v, "radial", proj, alpha=1.5), 1.5 * plain, rtol=1e-13
    )
    want = yat_linear_attention(q, k, v, performer_features("radial", proj), epsilon=1e-6)
    np.testing.assert_array_equal(plain, want)


def test_slay_features_shift_by_epsilon_for_the_module():
    proj = small_projection("slay", 8)
    x = np.random.default_rng(1).standard_normal((3, 8))
    np.testing.assert_allclose(
        performer_features("slay", proj, epsilon=1e-3)(x),
        rf.slay_features(x, proj, epsilon=1e-3) + 1e-3,
        rtol=1e-14,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda q, k, v, p: performer_attention(q, k, v, "favor", p), "performer_kind"),
        (
            lambda q, k, v, p: yat_linear_attention(
                q, k, v, performer_features("slay", p), mask=np.ones((11, 11), bool)
            ),
            "key-padding",
        ),
        (
            lambda q, k, v, p: yat_linear_attention(
                q[..., :5, :], k, v, performer_features("slay", p), causal=True
            ),
            "as many queries as keys",
        ),
        (
            lambda q, k, v, p: yat_linear_attention(
                q, k, v, performer_features("slay", p), chunk_size=0
            ),
            "chunk_size",
        ),
        (
            lambda q, k, v, p: yat_linear_attention(q, k, v[..., :4, :], lambda x: x),
            "same number of keys",
        ),
        (lambda q, k, v, p: rf.maclaurin_features(q, p), "not a maclaurin projection"),
        (
            lambda q, k, v, p: rf.slay_features(q[..., :6], p),
            "head_dim=8",
        ),
        (lambda q, k, v, p: rf.slay_projection(0), "head_dim"),
        (lambda q, k, v, p: rf.maclaurin_projection(4, bias=-1.0), "bias"),
        (lambda q, k, v, p: rf.radial_projection(4, epsilon=0.0), "epsilon"),
        (lambda q, k, v, p: rf.slay_projection(4, rng="seed"), "rng"),
        (
            lambda q, k, v, p: yat_linear_attention(
                q, k, v, lambda x: x, mask=np.ones((2, 1, 1, 11))
            ),
            "bool",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    q, k, v = inputs()
    with pytest.raises((ValueError, TypeError), match=message):
        call(q, k, v, small_projection("slay", 8))


def test_jit_equals_eager():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    q, k, v = (jax.numpy.asarray(t) for t in inputs(seed=10))
    proj = {key: jax.numpy.asarray(a) for key, a in small_projection("maclaurin", 8).items()}
    f = partial(performer_attention, kind="maclaurin", causal=True, chunk_size=4)
    eager = f(q, k, v, projection=proj)
    jitted = jax.jit(lambda q, k, v, p: f(q, k, v, projection=p))(q, k, v, proj)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_readout_runs_the_map_in_float32(dtype):
    """Inputs of size 1e3: their squares overflow float16, not the float32 compute dtype."""
    import torch

    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0)) * 1e3
    low = x.to(getattr(torch, dtype))
    out = yat_linear_attention(low, low, low, lambda t: t * t, causal=True)
    assert out.dtype == low.dtype and bool(torch.isfinite(out).all())
    want = yat_linear_attention(low.float(), low.float(), low.float(), lambda t: t * t, causal=True)
    assert torch.allclose(out.float(), want, rtol=1e-2, atol=1e-2 * float(want.abs().max()))
