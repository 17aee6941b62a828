"""Linear-time (performer) attention in the TensorFlow modules (``use_performer=True``).

The module's output equals the core ``performer_attention`` applied to the q/k/v its own
weights give (float64, to 1e-10 of the largest output); the projection is non-trainable
state that a ``tf.train.Checkpoint`` carries; causal and key-padding masks hide what they
should; ``tf.function`` gives the eager result; exact-mode ``causal=True`` is a causal mask.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from nmn_array.frameworks import tf as ours  # noqa: E402

from tests.frameworks._parity import assert_parity  # noqa: E402
from tests.frameworks._performer import (  # noqa: E402
    KINDS,
    E,
    H,
    L,
    check_bad_arguments,
    key_padding,
    performer_kwargs,
    reference,
)

RTOL = 1e-10


def _module(cls_name: str, kind: str, causal: bool = False, **kwargs):
    cls = getattr(ours, cls_name)
    extra = dict(max_seq_len=16, normalize_qk=True) if cls_name == "RotaryYatAttention" else {}
    module = cls(E, H, dtype=tf.float64, **performer_kwargs(kind, causal), **extra, **kwargs)
    module.build(E)
    # random, non-trivial weights (the biases start at zero, alpha at one)
    rng = np.random.default_rng(abs(hash((cls_name, kind, causal))) % 2**32)
    for variable in module.trainable_variables:
        variable.assign(rng.normal(scale=0.5, size=variable.shape) + (variable.shape == (1,)))
    return module


def _weights(module) -> dict[str, np.ndarray]:
    names = ("q", "k", "v", "out")
    found = {
        f"{n}_{part}": getattr(module, f"{n}_{part}") for n in names for part in ("kernel", "bias")
    }
    found["alpha"] = module.alpha
    return {name: v.numpy() for name, v in found.items() if v is not None}


def _projection(module) -> dict[str, np.ndarray]:
    return {key: v.numpy() for key, v in module.performer_projection.items()}


def _call(module, x, **kwargs):
    return module(tf.constant(x), **kwargs).numpy()


def _positions(module):
    return np.arange(L) if isinstance(module, ours.RotaryYatAttention) else None


CLASSES = ["MultiHeadYatAttention", "RotaryYatAttention"]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_output_is_the_core_on_the_modules_projections(cls_name, kind, causal):
    module = _module(cls_name, kind, causal)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, L, E))
    mask = key_padding(2, L, rng)
    weights, projection = _weights(module), _projection(module)
    normalize = cls_name == "RotaryYatAttention"
    options = dict(causal=causal, normalize_qk=normalize, positions=_positions(module))
    case = f"tf {cls_name} {kind} causal={causal}"
    want = reference(weights, projection, x, kind, **options)
    assert_parity(_call(module, x), want, RTOL, case=case)
    want = reference(weights, projection, x, kind, mask=mask, **options)
    assert_parity(_call(module, x, mask=mask), want, RTOL, case=case + " masked")


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_fixes_the_projection(kind, tmp_path):
    tf.random.set_seed(1)
    first = _module("RotaryYatAttention", kind)
    tf.random.set_seed(2)
    second = _module("RotaryYatAttention", kind)
    x = np.random.default_rng(4).normal(size=(2, L, E))
    projections = [_projection(m) for m in (first, second)]
    assert any(not np.array_equal(projections[0][k], projections[1][k]) for k in projections[0])
    assert not np.allclose(_call(first, x), _call(second, x))
    path = tf.train.Checkpoint(module=first).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(module=second).read(path).assert_consumed()
    np.testing.assert_array_equal(_call(second, x), _call(first, x))
    for key, value in _projection(first).items():
        np.testing.assert_array_equal(second.performer_projection[key].numpy(), value)


def test_the_seed_comes_from_tf_random():
    tf.random.set_seed(7)
    a = _projection(_module("MultiHeadYatAttention", "slay"))
    tf.random.set_seed(7)
    b = _projection(_module("MultiHeadYatAttention", "slay"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("cls_name", CLASSES)
def test_projection_is_not_trainable_and_gradients_reach_the_weights(cls_name):
    module = _module(cls_name, "slay", causal=True)
    projection = set(id(v) for v in module.performer_projection.values())
    assert len(projection) == 4
    assert not projection & {id(v) for v in module.trainable_variables}
    assert all(not v.trainable for v in module.performer_projection.values())
    x = tf.constant(np.random.default_rng(5).normal(size=(2, L, E)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(module(x) ** 2)
    grads = tape.gradient(loss, module.trainable_variables)
    for variable, grad in zip(module.trainable_variables, grads):
        assert grad is not None, variable.name
        assert float(tf.reduce_max(tf.abs(grad))) > 0.0, variable.name
    names = {v.name.split("/")[-1].split(":")[0] for v in module.trainable_variables}
    assert {"q_kernel", "k_kernel", "v_kernel", "out_kernel"} <= names


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_causal_outputs_ignore_later_tokens(cls_name, kind):
    module = _module(cls_name, kind, causal=True)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, L, E))
    changed = x.copy()
    t = 2
    changed[:, t + 1 :] = rng.normal(size=changed[:, t + 1 :].shape)
    a, b = _call(module, x), _call(module, changed)
    np.testing.assert_array_equal(a[:, : t + 1], b[:, : t + 1])
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])


@pytest.mark.parametrize("kind", KINDS)
def test_key_padding_hides_keys_and_query_masks_raise(kind):
    module = _module("MultiHeadYatAttention", kind)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, L, E))
    mask = np.ones((2, 1, 1, L), dtype=bool)
    mask[:, ..., 4:] = False
    changed = x.copy()
    changed[:, 4:] = rng.normal(size=changed[:, 4:].shape)
    # self-attention: the changed tokens are queries too; the others' outputs stay
    a, b = _call(module, x, mask=mask), _call(module, changed, mask=mask)
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert not np.allclose(_call(module, x)[:, :4], _call(module, changed)[:, :4])
    with pytest.raises(ValueError, match="key-padding"):
        module(tf.constant(x), mask=np.tril(np.ones((L, L), dtype=bool)))


def test_a_sequence_with_every_key_masked_outputs_zeros():
    module = _module("MultiHeadYatAttention", "slay")
    mask = np.ones((2, 1, 1, L), dtype=bool)
    mask[1] = False
    y = _call(module, np.random.default_rng(8).normal(size=(2, L, E)), mask=mask)
    assert np.all(y[1] == 0.0) and np.all(np.abs(y[0]) > 0.0)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_decode_with_performer_raises(cls_name):
    module = _module(cls_name, "slay")
    module.init_cache(2, L)
    with pytest.raises(ValueError, match="decode=True.*use_performer=True"):
        module(tf.zeros((2, 1, E), tf.float64), decode=True)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_tf_function_equals_eager(cls_name, kind, causal):
    module = _module(cls_name, kind, causal)
    rng = np.random.default_rng(9)
    x, mask = tf.constant(rng.normal(size=(2, L, E))), key_padding(2, L, rng)
    compiled = tf.function(lambda t, m: module(t, mask=m))
    got, want = compiled(x, tf.constant(mask)).numpy(), _call(module, x, mask=mask)
    assert_parity(got, want, RTOL, case=f"tf.function {cls_name} {kind} causal={causal}")


@pytest.mark.parametrize("cls_name", CLASSES)
def test_exact_mode_causal_is_a_causal_mask(cls_name):
    extra = dict(max_seq_len=16) if cls_name == "RotaryYatAttention" else {}
    cls = getattr(ours, cls_name)
    causal = cls(E, H, dtype=tf.float64, causal=True, **extra)
    plain = cls(E, H, dtype=tf.float64, **extra)
    for module in (causal, plain):
        module.build(E)
    for mine, theirs in zip(causal.trainable_variables, plain.trainable_variables):
        mine.assign(theirs)
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, L, E))
    tril = np.tril(np.ones((L, L), dtype=bool))
    assert causal.performer_projection is None
    assert_parity(_call(causal, x), _call(plain, x, mask=tril), RTOL, case=f"tf {cls_name} causal")
    # combined with a user's mask
    mask = key_padding(2, L, rng)
    want = _call(plain, x, mask=mask & tril)
    assert_parity(_call(causal, x, mask=mask), want, RTOL, case=f"tf {cls_name} causal+mask")
    assert not np.allclose(_call(causal, x), _call(plain, x))


@pytest.mark.parametrize("cls_name", CLASSES)
def test_bad_performer_arguments_raise(cls_name):
    cls = getattr(ours, cls_name)
    check_bad_arguments(cls, rotary=cls_name == "RotaryYatAttention")


def test_alpha_scales_the_output_and_dropout_acts_on_it():
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(size=(2, L, E)))
    made = {}
    for name, options in (("two", dict(constant_alpha=2.0)), ("none", dict(use_alpha=False))):
        options.update(use_out_proj=False, dropout=0.5)
        made[name] = ours.MultiHeadYatAttention(
            E, H, dtype=tf.float64, **performer_kwargs("slay"), **options
        )
        made[name].build(E)
    for mine, theirs in zip(made["two"].trainable_variables, made["none"].trainable_variables):
        mine.assign(theirs)
    made["two"].performer_projection = made["none"].performer_projection
    assert made["two"].alpha is None and made["none"].alpha is None
    doubled, plain = made["two"](x).numpy(), made["none"](x).numpy()
    assert_parity(doubled, 2.0 * plain, RTOL, case="tf constant_alpha=2 scales the output")
    # training: each output value is kept and scaled by 1 / (1 - 0.5), or dropped
    dropped = made["none"](x, training=True).numpy()
    kept = dropped != 0.0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(dropped[kept], 2.0 * plain[kept], rtol=1e-12)
