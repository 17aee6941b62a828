"""Linear-time (performer) attention in the Keras layers (``use_performer=True``), on the
backend ``KERAS_BACKEND`` names.

The layer's output equals the core ``performer_attention`` applied to the q/k/v its own
weights give, and equals the TensorFlow module with the same weights and projection
(float64, to 1e-10 of the largest output); the projection is non-trainable weights that
``model.save`` / ``keras.models.load_model`` and ``save_weights`` carry; causal and
key-padding masks hide what they should; the compiled call (tf.function, jax.jit of
``stateless_call``, torch.compile) gives the eager result; exact-mode ``causal=True`` is a
causal mask.
"""

from __future__ import annotations

import zlib

import keras
import numpy as np
import pytest
from nmn_array.frameworks import keras as ours

from tests.frameworks._parity import assert_parity
from tests.frameworks._performer import (
    KINDS,
    E,
    H,
    L,
    check_bad_arguments,
    key_padding,
    performer_kwargs,
    reference,
)

BACKEND = keras.backend.backend()
RTOL = 1e-10
CLASSES = ["MultiHeadYatAttention", "RotaryYatAttention"]
NAMES = [f"{n}_{part}" for n in ("q", "k", "v", "out") for part in ("kernel", "bias")]


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def to_np(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t))


def _layer(cls_name: str, kind: str, causal: bool = False, seed: int | None = 0, **kwargs):
    """A built float64 performer layer with random non-trivial weights."""
    extra = dict(max_seq_len=16, normalize_qk=True) if cls_name == "RotaryYatAttention" else {}
    cls = getattr(ours, cls_name)
    options = dict(performer_kwargs(kind, causal), **extra, **kwargs)
    layer = cls(E, H, dtype="float64", seed=seed, **options)
    layer.build((2, L, E))
    rng = _rng(f"{cls_name}{kind}{causal}")
    for variable in layer.trainable_weights:
        variable.assign(rng.normal(scale=0.5, size=variable.shape) + (variable.shape == (1,)))
    return layer


def _weights(layer) -> dict[str, np.ndarray]:
    found = {name: getattr(layer, name) for name in NAMES}
    found["alpha"] = layer.alpha_param
    return {name: to_np(v) for name, v in found.items() if v is not None}


def _projection(layer) -> dict[str, np.ndarray]:
    return {key: to_np(v) for key, v in layer.performer_projection.items()}


def _positions(layer):
    return np.arange(L) if isinstance(layer, ours.RotaryYatAttention) else None


def _call(layer, x, mask=None):
    if isinstance(layer, ours.RotaryYatAttention):
        return to_np(layer(x, mask=mask))
    return to_np(layer(x, attention_mask=mask))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_output_is_the_core_on_the_layers_projections(cls_name, kind, causal):
    layer = _layer(cls_name, kind, causal)
    rng = _rng("core")
    x = rng.normal(size=(2, L, E))
    mask = key_padding(2, L, rng)
    weights, projection = _weights(layer), _projection(layer)
    normalize = cls_name == "RotaryYatAttention"
    options = dict(causal=causal, normalize_qk=normalize, positions=_positions(layer))
    case = f"keras-{BACKEND} {cls_name} {kind} causal={causal}"
    want = reference(weights, projection, x, kind, **options)
    assert_parity(_call(layer, x), want, RTOL, case=case)
    want = reference(weights, projection, x, kind, mask=mask, **options)
    assert_parity(_call(layer, x, mask), want, RTOL, case=case + " masked")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_keras_equals_the_tf_module_with_the_same_weights(cls_name, kind, causal):
    """Cross-framework: this backend's layer, the TensorFlow module and the core agree."""
    tf = pytest.importorskip("tensorflow")
    from nmn_array.frameworks import tf as tf_modules

    layer = _layer(cls_name, kind, causal)
    extra = dict(max_seq_len=16, normalize_qk=True) if cls_name == "RotaryYatAttention" else {}
    cls = getattr(tf_modules, cls_name)
    module = cls(E, H, dtype=tf.float64, **performer_kwargs(kind, causal), **extra)
    module.build(E)
    weights, projection = _weights(layer), _projection(layer)
    for name, value in weights.items():
        getattr(module, name).assign(value)
    for key, value in projection.items():
        module.performer_projection[key].assign(value)
    rng = _rng("cross")
    x, mask = rng.normal(size=(2, L, E)), key_padding(2, L, rng)
    options = dict(causal=causal, normalize_qk=bool(extra), positions=_positions(layer))
    want = reference(weights, projection, x, kind, mask=mask, **options)
    got_tf = module(tf.constant(x), mask=mask).numpy()
    case = f"{cls_name} {kind} causal={causal}"
    assert_parity(got_tf, want, RTOL, case=f"tf vs core {case}")
    assert_parity(_call(layer, x, mask), got_tf, RTOL, case=f"keras-{BACKEND} vs tf {case}")


def test_saved_model_round_trip_keeps_the_projection(tmp_path):
    inputs = keras.Input((L, E), dtype="float64")
    layer = _layer("RotaryYatAttention", "slay", causal=True, seed=None)
    model = keras.Model(inputs, layer(inputs))
    x = _rng("saved").normal(size=(2, L, E))
    path = tmp_path / "performer.keras"
    model.save(path)
    keras.utils.set_random_seed(123)  # the loaded layer draws another projection first
    loaded = keras.models.load_model(path)
    restored = loaded.layers[-1]
    assert restored.use_performer and restored.causal
    assert {v.path for v in restored.non_trainable_weights} == {
        v.path for v in layer.non_trainable_weights
    }
    assert not any("performer" in v.path for v in restored.trainable_weights)
    np.testing.assert_array_equal(to_np(loaded(x)), to_np(model(x)))
    # weights only, into a layer whose own seed gives another projection
    other = _layer("RotaryYatAttention", "slay", causal=True, seed=99)
    assert not np.allclose(_call(other, x), _call(layer, x))
    other_model = keras.Model(inputs, other(inputs))
    model.save_weights(tmp_path / "performer.weights.h5")
    other_model.load_weights(tmp_path / "performer.weights.h5")
    np.testing.assert_array_equal(_call(other, x), _call(layer, x))
    np.testing.assert_array_equal(other.get_weights()[-1], layer.get_weights()[-1])


def test_the_seed_fixes_the_projection():
    a, b, c = (_projection(_layer("MultiHeadYatAttention", "maclaurin", seed=s)) for s in (5, 5, 6))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    keras.utils.set_random_seed(8)
    d = _projection(_layer("MultiHeadYatAttention", "maclaurin", seed=None))
    keras.utils.set_random_seed(8)
    e = _projection(_layer("MultiHeadYatAttention", "maclaurin", seed=None))
    assert all(np.array_equal(d[k], e[k]) for k in d)


def _gradients(layer, x) -> list[np.ndarray]:
    """d sum(y^2) / d(each trainable weight), by the backend's own autodiff."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        return [g.numpy() for g in tape.gradient(loss, layer.trainable_weights)]
    if BACKEND == "jax":
        import jax

        def loss(trainable, state):
            y, _ = layer.stateless_call(trainable, state, x)
            return (y**2).sum()

        trainable = [v.value for v in layer.trainable_weights]
        state = [v.value for v in layer.non_trainable_weights]
        return [np.asarray(g) for g in jax.grad(loss)(trainable, state)]
    (layer(x) ** 2).sum().backward()
    return [v.value.grad.numpy() for v in layer.trainable_weights]


@pytest.mark.parametrize("cls_name", CLASSES)
def test_projection_is_not_trainable_and_gradients_reach_the_weights(cls_name):
    layer = _layer(cls_name, "slay", causal=True)
    projection = {id(v) for v in layer.performer_projection.values()}
    assert len(projection) == 4
    assert projection == {id(v) for v in layer.non_trainable_weights}
    assert not projection & {id(v) for v in layer.trainable_weights}
    names = {v.path.split("/")[-1] for v in layer.trainable_weights}
    assert {"q_kernel", "k_kernel", "v_kernel", "out_kernel"} <= names
    x = keras.ops.convert_to_tensor(_rng("grad").normal(size=(2, L, E)))
    for variable, grad in zip(layer.trainable_weights, _gradients(layer, x)):
        assert np.max(np.abs(grad)) > 0.0, variable.path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_causal_outputs_ignore_later_tokens(cls_name, kind):
    layer = _layer(cls_name, kind, causal=True)
    rng = _rng("later")
    x = rng.normal(size=(2, L, E))
    changed, t = x.copy(), 2
    changed[:, t + 1 :] = rng.normal(size=changed[:, t + 1 :].shape)
    a, b = _call(layer, x), _call(layer, changed)
    np.testing.assert_array_equal(a[:, : t + 1], b[:, : t + 1])
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])


@pytest.mark.parametrize("kind", KINDS)
def test_key_padding_hides_keys_and_query_masks_raise(kind):
    layer = _layer("MultiHeadYatAttention", kind)
    rng = _rng("padding")
    x = rng.normal(size=(2, L, E))
    mask = np.ones((2, 1, 1, L), dtype=bool)
    mask[..., 4:] = False
    changed = x.copy()
    changed[:, 4:] = rng.normal(size=changed[:, 4:].shape)
    # self-attention: the changed tokens are queries too; the others' outputs stay
    a, b = _call(layer, x, mask), _call(layer, changed, mask)
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert not np.allclose(_call(layer, x)[:, :4], _call(layer, changed)[:, :4])
    with pytest.raises(ValueError, match="key-padding"):
        layer(x, attention_mask=np.tril(np.ones((L, L), dtype=bool)))


@pytest.mark.parametrize("cls_name", CLASSES)
def test_a_keras_sequence_mask_pads_keys_and_zeroes_padded_queries(cls_name):
    layer = _layer(cls_name, "slay")
    rng = _rng("sequence")
    x = rng.normal(size=(2, L, E))
    lengths = np.array([L, 4])
    sequence = np.arange(L)[None, :] < lengths[:, None]
    got = to_np(layer(x, mask=sequence))
    want = _call(layer, x, sequence[:, None, None, :])
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1, :4], want[1, :4])
    assert np.all(got[1, 4:] == 0.0) and np.all(want[1, 4:] != 0.0)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_decode_with_performer_raises(cls_name):
    layer = _layer(cls_name, "slay")
    layer.init_cache(2, L)
    with pytest.raises(ValueError, match="decode=True.*use_performer=True"):
        layer(np.zeros((2, 1, E)), decode=True)


def _compiled(layer, x, mask):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        run = tf.function(lambda t, m: _call_raw(layer, t, m))
        return to_np(run(tf.constant(x), tf.constant(mask)))
    if BACKEND == "jax":
        import jax

        def run(trainable, state, t, m):
            kwargs = {"mask" if isinstance(layer, ours.RotaryYatAttention) else "attention_mask": m}
            return layer.stateless_call(trainable, state, t, **kwargs)[0]

        trainable = [v.value for v in layer.trainable_weights]
        state = [v.value for v in layer.non_trainable_weights]
        return to_np(jax.jit(run)(trainable, state, x, mask))
    import torch

    run = torch.compile(lambda t, m: _call_raw(layer, t, m), backend="eager", fullgraph=True)
    with torch.no_grad():
        return to_np(run(torch.from_numpy(x), torch.from_numpy(mask)))


def _call_raw(layer, x, mask):
    if isinstance(layer, ours.RotaryYatAttention):
        return layer(x, mask=mask)
    return layer(x, attention_mask=mask)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_compiled_equals_eager(cls_name, kind):
    layer = _layer(cls_name, kind, causal=True)
    rng = _rng("compiled")
    x, mask = rng.normal(size=(2, L, E)), key_padding(2, L, rng)
    case = f"keras-{BACKEND} compiled {cls_name} {kind}"
    assert_parity(_compiled(layer, x, mask), _call(layer, x, mask), RTOL, case=case)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_exact_mode_causal_is_a_causal_mask(cls_name):
    extra = dict(max_seq_len=16) if cls_name == "RotaryYatAttention" else {}
    cls = getattr(ours, cls_name)
    causal = cls(E, H, dtype="float64", causal=True, **extra)
    plain = cls(E, H, dtype="float64", **extra)
    for layer in (causal, plain):
        layer.build((2, L, E))
    for mine, theirs in zip(causal.trainable_weights, plain.trainable_weights):
        mine.assign(theirs)
    rng = _rng("exact")
    x = rng.normal(size=(2, L, E))
    tril = np.tril(np.ones((L, L), dtype=bool))
    assert causal.performer_projection is None and not causal.non_trainable_weights
    case = f"keras-{BACKEND} {cls_name} causal"
    assert_parity(_call(causal, x), _call(plain, x, tril), RTOL, case=case)
    mask = key_padding(2, L, rng)
    assert_parity(_call(causal, x, mask), _call(plain, x, mask & tril), RTOL, case=case + "+mask")
    assert not np.allclose(_call(causal, x), _call(plain, x))
    # a causal layer's config makes a causal layer
    assert type(causal).from_config(causal.get_config()).causal


@pytest.mark.parametrize("cls_name", CLASSES)
def test_bad_performer_arguments_raise(cls_name):
    cls = getattr(ours, cls_name)
    check_bad_arguments(cls, rotary=cls_name == "RotaryYatAttention")
    with pytest.raises(TypeError, match="seed"):
        cls(E, H, use_performer=True, seed=1.5)


def test_alpha_scales_the_output_and_dropout_acts_on_it():
    x = _rng("alpha").normal(size=(2, L, E))
    common = dict(use_out_proj=False, dropout=0.5, dtype="float64", seed=3)
    two = ours.MultiHeadYatAttention(E, H, constant_alpha=2.0, **performer_kwargs("slay"), **common)
    none = ours.MultiHeadYatAttention(E, H, use_alpha=False, **performer_kwargs("slay"), **common)
    for layer in (two, none):
        layer.build((2, L, E))
    for mine, theirs in zip(two.weights, none.weights):
        mine.assign(theirs)
    assert two.alpha_param is None and none.alpha_param is None
    plain = to_np(none(x))
    assert_parity(to_np(two(x)), 2.0 * plain, RTOL, case=f"keras-{BACKEND} constant_alpha=2")
    # training: each output value is kept and scaled by 1 / (1 - 0.5), or dropped
    dropped = to_np(none(x, training=True))
    kept = dropped != 0.0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(dropped[kept], 2.0 * plain[kept], rtol=1e-12)
