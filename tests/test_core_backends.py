"""Array type in equals array type out, dtype policy, devices, laziness and tracing."""

from __future__ import annotations

import numpy as np
import pytest

import nmn_array as na

RNG = np.random.default_rng(1)
X2 = RNG.normal(size=(3, 5))
W2 = RNG.normal(size=(4, 5))
XC = RNG.normal(size=(2, 4, 9))
WC = RNG.normal(size=(6, 2, 3))
WCT = RNG.normal(size=(4, 3, 3))
Q = RNG.normal(size=(2, 5, 4))
K = RNG.normal(size=(2, 6, 4))
V = RNG.normal(size=(2, 6, 3))
S = np.abs(RNG.normal(size=(3, 5)))

CALLS = {
    "yat": (lambda x, w: na.yat(x, w, alpha=1.5), (X2, W2)),
    "yat_vector": (lambda x, w: na.yat(x, w), (X2, W2[0])),
    "yat_conv": (lambda x, w: na.yat_conv(x, w, groups=2, padding="same", stride=2), (XC, WC)),
    "yat_conv_channels_last": (
        lambda x, w: na.yat_conv(
            x, w, groups=2, data_format="channels_last", padding_mode="circular", padding=1
        ),
        (np.moveaxis(XC, 1, -1), WC),
    ),
    "yat_conv_transpose": (
        lambda x, w: na.yat_conv_transpose(x, w, stride=2, padding=1, output_padding=1),
        (XC, WCT),
    ),
    "yat_attention": (lambda q, k, v: na.yat_attention(q, k, v, causal=True), (Q, K, V)),
    "yat_attention_weights": (
        lambda q, k: na.yat_attention_weights(q, k, normalization="l1"),
        (Q, K),
    ),
    "rotary_embedding": (lambda x: na.rotary_embedding(x), (Q,)),
    "softermax": (lambda x: na.softermax(x, n=2.0), (S,)),
    "softer_sigmoid": (lambda x: na.softer_sigmoid(x, n=1.5), (S,)),
    "soft_tanh": (lambda x: na.soft_tanh(x), (S,)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_returns_input_array_type_and_dtype(backend, name, dtype):
    f, args = CALLS[name]
    out = f(*[backend.from_numpy(a, dtype) for a in args])
    assert isinstance(out, backend.array_type()), f"{name} on {backend} returned {type(out)}"
    assert getattr(out.dtype, "name", str(out.dtype)).endswith(dtype), (
        f"{name} on {backend}: dtype {out.dtype}, expected {dtype}"
    )
    expected = f(*[a.astype(dtype) for a in args])
    got = backend.to_numpy(out)
    assert got.shape == expected.shape
    rtol = 1e-9 if dtype == "float64" else 2e-3
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("name", sorted(CALLS))
def test_low_precision_is_computed_in_float32_and_cast_back(name):
    torch = pytest.importorskip("torch")
    f, args = CALLS[name]
    for low in (torch.float16, torch.bfloat16):
        out = f(*[torch.tensor(a, dtype=low) for a in args])
        assert out.dtype == low
        # the same rounded inputs computed in float32, then rounded once
        ref = f(*[torch.tensor(a, dtype=low).to(torch.float32) for a in args]).to(low)
        assert torch.isfinite(out).all()
        assert torch.equal(out, ref), f"{name} {low}: not float32 math cast back"


def test_float16_saturates_instead_of_overflowing():
    torch = pytest.importorskip("torch")
    x = torch.tensor([[100.0, 100.0]], dtype=torch.float16)
    out = na.yat(x, x, epsilon=1e-5)  # 1e8 / 1e-5 overflows float16
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all() and out.item() == torch.finfo(torch.float16).max


def test_numpy_float16():
    out = na.yat(X2.astype(np.float16), W2.astype(np.float16))
    assert out.dtype == np.float16


def test_jax_jit_grad_vmap():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    x, w = jnp.asarray(XC), jnp.asarray(WC)

    def conv(x, w):
        return na.yat_conv(x, w, groups=2, stride=2, padding="same", dilation=1)

    np.testing.assert_allclose(np.asarray(jax.jit(conv)(x, w)), np.asarray(conv(x, w)), rtol=1e-12)
    g = jax.grad(lambda w: jnp.sum(conv(x, w)))(w)
    assert np.isfinite(np.asarray(g)).all()
    batched = jax.vmap(lambda xi: na.yat(xi, jnp.asarray(W2)))(jnp.asarray(X2))
    np.testing.assert_allclose(np.asarray(batched), na.yat(X2, W2), rtol=1e-12)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_tf_function_equals_eager(jit_compile):
    tf = pytest.importorskip("tensorflow")
    x, w = tf.constant(XC), tf.constant(WC)

    def conv(x, w):
        return na.yat_conv(x, w, groups=2, stride=2, padding="same", dilation=2)

    eager = conv(x, w).numpy()
    graph = tf.function(conv, jit_compile=jit_compile)(x, w).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-12)
    # symbolic batch size: the traced function must not need a static batch
    spec = [tf.TensorSpec([None, 4, 9], tf.float64), tf.TensorSpec([6, 2, 3], tf.float64)]
    traced = tf.function(conv, input_signature=spec)
    np.testing.assert_allclose(traced(x, w).numpy(), eager, rtol=1e-12)
    tspec = [tf.TensorSpec([None, 4, 9], tf.float64), tf.TensorSpec([4, 3, 3], tf.float64)]
    conv_t = tf.function(lambda x, w: na.yat_conv_transpose(x, w, stride=2), input_signature=tspec)
    np.testing.assert_allclose(
        conv_t(x, tf.constant(WCT)).numpy(), na.yat_conv_transpose(XC, WCT, stride=2), rtol=1e-10
    )


def test_torch_compile():
    torch = pytest.importorskip("torch")
    x, w = torch.tensor(XC), torch.tensor(WC)

    def conv(x, w):
        return na.yat_conv(x, w, groups=2, stride=2, padding="same")

    compiled = torch.compile(conv, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w), conv(x, w), rtol=1e-12, atol=0)


def test_dask_stays_lazy_and_keeps_chunks():
    da = pytest.importorskip("dask.array")
    x = da.from_array(XC, chunks=(1, 4, 9))
    out = na.yat_conv(x, da.from_array(WC), groups=2)
    assert isinstance(out, da.Array)
    assert out.chunks[0] == (1, 1), "the batch chunks should survive"
    np.testing.assert_allclose(out.compute(), na.yat_conv(XC, WC, groups=2), rtol=1e-12)


def test_array_api_strict_device_propagates():
    xps = pytest.importorskip("array_api_strict")
    dev = xps.Device("device1")
    x = xps.asarray(XC, device=dev)
    for out in (
        na.yat_conv(x, xps.asarray(WC, device=dev), groups=2, padding="same"),
        na.yat_conv_transpose(x, xps.asarray(WCT, device=dev), stride=2),
        na.yat_attention(
            xps.asarray(Q, device=dev),
            xps.asarray(K, device=dev),
            xps.asarray(V, device=dev),
            causal=True,
        ),
        na.rotary_embedding(xps.asarray(Q, device=dev)),
        na.softermax(xps.asarray(S, device=dev)),
    ):
        assert out.device == dev


@pytest.mark.parametrize("alpha_shape", [(), (1,)])
def test_alpha_and_epsilon_arrays_act_as_scalars(backend, alpha_shape):
    alpha = np.full(alpha_shape, 1.7)
    eps = np.full(alpha_shape, 1e-3)
    out = na.yat(
        *(backend.from_numpy(a) for a in (X2, W2)),
        alpha=backend.from_numpy(alpha),
        epsilon=backend.from_numpy(eps),
    )
    assert tuple(out.shape) == (3, 4)
    np.testing.assert_allclose(
        backend.to_numpy(out), na.yat(X2, W2, alpha=1.7, epsilon=1e-3), rtol=1e-12
    )
