"""Keras ``RotaryYatAttention`` and the key/value cache of the Keras attention layers, on the
backend ``KERAS_BACKEND`` names.

Rotary parity: the same weights copied from ``nmn_array.frameworks.torch.RotaryYatAttention``
(itself checked against ``nmn.nnx.RotaryYatAttention`` in tests/frameworks/test_torch.py)
give the same float64 outputs. The cache: decoding a sequence token by token (or a prefill
then tokens) equals the full causal forward of the same layer (float64 to 1e-10, float32 to
1e-5, relative to the largest output); a full cache, a decode before ``init_cache`` and a
batch mismatch raise ValueError; ``reset_cache`` starts over; the compiled decode (tf.function
on tensorflow, jax.jit of ``stateless_call`` on jax) equals the eager one.
"""

from __future__ import annotations

import zlib

import keras
import numpy as np
import pytest
import torch
from nmn_array.frameworks import keras as ours

from tests.frameworks._parity import assert_parity
from tests.frameworks._rotary import ROTARY_CASES, check_cache_errors, torch_rotary

BACKEND = keras.backend.backend()
RTOL64, RTOL32 = 1e-10, 1e-5
E, H, L = 8, 2, 7


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    keras.utils.set_random_seed(zlib.crc32(request.node.name.encode()) % 2**31)


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def to_np(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)


def _causal(n: int) -> np.ndarray:
    return np.tril(np.ones((n, n), dtype=bool))


# --------------------------------------------------------------------------------------
# RotaryYatAttention: parity with the torch layer
# --------------------------------------------------------------------------------------
def _paired(kwargs: dict, rng: np.random.Generator):
    """The torch module (float64, random weights) and ours with the same weights."""
    theirs, weights = torch_rotary(E, H, kwargs, rng)
    mine = ours.RotaryYatAttention(E, H, max_seq_len=32, dtype="float64", **kwargs)
    mine.build((2, L, E))
    for name, value in weights.items():
        getattr(mine, "alpha_param" if name == "alpha" else name).assign(value)
    return theirs, mine


@pytest.mark.parametrize("kwargs", ROTARY_CASES, ids=lambda k: ",".join(k) or "default")
def test_rotary_parity_with_torch(kwargs):
    rng = _rng(f"rotary{sorted(kwargs)}")
    theirs, mine = _paired(kwargs, rng)
    x = rng.normal(size=(2, L, E))
    xt = torch.from_numpy(x)
    case = f"keras-{BACKEND}: RotaryYatAttention{kwargs}"
    got, want = to_np(mine(x)), theirs(xt).detach().numpy()
    assert_parity(got, want, RTOL64, case=case)
    mask = _causal(L)
    got = to_np(mine(x, mask=mask, position_offset=5))
    want = theirs(xt, torch.from_numpy(mask), position_offset=5).detach().numpy()
    assert_parity(got, want, RTOL64, case=case + " causal, offset 5")
    # explicit positions are used as given: arange(5, 5 + L) is the offset 5
    explicit = to_np(mine(x, mask=mask, positions=np.arange(5, 5 + L, dtype="int32")))
    assert_parity(explicit, want, RTOL64, case=case + " positions=")


def test_rotary_weights_config_and_errors():
    layer = ours.RotaryYatAttention(E, H, max_seq_len=16, use_bias=True, learnable_epsilon=True)
    layer.build((1, 3, E))
    names = [w.path.split("/")[-1] for w in layer.weights]
    assert names == [
        *("q_kernel", "k_kernel", "v_kernel", "q_bias", "k_bias", "v_bias"),
        *("out_kernel", "out_bias", "alpha", "epsilon_param"),
    ]
    assert tuple(layer.q_kernel.shape) == (E, E)
    config = layer.get_config()
    assert config["max_seq_len"] == 16 and config["learnable_epsilon"] is True
    again = ours.RotaryYatAttention.from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, ours.RotaryYatAttention) and restored.get_config() == config
    with pytest.raises(ValueError, match="head_dim"):
        ours.RotaryYatAttention(6, 2)
    with pytest.raises(ValueError, match="normalization"):
        ours.RotaryYatAttention(E, H, normalization="sparsemax")
    with pytest.raises(ValueError, match="max_seq_len"):
        layer(np.zeros((1, 3, E), "float32"), position_offset=14)
    with pytest.raises(ValueError, match="embed_dim=8"):
        ours.RotaryYatAttention(E, H)(np.zeros((1, 3, 6), "float32"))
    with pytest.raises(ValueError, match="max_seq_len"):
        layer.init_cache(1, 17)


def test_rotary_in_a_functional_model_saves_and_loads(tmp_path):
    """A saved model leaves the key/value cache out: it loads with or without one."""
    inputs = keras.Input((5, E))
    layer = ours.RotaryYatAttention(E, H, max_seq_len=16)
    model = keras.Model(inputs, layer(inputs, mask=_causal(5)))
    x = _rng("functional").normal(size=(2, 5, E)).astype("float32")
    layer.init_cache(2, 5)
    path = tmp_path / "rotary.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_np(loaded(x)), to_np(model(x)), rtol=1e-6, atol=1e-7)
    assert not any("cache" in v.path for v in loaded.weights)
    loaded.layers[-1].init_cache(2, 5)
    model.save_weights(tmp_path / "rotary.weights.h5")
    loaded.load_weights(tmp_path / "rotary.weights.h5")
    np.testing.assert_array_equal(to_np(loaded(x)), to_np(model(x)))


# --------------------------------------------------------------------------------------
# The key/value cache
# --------------------------------------------------------------------------------------
LAYERS = {
    "mha": lambda dtype, window: ours.MultiHeadYatAttention(E, H, dtype=dtype, window=window),
    "rotary": lambda dtype, window: ours.RotaryYatAttention(
        E, H, max_seq_len=32, use_bias=True, dtype=dtype, window=window
    ),
}
WINDOWS = [None, (2, 0)]


def _decode(layer, x, first: int = 1):
    """Outputs of a decode over ``x``: ``first`` tokens at once (a prefill), then one by one."""
    outs = [to_np(layer(x[:, :first], decode=True))]
    outs += [to_np(layer(x[:, t : t + 1], decode=True)) for t in range(first, x.shape[1])]
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("window", WINDOWS, ids=["full", "window"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_decode_equals_causal_forward(kind, window, dtype):
    rng = _rng(f"{kind}{window}{dtype}")
    layer = LAYERS[kind](dtype, window)
    x = rng.normal(size=(2, L, E)).astype(dtype)
    full = to_np(layer(x, attention_mask=_causal(L)) if kind == "mha" else layer(x, _causal(L)))
    rtol = RTOL64 if dtype == "float64" else RTOL32
    case = f"keras-{BACKEND}: {kind} window={window} {dtype}"
    layer.init_cache(2, L + 2)
    assert int(to_np(layer.cache_index)) == 0
    assert_parity(_decode(layer, x), full, rtol, case=case + " token by token")
    assert int(to_np(layer.cache_index)) == L
    # reset: the same decode again
    layer.reset_cache()
    assert int(to_np(layer.cache_index)) == 0 and not to_np(layer.cache_key).any()
    assert_parity(_decode(layer, x, first=3), full, rtol, case=case + " prefill 3")
    # the cache's variables are non-trainable state of the layer
    assert {v.path.split("/")[-1] for v in layer.non_trainable_weights} >= {
        "cache_key", "cache_value", "cache_index"
    }  # fmt: skip
    assert not any("cache" in v.path for v in layer.trainable_weights)


def test_rotary_decode_takes_explicit_positions():
    """Explicit positions= (uneven gaps) in the decode equal them in the full forward; all
    tokens at one position give another output (the rotation is not a no-op here)."""
    layer = LAYERS["rotary"]("float64", None)
    x = _rng("positions").normal(size=(1, 4, E))
    positions = np.array([0, 2, 5, 9], dtype="int32")
    full = to_np(layer(x, _causal(4), positions=positions))
    layer.init_cache(1, 4)
    got = [
        to_np(layer(x[:, t : t + 1], decode=True, positions=positions[t : t + 1])) for t in range(4)
    ]
    assert_parity(np.concatenate(got, 1), full, RTOL64, case="explicit decode positions")
    layer.reset_cache()
    same = [to_np(layer(x[:, t : t + 1], decode=True, positions=positions[:1])) for t in range(4)]
    assert np.max(np.abs(np.concatenate(same, 1) - full)) > 1e-3 * np.max(np.abs(full))


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_cache_errors(kind):
    layer = LAYERS[kind]("float32", None)
    x = _rng(kind).normal(size=(2, 4, E)).astype("float32")
    layer(x)
    check_cache_errors(layer, x, H)
    assert len([v for v in layer.weights if "cache_key" in v.path]) == 1


@pytest.mark.skipif(
    BACKEND == "torch", reason="the compiled decode of Keras on torch is not tested"
)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_compiled_decode_equals_eager(kind):
    rng = _rng(f"compiled{kind}")
    layer = LAYERS[kind]("float64", (3, 0))
    x = rng.normal(size=(2, L, E))
    layer.init_cache(2, L)
    eager = _decode(layer, x)
    layer.reset_cache()
    if BACKEND == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda t: layer(t, decode=True))
        got = np.concatenate([to_np(step(x[:, t : t + 1])) for t in range(L)], 1)
        with pytest.raises(tf.errors.InvalidArgumentError, match="cache is full"):
            step(x[:, :1])
    else:
        import jax

        step = jax.jit(lambda tv, ntv, t: layer.stateless_call(tv, ntv, t, decode=True))
        trainable = [v.value for v in layer.trainable_variables]
        state = [v.value for v in layer.non_trainable_variables]
        outs = []
        for t in range(L):
            out, state = step(trainable, state, x[:, t : t + 1])
            outs.append(to_np(out))
        got = np.concatenate(outs, 1)
        index = [s for v, s in zip(layer.non_trainable_variables, state) if "index" in v.path]
        assert int(index[0]) == L
    assert_parity(got, eager, RTOL64, case=f"keras-{BACKEND}: compiled decode {kind}")
