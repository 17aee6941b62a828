"""KV-cache decoding of the torch attention modules (issue 14): ``init_cache``,
``forward(..., decode=True)``, ``reset_cache`` and the rotary ``positions=`` argument.

The reference is the same module's full forward with a lower-triangular boolean mask: token
by token (or a prefill, then token by token) over the cache must give the same outputs.
Error metric: the largest absolute difference over the largest reference magnitude.
"""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")

from nmn_array.frameworks import torch as yat  # noqa: E402

E, H, L = 8, 2, 7
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
WINDOWS = [None, (2, 0), (2, 1)]
KINDS = ["mha", "rotary"]


def _module(kind: str, dtype=torch.float64, **kw):
    """An attention module in eval mode with perturbed alpha (so it matters)."""
    torch.manual_seed(0)
    if kind == "mha":
        m = yat.MultiHeadYatAttention(E, H, dtype=dtype, param_dtype=dtype, **kw)
    else:
        m = yat.RotaryYatAttention(E, H, max_seq_len=16, dtype=dtype, param_dtype=dtype, **kw)
    with torch.no_grad():
        m.alpha.fill_(1.3)
    return m.eval()


def _x(batch=2, length=L, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, E, generator=g, dtype=dtype)


def _full(m, x):
    """The module's full causal forward."""
    causal = torch.tril(torch.ones(x.shape[-2], x.shape[-2], dtype=torch.bool))
    return m(x, mask=causal)


def _decode(m, x, prefill=0):
    """``prefill`` tokens in one call (if any), then one token per call."""
    outs = [m(x[:, :prefill], decode=True)] if prefill else []
    outs += [m(x[:, t : t + 1], decode=True) for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1)


def _err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_decode_one_token_at_a_time_equals_the_causal_forward(kind, window, dtype):
    m = _module(kind, dtype, window=window)
    x = _x(dtype=dtype)
    full = _full(m, x)
    m.init_cache(2, 10)  # more slots than tokens: the empty ones must not count
    out = _decode(m, x)
    assert out.dtype == dtype
    assert _err(out, full) <= RTOL[dtype]
    assert int(m.cache_index) == L


@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_decode_equals_the_causal_forward(kind, window):
    m = _module(kind, window=window)
    x = _x()
    full = _full(m, x)
    m.init_cache(2, L)
    assert _err(_decode(m, x, prefill=3), full) <= 1e-10
    assert int(m.cache_index) == L


@pytest.mark.parametrize("kind", KINDS)
def test_decode_with_normalize_qk_and_tiles(kind):
    # unit q, k before RoPE, and the blocked path (block_size=2) over the cache
    m = _module(kind, normalize_qk=True, block_size=2, window=(3, 0))
    x = _x()
    full = _full(m, x)
    m.init_cache(2, 9)
    assert _err(_decode(m, x, prefill=2), full) <= 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_reset_cache_then_decode_again_gives_the_same_outputs(kind):
    m = _module(kind, window=(2, 0))
    x = _x()
    m.init_cache(2, L)
    first = _decode(m, x)
    m.reset_cache()
    assert int(m.cache_index) == 0
    assert not m.cached_key.any() and not m.cached_value.any()
    second = _decode(m, x, prefill=2)
    assert _err(second, first) <= 1e-12
    # a new sequence after a reset is not influenced by the old one
    m.reset_cache()
    other = _x(seed=5)
    fresh = _module(kind, window=(2, 0))
    fresh.init_cache(2, L)
    assert torch.equal(_decode(m, other), _decode(fresh, other))


@pytest.mark.parametrize("kind", KINDS)
def test_full_cache_raises(kind):
    m = _module(kind)
    x = _x()
    m.init_cache(2, 4)
    m(x[:, :3], decode=True)
    with pytest.raises(ValueError, match=r"max_length=4, index=3, L=2"):
        m(x[:, 3:5], decode=True)
    assert int(m.cache_index) == 3  # the failed call wrote nothing
    m(x[:, 3:4], decode=True)
    with pytest.raises(ValueError, match=r"full.*max_length=4, index=4, L=1"):
        m(x[:, 4:5], decode=True)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_before_init_cache_raises(kind):
    m = _module(kind)
    with pytest.raises(ValueError, match=r"init_cache\(batch_size, max_length\)"):
        m(_x()[:, :1], decode=True)
    with pytest.raises(ValueError, match="init_cache"):
        m.reset_cache()


@pytest.mark.parametrize("kind", KINDS)
def test_decode_batch_mismatch_raises(kind):
    m = _module(kind)
    m.init_cache(3, 8)
    with pytest.raises(ValueError, match=r"cache's batch 3.*got batch 2.*\(3, 2, 8, 4\)"):
        m(_x()[:, :1], decode=True)


def test_decode_key_length_mismatch_raises():
    m = _module("mha")
    m.init_cache(2, 8)
    x = _x()
    with pytest.raises(ValueError, match="1 queries and 2 keys"):
        m(x[:, :1], x[:, :2], decode=True)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_unbatched_with_a_batch_of_one(kind):
    m = _module(kind, window=(1, 0))
    x = _x(batch=1)
    m.init_cache(1, L)
    batched = _decode(m, x, prefill=2)
    m.reset_cache()
    outs = [m(x[0, :2], decode=True)] + [m(x[0, t : t + 1], decode=True) for t in range(2, L)]
    unbatched = torch.cat(outs, dim=0)
    assert unbatched.shape == (L, E)
    assert _err(unbatched, batched[0]) <= 1e-12


def test_decode_with_a_mask_over_the_slots():
    # a mask (B, H, L, max_length) is and-ed with what the cache lets each query see
    m = _module("rotary")
    x = _x()
    hidden = torch.ones(L, L, dtype=torch.bool)
    hidden[:, 1] = False  # nobody sees token 1 (slot 1)
    full = m(x, mask=torch.tril(torch.ones(L, L, dtype=torch.bool)) & hidden)
    m.init_cache(2, L)
    outs = [m(x[:, t : t + 1], mask=hidden[t : t + 1], decode=True) for t in range(L)]
    assert _err(torch.cat(outs, dim=1), full) <= 1e-10


def test_decode_query_seeing_no_slot_gives_zeros():
    m = _module("mha")
    x = _x()
    m.init_cache(2, 4)
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert torch.equal(m(x[:, :1], mask=none, decode=True), torch.zeros(2, 1, E, dtype=x.dtype))


def test_init_cache_defaults_and_state_dict():
    m = _module("rotary")
    keys = set(m.state_dict())
    m.init_cache(2, 5)
    assert m.cached_key.shape == m.cached_value.shape == (2, H, 5, E // H)
    assert m.cached_key.dtype == torch.float64 and m.cache_index.dtype == torch.int64
    assert m.cache_index.shape == ()
    # not persistent: checkpoints keep nmn's keys and load into a module without a cache
    assert set(m.state_dict()) == keys
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    buffer.seek(0)
    _module("rotary").load_state_dict(torch.load(buffer), strict=True)
    m.init_cache(1, 3, dtype=torch.float32)
    assert m.cached_key.dtype == torch.float32 and m.cached_key.shape == (1, H, 3, E // H)
    # a float32 module decodes in float32
    m32 = _module("mha", torch.float32)
    m32.init_cache(1, 2)
    assert m32.cached_value.dtype == torch.float32


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_init_cache_rejects_bad_sizes(bad):
    m = _module("mha")
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        m.init_cache(1, bad)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        m.init_cache(bad, 4)


def test_rotary_init_cache_longer_than_max_seq_len_raises():
    m = _module("rotary")
    with pytest.raises(ValueError, match="max_length=17 exceeds max_seq_len=16"):
        m.init_cache(1, 17)


def test_rotary_positions_equal_the_offset():
    m = _module("rotary", window=(2, 1))
    x = _x()
    shifted = m(x, position_offset=4)
    assert torch.equal(m(x, positions=torch.arange(4, 4 + L)), shifted)
    # positions at other distances give other outputs (a common shift would not: RoPE)
    assert not torch.allclose(m(x, positions=2 * torch.arange(L)), shifted)


def test_rotary_positions_while_decoding():
    # explicit positions replace index + t; the cache slots stay index .. index + L - 1
    m = _module("rotary")
    x = _x()
    full = _full(m, x)
    m.init_cache(2, L)
    outs = [m(x[:, t : t + 1], decode=True, positions=torch.tensor([t])) for t in range(L)]
    assert _err(torch.cat(outs, dim=1), full) <= 1e-10
    # shifting every position by the same amount keeps the relative positions (RoPE)
    m.reset_cache()
    shifted = [m(x[:, t : t + 1], decode=True, positions=torch.tensor([t + 5])) for t in range(L)]
    assert _err(torch.cat(shifted, dim=1), full) <= 1e-10


def test_rotary_positions_errors():
    m = _module("rotary")
    x = _x()
    with pytest.raises(ValueError, match="not both"):
        m(x, position_offset=1, positions=torch.arange(L))
    with pytest.raises(ValueError, match="positions reach 16, beyond max_seq_len=16"):
        m(x, positions=torch.arange(10, 10 + L))
    with pytest.raises(ValueError, match=r"positions must have shape \(L,\)"):
        m(x, positions=torch.arange(L + 1))
    m.init_cache(2, 8)
    with pytest.raises(ValueError, match="position_offset=2"):
        m(x[:, :1], decode=True, position_offset=2)


@pytest.mark.slow  # two inductor compilations (about 20-50 s on 2 cores)
def test_compiled_decode_equals_eager_without_recompiling():
    from torch._dynamo.utils import counters

    eager, compiled_module = _module("rotary", window=(2, 0)), _module("rotary", window=(2, 0))
    x = _x(dtype=torch.float64)
    eager.init_cache(2, L)
    compiled_module.init_cache(2, L)
    step = torch.compile(compiled_module, fullgraph=True)  # fullgraph: no graph break

    def run():
        # fresh tensors each step, as a sampling loop feeds (slices of one tensor would
        # differ in storage offset, which dynamo guards on)
        outs = [step(x[:, :2].clone(), decode=True)]
        outs += [step(x[:, t : t + 1].clone(), decode=True) for t in range(2, L)]
        return torch.cat(outs, dim=1)

    torch._dynamo.reset()
    counters.clear()
    want = _decode(eager, x, prefill=2)
    assert _err(run(), want) <= 1e-12
    assert int(compiled_module.cache_index) == L
    # one graph for the prefill and one for all single-token steps: the index is a tensor
    assert counters["stats"]["unique_graphs"] == 2
    # a full cache stops the compiled step too (a RuntimeError from inside the graph)
    with pytest.raises(RuntimeError, match=r"cache is full.*max_length=7 for L=1"):
        step(x[:, :1].clone(), decode=True)
    assert int(compiled_module.cache_index) == L
    compiled_module.reset_cache()
    assert _err(run(), want) <= 1e-12
    assert counters["stats"]["unique_graphs"] == 2
