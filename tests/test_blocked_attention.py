"""``yat_attention(block_size=...)``: the tiled evaluation equals the materialised one, in
outputs (every backend) and gradients (torch, JAX, TensorFlow custom gradients); ``window``."""

from __future__ import annotations

import numpy as np
import pytest

import nmn_array as na
from nmn_array._attention_blocks import Blocks
from tests.backends import Backend
from tests.reference import yat_attention_ref

RNG = np.random.default_rng(23)
LQ, LK = 11, 14
Q, K = RNG.normal(size=(2, LQ, 4)), RNG.normal(size=(2, LK, 4))
V = RNG.normal(size=(2, LK, 3))
MASK = RNG.random((2, LQ, LK)) < 0.75
MASK[0, 3] = False  # a query that sees no key
BIAS = RNG.normal(size=(1, LQ, LK))
ADDITIVE = np.where(MASK, RNG.normal(size=MASK.shape), -np.inf)
W = np.cos(np.arange(2 * LQ * 3.0)).reshape(2, LQ, 3)  # a cotangent that is not all ones

CASES = {
    "plain": {},
    "causal": {"causal": True},
    "window": {"window": (3, 1)},
    "causal_window": {"causal": True, "window": (2, 5)},
    "mask": {"mask": MASK},
    "mask_causal_bias": {"mask": MASK, "causal": True, "bias": BIAS},
    "spherical_window": {"spherical": True, "window": (4, 2)},
}
NORMS = {"softmax": {}, "l1": {}, "softermax": {"power": 2.0}}


def _window_mask(lq, lk, left, right):
    p = np.arange(lq)[:, None] + (lk - lq)
    j = np.arange(lk)[None, :]
    return (j >= p - (np.inf if left is None else left)) & (
        j <= p + (np.inf if right is None else right)
    )


def _kwargs(b, case, norm):
    kw = dict(CASES[case], **NORMS[norm])
    return {k: b.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_blocked_equals_materialised_forward(backend, case, norm):
    kw = _kwargs(backend, case, norm)
    args = [backend.from_numpy(a) for a in (Q, K, V)]
    exact = backend.to_numpy(na.yat_attention(*args, block_size=None, **kw))
    for size in (1, 4, 64):
        got = backend.to_numpy(na.yat_attention(*args, block_size=size, **kw))
        np.testing.assert_allclose(got, exact, rtol=1e-11, atol=1e-13, err_msg=f"{size=}")


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_window_matches_reference_with_explicit_mask(norm):
    for window in [(3, 1), (None, 2), (0, 0), (4, None)]:
        mask = _window_mask(LQ, LK, *window) & MASK
        want = yat_attention_ref(Q, K, V, mask=mask, normalization=norm, **NORMS[norm])
        for size in (None, 4):
            got = na.yat_attention(
                Q, K, V, mask=MASK, window=window, normalization=norm, block_size=size,
                **NORMS[norm],
            )  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=str(window))


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_blocked_float32_close_to_float64(norm):
    args32 = [a.astype(np.float32) for a in (Q, K, V)]
    kw = dict(causal=True, mask=MASK, normalization=norm, **NORMS[norm])
    exact = na.yat_attention(Q, K, V, block_size=None, **kw)
    got = na.yat_attention(*args32, block_size=4, **kw)
    assert got.dtype == np.float32
    # the materialised float32 path's own error is the yardstick: blocked may not be worse
    # than 4x it plus a few float32 ulps of the output scale
    mat = na.yat_attention(*args32, block_size=None, **kw)
    bound = 4 * np.abs(mat - exact).max() + 8 * np.finfo(np.float32).eps * np.abs(exact).max()
    assert np.abs(got - exact).max() <= bound


GRAD_BACKENDS = ["torch", "jax", "tensorflow"]


def _grads(b: Backend, size, case, norm, learnable):
    """Gradients of a weighted sum of the output w.r.t. q, k, v (and alpha, epsilon, bias)."""
    kw = dict(CASES[case], **NORMS[norm])
    names = ["q", "k", "v"] + (["alpha", "epsilon"] if learnable else [])
    values = [Q, K, V] + ([np.array(1.3), np.array(0.05)] if learnable else [])
    if "bias" in kw:
        names.append("bias")
        values.append(kw.pop("bias"))
    fixed = {k: b.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    w = b.from_numpy(W)

    def loss(*xs):
        named = dict(zip(names, xs))
        q, k, v = named.pop("q"), named.pop("k"), named.pop("v")
        out = na.yat_attention(q, k, v, block_size=size, **named, **fixed)
        return (out * w).sum() if b.name != "tensorflow" else _tf_sum(out * w)

    xs = [b.from_numpy(v) for v in values]
    if b.name == "torch":
        import torch

        xs = [x.requires_grad_() for x in xs]
        return [g.numpy() for g in torch.autograd.grad(loss(*xs), xs)]
    if b.name == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(loss, argnums=tuple(range(len(xs))))(*xs)]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(xs)
        value = loss(*xs)
    return [g.numpy() for g in tape.gradient(value, xs)]


def _tf_sum(x):
    import tensorflow as tf

    return tf.reduce_sum(x)


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", GRAD_BACKENDS)
def test_blocked_gradients_equal_materialised(name, case, norm):
    b = Backend(name)
    b.module()
    learnable = case in ("plain", "mask_causal_bias")
    exact = _grads(b, None, case, norm, learnable)
    got = _grads(b, 4, case, norm, learnable)
    assert len(got) == len(exact)
    for g, e in zip(got, exact):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-11)


def test_torch_additive_mask_gradient_and_gradcheck():
    import torch

    q, k, v = (torch.tensor(a, requires_grad=True) for a in (Q, K, V))
    add = torch.tensor(ADDITIVE, requires_grad=True)
    res = []
    for size in (None, 4):
        out = na.yat_attention(q, k, v, mask=add, block_size=size, causal=True)
        res.append(torch.autograd.grad((out * torch.tensor(W)).sum(), (q, k, v, add)))
    for g, e in zip(*res):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)
    small = [torch.tensor(a[:1, :5], requires_grad=True) for a in (Q, K, V)]
    for norm in ("softmax", "l1"):

        def f(q, k, v, norm=norm):
            return na.yat_attention(q, k, v, block_size=2, causal=True, normalization=norm)

        assert torch.autograd.gradcheck(f, small)
        assert torch.autograd.gradgradcheck(f, small)


@pytest.mark.parametrize("name", ["jax", "tensorflow"])
def test_jit_compiled_blocked_equals_eager(name):
    b = Backend(name)
    mod = b.module()
    args = [b.from_numpy(a) for a in (Q, K, V)]

    def f(q, k, v):
        return na.yat_attention(q, k, v, block_size=4, window=(3, 0), mask=b.from_numpy(MASK))

    if name == "jax":
        compiled = mod.jit(f)
    else:
        compiled = mod.function(f, jit_compile=True)
    np.testing.assert_allclose(
        b.to_numpy(compiled(*args)), b.to_numpy(f(*args)), rtol=1e-12, atol=1e-14
    )


def test_causal_and_window_skip_hidden_tiles():
    full = Blocks(64, 64, 8, 8, None)
    causal = Blocks(64, 64, 8, 8, (None, 0))
    local = Blocks(64, 64, 8, 8, (8, 0))
    count = {n: sum(len(list(b.tiles(*r))) for r in b.rows()) for n, b in
             (("full", full), ("causal", causal), ("local", local))}  # fmt: skip
    assert count == {"full": 64, "causal": 36, "local": 15}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 0}, "block_size"),
        ({"block_size": True}, "block_size"),
        ({"block_size": "big"}, "block_size"),
        ({"window": (1,)}, "window"),
        ({"window": (-1, 2)}, "window"),
        ({"window": (1.5, None)}, "window"),
    ],
)
def test_bad_block_size_and_window_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        na.yat_attention(Q, K, V, **kwargs)


def test_auto_blocks_long_inputs_only():
    long_k = RNG.normal(size=(1, na.attention.AUTO_MIN_KEYS, 4))
    long_v = RNG.normal(size=(1, na.attention.AUTO_MIN_KEYS, 2))
    q = RNG.normal(size=(1, 3, 4))
    got = na.yat_attention(q, long_k, long_v)  # auto: blocked
    want = na.yat_attention(q, long_k, long_v, block_size=None)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", GRAD_BACKENDS)
def test_blocked_gradients_with_broadcast_keys(name):
    """Keys and values shared by both batch rows (k, v without the leading axis): the tile
    gradients of k and v are summed over the broadcast axis."""
    b = Backend(name)
    b.module()
    q, k, v = b.from_numpy(Q), b.from_numpy(K[0]), b.from_numpy(V[0])
    w = b.from_numpy(W)

    def grads(size):
        if name == "torch":
            import torch

            xs = [x.clone().requires_grad_() for x in (q, k, v)]
            out = na.yat_attention(*xs, block_size=size, causal=True)
            return [g.numpy() for g in torch.autograd.grad((out * w).sum(), xs)]
        if name == "jax":
            import jax

            def loss(*xs):
                return (na.yat_attention(*xs, block_size=size, causal=True) * w).sum()

            return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1, 2))(q, k, v)]
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            value = tf.reduce_sum(na.yat_attention(q, k, v, block_size=size, causal=True) * w)
        return [g.numpy() for g in tape.gradient(value, [q, k, v])]

    exact, got = grads(None), grads(3)
    assert [g.shape for g in got] == [(2, LQ, 4), (LK, 4), (LK, 3)]
    for g, e in zip(got, exact):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_torch_blocked_huge_inputs_equal_materialised(norm):
    """Scores that overflow float32 (clipped to its largest value) take the same values and
    gradients tiled as materialised; no NaN."""
    import torch

    base = [torch.tensor(a, dtype=torch.float32) for a in (Q, K, V)]
    base[0] = base[0] * 1e12
    res = []
    for size in (None, 4):
        xs = [x.clone().requires_grad_() for x in base]
        out = na.yat_attention(*xs, block_size=size, causal=True, **NORMS[norm])
        grads = torch.autograd.grad((out * torch.tensor(W, dtype=torch.float32)).sum(), xs)
        res.append([out.detach(), *grads])
    for got, want in zip(res[1], res[0]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("grid", "radius"), [((4, 5), 1), ((3, 4, 5), (1, 0, 2)), ((7,), 2), ((2, 3), 5)]
)
def test_local_window_mask_is_the_grid_neighbourhood(grid, radius):
    from nmn_array.attention import grid_window, local_window_mask

    coords = np.stack(np.unravel_index(np.arange(np.prod(grid)), grid), axis=-1)
    radii = np.broadcast_to(np.asarray(radius), (len(grid),))
    want = (np.abs(coords[:, None, :] - coords[None, :, :]) <= radii).all(axis=-1)
    got = local_window_mask(grid, radius)
    np.testing.assert_array_equal(got, want)
    # the 1-D window contains the neighbourhood, so adding it changes nothing
    lo, hi = grid_window(grid, radius)
    offsets = np.arange(len(want))[None, :] - np.arange(len(want))[:, None]
    assert not np.any(want & ((offsets < -lo) | (offsets > hi)))


def test_local_window_mask_with_blocked_window_equals_mask_alone(backend):
    from nmn_array.attention import grid_window, local_window_mask

    grid = (4, 5)
    rng = np.random.default_rng(5)
    q, k, v = (backend.from_numpy(rng.normal(size=(2, 20, d))) for d in (4, 4, 3))
    mask = backend.from_numpy(local_window_mask(grid, 1))
    exact = na.yat_attention(q, k, v, mask=mask, block_size=None)
    tiled = na.yat_attention(q, k, v, mask=mask, window=grid_window(grid, 1), block_size=4)
    np.testing.assert_allclose(
        backend.to_numpy(tiled), backend.to_numpy(exact), rtol=1e-11, atol=1e-13
    )


@pytest.mark.parametrize(
    ("grid", "radius", "match"),
    [((), 1, "grid_shape"), ((3, 0), 1, "grid_shape"), ((3, 3), -1, "radius"),
     ((3, 3), (1,), "radius"), ((3, 3), 1.5, "radius")],
)  # fmt: skip
def test_local_window_mask_bad_arguments_raise(grid, radius, match):
    from nmn_array.attention import local_window_mask

    with pytest.raises(ValueError, match=match):
        local_window_mask(grid, radius)


def test_auto_tiles_follow_a_two_sided_window():
    from nmn_array.attention import _auto_block

    assert _auto_block(None) == na.attention.AUTO_BLOCK
    assert _auto_block((None, 0)) == na.attention.AUTO_BLOCK
    assert _auto_block((128, 0)) == 128
    assert _auto_block((3, 2)) == na.attention.AUTO_MIN_WINDOW_BLOCK
    assert _auto_block((1000, 1000)) == na.attention.AUTO_BLOCK
    long_k = RNG.normal(size=(1, na.attention.AUTO_MIN_KEYS, 4))
    long_v = RNG.normal(size=(1, na.attention.AUTO_MIN_KEYS, 2))
    got = na.yat_attention(long_k, long_k, long_v, window=(130, 0))  # auto: tiles of 128
    want = na.yat_attention(long_k, long_k, long_v, window=(130, 0), block_size=None)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("case", ["plain", "window", "mask"])
def test_blocked_nan_and_inf_spread_as_materialised(backend, case):
    # a NaN query entry spoils only its own row; an infinite key entry every row that sees
    # it: the tiles must spread them exactly as the whole score matrix does
    q, k = Q.copy(), K.copy()
    q[1, 4, 2] = np.nan
    k[0, 6, 1] = np.inf
    kw = _kwargs(backend, case, "softmax")
    args = [backend.from_numpy(a) for a in (q, k, V)]
    exact = backend.to_numpy(na.yat_attention(*args, block_size=None, **kw))
    got = backend.to_numpy(na.yat_attention(*args, block_size=4, **kw))
    assert np.isnan(exact).any() and not np.isnan(exact).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))
    finite = ~np.isnan(exact)
    np.testing.assert_allclose(got[finite], exact[finite], rtol=1e-11, atol=1e-13)
