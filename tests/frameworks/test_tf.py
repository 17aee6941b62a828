"""TensorFlow modules of nmn_array: parity with nmn.tf 0.3.5, tf.function / XLA, training
with GradientTape, SavedModel and checkpoint round trips.

nmn.tf computes float64 natively, so parity runs in float64 to 1e-10 (scaled error). Weights
are copied from nmn's module into ours BY ATTRIBUTE NAME (the names tf.train.Checkpoint uses).
"""

from __future__ import annotations

import math
import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import nmn.tf as ref  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from nmn_array.frameworks import tf as ours  # noqa: E402

from tests.frameworks._parity import RTOL_F64, assert_parity  # noqa: E402

F64 = tf.float64
rng = np.random.default_rng(20261122)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Data depends on the test alone, not on which tests ran before it."""
    global rng
    rng = np.random.default_rng(zlib.crc32(request.node.name.encode()))
    tf.random.set_seed(zlib.crc32(request.node.name.encode()) % 2**31)


VARIABLES = (
    "kernel",
    "bias",
    "alpha",
    "epsilon_param",
    "embedding",
    "q_kernel",
    "k_kernel",
    "v_kernel",
    "q_bias",
    "k_bias",
    "v_bias",
    "out_kernel",
    "out_bias",
)


def normal(*shape, dtype=np.float64):
    return tf.constant(rng.normal(size=shape).astype(dtype))


def randomize(module):
    """Non-trivial values for every variable (nmn initialises bias 0 and alpha 1)."""
    for name in VARIABLES:
        v = getattr(module, name, None)
        if v is None:
            continue
        shape = tuple(v.shape)
        if name == "alpha":
            value = np.full(shape, 1.3)
        elif name == "epsilon_param":
            value = np.full(shape, math.log(math.expm1(1e-3)))
        elif "bias" in name:
            value = 0.3 * rng.normal(size=shape)
        else:
            value = v.numpy() + rng.normal(size=shape) / math.sqrt(np.prod(shape[:-1]))
        v.assign(value.astype(v.dtype.as_numpy_dtype))


def copy_by_name(src, dst):
    have = {n for n in VARIABLES if getattr(src, n, None) is not None}
    assert have == {n for n in VARIABLES if getattr(dst, n, None) is not None}, have
    for name in have:
        s, d = getattr(src, name), getattr(dst, name)
        assert tuple(s.shape) == tuple(d.shape), name
        d.assign(s)


def nmn_tf_constants(cls, kwargs):
    """Our kwargs with the float32 rounding nmn.tf applies to constants in float64 modules.

    nmn.tf multiplies by ``tf.cast(constant_alpha, dtype)`` (and, in conv layers, adds
    ``tf.cast(constant_bias, dtype)``): ``tf.cast`` of a Python float goes through a float32
    tensor, so its float64 modules use float32-rounded constants (sqrt(2) off by 1.7e-8).
    nmn_array keeps them exact; parity is checked against the same rounded constants.
    """
    kwargs = dict(kwargs)
    alpha = kwargs.get("constant_alpha")
    # (MultiHeadYatAttention multiplies by the Python float itself: exact, nothing to round)
    if cls in ("YatNMN", "YatEmbed") and alpha is not None and alpha is not False:
        kwargs["constant_alpha"] = float(np.float32(math.sqrt(2.0) if alpha is True else alpha))
    if "Conv" in cls and kwargs.get("constant_bias") is not None:
        kwargs["constant_bias"] = float(np.float32(kwargs["constant_bias"]))
    return kwargs


def paired(cls, args, kwargs, *inputs, **call_kw):
    """nmn's module and ours of class ``cls`` in float64, built on ``inputs``, equal weights."""
    theirs = getattr(ref, cls)(*args, dtype=F64, **kwargs)
    mine = getattr(ours, cls)(*args, dtype=F64, **nmn_tf_constants(cls, kwargs))
    theirs(*inputs, **call_kw)
    mine(*inputs, **call_kw)
    randomize(theirs)
    copy_by_name(theirs, mine)
    return theirs, mine


# --------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------
DENSE = [
    {},
    {"use_bias": False, "use_alpha": False},
    {"constant_bias": 0.5, "constant_alpha": True},
    {"constant_alpha": 0.7, "learnable_epsilon": True},
    {"spherical": True},
    {"weight_normalized": True},
    {"spherical": True, "weight_normalized": True, "use_bias": False},
    {"positive_init": True, "epsilon": 1e-3, "lazy": True},
]


@pytest.mark.parametrize("kwargs", DENSE, ids=str)
def test_dense_parity(kwargs):
    x = normal(3, 4, 6)
    theirs, mine = paired("YatNMN", (5,), kwargs, x)
    assert tuple(mine.kernel.shape) == (5, 6)
    assert mine.kernel.trainable == (not kwargs.get("lazy", False))
    y = mine(x)
    assert y.dtype == F64
    assert_parity(y, theirs(x), RTOL_F64, f"tf YatNMN {kwargs}")


def test_dense_weights_api_and_return_weights():
    assert ours.YatDense is ours.YatNMN
    layer = ours.YatNMN(3, return_weights=True, learnable_epsilon=True)
    y, kernel = layer(tf.ones((2, 4)))
    assert kernel is layer.kernel and y.shape == (2, 3)
    weights = layer.get_weights()
    assert [w.name.split("/")[-1] for w in weights] == [
        "kernel:0",
        "bias:0",
        "alpha:0",
        "epsilon_param:0",
    ]
    layer.set_weights([w.numpy() * 0 + 0.5 for w in weights])
    assert float(layer.alpha[0]) == 0.5
    with pytest.raises(ValueError, match="Input shape changed"):
        layer(tf.ones((2, 5)))


CONV = [
    ("YatConv1D", (4, 3), {"strides": 2, "padding": "same", "groups": 2}, (2, 9, 4)),
    ("YatConv1D", (4, 3), {"dilation_rate": 2}, (2, 9, 3)),
    (
        "YatConv2D",
        (6, 3),
        {"strides": (2, 1), "padding": "same", "groups": 3, "learnable_epsilon": True},
        (2, 7, 6, 3),
    ),
    ("YatConv2D", (4, (2, 3)), {"dilation_rate": (2, 1), "constant_bias": 0.2}, (2, 8, 7, 3)),
    ("YatConv3D", (4, 2), {"strides": 2, "padding": "same", "groups": 2}, (1, 5, 4, 4, 2)),
    ("YatConv3D", (2, (1, 2, 3)), {"use_bias": False, "use_alpha": False}, (1, 3, 4, 5, 2)),
]


@pytest.mark.parametrize(("cls", "args", "kwargs", "shape"), CONV, ids=str)
def test_conv_parity(cls, args, kwargs, shape):
    x = normal(*shape)
    theirs, mine = paired(cls, args, kwargs, x)
    assert_parity(mine(x), theirs(x), RTOL_F64, f"tf {cls}{args} {kwargs}")


TRANSPOSE = [
    ("YatConvTranspose1D", (4, 3), {"strides": 2}, (2, 5, 3)),
    ("YatConvTranspose1D", (4, 4), {"strides": 2}, (2, 5, 3)),
    ("YatConvTranspose1D", (4, 4), {"strides": 3}, (2, 5, 3)),
    ("YatConvTranspose1D", (3, 3), {"strides": 2, "padding": "valid"}, (2, 5, 3)),
    ("YatConvTranspose1D", (3, 2), {"strides": 3, "padding": "valid"}, (2, 4, 3)),
    ("YatConvTranspose2D", (4, 3), {"strides": (2, 1), "use_alpha": False}, (2, 4, 5, 3)),
    (
        "YatConvTranspose2D",
        (2, (3, 2)),
        {"strides": 2, "padding": "valid", "learnable_epsilon": True, "constant_bias": 0.1},
        (1, 3, 4, 2),
    ),
    ("YatConvTranspose3D", (2, 2), {"strides": 2, "use_bias": False}, (1, 2, 3, 2, 2)),
]


@pytest.mark.parametrize(("cls", "args", "kwargs", "shape"), TRANSPOSE, ids=str)
def test_conv_transpose_parity(cls, args, kwargs, shape):
    """nmn.tf's kernel (*k, filters, in) maps to the torch layout by a permutation (no spatial
    flip); 'same' gives L*s and 'valid' L*s + max(k - s, 0), split as tf.nn.conv_transpose."""
    x = normal(*shape)
    theirs, mine = paired(cls, args, kwargs, x)
    y = mine(x)
    k, s = (
        np.broadcast_to(args[1], (len(shape) - 2,)),
        np.broadcast_to(kwargs.get("strides", 1), (len(shape) - 2,)),
    )
    sizes = np.array(shape[1:-1])
    expect = (
        sizes * s if kwargs.get("padding", "same") == "same" else sizes * s + np.maximum(k - s, 0)
    )
    assert tuple(y.shape[1:-1]) == tuple(expect)
    assert_parity(y, theirs(x), RTOL_F64, f"tf {cls}{args} {kwargs}")


EMBED = [
    {},
    {"spherical": True, "constant_alpha": True},
    {"use_alpha": False, "epsilon": 1e-3, "weight_normalized": True},
]


@pytest.mark.parametrize("kwargs", EMBED, ids=str)
def test_embed_parity(kwargs):
    ids = tf.constant([[0, 3, 5], [9, 9, 1]])
    theirs, mine = paired("YatEmbed", (10, 6), kwargs, ids)
    np.testing.assert_array_equal(mine(ids).numpy(), theirs(ids).numpy())
    q = normal(2, 3, 6)
    got = mine.attend(q)
    assert got.shape == (2, 3, 10)
    assert_parity(got, theirs.attend(q), RTOL_F64, f"tf attend {kwargs}")


def test_embed_weight_normalized_at_construction():
    emb = ours.YatEmbed(7, 5, weight_normalized=True)
    np.testing.assert_allclose(np.linalg.norm(emb.embedding.numpy(), axis=1), 1.0, rtol=1e-6)


def _causal(lq, lk):
    return tf.constant(np.tril(np.ones((lq, lk), dtype=bool)))


MHA = [
    ({}, {}),
    ({"constant_alpha": True, "use_bias": False}, {"mask": "causal"}),
    ({"use_alpha": False, "use_out_proj": False}, {"mask": "random4d"}),
    ({"spherical": True, "normalize_qk": True}, {}),
    ({"constant_alpha": 0.8}, {"cross": True, "mask": "causal"}),
]


@pytest.mark.parametrize(("kwargs", "spec"), MHA, ids=str)
def test_attention_parity(kwargs, spec):
    b, lq, lk, e = 2, 5, 7, 8
    x = normal(b, lq, e)
    call = {}
    lk_eff = lq
    if spec.get("cross"):
        call = {"key": normal(b, lk, e), "value": normal(b, lk, e)}
        lk_eff = lk
    if spec.get("mask") == "causal":
        call["mask"] = _causal(lq, lk_eff)
    elif spec.get("mask") == "random4d":
        m = rng.random((b, 1, lq, lk_eff)) < 0.6
        m[0, 0, 1] = False  # a query that sees no key outputs zeros, not NaN
        call["mask"] = tf.constant(m)
    theirs, mine = paired("MultiHeadYatAttention", (e, 2), kwargs, x, **call)
    got, want = mine(x, **call), theirs(x, **call)
    assert_parity(got, want, RTOL_F64, f"tf MHA {kwargs} {spec}")
    if spec.get("mask") == "random4d":
        assert np.all(got.numpy()[0, 1] == 0) and np.all(want.numpy()[0, 1] == 0)


def test_attention_cross_dims_and_dropout():
    """Key/value widths may differ from the query's (nmn.tf builds all from the query's);
    dropout acts only with training=True."""
    mha = ours.MultiHeadYatAttention(8, 2, dropout=0.5)
    q, kv = tf.random.normal((2, 4, 6)), tf.random.normal((2, 3, 5))
    y = mha(q, key=kv, value=kv)
    assert y.shape == (2, 4, 8) and tuple(mha.k_kernel.shape) == (5, 8)
    assert tuple(mha.out_kernel.shape) == (8, 8)
    np.testing.assert_array_equal(y.numpy(), mha(q, key=kv, value=kv, training=False).numpy())
    train = mha(q, key=kv, value=kv, training=True).numpy()
    assert np.all(np.isfinite(train)) and not np.allclose(train, y.numpy())


def test_aliases_and_squashers():
    for n in (1, 2, 3):
        assert getattr(ours, f"YatConv{n}d") is getattr(ours, f"YatConv{n}D")
        assert getattr(ours, f"YatConvTranspose{n}d") is getattr(ours, f"YatConvTranspose{n}D")
    x = tf.constant([1.0, 2.0])
    np.testing.assert_allclose(ours.softermax(x).numpy(), [1 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(ours.softer_sigmoid(x).numpy(), [0.5, 2 / 3], rtol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="padding"):
        ours.YatConv2D(2, 3, padding="causal")
    with pytest.raises(ValueError, match="groups"):
        ours.YatConv2D(3, 3, groups=2)
    with pytest.raises(ValueError, match="epsilon"):
        ours.YatNMN(2, epsilon=-1.0)


# --------------------------------------------------------------------------------------
# graph modes
# --------------------------------------------------------------------------------------
def _graph_cases():
    mask = _causal(5, 5)
    return [
        ("dense", ours.YatNMN(4, learnable_epsilon=True, dtype=F64), (normal(3, 6),), {}),
        (
            "conv",
            ours.YatConv2D(4, 3, strides=2, padding="same", groups=2, dtype=F64),
            (normal(2, 7, 7, 2),),
            {},
        ),
        ("tconv", ours.YatConvTranspose2D(3, 3, strides=2, dtype=F64), (normal(1, 4, 4, 2),), {}),
        ("mha", ours.MultiHeadYatAttention(8, 2, dtype=F64), (normal(2, 5, 8),), {"mask": mask}),
    ]


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "xla"])
def test_tf_function_and_xla_equal_eager(jit):
    emb = ours.YatEmbed(10, 6, spherical=True, dtype=F64)
    q = normal(2, 3, 6)
    cases = _graph_cases()
    eager = [module(*args, **kw) for _, module, args, kw in cases] + [emb.attend(q)]

    @tf.function(jit_compile=jit)
    def run():
        outs = [module(*args, **kw) for _, module, args, kw in cases]
        return outs + [emb.attend(q)]

    for (name, *_), e, g in zip([*cases, ("attend",)], eager, run()):
        assert_parity(g, e, 1e-12, f"tf {name} {'xla' if jit else 'tf.function'} vs eager")


# --------------------------------------------------------------------------------------
# training, SavedModel, checkpoints
# --------------------------------------------------------------------------------------
def _digits(n=256):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] / 16.0).astype("float32")[..., None]
    return tf.constant(x), tf.constant(d.target[:n].astype("int32"))


class _Net(tf.Module):
    def __init__(self):
        super().__init__()
        self.conv = ours.YatConv2D(8, 3, strides=2, padding="same")
        self.up = ours.YatConvTranspose2D(4, 2, strides=2, learnable_epsilon=True)
        self.attn = ours.MultiHeadYatAttention(8, 2, epsilon=1.0)
        # nmn.tf's initialisation makes activations small; a spherical head is scale-free
        self.head = ours.YatNMN(10, spherical=True, constant_alpha=20.0)

    def __call__(self, x):
        h = self.up(self.conv(x))  # (B, 8, 8, 4)
        h = self.attn(tf.reshape(h, (-1, 16, 16)))  # (B, 16, 8)
        return self.head(tf.reshape(h, (-1, 128)))


def test_gradient_tape_training_loss_decreases():
    tf.random.set_seed(0)
    x, y = _digits()
    net = _Net()
    net(x[:2])  # build
    variables = net.trainable_variables
    assert len(variables) == 18
    # Adam, written out (the loop needs nothing but tf)
    m = [tf.Variable(tf.zeros_like(v)) for v in variables]
    s = [tf.Variable(tf.zeros_like(v)) for v in variables]
    t = tf.Variable(0.0)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            logits = net(xb)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            )
        grads = tape.gradient(loss, variables)
        t.assign_add(1.0)
        for v, m_, s_, g in zip(variables, m, s, grads):
            m_.assign(0.9 * m_ + 0.1 * g)
            s_.assign(0.999 * s_ + 0.001 * g * g)
            v.assign_sub(0.02 * (m_ / (1 - 0.9**t)) / (tf.sqrt(s_ / (1 - 0.999**t)) + 1e-7))
        return loss, [tf.reduce_any(g != 0) for g in grads]

    losses = []
    for epoch in range(8):
        total = 0.0
        for i in range(0, 256, 64):
            loss, nonzero = step(x[i : i + 64], y[i : i + 64])
            total += float(loss)
            if epoch == 0 and i == 0:
                dead = [v.name for v, nz in zip(variables, nonzero) if not bool(nz)]
                assert not dead, f"variables without gradient: {dead}"
        losses.append(total / 4)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


EXPORTS = [
    ("dense", lambda: ours.YatNMN(4, spherical=True, dtype=F64), (3, 6)),
    (
        "conv",
        lambda: ours.YatConv1D(4, 3, padding="same", groups=2, learnable_epsilon=True, dtype=F64),
        (2, 7, 2),
    ),
    ("tconv", lambda: ours.YatConvTranspose3D(2, 2, strides=2, dtype=F64), (1, 2, 2, 2, 3)),
]


@pytest.mark.parametrize(("name", "make", "shape"), EXPORTS, ids=[e[0] for e in EXPORTS])
def test_saved_model_round_trip(tmp_path, name, make, shape):
    """The loaded inference graph equals the eager module (float64; a traced graph may
    round differently from eager execution, so 'equal' is to 1e-12)."""
    module = make()
    x = normal(*shape)
    want = module(x)
    module.export(str(tmp_path), tf.TensorSpec([None, *shape[1:]], F64))
    loaded = tf.saved_model.load(str(tmp_path))
    got = loaded.signatures["serving_default"](inputs=x)["outputs"]
    assert_parity(got, want, 1e-12, f"tf SavedModel {name}")


def test_saved_model_round_trip_embed_and_attention(tmp_path):
    emb = ours.YatEmbed(10, 6, constant_alpha=True, dtype=F64)
    ids = tf.constant([[1, 2], [3, 4]])
    q = normal(3, 6)
    emb.export(str(tmp_path / "emb"), tf.TensorSpec([None, 2], tf.int32))
    loaded = tf.saved_model.load(str(tmp_path / "emb"))
    np.testing.assert_array_equal(
        loaded.signatures["serving_default"](inputs=ids)["outputs"].numpy(), emb(ids).numpy()
    )
    got = loaded.signatures["attend"](query=q)["outputs"]
    assert_parity(got, emb.attend(q), 1e-12, "tf SavedModel attend")

    mha = ours.MultiHeadYatAttention(8, 2, spherical=True, dtype=F64)
    x, kv = normal(2, 5, 8), normal(2, 4, 8)
    mask = tf.constant(rng.random((2, 1, 5, 4)) < 0.7)
    want = mha(x, key=kv, value=kv, mask=mask)
    spec = tf.TensorSpec([None, None, 8], F64)
    mha.export(
        str(tmp_path / "mha"),
        spec,
        key_signature=spec,
        value_signature=spec,
        mask_signature=tf.TensorSpec([None, 1, None, None], tf.bool),
    )
    loaded = tf.saved_model.load(str(tmp_path / "mha"))
    got = loaded.signatures["serving_default"](query=x, key=kv, value=kv, mask=mask)["outputs"]
    assert_parity(got, want, 1e-12, "tf SavedModel MHA")


@pytest.mark.parametrize(
    ("cls", "args", "shape"),
    [
        ("YatNMN", (4,), (2, 6)),
        ("YatConv2D", (4, 3), (1, 5, 5, 2)),
        ("YatConvTranspose1D", (3, 3), (1, 4, 2)),
        ("MultiHeadYatAttention", (8, 2), (1, 3, 8)),
    ],
    ids=str,
)
def test_nmn_checkpoint_restores_into_ours(tmp_path, cls, args, shape):
    """A tf.train.Checkpoint written from nmn.tf restores into our module unchanged."""
    x = tf.random.normal(shape)
    theirs = getattr(ref, cls)(*args)
    theirs(x)
    randomize(theirs)
    path = tf.train.Checkpoint(model=theirs).write(str(tmp_path / "ckpt"))
    mine = getattr(ours, cls)(*args)
    mine(x)
    tf.train.Checkpoint(model=mine).read(path).assert_existing_objects_matched()
    assert_parity(mine(x), theirs(x), 1e-4, f"tf {cls} from nmn checkpoint (float32)")


def test_float16_module():
    layer = ours.YatConv2D(4, 3, padding="same", dtype=tf.float16, learnable_epsilon=True)
    y = layer(tf.random.normal((1, 5, 5, 2)))
    assert y.dtype == tf.float16 and layer.epsilon_param.dtype == tf.float32
    assert np.all(np.isfinite(y.numpy()))


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        ("YatNMN", (4,)),
        ("YatConv2D", (4, 3)),
        ("YatEmbed", (10, 4)),
        ("MultiHeadYatAttention", (8, 2)),
        ("RotaryYatAttention", (8, 2)),
    ],
    ids=str,
)
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_keras_policies_are_refused_naming_dtype(cls, args, policy):
    """A tf.Module has one dtype: a Keras policy is an error that points to the Keras layers."""
    with pytest.raises(TypeError, match=rf"dtype must be a TensorFlow dtype.*{policy}.*keras"):
        getattr(ours, cls)(*args, dtype=policy)
