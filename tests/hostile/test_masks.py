"""Attention masks, one rule everywhere: boolean = True attends, floating = additive (softmax
only), anything else is refused. Also scores that overflow and attention over zero keys.

Every expected value comes from a float64 computation written here or in
``tests/reference.py``, never from nmn_array itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nmn_array
from tests.reference import yat_attention_weights_ref

rng = np.random.default_rng(20261203)


# --------------------------------------------------------------------------------------
# float64 references
# --------------------------------------------------------------------------------------
def scores_ref(q: np.ndarray, k: np.ndarray, *, alpha: float = 1.0, epsilon: float = 1e-5):
    """Yat scores ``alpha (q.k)^2 / ((|q - k|^2 + eps) sqrt(d))``, one pair at a time."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    qb = np.broadcast_to(q, lead + q.shape[-2:])
    kb = np.broadcast_to(k, lead + k.shape[-2:])
    out = np.zeros(lead + (q.shape[-2], k.shape[-2]))
    scale = 1.0 / math.sqrt(q.shape[-1])
    for idx in np.ndindex(*out.shape):
        qi, kj = qb[idx[:-2] + (idx[-2],)], kb[idx[:-2] + (idx[-1],)]
        dot = float(np.sum(qi * kj))
        out[idx] = alpha * scale * dot**2 / (float(np.sum((qi - kj) ** 2)) + epsilon)
    return out


def additive_weights_ref(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``softmax(scores + mask)`` over the keys with a finite mask entry; zeros for a row
    whose keys are all hidden (-inf)."""
    s = np.broadcast_to(scores + mask, np.broadcast_shapes(scores.shape, mask.shape))
    out = np.zeros(s.shape)
    for idx in np.ndindex(*s.shape[:-1]):
        row = s[idx]
        shown = np.isfinite(row)
        if shown.any():
            e = np.exp(row[shown] - row[shown].max())
            out[idx + (shown,)] = e / e.sum()
    return out


def _hiding_mask(lq: int, lk: int) -> np.ndarray:
    """A boolean (Lq, Lk) mask with a fully hidden row (query 1) and a partly hidden one."""
    m = rng.random((lq, lk)) > 0.35
    m[0, 0] = True
    m[1] = False
    return m


def _additive(boolean: np.ndarray) -> np.ndarray:
    return np.where(boolean, 0.0, -np.inf)


# --------------------------------------------------------------------------------------
# the pure functions on every backend
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
def test_additive_zero_or_inf_mask_equals_boolean_mask(backend, causal):
    q, k, v = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 2))
    boolean = _hiding_mask(4, 5)
    want_w = yat_attention_weights_ref(q, k, mask=boolean, causal=causal)
    want = want_w @ v
    f = backend.from_numpy
    for mask in (f(boolean), f(_additive(boolean))):
        w = nmn_array.yat_attention_weights(f(q), f(k), mask=mask, causal=causal)
        out = nmn_array.yat_attention(f(q), f(k), f(v), mask=mask, causal=causal)
        np.testing.assert_allclose(backend.to_numpy(w), want_w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(backend.to_numpy(out), want, rtol=1e-12, atol=1e-14)
    # the fully hidden query gets exactly zero weights
    assert not np.any(backend.to_numpy(w)[:, 1])


@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
def test_finite_additive_mask_is_added_to_the_scores(backend, causal):
    q, k, v = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 2))
    mask = rng.normal(scale=2.0, size=(4, 5))  # finite, non-zero: ALiBi-like biases
    mask[2, 3] = -np.inf
    mask[1] = -np.inf  # a query that sees no key
    full = mask.copy()
    if causal:
        full = np.where(np.tril(np.ones((4, 5), bool), k=1), full, -np.inf)
    want_w = additive_weights_ref(scores_ref(q, k, alpha=1.3), full)
    f = backend.from_numpy
    w = nmn_array.yat_attention_weights(f(q), f(k), mask=f(mask), causal=causal, alpha=1.3)
    out = nmn_array.yat_attention(f(q), f(k), f(v), mask=f(mask), causal=causal, alpha=1.3)
    np.testing.assert_allclose(backend.to_numpy(w), want_w, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(backend.to_numpy(out), want_w @ v, rtol=1e-11, atol=1e-14)
    # torch's fused path and the array-API path agree
    if backend.name == "torch":
        plain = nmn_array.yat_attention_weights(
            f(q), f(k), mask=f(mask), causal=causal, alpha=1.3, _native=False
        )
        np.testing.assert_allclose(backend.to_numpy(plain), want_w, rtol=1e-11, atol=1e-14)


def test_float32_additive_mask_with_float64_inputs(backend):
    """The mask is cast to the compute dtype, so a float32 mask works with float64 q and k."""
    q, k = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
    mask = np.array([[0.0, -1.5, -np.inf, 0.25]], dtype=np.float32)
    want = additive_weights_ref(scores_ref(q, k), mask.astype(np.float64))
    got = nmn_array.yat_attention_weights(
        backend.from_numpy(q), backend.from_numpy(k), mask=backend.from_numpy(mask)
    )
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("normalization", ["softermax", "l1", "L1"])
def test_float_mask_with_non_softmax_normalization_is_refused(backend, normalization):
    q = backend.from_numpy(rng.normal(size=(3, 2)))
    mask = backend.from_numpy(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"mask.*float64.*normalization='l1'|mask.*softermax"):
        nmn_array.yat_attention_weights(q, q, mask=mask, normalization=normalization)
    with pytest.raises(ValueError, match="mask"):
        nmn_array.yat_attention(q, q, q, mask=mask, normalization=normalization)


def test_integer_mask_is_refused(backend):
    q = backend.from_numpy(rng.normal(size=(3, 2)))
    mask = backend.from_numpy(np.ones((3, 3), dtype=np.int32))
    with pytest.raises(TypeError, match=r"mask.*int32"):
        nmn_array.yat_attention_weights(q, q, mask=mask)
    with pytest.raises(TypeError, match=r"mask.*int32"):
        nmn_array.yat_attention(q, q, q, mask=mask)


def test_fully_hidden_additive_row_has_finite_gradients(ad_backend):
    """A query whose keys are all -inf: zero weights, zero output, finite gradients
    (as a boolean fully-hidden row)."""
    q, k, v = rng.normal(size=(3, 2)), rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    mask = np.where(rng.random((3, 4)) > 0.3, 0.5, -np.inf)
    mask[0] = -np.inf
    mask[1, 1] = 0.0
    m = ad_backend.from_numpy(mask)
    out = nmn_array.yat_attention(
        ad_backend.from_numpy(q), ad_backend.from_numpy(k), ad_backend.from_numpy(v), mask=m
    )
    assert not np.any(ad_backend.to_numpy(out)[0])
    grads = ad_backend.grad(lambda a, b, c: nmn_array.yat_attention(a, b, c, mask=m), [q, k, v])
    for g in grads:
        assert np.all(np.isfinite(g))
    # query 0 sees nothing: its gradient is exactly zero
    assert not np.any(grads[0][0])


def test_gradient_flows_into_a_learnable_additive_mask(ad_backend):
    """A float mask is an input like any other (ALiBi-style learnable biases): its gradient
    is the softmax Jacobian of the scores, checked against central differences."""
    q, k = rng.normal(size=(2, 3)), rng.normal(size=(3, 3))
    mask = rng.normal(size=(2, 3))
    weight = rng.normal(size=(2, 3))
    g = ad_backend.grad(
        lambda m: (
            nmn_array.yat_attention_weights(
                ad_backend.from_numpy(q), ad_backend.from_numpy(k), mask=m
            )
            * ad_backend.from_numpy(weight)
        ),
        [mask],
    )[0]
    s = scores_ref(q, k)
    h = 1e-6
    want = np.zeros_like(mask)
    for idx in np.ndindex(*mask.shape):
        up, down = mask.copy(), mask.copy()
        up[idx] += h
        down[idx] -= h
        want[idx] = np.sum(
            (additive_weights_ref(s, up) - additive_weights_ref(s, down)) * weight
        ) / (2 * h)
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------
# scores that overflow, and zero keys
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalization", ["softmax", "softermax", "l1"])
def test_scores_that_overflow_give_finite_correct_weights(backend, normalization):
    """q == k at 1e9 in float32: (q.k)^2 / eps overflows to +inf. The true weights are
    finite: equal keys share the weight; a key orthogonal to q gets none."""
    big = np.float32(1e9)
    q = np.full((1, 2, 4), big, dtype=np.float32)
    k = np.concatenate([q, np.zeros((1, 1, 4), np.float32)], axis=1)
    k[0, 2, 0], k[0, 2, 1] = 1.0, -1.0  # q.k = 0: score 0
    f = backend.from_numpy
    w = backend.to_numpy(nmn_array.yat_attention_weights(f(q), f(k), normalization=normalization))
    assert np.all(np.isfinite(w)), w
    want = np.array([[[0.5, 0.5, 0.0]] * 2])
    np.testing.assert_allclose(w, want, atol=1e-6)
    out = backend.to_numpy(nmn_array.yat_attention(f(q), f(k), f(k), normalization=normalization))
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
def test_attention_over_zero_keys(backend, causal):
    """Lk = 0: every query sees no key, so the weights are (..., Lq, 0) and the output is
    all zero, of shape (..., Lq, dv)."""
    f = backend.from_numpy
    q = f(rng.normal(size=(2, 3, 4)))
    k, v = f(np.zeros((2, 0, 4))), f(np.zeros((2, 0, 5)))
    for kwargs in ({}, {"mask": f(np.zeros((3, 0), bool))}, {"mask": f(np.zeros((3, 0)))}):
        w = backend.to_numpy(nmn_array.yat_attention_weights(q, k, causal=causal, **kwargs))
        assert w.shape == (2, 3, 0)
        out = backend.to_numpy(nmn_array.yat_attention(q, k, v, causal=causal, **kwargs))
        assert out.shape == (2, 3, 5)
        assert not np.any(out)
        for normalization in ("softermax", "l1"):
            if "mask" in kwargs and kwargs["mask"].dtype != f(np.zeros(1, bool)).dtype:
                continue  # additive masks are softmax-only
            out = nmn_array.yat_attention(
                q, k, v, causal=causal, normalization=normalization, **kwargs
            )
            assert backend.to_numpy(out).shape == (2, 3, 5)


@pytest.mark.parametrize("normalization", ["l1", "softermax"])
def test_huge_finite_scores_keep_their_ratio(backend, normalization):
    """float64 scores near 1.4e308 whose sum overflows: l1 and softermax (power 1) still give
    the true ratios s / sum(s), not s / inf = 0."""
    q, k = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 1e-3]])
    s = scores_ref(q, k, alpha=2e303)[0]
    assert np.all(np.isfinite(s)) and s.sum() == np.inf  # the hostile part: the sum overflows
    want = (s / s.max()) / np.sum(s / s.max())
    f = backend.from_numpy
    got = nmn_array.yat_attention_weights(f(q), f(k), alpha=2e303, normalization=normalization)
    np.testing.assert_allclose(backend.to_numpy(got)[0], want, rtol=1e-9)


# --------------------------------------------------------------------------------------
# every framework's attention modules: no cast, the same rule
# --------------------------------------------------------------------------------------
E, H, L = 8, 2, 5


def _torch_modules():
    torch = pytest.importorskip("torch")
    from nmn_array.frameworks import torch as ours

    torch.manual_seed(0)
    f64 = torch.float64

    def run(module):
        def call(x, mask):
            m = None if mask is None else torch.as_tensor(mask)
            return module(torch.as_tensor(x), mask=m).detach().numpy()

        return call

    return {
        "torch.MultiHeadYatAttention": run(ours.MultiHeadYatAttention(E, H, dtype=f64)),
        "torch.RotaryYatAttention": run(ours.RotaryYatAttention(E, H, 16, dtype=f64)),
    }


def _nnx_modules():
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from flax import nnx
    from nmn_array.frameworks import nnx as ours

    f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    mha = ours.MultiHeadAttention(H, E, decode=False, rngs=nnx.Rngs(0), **f64)
    rot = ours.RotaryYatAttention(E, H, 16, rngs=nnx.Rngs(1), **f64)

    def run(module):
        def call(x, mask):
            m = None if mask is None else jnp.asarray(mask)
            return np.asarray(module(jnp.asarray(x), mask=m))

        return call

    return {"nnx.MultiHeadAttention": run(mha), "nnx.RotaryYatAttention": run(rot)}


def _linen_modules():
    pytest.importorskip("flax")
    import jax
    import jax.numpy as jnp
    from nmn_array.frameworks import linen as ours

    f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    mods = {
        "linen.MultiHeadAttention": ours.MultiHeadAttention(num_heads=H, **f64),
        "linen.RotaryYatAttention": ours.RotaryYatAttention(
            embed_dim=E, num_heads=H, max_seq_len=16, **f64
        ),
    }
    x0 = jnp.zeros((2, L, E), jnp.float64)

    def run(module):
        params = module.init(jax.random.PRNGKey(0), x0)

        def call(x, mask):
            m = None if mask is None else jnp.asarray(mask)
            return np.asarray(module.apply(params, jnp.asarray(x), mask=m))

        return call

    return {name: run(m) for name, m in mods.items()}


def _tf_modules():
    tf = pytest.importorskip("tensorflow")
    from nmn_array.frameworks import tf as ours

    tf.random.set_seed(0)
    mha = ours.MultiHeadYatAttention(E, H, dtype=tf.float64)

    def call(x, mask):
        m = None if mask is None else tf.constant(mask)
        return mha(tf.constant(x), mask=m).numpy()

    return {"tf.MultiHeadYatAttention": call}


FRAMEWORKS = {
    "torch": _torch_modules,
    "nnx": _nnx_modules,
    "linen": _linen_modules,
    "tf": _tf_modules,
}


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_modules_take_additive_masks_as_additive(framework):
    """(B, H, L, L) masks: 0/-inf equals the boolean mask (a cast to bool would invert it),
    a query that sees no key outputs zeros (the same notion of visible), and an integer mask
    is refused instead of cast."""
    x = rng.normal(size=(2, L, E))
    boolean = np.broadcast_to(_hiding_mask(L, L), (2, H, L, L)).copy()
    boolean[1, :, 3] = False  # batch 1, query 3: hidden in every head
    for name, call in FRAMEWORKS[framework]().items():
        want = call(x, boolean)
        got = call(x, _additive(boolean))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)
        assert not np.any(got[:, 1]) and not np.any(got[1, 3]), name
        assert np.any(got[0, 0]), name
        # zero additive entries everywhere = no mask at all
        np.testing.assert_allclose(
            call(x, np.zeros((L, L))), call(x, None), rtol=1e-12, atol=1e-12, err_msg=name
        )
        with pytest.raises(TypeError, match=r"mask.*int"):
            call(x, boolean.astype(np.int32))


def test_torch_module_with_a_finite_additive_mask_matches_float64_reference():
    """torch MultiHeadYatAttention with ALiBi-like finite biases: the float64 reference adds
    the mask to the yat scores of the module's own projections."""
    torch = pytest.importorskip("torch")
    from nmn_array.frameworks import torch as ours

    torch.manual_seed(3)
    mha = ours.MultiHeadYatAttention(E, H, dtype=torch.float64)
    x = rng.normal(size=(2, L, E))
    mask = rng.normal(scale=3.0, size=(H, L, L))
    mask[0, 2] = -np.inf  # head 0, query 2 hidden: the other head still sees keys
    got = mha(torch.as_tensor(x), mask=torch.as_tensor(mask)).detach().numpy()

    def proj(p):
        return x @ p.weight.detach().numpy().T + p.bias.detach().numpy()

    def heads(t):
        return t.reshape(2, L, H, E // H).transpose(0, 2, 1, 3)

    q, k, v = (heads(proj(p)) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    w = additive_weights_ref(scores_ref(q, k), mask)
    o = (w @ v).transpose(0, 2, 1, 3).reshape(2, L, E)
    want = o @ mha.out_proj.weight.detach().numpy().T + mha.out_proj.bias.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_softermax_module_refuses_an_additive_mask():
    torch = pytest.importorskip("torch")
    from nmn_array.frameworks import torch as ours

    attn = ours.RotaryYatAttention(E, H, 16, normalization="softermax", dtype=torch.float64)
    x = torch.randn(1, L, E, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mask.*float64.*softermax"):
        attn(x, mask=torch.zeros(L, L, dtype=torch.float64))
