"""RotaryYatAttention with explicit 1-D and 2-D positions, and cache resets (issue 14).

Output invariance under a common shift of every position is the module-level face of the
spec property ``relative_position``: yat scores depend only on position differences, and
values are not rotated. The decode tests walk a sequence with explicit positions through the
key/value cache and compare with the full causal forward at the same positions.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation

fast_xla_compilation()  # before JAX creates its CPU backend
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

from nmn_array.frameworks import nnx as M  # noqa: E402

from tests.frameworks._parity import assert_parity  # noqa: E402

jnp = jax.numpy
L, E, H = 6, 16, 2
GRID = np.stack([np.arange(L) // 3, np.arange(L) % 3], axis=-1)  # a 2 x 3 grid, row-major


def _nnx_module(dtype=jnp.float64):
    return M.RotaryYatAttention(E, H, 64, param_dtype=dtype, rngs=nnx.Rngs(0))


def _x(dtype=np.float64):
    return jnp.asarray(np.random.default_rng(3).normal(size=(2, L, E)).astype(dtype))


@pytest.mark.parametrize("positions", [np.arange(L) * 2 + 1, GRID], ids=["1d", "2d"])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_nnx_common_shift_leaves_output_unchanged(positions, dtype, rtol):
    m, x = _nnx_module(dtype), _x(dtype)
    pos = jnp.asarray(positions, jnp.int32)
    shift = jnp.asarray([5, 9][: 1 if pos.ndim == 1 else 2], jnp.int32)
    base = m(x, positions=pos)
    assert_parity(m(x, positions=pos + shift), base, rtol, "nnx Rotary[shifted positions]")
    # and the positions matter: a permutation of them changes the output
    moved = m(x, positions=pos[::-1])
    assert float(jnp.max(jnp.abs(moved - base))) > 1e-3


def test_nnx_default_positions_equal_arange_and_offset():
    m, x = _nnx_module(), _x()
    assert_parity(m(x, positions=jnp.arange(L)), m(x), 1e-14, "positions=arange")
    assert_parity(
        m(x, positions=jnp.arange(L) + 4), m(x, position_offset=4), 1e-14, "positions=offset"
    )


def test_nnx_2d_positions_batched_and_bad_shapes():
    m, x = _nnx_module(), _x()
    per_batch = jnp.stack([jnp.asarray(GRID), jnp.asarray(GRID) + 3])  # (B, L, 2)
    out = m(x, positions=per_batch)
    # a batch-wide shift changes nothing, so each row matches the shared grid
    assert_parity(out, m(x, positions=jnp.asarray(GRID)), 1e-12, "per-batch 2-D positions")
    with pytest.raises(ValueError, match=r"positions must have shape"):
        m(x, positions=jnp.zeros((L, 3), jnp.int32))
    odd = M.RotaryYatAttention(12, 2, 64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"divisible by 4"):
        odd(jnp.ones((1, L, 12)), positions=jnp.asarray(GRID))


@pytest.mark.parametrize("positions", [None, GRID], ids=["index", "2d"])
def test_nnx_decode_with_positions_and_reset(positions):
    m, x = _nnx_module(), _x()
    causal = jnp.tril(jnp.ones((L, L), bool))
    pos = None if positions is None else jnp.asarray(positions, jnp.int32)
    full = m(x, causal, positions=pos)
    m.init_cache(2, L, dtype=jnp.float64)
    for sweep in range(2):
        steps = [
            m(x[:, t : t + 1], decode=True, positions=None if pos is None else pos[t : t + 1])
            for t in range(L)
        ]
        assert_parity(jnp.concatenate(steps, axis=1), full, 1e-10, f"decode sweep {sweep}")
        m.reset_cache()
        assert int(m.cache_index[...]) == 0
        assert float(jnp.max(jnp.abs(m.cached_key[...]))) == 0.0


def test_nnx_reset_before_init_raises():
    with pytest.raises(ValueError, match="init_cache"):
        _nnx_module().reset_cache()


# -- PyTorch ------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
from nmn_array.frameworks import torch as T  # noqa: E402


def _torch_module():
    torch.manual_seed(0)
    return T.RotaryYatAttention(E, H, 64, dtype=torch.float64)


@pytest.mark.parametrize("positions", [np.arange(L) * 2 + 1, GRID], ids=["1d", "2d"])
def test_torch_common_shift_and_per_sequence_positions(positions):
    m = _torch_module()
    x = torch.from_numpy(np.asarray(_x()))
    pos = torch.from_numpy(positions)
    shift = torch.tensor([5, 9][: 1 if pos.dim() == 1 else 2])
    base = m(x, positions=pos)
    torch.testing.assert_close(m(x, positions=pos + shift), base, rtol=1e-12, atol=1e-12)
    assert float((m(x, positions=pos.flip(0)) - base).abs().max()) > 1e-3
    if pos.dim() == 2:  # (B, L, 2): one grid per sequence, shared by the heads
        per_batch = torch.stack([pos, pos + 3])
        torch.testing.assert_close(m(x, positions=per_batch), base, rtol=1e-12, atol=1e-12)


def test_torch_decode_with_2d_positions_equals_full_forward():
    m = _torch_module()
    x = torch.from_numpy(np.asarray(_x()))
    pos = torch.from_numpy(GRID)
    full = m(x, torch.ones(L, L, dtype=torch.bool).tril(), positions=pos)
    m.init_cache(2, L)
    steps = [m(x[:, t : t + 1], decode=True, positions=pos[t : t + 1]) for t in range(L)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="not both"):
        m(x, positions=pos, position_offset=2)


@pytest.mark.parametrize("cls", ["MultiHeadAttention", "RotaryYatAttention"])
def test_nnx_float32_decode_equals_causal_forward(cls):
    # float64 is covered against nmn in test_nnx.py; float32 is what users decode in
    x = _x(np.float32)
    if cls == "RotaryYatAttention":
        m = M.RotaryYatAttention(E, H, 64, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
        m.init_cache(2, L, dtype=jnp.float32)
    else:
        m = M.MultiHeadAttention(H, E, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
        m.init_cache((2, L, E), dtype=jnp.float32)
    full = m(x, mask=jnp.tril(jnp.ones((L, L), bool)))
    steps = [m(x[:, t : t + 1], decode=True) for t in range(L)]
    assert_parity(jnp.concatenate(steps, axis=1), full, 1e-5, f"nnx {cls} float32 decode")
