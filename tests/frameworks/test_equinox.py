"""nmn_array.frameworks.equinox: filter_jit, filter_grad, serialisation, DropConnect keys and
inference mode, argument errors. (module_equals_function for every layer is generated from
spec/layers/*.yaml.)"""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation

fast_xla_compilation()  # before JAX creates its CPU backend
# plain imports, not importorskip: equinox is pinned in requirements/ci.txt, so a failing
# import is an error
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
from nmn_array.frameworks import equinox as M  # noqa: E402

import nmn_array  # noqa: E402

jnp = jax.numpy
KEY = jax.random.key(0)


def _close(a, b, rtol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-12)


def _x(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


#: (layer, one example); layers with a learnable bias, alpha and epsilon, so that every kind
#: of array field goes through jit, grad and serialisation.
CASES = {
    "dense": (lambda k: M.YatNMN(4, 3, learnable_epsilon=True, key=k), (4,)),
    "conv2d": (
        lambda k: M.YatConv2D(2, 3, 3, padding="SAME", learnable_epsilon=True, key=k),
        (2, 5, 5),
    ),
    "conv_transpose1d": (
        lambda k: M.YatConvTranspose1D(2, 3, 3, stride=2, padding=1, key=k),
        (2, 4),
    ),
    "conv3d": (lambda k: M.YatConv3D(1, 2, 2, groups=1, key=k), (1, 3, 3, 3)),
    "attention": (
        lambda k: M.MultiHeadYatAttention(4, 2, learnable_epsilon=True, key=k),
        (3, 4),
    ),
    "rotary": (lambda k: M.RotaryYatAttention(8, 2, max_seq_len=6, use_bias=True, key=k), (5, 8)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_filter_jit_and_vmap_equal_the_eager_call(name):
    make, shape = CASES[name]
    layer, x = make(KEY), _x((3, *shape))
    eager = jnp.stack([layer(xi) for xi in x])
    _close(eqx.filter_jit(eqx.filter_vmap(layer))(x), eager)
    _close(eqx.filter_jit(lambda m, v: jax.vmap(m)(v))(layer, x), eager)


def test_dense_is_the_pure_function_of_its_fields():
    layer = M.YatNMN(4, 3, constant_alpha=2.0, epsilon=0.1, key=KEY)
    layer = eqx.tree_at(lambda m: m.bias, layer, jnp.array([0.5, -1.0, 2.0]))
    x = _x((4,))
    want = nmn_array.yat(x, layer.weight, layer.bias, alpha=2.0, epsilon=0.1)
    _close(layer(x), want, rtol=1e-12)
    assert layer.weight.shape == (3, 4) and layer.alpha is None
    _close(layer(np.asarray(x).tolist()), want, rtol=1e-12)  # any array-like example


def test_conv_is_the_pure_function_channels_first():
    conv = M.YatConv1D(2, 4, 3, stride=2, padding=((2, 1),), dilation=1, groups=2, key=KEY)
    x = _x((2, 9))
    want = nmn_array.yat_conv(
        x[None],
        conv.weight,
        conv.bias,
        stride=2,
        padding=((2, 1),),
        groups=2,
        alpha=conv.alpha,
        epsilon=1e-5,
    )[0]
    assert conv.weight.shape == (4, 1, 3)
    _close(conv(x), want, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_filter_grad_matches_the_gradient_of_the_pure_function(name):
    make, shape = CASES[name]
    layer, x = make(KEY), _x((2, *shape))
    # one weight checked by finite differences: the layer's, or a projection's (attention)
    where = {"attention": lambda m: m.k_proj.weight, "rotary": lambda m: m.q_proj.weight}.get(
        name, lambda m: m.weight
    )

    def loss(model, v):
        return jnp.sum(jax.vmap(model)(v) ** 2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(layer, x)
    assert type(grads) is type(layer)
    # the gradient along one random direction against central differences
    direction = _x(where(layer).shape, seed=7)
    h = 1e-6
    shifted = [eqx.tree_at(where, layer, where(layer) + s * h * direction) for s in (1, -1)]
    numeric = (loss(shifted[0], x) - loss(shifted[1], x)) / (2 * h)
    _close(jnp.vdot(where(grads), direction), numeric, rtol=1e-5)
    for field in ("bias", "alpha", "epsilon_param"):
        if getattr(layer, field, None) is not None:
            value = getattr(grads, field)
            assert value.shape == getattr(layer, field).shape
            assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.any(value != 0)), field


@pytest.mark.parametrize("name", sorted(CASES))
def test_serialise_leaves_round_trip(name, tmp_path):
    make, shape = CASES[name]
    layer = make(KEY)
    # change every array away from its initial value so a reload that keeps the fresh
    # module's arrays would fail
    layer = jax.tree_util.tree_map(lambda a: a + 0.25 if eqx.is_array(a) else a, layer)
    path = tmp_path / f"{name}.eqx"
    eqx.tree_serialise_leaves(path, layer)
    fresh = make(jax.random.key(42))
    loaded = eqx.tree_deserialise_leaves(path, fresh)
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(layer)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert len(jax.tree_util.tree_leaves(eqx.filter(loaded, eqx.is_array))) >= 3
    x = _x(shape)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(layer(x)))


def test_embed_lookup_attend_and_serialisation():
    emb = M.YatEmbed(5, 3, key=KEY)
    ids = jnp.array([4, 0, 2])
    np.testing.assert_array_equal(np.asarray(jax.vmap(emb)(ids)), np.asarray(emb.weight[ids]))
    q = _x((2, 3))
    want = nmn_array.yat(q, emb.weight, alpha=emb.alpha, epsilon=1e-5)
    _close(eqx.filter_jit(lambda m, v: jax.vmap(m.attend)(v))(emb, q), want, rtol=1e-12)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, emb)
    buffer.seek(0)
    loaded = eqx.tree_deserialise_leaves(buffer, M.YatEmbed(5, 3, key=jax.random.key(9)))
    np.testing.assert_array_equal(np.asarray(loaded.weight), np.asarray(emb.weight))
    given = M.YatEmbed(weight=jnp.ones((2, 3)), constant_alpha=True)
    assert given.num_embeddings == 2 and given.alpha is None


# -- DropConnect: the call's key, inference ------------------------------------------------


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda **kw: M.YatNMN(6, 4, key=KEY, **kw), (6,)),
        (lambda **kw: M.YatConv1D(2, 3, 3, key=KEY, **kw), (2, 7)),
        (lambda **kw: M.YatConvTranspose2D(2, 3, 2, key=KEY, **kw), (2, 3, 3)),
    ],
)
def test_dropconnect_draws_from_the_key_unless_inference(make, shape):
    layer, x = make(drop_rate=0.5), _x(shape)
    plain = make()(x)
    a, b = jax.random.key(1), jax.random.key(2)
    dropped = layer(x, key=a)
    # the draw: nmn_array.drop_connect of the weight with a Bernoulli(1 - rate) keep mask
    keep = jax.random.bernoulli(a, 0.5, layer.weight.shape)
    reference = eqx.tree_at(
        lambda m: m.weight, make(), nmn_array.drop_connect(layer.weight, keep, rate=0.5)
    )
    _close(dropped, reference(x), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(layer(x, key=a)), np.asarray(dropped))
    assert not np.allclose(np.asarray(layer(x, key=b)), np.asarray(dropped))
    assert not np.allclose(np.asarray(dropped), np.asarray(plain))
    # inference: no key needed, the plain output (the argument overrides the field)
    np.testing.assert_array_equal(np.asarray(layer(x, inference=True)), np.asarray(plain))
    inferring = eqx.nn.inference_mode(layer)
    assert inferring.inference is True
    np.testing.assert_array_equal(np.asarray(inferring(x)), np.asarray(plain))
    _close(inferring(x, key=a, inference=False), dropped, rtol=1e-12)
    with pytest.raises(ValueError, match=r"drop_rate=0\.5.*needs a key"):
        layer(x)


def test_dropconnect_under_filter_jit_with_a_traced_key():
    layer, x = M.YatNMN(5, 3, drop_rate=0.3, key=KEY), _x((4, 5))
    keys = jax.random.split(jax.random.key(3), 4)

    @eqx.filter_jit
    def run(model, v, k):
        return jax.vmap(lambda vi, ki: model(vi, key=ki))(v, k)

    eager = jnp.stack([layer(xi, key=ki) for xi, ki in zip(x, keys)])
    _close(run(layer, x, keys), eager)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: M.YatNMN(0, 3, key=KEY), r"YatNMN: in_features must be a positive int, got 0"),
        (lambda: M.YatNMN(2, 3, drop_rate=1.0, key=KEY), r"drop_rate"),
        (lambda: M.YatNMN(2, 3, epsilon=0.0, key=KEY), r"epsilon must be a positive finite"),
        (
            lambda: M.YatConv2D(3, 4, 3, groups=2, key=KEY),
            r"in_channels \(3\) and out_channels \(4\) must be multiples of groups \(2\)",
        ),
        (lambda: M.YatConv2D(2, 2, (3, 3, 3), key=KEY), r"kernel_size must be an int or 2 ints"),
        (
            lambda: M.YatConv1D(2, 2, 3, padding="FULL", key=KEY),
            r"YatConv1D: padding must be one of",
        ),
        (
            lambda: M.YatConv1D(2, 2, 3, padding_mode="wrap", key=KEY),
            r"padding_mode must be one of",
        ),
        (
            lambda: M.YatConvTranspose1D(2, 2, 3, stride=2, output_padding=2, key=KEY),
            r"output_padding must be in \[0, max\(stride, dilation\)\)",
        ),
        (lambda: M.YatEmbed(4, 3), r"YatEmbed needs num_embeddings, embedding_size and key"),
        (
            lambda: M.YatEmbed(4, 3, weight=jnp.ones((2, 3))),
            r"weight must have shape .*\(4, 3\), got \(2, 3\)",
        ),
    ],
)
def test_bad_arguments_raise_naming_them(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_key_is_keyword_only():
    with pytest.raises(TypeError):
        M.YatNMN(2, 3, True, key=KEY)  # use_bias is keyword-only too; the key must be named
    with pytest.raises(TypeError, match="key"):
        M.YatNMN(2, 3)


@pytest.mark.parametrize(
    "layer, x, match",
    [
        (
            M.YatNMN(4, 3, key=KEY),
            jnp.ones((2, 4)),
            r"YatNMN takes one unbatched example of shape \(in_features,\) = \(4,\), got an input of shape \(2, 4\); batch it with jax.vmap",
        ),
        (
            M.YatConv2D(3, 2, 3, key=KEY),
            jnp.ones((2, 3, 5, 5)),
            r"YatConv2D takes one unbatched example of shape \(in_channels=3, \.\.\., \.\.\.\), got an input of shape \(2, 3, 5, 5\)",
        ),
        (M.YatConv1D(3, 2, 3, key=KEY), jnp.ones((2, 5)), r"in_channels=3.*shape \(2, 5\)"),
        (
            M.YatEmbed(4, 3, key=KEY),
            jnp.array([1, 2]),
            r"one integer index of shape \(\), got an input of shape \(2,\)",
        ),
        (M.YatEmbed(4, 3, key=KEY), jnp.array(1.0), r"dtype float"),
    ],
)
def test_bad_inputs_raise_naming_the_shapes(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer(x)


def test_attend_checks_the_query_shape():
    with pytest.raises(
        ValueError, match=r"\(embedding_size,\) = \(3,\), got an input of shape \(2, 3\)"
    ):
        M.YatEmbed(4, 3, key=KEY).attend(jnp.ones((2, 3)))


# -- attention -------------------------------------------------------------------------------


def test_rotary_attention_is_the_pure_functions_of_its_fields():
    attn = M.RotaryYatAttention(4, 2, max_seq_len=8, theta=100.0, constant_alpha=True, key=KEY)
    x = _x((3, 4))
    mask = jnp.array([[True, False, False], [True, True, False], [False, False, False]])

    def heads(proj):
        return jnp.swapaxes((x @ proj.weight.T).reshape(3, 2, 2), 0, 1)

    q, k, v = (heads(p) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = (nmn_array.rotary_embedding(t, jnp.arange(3), theta=100.0) for t in (q, k))
    out = nmn_array.yat_attention(q, k, v, mask=mask, alpha=2**0.5, epsilon=1e-5)
    want = jnp.swapaxes(out, 0, 1).reshape(3, 4) @ attn.o_proj.weight.T
    want = want.at[2].set(0.0)  # the query that sees no key gives zeros
    _close(attn(x, mask), want, rtol=1e-10)
    assert not np.any(np.asarray(attn(x, mask)[2]))


def test_attention_dropout_draws_from_the_key_unless_inference():
    attn, x = M.MultiHeadYatAttention(4, 2, dropout_rate=0.5, key=KEY), _x((5, 4))
    plain = attn(x, inference=True)
    a = attn(x, key=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(attn(x, key=jax.random.key(1))), np.asarray(a))
    assert not np.allclose(np.asarray(a), np.asarray(plain))
    assert not np.allclose(np.asarray(attn(x, key=jax.random.key(2))), np.asarray(a))
    np.testing.assert_array_equal(np.asarray(eqx.nn.inference_mode(attn)(x)), np.asarray(plain))
    with pytest.raises(ValueError, match=r"dropout_rate=0\.5.*needs a key"):
        attn(x)


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: M.MultiHeadYatAttention(6, 4, key=KEY),
            r"embed_dim \(6\) must be divisible by num_heads \(4\)",
        ),
        (
            lambda: M.RotaryYatAttention(6, 2, key=KEY),
            r"head_dim = embed_dim / num_heads = 3 must be even",
        ),
        (lambda: M.RotaryYatAttention(8, 2, normalization="l2", key=KEY), r"normalization must be"),
        (lambda: M.MultiHeadYatAttention(4, 2, dropout_rate=-0.1, key=KEY), r"dropout_rate"),
    ],
)
def test_bad_attention_arguments_raise_naming_them(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_attention_inputs_raise_naming_the_shapes():
    attn = M.MultiHeadYatAttention(4, 2, key=KEY)
    with pytest.raises(
        ValueError, match=r"query of shape \(length, embed_dim=4\), got \(2, 3, 4\)"
    ):
        attn(jnp.ones((2, 3, 4)))
    with pytest.raises(
        ValueError,
        match=r"mask must broadcast to \(num_heads, Lq, Lk\) = \(2, 3, 3\), got \(4, 4\)",
    ):
        attn(jnp.ones((3, 4)), mask=jnp.ones((4, 4), bool))
    rotary = M.RotaryYatAttention(4, 1, max_seq_len=2, key=KEY)
    with pytest.raises(ValueError, match=r"sequence length 3 exceeds max_seq_len=2"):
        rotary(jnp.ones((3, 4)))
