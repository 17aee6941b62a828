"""Keras 3 layers of nmn_array: parity with nmn.keras 0.3.5, training, saving, symbolic use.

Runs on the Keras backend named by ``KERAS_BACKEND`` (see ``conftest.py``); run the file
once per backend in separate processes. Parity tests build nmn's layer, randomise its
weights, copy them BY NAME into ours and compare float64 outputs. On JAX every forward runs
under ``jax.jit`` of the layer's ``stateless_call`` (eager JAX compiles each op separately,
which would dominate the run time); torch and TensorFlow run eagerly.
"""

from __future__ import annotations

import math
import os
import zlib

import keras
import nmn.keras as ref
import numpy as np
import pytest
from nmn_array.frameworks import keras as ours

from tests.frameworks._parity import assert_parity

BACKEND = keras.backend.backend()
#: nmn.keras's own float64 accuracy decides each parity tolerance (measured per backend):
#: - JAX: its dense and attention paths are float64-exact, so agreement is to rounding; its
#:   conv, transposed-conv and embedding-attend tails round the yat ratio to float32 even for
#:   float64 layers (``stable_yat_ratio(..., output_dtype="float32")``): one float32
#:   rounding (2**-24 = 6e-8);
#: - torch: Keras' ``result_type`` maps float64 to float32 outside TensorFlow, so its
#:   ``keras.ops.matmul`` (and with it all of nmn.keras) computes float64 layers in float32:
#:   float32 tolerance;
#: - TensorFlow: its float64 dense/conv/embed layers raise (float64 + a float32 epsilon in
#:   ``stable_yat_ratio``), so parity runs in float32 there.
#: ``test_float64_layers_are_float64_accurate`` checks that OUR layers keep float64 on every
#: backend (against nmn_array on NumPy, to 1e-10).
PARITY_DTYPE = "float32" if BACKEND == "tensorflow" else "float64"
RTOL64 = 1e-10
RTOL_F32_ROUNDING = 2e-7
RTOL32 = 1e-4


def tol(kind: str) -> float:
    """Parity tolerance for a layer family ("exact" = dense/attention, "f32tail" = others)."""
    if BACKEND != "jax":
        return RTOL32
    return RTOL64 if kind == "exact" else RTOL_F32_ROUNDING


rng = np.random.default_rng(20261122)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Data depends on the test alone, not on which tests ran before it."""
    global rng
    rng = np.random.default_rng(zlib.crc32(request.node.name.encode()))
    keras.utils.set_random_seed(zlib.crc32(request.node.name.encode()) % 2**31)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def to_np(t):
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)


def normal(*shape, dtype=None):
    return rng.normal(size=shape).astype(dtype or PARITY_DTYPE)


def assert_close(got, want, rtol, what=""):
    """``max|got - want| / max|want| <= rtol`` (recorded for the parity report)."""
    assert_parity(to_np(got), to_np(want), rtol, case=f"keras-{BACKEND}: {what}")


def forward(layers, *args, **kwargs):
    """Outputs of ``layer(*args, **kwargs)`` for each layer, jitted together on JAX."""
    if BACKEND != "jax":
        return [layer(*args, **kwargs) for layer in layers]
    import jax

    # stateless_call skips __call__'s input conversion: hand call() backend arrays
    args = [keras.ops.convert_to_tensor(a) if isinstance(a, np.ndarray) else a for a in args]
    kwargs = {
        k: keras.ops.convert_to_tensor(a) if isinstance(a, np.ndarray) else a
        for k, a in kwargs.items()
    }

    def run(states):
        return [
            layer.stateless_call(tv, ntv, *args, **kwargs)[0]
            for layer, (tv, ntv) in zip(layers, states)
        ]

    states = [
        (
            [v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables],
        )
        for layer in layers
    ]
    return jax.jit(run)(states)


def randomize(layer):
    """Give every weight a non-trivial value (nmn initialises bias 0 and alpha 1)."""
    for w in layer.weights:
        shape = tuple(w.shape)
        if w.name == "alpha":
            value = np.full(shape, 1.3)
        elif w.name == "epsilon_param":
            value = np.full(shape, math.log(math.expm1(1e-3)))
        elif "bias" in w.name:
            value = 0.3 * rng.normal(size=shape)
        else:
            value = to_np(w) + rng.normal(size=shape) / math.sqrt(np.prod(shape[:-1]))
        w.assign(value.astype(keras.backend.standardize_dtype(w.dtype)))


def copy_by_name(src, dst):
    src_w = {w.name: w for w in src.weights}
    dst_w = {w.name: w for w in dst.weights}
    assert sorted(src_w) == sorted(dst_w), (sorted(src_w), sorted(dst_w))
    for name, w in src_w.items():
        assert tuple(dst_w[name].shape) == tuple(w.shape), name
        dst_w[name].assign(keras.ops.convert_to_numpy(w))


def nmn_keras_epsilon(cls_name, kwargs):
    """Our kwargs with the float32 rounding nmn.keras applies to a constant epsilon.

    nmn.keras's ``stable_yat_ratio`` (dense, conv, transposed conv, attend) adds
    ``ops.cast(epsilon, "float32")``, so float64 layers use a float32-rounded epsilon (1e-3
    is off by 4.7e-11, which moves outputs by up to ~1e-10 relative). nmn_array keeps epsilon
    exact; parity is checked against the same rounded value. Attention adds the Python float.
    """
    kwargs = dict(kwargs)
    if cls_name != "MultiHeadYatAttention":
        kwargs["epsilon"] = float(np.float32(kwargs.get("epsilon", 1e-5)))
    return kwargs


def paired(cls_name, args, kwargs, *shapes, dtype=PARITY_DTYPE):
    """nmn's layer and ours, built for ``shapes``, with equal random weights."""
    theirs = getattr(ref, cls_name)(*args, dtype=dtype, **kwargs)
    mine = getattr(ours, cls_name)(*args, dtype=dtype, **nmn_keras_epsilon(cls_name, kwargs))
    theirs.build(shapes[0])  # nmn's builds take the first input's shape only
    mine.build(*shapes)
    randomize(theirs)
    copy_by_name(theirs, mine)
    return theirs, mine


def test_backend_is_the_requested_one_and_arrays_are_native():
    assert BACKEND == os.environ["KERAS_BACKEND"]
    y = ours.YatNMN(2)(np.ones((1, 3), "float32"))
    assert (
        type(y).__module__.split(".")[0]
        in {
            "jax": ("jax", "jaxlib"),
            "torch": ("torch",),
            "tensorflow": ("tensorflow",),
        }[BACKEND]
    )


# --------------------------------------------------------------------------------------
# YatNMN
# --------------------------------------------------------------------------------------
DENSE = [
    {},
    {"use_bias": False, "use_alpha": False},
    {"constant_bias": 0.5, "constant_alpha": True},
    {"constant_alpha": 0.7, "learnable_epsilon": True},
    {"spherical": True},
    {"weight_normalized": True},
    {"spherical": True, "weight_normalized": True, "use_bias": False},
    {"positive_init": True, "epsilon": 1e-3},
]


@pytest.mark.parametrize("kwargs", DENSE, ids=str)
def test_dense_parity(kwargs):
    x = normal(3, 4, 6)
    theirs, mine = paired("YatNMN", (5,), kwargs, x.shape)
    assert tuple(mine.kernel.shape) == (6, 5)
    want, got = forward([theirs, mine], x)
    assert keras.backend.standardize_dtype(got.dtype) == PARITY_DTYPE
    assert_close(got, want, rtol=tol("exact"), what=f"YatNMN {kwargs}")
    assert tuple(got.shape) == mine.compute_output_shape(x.shape)


def test_dense_alias_lazy_and_float32():
    assert ours.YatDense is ours.YatNMN
    x = normal(2, 3).astype("float32")
    theirs, mine = paired("YatNMN", (4,), {"lazy": True}, x.shape, dtype="float32")
    assert [w.name for w in mine.trainable_weights] == ["bias", "alpha"]
    want, got = forward([theirs, mine], x)
    assert_close(got, want, rtol=1e-5, what="float32")


# --------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------
CONV = [
    ("YatConv1D", (4, 3), {"padding": "causal", "dilation_rate": 2}, (2, 9, 3)),
    ("YatConv1D", (4, 3), {"strides": 2, "padding": "same", "groups": 2}, (2, 9, 4)),
    (
        "YatConv2D",
        (6, 3),
        {"strides": (2, 1), "padding": "same", "groups": 3, "learnable_epsilon": True},
        (2, 7, 6, 3),
    ),
    (
        "YatConv2D",
        (4, (2, 3)),
        {"dilation_rate": (2, 1), "data_format": "channels_first", "constant_bias": 0.2},
        (2, 3, 8, 7),
    ),
    (
        "YatConv2D",
        (4, 3),
        {"weight_normalized": True, "use_bias": False, "use_alpha": False},
        (2, 6, 6, 2),
    ),
    ("YatConv3D", (4, 2), {"strides": 2, "padding": "same", "groups": 2}, (1, 5, 4, 4, 2)),
    ("YatConv3D", (2, (1, 2, 3)), {"data_format": "channels_first"}, (1, 2, 3, 4, 5)),
]


@pytest.mark.parametrize(("cls", "args", "kwargs", "shape"), CONV, ids=str)
def test_conv_parity(cls, args, kwargs, shape):
    x = normal(*shape)
    theirs, mine = paired(cls, args, kwargs, shape)
    want, got = forward([theirs, mine], x)
    assert_close(got, want, rtol=tol("f32tail"), what=f"{cls}{args} {kwargs}")
    assert tuple(got.shape) == tuple(mine.compute_output_shape(shape))


TRANSPOSE = [
    ("YatConvTranspose1D", (4, 3), {"strides": 2, "padding": "same"}, (2, 5, 3)),
    ("YatConvTranspose1D", (4, 4), {"strides": 2, "padding": "same"}, (2, 5, 3)),
    ("YatConvTranspose1D", (3, 2), {"strides": 3, "padding": "valid"}, (2, 4, 3)),
    ("YatConvTranspose1D", (3, 3), {"strides": 2, "output_padding": 1}, (2, 5, 3)),
    # 'same' + output_padding: low side 2 > high side 1, reached by cropping (see the layer)
    (
        "YatConvTranspose1D",
        (3, 3),
        {"strides": 2, "padding": "same", "output_padding": 1},
        (2, 5, 3),
    ),
    ("YatConvTranspose1D", (3, 3), {"padding": "same", "dilation_rate": 2}, (2, 6, 3)),
    (
        "YatConvTranspose2D",
        (4, 3),
        {"strides": (2, 1), "padding": "same", "data_format": "channels_first"},
        (2, 3, 4, 5),
    ),
    (
        "YatConvTranspose2D",
        (2, 3),
        {"strides": 2, "padding": "valid", "learnable_epsilon": True, "constant_bias": 0.1},
        (1, 3, 4, 2),
    ),
    (
        "YatConvTranspose3D",
        (2, 2),
        {"strides": 2, "padding": "same", "use_bias": False, "use_alpha": False},
        (1, 2, 3, 2, 2),
    ),
]


@pytest.mark.parametrize(("cls", "args", "kwargs", "shape"), TRANSPOSE, ids=str)
def test_conv_transpose_parity(cls, args, kwargs, shape):
    """Keras' kernel (*k, filters, in) maps to the torch layout by a permutation (no flip),
    and the 'valid'/'same' sizes and low/high split agree with nmn.keras on this backend."""
    x = normal(*shape)
    theirs, mine = paired(cls, args, kwargs, shape)
    want, got = forward([theirs, mine], x)
    assert_close(got, want, rtol=tol("f32tail"), what=f"{cls}{args} {kwargs}")
    assert tuple(got.shape) == tuple(mine.compute_output_shape(shape))


def test_conv_transpose_weight_normalized_parity():
    """The contract's yat_conv_transpose has no weight_normalized flag, so the layer
    normalises the kernel and nmn_array takes |w|^2 from it (≈ 1 - 2e-8/|w|) where nmn
    takes exactly 1: agreement to ~1e-7, not to rounding (docs/migration/keras.md)."""
    x = normal(1, 4, 4, 2)
    kwargs = {"strides": 2, "padding": "valid", "weight_normalized": True}
    theirs, mine = paired("YatConvTranspose2D", (2, (3, 2)), kwargs, x.shape)
    want, got = forward([theirs, mine], x)
    assert_close(got, want, rtol=max(1e-6, tol("f32tail")), what="transpose weight_normalized")


def test_conv_layouts_and_aliases():
    layer = ours.YatConv2D(6, (3, 2), groups=2, kernel_initializer="zeros")
    layer.build((1, 6, 6, 4))
    assert tuple(layer.kernel.shape) == (3, 2, 2, 6)
    t = ours.YatConvTranspose2D(5, (3, 2), kernel_initializer="zeros")
    t.build((1, 4, 6, 6))
    assert tuple(t.kernel.shape) == (3, 2, 5, 6)
    assert [w.name for w in t.weights] == ["kernel", "bias", "alpha"]
    for name in ("YatConv1d", "YatConv2d", "YatConv3d"):
        assert getattr(ours, name) is getattr(ours, name[:-1] + "D")
    for name in ("YatConvTranspose1d", "YatConvTranspose2d", "YatConvTranspose3d"):
        assert getattr(ours, name) is getattr(ours, name[:-1] + "D")
    # softermax wraps nmn_array.softermax with nmn's signature (positional epsilon, axis=None)
    x = keras.ops.convert_to_tensor(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(ours.softermax(x, 2.0, 1e-9, 0)),
        keras.ops.convert_to_numpy(__import__("nmn_array").softermax(x, 2.0, epsilon=1e-9, axis=0)),
    )


# DropConnect and kernel banks are implemented (issue 11): tests/keras_backends/
# test_dropconnect_keras.py and test_banks_keras.py


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="padding"):
        ours.YatConv2D(2, 3, padding="causal")
    with pytest.raises(ValueError, match="epsilon"):
        ours.YatNMN(2, epsilon=0.0)
    with pytest.raises(ValueError, match="groups"):
        ours.YatConv2D(3, 3, groups=2).build((1, 5, 5, 4))
    with pytest.raises(ValueError, match="divisible"):
        ours.MultiHeadYatAttention(embed_dim=6, num_heads=4)


# --------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------
EMBED = [
    {},
    {"spherical": True, "constant_alpha": True},
    {"use_alpha": False, "epsilon": 1e-3, "weight_normalized": True},
]


@pytest.mark.parametrize("kwargs", EMBED, ids=str)
def test_embed_lookup_and_attend_parity(kwargs):
    ids = np.array([[0, 3, 5], [9, 9, 1]])
    theirs, mine = paired("YatEmbed", (10, 6), kwargs, None)
    np.testing.assert_array_equal(to_np(mine(ids)), to_np(theirs(ids)))
    q = keras.ops.convert_to_tensor(normal(2, 3, 6))
    got, want = mine.attend(q), theirs.attend(q)
    assert tuple(got.shape) == (2, 3, 10)
    assert_close(got, want, rtol=tol("f32tail"), what=f"attend {kwargs}")


def test_embed_weight_normalized_at_build():
    mine = ours.YatEmbed(7, 5, weight_normalized=True)
    mine.build()
    np.testing.assert_allclose(np.linalg.norm(to_np(mine.embedding), axis=1), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------
def _causal(lq, lk):
    return np.tril(np.ones((lq, lk), dtype=bool))


MHA = [
    ({}, {}),
    ({"constant_alpha": True, "use_bias": False}, {"attention_mask": "causal"}),
    ({"use_alpha": False, "use_out_proj": False}, {"attention_mask": "random4d"}),
    ({"spherical": True}, {"mask": "sequence"}),
    ({"spherical": True, "constant_alpha": 0.8}, {"cross": True, "attention_mask": "causal"}),
]


def _mha_inputs(spec, b=2, lq=5, lk=7, e=8):
    x = normal(b, lq, e)
    kwargs = {}
    lk_eff = lq
    if spec.get("cross"):
        kwargs["key"] = normal(b, lk, e)
        kwargs["value"] = normal(b, lk, e)
        lk_eff = lk
    am = spec.get("attention_mask")
    if am == "causal":
        kwargs["attention_mask"] = _causal(lq, lk_eff)
    elif am == "random4d":
        m = rng.random((b, 1, lq, lk_eff)) < 0.6
        m[0, 0, 1] = False  # one query that sees no key: zeros, not NaN
        kwargs["attention_mask"] = m
    if spec.get("mask") == "sequence":  # a Keras (batch, seq) mask, as from mask_zero=True
        m = np.ones((b, lq), dtype=bool)
        m[0, 3:] = False
        m[1, :] = False  # a fully masked sequence
        kwargs["mask"] = m
    return x, kwargs


@pytest.mark.parametrize(("kwargs", "spec"), MHA, ids=str)
def test_attention_parity(kwargs, spec):
    x, call_kw = _mha_inputs(spec)
    shapes = [x.shape] + [call_kw[k].shape for k in ("key", "value") if k in call_kw]
    theirs, mine = paired("MultiHeadYatAttention", (8, 2), kwargs, *shapes)
    want, got = forward([theirs, mine], x, **call_kw)
    assert_close(got, want, rtol=tol("exact"), what=f"MHA {kwargs} {spec}")
    if "mask" in spec or spec.get("attention_mask") == "random4d":
        zero = np.all(to_np(want) == 0, axis=-1)  # queries that see no key: exact zeros
        assert zero.any()
        assert np.all(to_np(got)[zero] == 0)


def test_attention_normalize_qk_decision2():
    """nmn.keras normalises q/sqrt(|q|^2 + 1e-6); nmn_array (Decision 2) q/max(|q|, 1e-12):
    they differ by ~5e-7/|q|^2 relative, so agreement is to ~1e-5, not to rounding."""
    x = normal(2, 5, 8)
    theirs, mine = paired("MultiHeadYatAttention", (8, 2), {"normalize_qk": True}, x.shape)
    want, got = forward([theirs, mine], x)
    assert_close(got, want, rtol=max(1e-5, tol("exact")), what="normalize_qk")


def _mha_in_numpy(mha, x: np.ndarray, normalize_qk: bool = False) -> np.ndarray:
    """``mha`` (embed 8, 2 heads, float64) on ``x`` (2, 4, in): its projections, head split
    and ``q / max(|q|, 1e-12)`` (Decision 2) in NumPy, then nmn_array.yat_attention."""
    import nmn_array

    w = {v.name: to_np(v) for v in mha.weights}

    def heads(t):
        t = t.reshape(2, 4, 2, 4).transpose(0, 2, 1, 3)
        if not normalize_qk:
            return t
        return t / np.maximum(np.sqrt(np.sum(t * t, axis=-1, keepdims=True)), 1e-12)

    q, k = (heads(x @ w[f"{n}_kernel"] + w[f"{n}_bias"]) for n in "qk")
    v = x @ w["v_kernel"] + w["v_bias"]
    v = v.reshape(2, 4, 2, 4).transpose(0, 2, 1, 3)
    o = nmn_array.yat_attention(q, k, v, alpha=w["alpha"], epsilon=1e-5)
    return o.transpose(0, 2, 1, 3).reshape(2, 4, 8) @ w["out_kernel"] + w["out_bias"]


def test_attention_out_kernel_shape_fixes_nmn_bug():
    """input_dim != embed_dim: nmn's out_kernel is (input_dim, E) (bug §13.3); ours is (E, E)
    and the layer equals projections + nmn_array.yat_attention written out in NumPy."""
    x = normal(2, 4, 6, dtype="float64")
    mha = ours.MultiHeadYatAttention(embed_dim=8, num_heads=2, dtype="float64")
    mha.build(x.shape)
    assert tuple(mha.out_kernel.shape) == (8, 8)
    assert tuple(mha.q_kernel.shape) == (6, 8)
    randomize(mha)
    (got,) = forward([mha], x)
    assert_close(got, _mha_in_numpy(mha, x), rtol=RTOL64, what="MHA in != E")


def test_attention_normalize_qk_float64_accurate():
    """normalize_qk keeps a float64 layer float64 on every backend (keras.ops.normalize, used
    before, rounded it to ~1e-8 on the torch backend): equal to NumPy to 1e-10."""
    x = normal(2, 4, 8, dtype="float64")
    mha = ours.MultiHeadYatAttention(embed_dim=8, num_heads=2, normalize_qk=True, dtype="float64")
    mha.build(x.shape)
    randomize(mha)
    (got,) = forward([mha], x)
    want = _mha_in_numpy(mha, x, normalize_qk=True)
    assert_close(got, want, rtol=RTOL64, what="MHA normalize_qk float64")


def test_attention_projections_start_different():
    """nmn.keras reuses one unseeded initializer, so its q/k/v kernels start identical and
    each token attends only to itself; ours draws each projection independently."""
    mha = ours.MultiHeadYatAttention(embed_dim=8, num_heads=2)
    mha.build((1, 3, 8))
    q, k, v = (to_np(getattr(mha, f"{n}_kernel")) for n in "qkv")
    assert not np.array_equal(q, k) and not np.array_equal(k, v)


def test_attention_dropout_only_in_training():
    x = normal(2, 5, 8).astype("float32")
    mha = ours.MultiHeadYatAttention(embed_dim=8, num_heads=2, dropout=0.5)
    mha.build(x.shape)
    eval_out, train_out = forward([mha], x)[0], forward([mha], x, training=True)[0]
    np.testing.assert_array_equal(to_np(eval_out), to_np(forward([mha], x, training=False)[0]))
    assert np.all(np.isfinite(to_np(train_out)))
    assert not np.allclose(to_np(train_out), to_np(eval_out))


# --------------------------------------------------------------------------------------
# float64 stays float64
# --------------------------------------------------------------------------------------
def test_float64_layers_are_float64_accurate():
    """Each layer, in float64 on this backend, equals nmn_array on NumPy float64 with the
    same weights (in the pure functions' layouts) to 1e-10."""
    import nmn_array

    x2 = normal(3, 4, 6, dtype="float64")
    dense = ours.YatNMN(5, dtype="float64", learnable_epsilon=True)
    dense.build(x2.shape)
    randomize(dense)
    w = {v.name: to_np(v) for v in dense.weights}
    eps = math.log1p(math.exp(w["epsilon_param"][0]))
    want = nmn_array.yat(x2, w["kernel"].T, w["bias"], alpha=w["alpha"], epsilon=eps)
    cases = [(dense, x2, want)]

    x4 = normal(2, 4, 7, 7, dtype="float64")
    kw = {"strides": 2, "padding": "same", "groups": 2, "data_format": "channels_first"}
    conv = ours.YatConv2D(6, 3, dtype="float64", **kw)
    conv.build(x4.shape)
    randomize(conv)
    w = {v.name: to_np(v) for v in conv.weights}
    want = nmn_array.yat_conv(
        x4,
        w["kernel"].transpose(3, 2, 0, 1),
        w["bias"],
        stride=2,
        padding="same",
        groups=2,
        alpha=w["alpha"],
    )
    cases.append((conv, x4, want))

    x3 = normal(2, 5, 3, dtype="float64")
    tconv = ours.YatConvTranspose1D(4, 3, strides=2, padding="same", dtype="float64")
    tconv.build(x3.shape)
    randomize(tconv)
    w = {v.name: to_np(v) for v in tconv.weights}
    want = nmn_array.yat_conv_transpose(
        x3,
        w["kernel"].transpose(2, 1, 0),
        w["bias"],
        stride=2,
        padding="same",
        data_format="channels_last",
        alpha=w["alpha"],
    )
    cases.append((tconv, x3, want))

    got = forward([layer for layer, _, _ in cases[:1]], x2)
    got += forward([conv], x4) + forward([tconv], x3)
    for (layer, _, want_i), got_i in zip(cases, got):
        assert keras.backend.standardize_dtype(got_i.dtype) == "float64"
        assert_close(got_i, want_i, rtol=RTOL64, what=type(layer).__name__)

    emb = ours.YatEmbed(10, 6, dtype="float64", spherical=True)
    emb.build()
    randomize(emb)
    q = normal(2, 3, 6, dtype="float64")
    w = {v.name: to_np(v) for v in emb.weights}
    want = nmn_array.yat(q, w["embedding"], alpha=w["alpha"], spherical=True)
    assert_close(emb.attend(keras.ops.convert_to_tensor(q)), want, rtol=RTOL64, what="attend")


# --------------------------------------------------------------------------------------
# config, symbolic use, training, saving
# --------------------------------------------------------------------------------------
CONFIG_LAYERS = [
    lambda: ours.YatNMN(3, constant_alpha=0.5, spherical=True, learnable_epsilon=True),
    lambda: ours.YatConv2D(4, 3, strides=2, padding="same", groups=2, weight_normalized=True),
    lambda: ours.YatConvTranspose1D(2, 3, strides=2, output_padding=1, constant_bias=0.1),
    lambda: ours.YatEmbed(11, 4, spherical=True, constant_alpha=True),
    lambda: ours.MultiHeadYatAttention(8, 2, dropout=0.1, normalize_qk=True, use_out_proj=False),
]


@pytest.mark.parametrize("make", CONFIG_LAYERS, ids=["dense", "conv", "tconv", "embed", "mha"])
def test_get_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert keras.saving.get_registered_name(type(layer)) == f"nmn_array>{type(layer).__name__}"


def test_symbolic_shapes_never_call_nmn_array():
    """Functional API: shapes come from compute_output_shape, not from running the math."""
    inp = keras.Input((9, 9, 4))
    h = ours.YatConv2D(6, 3, strides=2, padding="same", groups=2)(inp)
    h = ours.YatConvTranspose2D(3, 3, strides=2, padding="same", output_padding=1)(h)
    assert tuple(h.shape) == (None, 10, 10, 3)
    h = keras.layers.Reshape((3, 10, 10, 1))(h)
    h = ours.YatConv3D(2, (2, 2, 1), data_format="channels_first")(h)
    assert tuple(h.shape) == (None, 2, 9, 9, 1)
    seq = keras.Input((5,), dtype="int32")
    emb = ours.YatEmbed(12, 8)
    a = ours.MultiHeadYatAttention(8, 2)(emb(seq), attention_mask=_causal(5, 5))
    logits = emb.attend(a)
    assert tuple(logits.shape) == (None, 5, 12)
    model = keras.Model([inp, seq], [h, logits])
    assert [tuple(o.shape) for o in model.outputs] == [(None, 2, 9, 9, 1), (None, 5, 12)]


VOCAB, LENGTH = 12, 6


def _model():
    """Every layer type in one two-input model (image branch + token branch)."""
    image = keras.Input((8, 8, 1), name="image")
    h = ours.YatConv2D(6, 3, strides=2, padding="same")(image)
    h = ours.YatConvTranspose2D(4, 2, strides=2, padding="valid", weight_normalized=True)(h)
    h = ours.YatConv2D(6, 3, strides=2, padding="valid", groups=2, learnable_epsilon=True)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    tokens = keras.Input((LENGTH,), dtype="int32", name="tokens")
    t = ours.YatEmbed(VOCAB, 8, use_alpha=False)(tokens)
    # epsilon 1 keeps the scores of near-identical tokens from saturating the softmax
    t = ours.MultiHeadYatAttention(8, 2, epsilon=1.0)(t, attention_mask=_causal(LENGTH, LENGTH))
    t = ours.YatConv1D(4, 3, padding="causal", data_format="channels_last")(t)
    t = ours.YatConvTranspose1D(4, 3, strides=2, padding="same")(t)
    t = ours.YatConv3D(2, 1)(keras.layers.Reshape((3, 4, 1, 4))(t))
    t = keras.layers.Flatten()(t)
    out = ours.YatNMN(10, constant_alpha=True)(keras.layers.Concatenate()([h, t]))
    return keras.Model([image, tokens], out)


def _data(n):
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = (digits.images[:n] / 16.0).astype("float32")[..., None]
    label = digits.target[:n].astype("int32")
    tokens = (label[:, None] + np.arange(LENGTH)[None, :]) % VOCAB
    return {"image": image, "tokens": tokens.astype("int32")}, label


def test_fit_loss_decreases_and_every_weight_trains():
    keras.utils.set_random_seed(0)
    x, y = _data(320)
    model = _model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [to_np(w) for w in model.trainable_weights]
    losses = model.fit(x, y, batch_size=64, epochs=5, verbose=0).history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    frozen = [
        w.path for w, b in zip(model.trainable_weights, before) if np.array_equal(b, to_np(w))
    ]
    assert not frozen, f"weights without gradient: {frozen}"


def test_fit_language_model_with_attend():
    """Weight tying through YatEmbed.attend inside a functional model, trained with fit."""
    keras.utils.set_random_seed(1)
    seq = keras.Input((LENGTH,), dtype="int32")
    emb = ours.YatEmbed(VOCAB, 8)
    h = ours.MultiHeadYatAttention(8, 2, epsilon=1.0)(
        emb(seq), attention_mask=_causal(LENGTH, LENGTH)
    )
    model = keras.Model(seq, emb.attend(ours.YatNMN(8)(h)))
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    tokens = (np.arange(128)[:, None] + np.arange(LENGTH + 1)[None, :]) % VOCAB
    history = model.fit(tokens[:, :-1], tokens[:, 1:], batch_size=32, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses


def _language_model():
    seq = keras.Input((LENGTH,), dtype="int32")
    emb = ours.YatEmbed(VOCAB, 8, spherical=True)
    h = ours.MultiHeadYatAttention(8, 2, epsilon=1.0, normalize_qk=True)(
        emb(seq), attention_mask=_causal(LENGTH, LENGTH)
    )
    return keras.Model(seq, emb.attend(ours.YatNMN(8)(h)))


def test_keras_file_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    x_img, _ = _data(8)
    x_lm = x_img["tokens"]
    for model, x in ((_model(), x_img), (_language_model(), x_lm)):
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        want = to_np(model.predict(x, verbose=0))
        assert np.abs(want).max() > 0
        np.testing.assert_array_equal(to_np(loaded.predict(x, verbose=0)), want)
        assert [type(layer).__name__ for layer in loaded.layers] == [
            type(layer).__name__ for layer in model.layers
        ]
    # attend is a second node of the same YatEmbed layer: the table stays tied after loading
    (emb,) = [layer for layer in loaded.layers if type(layer).__name__ == "YatEmbed"]
    assert len(emb._inbound_nodes) == 2


def test_mixed_precision_float16_output():
    layer = ours.YatConv2D(4, 3, padding="same", dtype="mixed_float16")
    y = layer(normal(1, 5, 5, 2).astype("float32"))  # eager: __call__ applies the policy
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"
    assert np.all(np.isfinite(to_np(y)))


def test_attention_float_mask_is_additive_not_cast():
    """attention_mask 0/-inf equals the boolean mask it encodes (a cast to bool inverts it),
    also combined with a Keras sequence mask; an integer mask raises TypeError."""
    layer = ours.MultiHeadYatAttention(8, 2)
    x = normal(2, 5, 8, dtype="float32")
    layer(x)  # build (forward's stateless_call on JAX needs the variables)
    boolean = rng.random((2, 1, 5, 5)) < 0.6
    boolean[..., 0] = True
    boolean[0, 0, 1] = False  # a query that sees no key
    additive = np.where(boolean, 0.0, -np.inf).astype("float32")
    seq = np.ones((2, 5), dtype=bool)
    seq[1, 3:] = False
    (want,) = forward([layer], x, attention_mask=boolean)
    (got,) = forward([layer], x, attention_mask=additive)
    (want_seq,) = forward([layer], x, attention_mask=boolean, mask=seq)
    (got_seq,) = forward([layer], x, attention_mask=additive, mask=seq)
    assert_close(got, want, rtol=1e-6, what="additive == boolean")
    assert_close(got_seq, want_seq, rtol=1e-6, what="additive == boolean, sequence mask")
    assert np.all(to_np(got)[0, 1] == 0)
    assert np.all(to_np(got_seq)[1, 3:] == 0)
    with pytest.raises(TypeError, match=r"mask.*int"):
        layer(x, attention_mask=boolean.astype("int32"))
