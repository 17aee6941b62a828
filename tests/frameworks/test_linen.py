"""nmn_array.frameworks.linen against nmn.linen 0.3.5: parity, params trees, jit, training."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation  # noqa: E402

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
optax = pytest.importorskip("optax")
serialization = pytest.importorskip("flax.serialization")
N = pytest.importorskip("nmn.linen")

from nmn_array.frameworks import linen as M  # noqa: E402

import nmn_array  # noqa: E402
from tests.frameworks._parity import RTOL_F64, assert_parity  # noqa: E402

jnp = jax.numpy
F64 = jnp.float64

pytestmark = pytest.mark.skipif(
    not jax.config.jax_enable_x64, reason="float64 parity needs JAX_ENABLE_X64=1 (tests/conftest)"
)


def _x(*shape, seed=1, dtype=F64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


_JITTED: dict = {}


def _apply(model, params, *args, method=None, rngs=None, **kwargs):
    """``model.apply`` under ``jax.jit``: one compilation per signature instead of one per
    primitive. Jitted callers are cached per (module, method, static arguments); array
    keyword arguments (masks) are traced."""
    dynamic = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
    static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in dynamic))
    key = (model, method, static, tuple(sorted(dynamic)))
    if key not in _JITTED:

        def run(p, r, *a, **dyn):
            return model.apply(p, *a, method=method, rngs=r, **dict(static), **dyn)

        _JITTED[key] = jax.jit(run)
    return _JITTED[key](params, rngs, *args, **dynamic)


def _perturb(params):
    """Move nmn's learnable scalars and zero-initialised biases off their defaults."""

    def move(path, leaf):
        name = path[-1].key
        if name == "alpha":
            return jnp.full_like(leaf, 1.25)  # exact in float32 (nmn attention casts alpha)
        if name == "epsilon_param":
            return leaf + 0.5
        if name == "bias":
            return 0.3 * jax.random.normal(jax.random.key(len(path)), leaf.shape, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(move, params)


def _pair(our_cls, their_cls, x, method=None, **kwargs):
    """Initialise nmn's module; its params tree must be exactly the tree ours creates."""
    theirs, mine = their_cls(**kwargs), our_cls(**kwargs)
    params = _init(theirs, x, method=method)
    _same_tree(mine, params, x, method=method)
    return mine, theirs, _perturb(params)


def _init(model, *args, method=None):
    """``model.init`` under ``jax.jit`` (eager init would compile every primitive)."""
    return jax.jit(functools.partial(model.init, method=method))(jax.random.key(0), *args)


def _same_tree(model, params, *args, method=None):
    """``model`` creates exactly the tree (names, shapes, dtypes) of ``params``."""
    ours = jax.eval_shape(functools.partial(model.init, method=method), jax.random.key(0), *args)
    assert jax.tree.structure(ours) == jax.tree.structure(params)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), ours)
    assert shapes == jax.tree.map(lambda a: (a.shape, a.dtype), params)


# --------------------------------------------------------------------------------------
# YatNMN (Linen computes float64 natively)
# --------------------------------------------------------------------------------------
# each case combines options: every case costs three JAX compilations
DENSE = {
    "plain": dict(),
    "no_bias_no_alpha_spherical": dict(use_bias=False, use_alpha=False, spherical=True),
    "constant_bias_sqrt2_weight_normalized": dict(
        constant_bias=0.375, constant_alpha=True, weight_normalized=True
    ),
    "constant_alpha_spherical_weight_normalized": dict(
        constant_alpha=1.7, spherical=True, weight_normalized=True
    ),
    "learnable_eps_positive_init_lazy": dict(
        learnable_epsilon=True, epsilon=1e-3, positive_init=True, lazy=True
    ),
}


@pytest.mark.parametrize("case", DENSE)
def test_yatnmn_parity(case):
    x = _x(2, 3, 6)
    mine, theirs, p = _pair(M.YatNMN, N.YatNMN, x, features=5, param_dtype=F64, **DENSE[case])
    assert_parity(_apply(mine, p, x), _apply(theirs, p, x), RTOL_F64, f"YatNMN[{case}]")


def test_yatnmn_return_weights_lazy_positive():
    x = _x(3, 4)
    mine, theirs, p = _pair(
        M.YatNMN, N.YatNMN, x, features=2, positive_init=True, return_weights=True, lazy=True
    )
    (y, k), (y_ref, k_ref) = _apply(mine, p, x), _apply(theirs, p, x)
    np.testing.assert_allclose(k, k_ref, rtol=1e-15)
    assert bool((k >= 0).all()) and k.shape == (2, 4)
    assert_parity(y, y_ref, RTOL_F64, "YatNMN[return_weights]")
    grads = jax.jit(jax.grad(lambda q: mine.apply(q, x)[0].sum()))(p)["params"]
    assert float(jnp.abs(grads["kernel"]).max()) == 0.0  # lazy: kernel gradient stopped
    assert float(jnp.abs(grads["bias"]).max()) > 0.0 and float(jnp.abs(grads["alpha"][0])) > 0
    assert M.YatDense is M.YatNMN
    with pytest.raises(NotImplementedError, match="dot_general"):
        layer = M.YatNMN(features=2, dot_general=jax.lax.dot_general)
        jax.eval_shape(layer.init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="epsilon"):
        M.YatNMN(features=2, epsilon=0.0)


# --------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------
CONV = {
    "valid_groups_eps": (2, dict(feature_group_count=2, learnable_epsilon=True)),
    "same_strides_dilation": (2, dict(padding="SAME", strides=(2, 1), kernel_dilation=(1, 2))),
    "pairs_no_bias_no_alpha": (2, dict(padding=((1, 2), (0, 1)), use_bias=False, use_alpha=False)),
    "constant_bias": (2, dict(constant_bias=0.375, padding="SAME_LOWER", strides=(2, 2))),
    "1d": (1, dict(padding="SAME", strides=(3,))),
    "3d": (3, dict(padding="SAME", strides=(1, 2, 1))),
}


@pytest.mark.parametrize("case", CONV)
def test_conv_parity(case):
    nd, kw = CONV[case]
    cls = f"YatConv{nd}D"
    x = _x(2, *(9, 8, 7)[:nd], 4)
    k = (3, 2, 3)[:nd]
    mine, theirs, p = _pair(
        getattr(M, cls), getattr(N, cls), x, features=6, kernel_size=k, param_dtype=F64, **kw
    )
    assert_parity(_apply(mine, p, x), _apply(theirs, p, x), RTOL_F64, f"{cls}[{case}]")


def test_conv_aliases_defaults_and_input_dilation():
    assert M.YatConv2d is M.YatConv2D and M.YatConvTranspose3d is M.YatConvTranspose3D
    assert M.YatConv3D(features=1, kernel_size=(1, 1, 1)).strides == (1, 1, 1)
    assert M.YatConv2D(features=1, kernel_size=(1, 1)).padding == "VALID"
    layer = M.YatConv1D(features=2, kernel_size=(3,), input_dilation=(2,))
    with pytest.raises(NotImplementedError, match="input"):
        jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 8, 2)))


CONV_T = {
    "valid_stride": (2, dict(strides=(2, 2))),
    "same_stride_eps_no_alpha": (2, dict(padding="SAME", strides=(3, 2), learnable_epsilon=True)),
    "pairs_constant_bias": (2, dict(padding=((1, 2), (1, 1)), strides=(2, 2), constant_bias=0.375)),
    "1d_no_bias": (1, dict(strides=(2,), use_bias=False)),
    "3d": (3, dict(padding="SAME", strides=(2, 1, 2))),
}


@pytest.mark.parametrize("case", CONV_T)
def test_conv_transpose_parity(case):
    nd, kw = CONV_T[case]
    cls = f"YatConvTranspose{nd}D"
    x = _x(2, *(5, 4, 3)[:nd], 4)
    k = (3, 2, 3)[:nd]
    mine, theirs, p = _pair(
        getattr(M, cls), getattr(N, cls), x, features=6, kernel_size=k, param_dtype=F64, **kw
    )
    assert_parity(_apply(mine, p, x), _apply(theirs, p, x), RTOL_F64, f"{cls}[{case}]")


# --------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------
EMBED = {
    "learnable_alpha": dict(),
    "no_alpha": dict(use_alpha=False),
    "constant_alpha": dict(constant_alpha=1.7),
    "spherical": dict(spherical=True),
}


@pytest.mark.parametrize("case", EMBED)
def test_embed_parity(case):
    q = _x(2, 4, 6)
    kw = dict(num_embeddings=11, features=6, param_dtype=F64, **EMBED[case])
    mine, theirs, p = _pair(M.YatEmbed, N.YatEmbed, q, method="attend", **kw)
    ids = jnp.array([[0, 3, 10], [5, 5, 1]])
    np.testing.assert_array_equal(mine.apply(p, ids), theirs.apply(p, ids))
    ours = _apply(mine, p, q, method="attend")
    assert_parity(ours, _apply(theirs, p, q, method="attend"), RTOL_F64, f"YatEmbed[{case}]")


def test_embed_weight_normalized_every_call():
    # Rows are normalised in every call, as nmn Linen does. attend takes |e|^2 as exactly 1
    # (nmn_array.yat's weight_normalized, like the dense layer) where nmn uses the norm of
    # e / (|e| + 1e-8): a ~1e-8 relative difference.
    q = _x(3, 6)
    kw = dict(num_embeddings=11, features=6, weight_normalized=True, param_dtype=F64)
    mine, theirs, p = _pair(M.YatEmbed, N.YatEmbed, q, method="attend", **kw)
    ids = jnp.array([0, 4])
    np.testing.assert_allclose(mine.apply(p, ids), theirs.apply(p, ids), rtol=1e-15)
    ours = _apply(mine, p, q, method="attend")
    ref = _apply(theirs, p, q, method="attend")
    assert_parity(ours, ref, 1e-7, "YatEmbed[weight_normalized, |e|^2 := 1]")


# --------------------------------------------------------------------------------------
# Multi-head attention (head_dim 4: nmn's float32 sqrt(d) is exact)
# --------------------------------------------------------------------------------------
def _causal(lq, lk):
    return jnp.tril(jnp.ones((lq, lk), bool), k=lk - lq)


def _mask(kind):
    if kind == "none":
        return None
    if kind == "causal":
        return _causal(5, 5)
    if kind == "padding":
        return jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
    return _causal(5, 5).at[2].set(False)  # a fully masked query row


def _mha(kind="none", x=None, tol=RTOL_F64, name="", **kwargs):
    x = _x(2, 5, 8) if x is None else x
    kw = dict(num_heads=2, param_dtype=F64)
    kw.update(kwargs)
    mine, theirs, p = _pair(M.MultiHeadAttention, N.MultiHeadAttention, x, **kw)
    m = _mask(kind)
    out = _apply(mine, p, x, mask=m)
    assert_parity(out, _apply(theirs, p, x, mask=m), tol, f"MultiHeadAttention[{name},{kind}]")
    return out


@pytest.mark.parametrize("kind", ["none", "causal", "padding", "fully_masked_row"])
def test_mha_parity_masks(kind):
    out = _mha(kind, name="default")
    if kind == "fully_masked_row":
        assert float(jnp.abs(out[:, 2]).max()) == 0.0


MHA = {
    "no_bias_no_alpha": dict(use_bias=False, use_alpha=False),
    "l1": dict(normalization="l1"),
    "constant_alpha": dict(constant_alpha=1.25),
    "features_epsilon": dict(num_heads=4, qkv_features=16, out_features=6, epsilon=1e-3),
}


@pytest.mark.parametrize("case", MHA)
def test_mha_parity_options(case):
    _mha("causal", name=case, **MHA[case])


def test_mha_normalize_qk_decision_2():
    # Decision 2: q / max(|q|, 1e-12) instead of nmn Linen's q / (|q| + 1e-8)
    _mha("causal", tol=1e-6, name="normalize_qk, Decision 2", normalize_qk=True)


def test_mha_cross_attention_and_alias():
    assert M.MultiHeadYatAttention is M.MultiHeadAttention
    q, kv, v = _x(2, 3, 8), _x(2, 7, 8, seed=2), _x(2, 7, 8, seed=3)
    mine, theirs, p = _pair(M.MultiHeadAttention, N.MultiHeadAttention, q, num_heads=2)
    m = _causal(3, 7)
    assert_parity(
        _apply(mine, p, q, kv, v, mask=m),
        _apply(theirs, p, q, kv, v, mask=m),
        RTOL_F64,
        "MHA[cross]",
    )


def test_mha_spherical_decision_5():
    # Decision 5: spherical is honoured (nmn Linen ignores it). Reference: nmn's PyTorch
    # layer with the same weights (Linen Dense kernel (in, out) = torch weight.T).
    torch = pytest.importorskip("torch")
    nmn_torch = pytest.importorskip("nmn.torch")
    x = _x(2, 5, 8)
    mine = M.MultiHeadAttention(num_heads=2, spherical=True, param_dtype=F64)
    p = _perturb(_init(mine, x))
    ref = nmn_torch.MultiHeadYatAttention(8, 2, spherical=True).double()
    with torch.no_grad():
        for ours_name, name in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "out")):
            lin = getattr(ref, f"{name}_proj")
            lin.weight.copy_(torch.from_numpy(np.asarray(p["params"][ours_name]["kernel"]).T))
            lin.bias.copy_(torch.from_numpy(np.asarray(p["params"][ours_name]["bias"])))
        ref.alpha.fill_(1.25)
    m = _causal(5, 5)
    expected = ref(torch.from_numpy(np.asarray(x)), mask=torch.from_numpy(np.asarray(m)))
    assert_parity(_apply(mine, p, x, mask=m), expected, RTOL_F64, "MHA[spherical, Decision 5]")


def test_mha_dropout_decision_5():
    x = _x(2, 6, 8)
    attn = M.MultiHeadAttention(num_heads=2, dropout_rate=0.5, param_dtype=F64)
    p = _init(attn, x)
    drop = dict(deterministic=False)
    a = _apply(attn, p, x, rngs={"dropout": jax.random.key(1)}, **drop)
    b = _apply(attn, p, x, rngs={"dropout": jax.random.key(1)}, **drop)
    c = _apply(attn, p, x, rngs={"dropout": jax.random.key(2)}, **drop)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    ref = N.MultiHeadAttention(num_heads=2, dropout_rate=0.5, param_dtype=F64)
    assert_parity(_apply(attn, p, x), _apply(ref, p, x), RTOL_F64, "MHA[deterministic]")


# --------------------------------------------------------------------------------------
# Rotary attention (no nmn Linen layer: parity with nmn.nnx's RotaryYatAttention)
# --------------------------------------------------------------------------------------
def test_rotary_parity_with_nmn_nnx():
    nnx = pytest.importorskip("flax.nnx")
    nmn_nnx = pytest.importorskip("nmn.nnx")
    ref = nmn_nnx.RotaryYatAttention(
        8, 2, 16, param_dtype=F64, use_bias=True, normalization="l1", rngs=nnx.Rngs(0)
    )
    ref.alpha[...] = jnp.array([1.25])
    mine = M.RotaryYatAttention(
        embed_dim=8, num_heads=2, max_seq_len=16, use_bias=True, normalization="l1",
        param_dtype=F64,
    )  # fmt: skip
    x = _x(2, 5, 8)
    p = jax.eval_shape(mine.init, jax.random.key(0), x)
    params = {"alpha": jnp.array([1.25])}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        lin = getattr(ref, name)
        lin.bias[...] = 0.3 * jax.random.normal(jax.random.key(len(name)), (8,), F64)
        params[name] = {"kernel": lin.kernel[...], "bias": lin.bias[...]}
    assert jax.tree.structure({"params": params}) == jax.tree.structure(p)
    p = {"params": params}
    assert_parity(_apply(mine, p, x), ref(x), RTOL_F64, "RotaryYatAttention[vs nmn.nnx]")
    m = _causal(5, 5)
    assert_parity(
        _apply(mine, p, x, m, position_offset=4),
        ref(x, m, position_offset=4),
        RTOL_F64,
        "RotaryYatAttention[vs nmn.nnx, causal, offset]",
    )
    with pytest.raises(ValueError, match="max_seq_len"):
        jax.eval_shape(functools.partial(mine.apply, position_offset=12), p, x)


# --------------------------------------------------------------------------------------
# Params trees, jit, training
# --------------------------------------------------------------------------------------
class _Net(nn.Module):
    """Nested layers (every layer's params tree is also checked by each parity test)."""

    lib: object

    @nn.compact
    def __call__(self, h, ids):
        lib = self.lib
        emb = lib.YatEmbed(num_embeddings=10, features=8, param_dtype=F64)
        h = h + emb(ids)[:, None, :]
        h = lib.MultiHeadAttention(num_heads=2, param_dtype=F64)(h)
        y = lib.YatNMN(features=5, learnable_epsilon=True, param_dtype=F64)(h.mean(1))
        return y, emb.attend(h.mean(1))


def test_nmn_params_tree_applies_and_serializes():
    h, ids = _x(2, 5, 8), jnp.array([1, 7])
    theirs, mine = _Net(N), _Net(M)
    params = _perturb(_init(theirs, h, ids))
    ours = _init(mine, h, ids)
    _same_tree(mine, params, h, ids)
    # a checkpoint written from nmn's params restores into our tree
    restored = serialization.from_bytes(ours, serialization.to_bytes(params))
    a, b = _apply(mine, restored, h, ids), _apply(theirs, params, h, ids)
    for u, v, name in zip(a, b, ("YatNMN", "attend")):
        assert_parity(u, v, RTOL_F64, f"params[_Net {name}]")


def test_jit_equals_eager():
    x = _x(3, 6)
    dense = M.YatNMN(features=4, param_dtype=F64, learnable_epsilon=True)
    p = _init(dense, x)
    np.testing.assert_allclose(_apply(dense, p, x), dense.apply(p, x), rtol=1e-12)


def test_training_smoke():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = M.YatConv1D(features=4, kernel_size=(3,), padding="SAME")(x)
            return M.YatNMN(features=2, learnable_epsilon=True)(h.reshape(x.shape[0], -1))

    x = jax.random.normal(jax.random.key(0), (64, 8, 1), jnp.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(jnp.int32)
    model = Model()
    params = model.init(jax.random.key(0), x)
    tx = optax.adam(0.02)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(20):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_squashers_reexported():
    assert M.softer_sigmoid is nmn_array.softer_sigmoid
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # softermax: nmn's signature over the core's
    np.testing.assert_array_equal(
        M.softermax(x, 2.0, 1e-9, 0), nmn_array.softermax(x, 2.0, epsilon=1e-9, axis=0)
    )
    np.testing.assert_allclose(M.soft_tanh(jnp.array([1.0, 3.0])), [0.0, 0.5])
