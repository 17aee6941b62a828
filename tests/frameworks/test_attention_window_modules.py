"""``window`` and ``block_size`` of the attention modules (PyTorch, Flax NNX, Flax Linen,
TensorFlow): the tiled path equals the materialised one in outputs and input gradients, a
window equals the same module given that window as an explicit boolean mask, bad values
raise. Keras: tests/keras_backends/test_attention_window_keras.py."""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.test_blocked_attention import _window_mask  # noqa: E402

E, H, L, LK = 8, 2, 9, 5
RNG = np.random.default_rng(31)
XQ = RNG.normal(size=(2, L, E))
XK = RNG.normal(size=(2, LK, E))
W_OUT = np.cos(np.arange(2 * L * E, dtype=np.float64)).reshape(2, L, E)  # the cotangent
MASK = RNG.random((L, L)) < 0.7
MASK[4] = False  # a query that sees no key
CROSS_MASK = RNG.random((L, LK)) < 0.8

#: run(xq, xk or None, mask or None) -> (output, [gradient of sum(output * W_OUT) per input])
Run = Callable[..., tuple[np.ndarray, list[np.ndarray]]]


# --- one factory per framework: make(kind, window, block_size) -> run -----------------
# Every module a factory makes for one kind holds the same parameters (same seed / copied).
def _torch(kind: str, window, block_size) -> Run:
    torch = pytest.importorskip("torch")
    from nmn_array.frameworks import torch as T

    torch.manual_seed(0)
    opts = dict(dtype=torch.float64, window=window, block_size=block_size)
    if kind == "mha":
        m = T.MultiHeadYatAttention(E, H, **opts)
    else:
        m = T.RotaryYatAttention(E, H, max_seq_len=32, **opts)
    m.eval()

    def run(xq, xk, mask):
        inputs = [torch.tensor(t, requires_grad=True) for t in (xq, xk) if t is not None]
        kw = {} if mask is None else {"mask": torch.tensor(mask)}
        out = m(inputs[0], inputs[1], **kw) if len(inputs) == 2 else m(inputs[0], **kw)
        grads = torch.autograd.grad((out * torch.tensor(W_OUT)).sum(), inputs)
        return out.detach().numpy(), [g.numpy() for g in grads]

    return run


def _jax_run(apply: Callable) -> Run:
    """``run`` of a JAX function ``apply(xq, xk, mask)`` (xk None: self-attention)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def run(xq, xk, mask):
        m = None if mask is None else jnp.asarray(mask)
        inputs = tuple(jnp.asarray(t) for t in (xq, xk) if t is not None)

        def loss(*xs):
            out = apply(*xs, m) if len(xs) == 2 else apply(xs[0], None, m)
            return jnp.sum(out * W_OUT), out

        grads, out = jax.grad(loss, argnums=tuple(range(len(inputs))), has_aux=True)(*inputs)
        return np.asarray(out), [np.asarray(g) for g in grads]

    return run


def _nnx(kind: str, window, block_size) -> Run:
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    from nmn_array.frameworks import nnx as N

    opts = dict(param_dtype=jax.numpy.float64, rngs=nnx.Rngs(0), window=window)
    # nonzero biases, so that a keyless query's zeroed output differs from the projection's
    opts.update(bias_init=jax.nn.initializers.normal(1.0), use_bias=True)
    if kind == "mha":
        m = N.MultiHeadAttention(H, E, block_size=block_size, **opts)
        return _jax_run(lambda xq, xk, mask: m(xq, xk, mask=mask))
    m = N.RotaryYatAttention(E, H, 32, block_size=block_size, **opts)
    return _jax_run(lambda xq, xk, mask: m(xq, mask))


def _linen(kind: str, window, block_size) -> Run:
    jax = pytest.importorskip("jax")
    from nmn_array.frameworks import linen as LN

    opts = dict(param_dtype=jax.numpy.float64, window=window, block_size=block_size)
    opts.update(bias_init=jax.nn.initializers.normal(1.0), use_bias=True)  # nonzero
    if kind == "mha":
        m = LN.MultiHeadAttention(num_heads=H, **opts)
    else:
        m = LN.RotaryYatAttention(embed_dim=E, num_heads=H, max_seq_len=32, **opts)
    # the parameters do not depend on window or block_size: one key, the same parameters
    params = m.init(jax.random.key(0), XQ)

    def apply(xq, xk, mask):
        if kind == "mha":
            return m.apply(params, xq, xk, mask=mask)
        return m.apply(params, xq, mask)

    return _jax_run(apply)


def _tf(kind: str, window, block_size) -> Run:
    if kind != "mha":
        pytest.skip("nmn_array.frameworks.tf has no rotary attention module")
    tf = pytest.importorskip("tensorflow")
    from nmn_array.frameworks import tf as TFM

    tf.random.set_seed(0)  # resets the draws: every module gets the same kernels
    m = TFM.MultiHeadYatAttention(E, H, dtype=tf.float64, window=window, block_size=block_size)
    m.build(E, E, E)
    for bias in (m.q_bias, m.k_bias, m.v_bias, m.out_bias):  # nonzero biases, as above
        bias.assign(tf.random.normal(bias.shape, dtype=tf.float64))

    def run(xq, xk, mask):
        inputs = [tf.constant(t) for t in (xq, xk) if t is not None]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = m(inputs[0], inputs[-1], inputs[-1], mask=mask)
            loss = tf.reduce_sum(out * W_OUT)
        return out.numpy(), [g.numpy() for g in tape.gradient(loss, inputs)]

    return run


FRAMEWORKS = {"torch": _torch, "nnx": _nnx, "linen": _linen, "tf": _tf}
MODULES = [
    (fw, kind) for fw in FRAMEWORKS for kind in ("mha", "rotary") if (fw, kind) != ("tf", "rotary")
]


def _close(got, want, what: str) -> None:
    out, grads = got
    out_w, grads_w = want
    np.testing.assert_allclose(out, out_w, rtol=1e-9, atol=1e-12, err_msg=f"{what}: output")
    assert len(grads) == len(grads_w)
    for i, (g, gw) in enumerate(zip(grads, grads_w)):
        np.testing.assert_allclose(g, gw, rtol=1e-9, atol=1e-12, err_msg=f"{what}: grad {i}")


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("window", [(None, 0), (2, 1)], ids=["causal", "window21"])
@pytest.mark.parametrize(("fw", "kind"), MODULES)
def test_block_size_equals_materialised(fw, kind, window, masked):
    make = FRAMEWORKS[fw]
    xk = XK if kind == "mha" else None
    mask = (CROSS_MASK if kind == "mha" else MASK) if masked else None
    tiled = make(kind, window, 4)(XQ, xk, mask)
    exact = make(kind, window, None)(XQ, xk, mask)
    _close(tiled, exact, f"{fw} {kind} window={window} block_size=4 vs None")


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize(("fw", "kind"), MODULES)
def test_window_equals_explicit_mask(fw, kind, masked):
    make = FRAMEWORKS[fw]
    if kind == "mha":
        # cross-attention with fewer keys: window (0, 0) leaves the first L - LK queries
        # without a key, whose outputs the modules zero (after the output projection)
        xk, window, mask = XK, (0, 0), CROSS_MASK
    else:
        xk, window, mask = None, (2, 1), MASK
    lk = LK if kind == "mha" else L
    explicit = _window_mask(L, lk, *window)
    given = mask if masked else None
    with_window = make(kind, window, "auto")(XQ, xk, given)
    with_mask = make(kind, None, "auto")(XQ, xk, explicit & mask if masked else explicit)
    _close(with_window, with_mask, f"{fw} {kind} window={window} vs its mask")
    unwindowed = make(kind, None, "auto")(XQ, xk, given)[0]
    assert not np.allclose(with_window[0], unwindowed), "the window changed nothing"
    if kind == "mha":
        assert np.all(with_window[0][:, : L - LK] == 0.0)


BAD_WINDOWS = [(-1, 0), (1,), (1.5, 0), "left", (True, 0)]


@pytest.mark.parametrize("bad", BAD_WINDOWS, ids=repr)
@pytest.mark.parametrize(("fw", "kind"), MODULES)
def test_bad_window_raises(fw, kind, bad):
    with pytest.raises(ValueError, match="window"):
        FRAMEWORKS[fw](kind, bad, "auto")(XQ, None, None)


@pytest.mark.parametrize("bad", [0, -2, 2.0, "big", True], ids=repr)
@pytest.mark.parametrize(("fw", "kind"), MODULES)
def test_bad_block_size_raises(fw, kind, bad):
    with pytest.raises(ValueError, match="block_size"):
        FRAMEWORKS[fw](kind, None, bad)(XQ, None, None)


@pytest.mark.parametrize(("fw", "kind"), MODULES)
def test_mask_of_wrong_shape_names_the_argument(fw, kind):
    """A (3, 3) mask for 9 queries and keys: the module's own error names ``mask`` and both
    shapes (it broadcasts the mask before the core sees it, so the array library's broadcast
    error, which names neither, must not reach the user)."""
    run = FRAMEWORKS[fw](kind, None, None)
    with pytest.raises(ValueError, match=r"mask must broadcast to .*got shape \(3, 3\)"):
        run(XQ, None, np.ones((3, 3), dtype=bool))


def test_torch_dropout_applies_the_window():
    """Training dropout uses the materialised weights; the window still limits them (the
    same seed draws the same dropout mask as with the window's explicit mask)."""
    torch = pytest.importorskip("torch")
    from nmn_array.frameworks import torch as T

    outs = []
    for window, mask in (((2, 1), None), (None, torch.tensor(_window_mask(L, L, 2, 1)))):
        torch.manual_seed(0)
        m = T.RotaryYatAttention(E, H, dropout=0.5, dtype=torch.float64, window=window)
        m.train()
        torch.manual_seed(1)
        outs.append(m(torch.tensor(XQ), mask).detach().numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-14)


def test_nnx_sow_weights_and_decode_apply_the_window():
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    from nmn_array.frameworks import nnx as N

    jnp = jax.numpy
    m = N.MultiHeadAttention(H, E, param_dtype=jnp.float64, rngs=nnx.Rngs(0), window=(2, 0))
    x = jnp.asarray(XQ)
    full = m(x, sow_weights=True)
    (weights,) = m.attention_weights.value
    del m.attention_weights
    hidden = ~_window_mask(L, L, 2, 0)
    assert np.all(np.asarray(weights)[..., hidden] == 0.0)
    assert np.all(np.asarray(weights)[..., ~hidden] > 0.0)
    # one token at a time over the cache: the window sits around the cache index
    m.init_cache((2, L, E), dtype=jnp.float64)
    for t in range(L):
        step = m(x[:, t : t + 1], decode=True)
        np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-9, atol=1e-12)


def test_nnx_window_needs_the_builtin_attention():
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    from nmn_array.frameworks import nnx as N

    with pytest.raises(ValueError, match="window"):
        N.MultiHeadAttention(
            H, E, rngs=nnx.Rngs(0), window=(1, 1), attention_fn=N.yat_attention,
            param_dtype=jax.numpy.float64,
        )  # fmt: skip
