"""TensorFlow ``RotaryYatAttention`` and the key/value cache of the TF attention modules.

Rotary parity: the same weights copied from ``nmn_array.frameworks.torch.RotaryYatAttention``
(checked against ``nmn.nnx.RotaryYatAttention`` in test_torch.py) give the same float64
outputs. The cache: decoding token by token (or a prefill then tokens) equals the full causal
forward of the same module (float64 to 1e-10, float32 to 1e-5, relative to the largest
output), also under ``tf.function`` and XLA; a full cache, a decode before ``init_cache`` and
a batch mismatch raise errors naming the sizes; ``reset_cache`` starts over.
"""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from nmn_array.frameworks import tf as ours  # noqa: E402

from tests.frameworks._parity import assert_parity
from tests.frameworks._rotary import ROTARY_CASES, check_cache_errors, torch_rotary  # noqa: E402

RTOL64, RTOL32 = 1e-10, 1e-5
E, H, L = 8, 2, 7


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _causal(n: int) -> np.ndarray:
    return np.tril(np.ones((n, n), dtype=bool))


# --------------------------------------------------------------------------------------
# RotaryYatAttention: parity with the torch module
# --------------------------------------------------------------------------------------
def _paired(kwargs: dict, rng: np.random.Generator):
    """The torch module (float64, random weights) and ours with the same weights."""
    theirs, weights = torch_rotary(E, H, kwargs, rng)
    mine = ours.RotaryYatAttention(E, H, max_seq_len=32, dtype=tf.float64, **kwargs)
    mine.build(E)
    for name, value in weights.items():
        getattr(mine, name).assign(value)
    return theirs, mine


@pytest.mark.parametrize("kwargs", ROTARY_CASES, ids=lambda k: ",".join(k) or "default")
def test_rotary_parity_with_torch(kwargs):
    rng = _rng(f"rotary{sorted(kwargs)}")
    theirs, mine = _paired(kwargs, rng)
    x = rng.normal(size=(2, L, E))
    xt = torch.from_numpy(x)
    case = f"tf: RotaryYatAttention{kwargs}"
    assert_parity(mine(x).numpy(), theirs(xt).detach().numpy(), RTOL64, case=case)
    mask = _causal(L)
    got = mine(x, mask=mask, position_offset=5).numpy()
    want = theirs(xt, torch.from_numpy(mask), position_offset=5).detach().numpy()
    assert_parity(got, want, RTOL64, case=case + " causal, offset 5")
    explicit = mine(x, mask=mask, positions=np.arange(5, 5 + L, dtype=np.int32)).numpy()
    assert_parity(explicit, want, RTOL64, case=case + " positions=")


def test_rotary_variables_checkpoint_and_errors(tmp_path):
    mod = ours.RotaryYatAttention(E, H, max_seq_len=16, use_bias=True, learnable_epsilon=True)
    x = tf.constant(_rng("ckpt").normal(size=(1, 3, E)), tf.float32)
    y = mod(x)
    names = sorted(v.name.split("/")[-1] for v in mod.trainable_variables)
    assert names == sorted(
        f"{n}:0"
        for n in ("q_kernel", "k_kernel", "v_kernel", "q_bias", "k_bias", "v_bias")
        + ("out_kernel", "out_bias", "alpha", "epsilon_param")
    )
    path = tf.train.Checkpoint(module=mod).write(str(tmp_path / "ckpt"))
    other = ours.RotaryYatAttention(E, H, max_seq_len=16, use_bias=True, learnable_epsilon=True)
    other.build(E)
    tf.train.Checkpoint(module=other).read(path).assert_consumed()
    np.testing.assert_array_equal(other(x).numpy(), y.numpy())
    with pytest.raises(ValueError, match="head_dim"):
        ours.RotaryYatAttention(6, 2)
    with pytest.raises(ValueError, match="normalization"):
        ours.RotaryYatAttention(E, H, normalization="sparsemax")
    with pytest.raises(ValueError, match="max_seq_len"):
        mod(x, position_offset=14)
    with pytest.raises(ValueError, match="embed_dim=8"):
        ours.RotaryYatAttention(E, H)(tf.zeros((1, 3, 6)))
    with pytest.raises(ValueError, match="max_seq_len"):
        mod.init_cache(1, 17)


# --------------------------------------------------------------------------------------
# The key/value cache
# --------------------------------------------------------------------------------------
MODULES = {
    "mha": lambda dtype, window: ours.MultiHeadYatAttention(E, H, dtype=dtype, window=window),
    "rotary": lambda dtype, window: ours.RotaryYatAttention(
        E, H, max_seq_len=32, use_bias=True, dtype=dtype, window=window
    ),
}
WINDOWS = [None, (2, 0)]


def _decode(step, x, first: int = 1):
    """Outputs of ``step`` (a decoding call) over ``x``: ``first`` tokens, then one by one."""
    outs = [step(x[:, :first]).numpy()]
    outs += [step(x[:, t : t + 1]).numpy() for t in range(first, x.shape[1])]
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("window", WINDOWS, ids=["full", "window"])
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_decode_equals_causal_forward(kind, window, dtype):
    rng = _rng(f"{kind}{window}{dtype.name}")
    mod = MODULES[kind](dtype, window)
    x = tf.constant(rng.normal(size=(2, L, E)), dtype)
    full = mod(x, mask=_causal(L)).numpy()
    rtol = RTOL64 if dtype == tf.float64 else RTOL32
    case = f"tf: {kind} window={window} {dtype.name}"

    def step(t):
        return mod(t, decode=True)

    mod.init_cache(2, L + 2)
    assert_parity(_decode(step, x), full, rtol, case=case + " token by token")
    assert int(mod.cache_index.numpy()) == L
    mod.reset_cache()
    assert int(mod.cache_index.numpy()) == 0 and not mod.cache_key.numpy().any()
    assert_parity(_decode(step, x, first=3), full, rtol, case=case + " prefill 3")
    assert {v.name.split("/")[-1] for v in mod.non_trainable_variables} == {
        "cache_key:0", "cache_value:0", "cache_index:0"
    }  # fmt: skip


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "xla"])
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_decode_under_tf_function_equals_eager(kind, jit):
    mod = MODULES[kind](tf.float64, (3, 0))
    x = tf.constant(_rng(f"compiled{kind}").normal(size=(2, L, E)), tf.float64)
    mod.init_cache(2, L)
    eager = _decode(lambda t: mod(t, decode=True), x)
    mod.reset_cache()
    step = tf.function(lambda t: mod(t, decode=True), jit_compile=jit)
    got = np.concatenate([step(x[:, t : t + 1]).numpy() for t in range(L)], 1)
    assert_parity(got, eager, RTOL64, case=f"tf: {kind} decode, tf.function jit={jit}")
    if not jit:  # the graph's assertion (XLA drops it)
        with pytest.raises(tf.errors.InvalidArgumentError, match="cache is full"):
            step(x[:, :1])


def test_rotary_decode_takes_explicit_positions():
    mod = MODULES["rotary"](tf.float64, None)
    x = tf.constant(_rng("positions").normal(size=(1, 4, E)))
    positions = np.array([0, 2, 5, 9], dtype=np.int32)
    full = mod(x, mask=_causal(4), positions=positions).numpy()
    mod.init_cache(1, 4)
    got = [mod(x[:, t : t + 1], decode=True, positions=positions[t : t + 1]) for t in range(4)]
    assert_parity(np.concatenate(got, 1), full, RTOL64, case="tf: explicit decode positions")
    mod.reset_cache()
    same = [mod(x[:, t : t + 1], decode=True, positions=positions[:1]) for t in range(4)]
    assert np.max(np.abs(np.concatenate(same, 1) - full)) > 1e-3 * np.max(np.abs(full))


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_cache_errors(kind):
    mod = MODULES[kind](tf.float32, None)
    x = tf.constant(_rng(kind).normal(size=(2, 4, E)), tf.float32)
    mod(x)
    check_cache_errors(mod, x, H)


def test_rotary_2d_positions_common_shift_and_per_sequence():
    mod = ours.RotaryYatAttention(16, 2, max_seq_len=64, dtype=tf.float64)
    x = tf.constant(_rng("grid").normal(size=(2, 6, 16)))
    grid = np.stack([np.arange(6) // 3, np.arange(6) % 3], axis=-1)
    base = mod(x, positions=grid).numpy()
    assert_parity(mod(x, positions=grid + [5, 9]).numpy(), base, 1e-12, "TF 2-D shift")
    per_batch = np.stack([grid, grid + 3])  # (B, L, 2): one grid per sequence
    assert_parity(mod(x, positions=per_batch).numpy(), base, 1e-12, "TF per-sequence grid")
    assert np.abs(mod(x, positions=grid[::-1].copy()).numpy() - base).max() > 1e-3
