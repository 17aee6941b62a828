"""Linear-time (performer) attention in the torch attention modules (issue 15):
``use_performer``, ``performer_kind``, the feature counts and ``causal``.

The reference is :func:`nmn_array.linear_attention.performer_attention` applied to the q, k, v
computed here from the module's own weights (``F.linear``, the head split, RoPE) with the
module's stored projection, then its output projection. Float64 throughout; error metric:
the largest absolute difference over the largest reference magnitude.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nmn_array.frameworks import torch as yat  # noqa: E402

import nmn_array  # noqa: E402
from nmn_array.attention import normalize_qk  # noqa: E402
from nmn_array.linear_attention import performer_attention  # noqa: E402
from tests.frameworks._performer_cases import (  # noqa: E402
    BAD_ARGUMENTS,
    CLASSES,
    KINDS,
    RTOL,
    SMALL,
    B,
    D,
    E,
    H,
    L,
)


def _module(cls: str, kind: str = "slay", seed: int = 0, **kw):
    """A float64 performer module in eval mode with alpha perturbed to 1.3 (so it matters)."""
    torch.manual_seed(seed)
    kw = {"use_performer": True, "performer_kind": kind, **SMALL, **kw}
    f64 = {"dtype": torch.float64, "param_dtype": torch.float64}
    if cls == "mha":
        m = yat.MultiHeadYatAttention(E, H, **f64, **kw)
    else:
        m = yat.RotaryYatAttention(E, H, max_seq_len=16, **f64, **kw)
    if m.alpha is not None:
        with torch.no_grad():
            m.alpha.fill_(1.3)
    return m.eval()


def _x(length=L, seed=1, batch=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, E, generator=g, dtype=torch.float64)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _heads(m, x, proj):
    """(B, L, E) -> (B, H, L, d) through the module's projection ``proj``."""
    y = torch.nn.functional.linear(x, proj.weight, proj.bias)
    return y.reshape(x.shape[0], x.shape[1], H, D).transpose(1, 2)


def _reference(m, query, key=None, mask=None):
    """performer_attention on the module's q, k, v, then its output projection."""
    key = query if key is None else key
    q, k, v = _heads(m, query, m.q_proj), _heads(m, key, m.k_proj), _heads(m, key, m.v_proj)
    if isinstance(m, yat.RotaryYatAttention):
        pos = torch.arange(query.shape[1])
        q, k = (nmn_array.rotary_embedding(t, pos, theta=m.theta) for t in (q, k))
    if m.performer_kind == "slay" and m.performer_normalize:
        q, k = normalize_qk(q, k, epsilon=m.epsilon)
    projection = {
        name[len("perf_") :]: buf.numpy()
        for name, buf in m.named_buffers()
        if name.startswith("perf_")
    }
    alpha = m.alpha.detach() if m.alpha is not None else m._constant_alpha_value
    out = performer_attention(
        q, k, v, m.performer_kind, projection, causal=m.causal, mask=mask, epsilon=m.epsilon,
        alpha=alpha,
    )  # fmt: skip
    out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], E)
    o = m.out_proj if isinstance(m, yat.MultiHeadYatAttention) else m.o_proj
    return torch.nn.functional.linear(out, o.weight, o.bias)


# --- (1) the module computes performer_attention on its own q, k, v --------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_module_equals_performer_attention_of_its_heads(cls, kind, causal):
    m = _module(cls, kind, causal=causal)
    x = _x()
    with torch.no_grad():
        out, ref = m(x), _reference(m, x)
    assert out.shape == (B, L, E) and out.dtype == torch.float64
    assert _rel(out, ref) < RTOL


@pytest.mark.parametrize("cls", CLASSES)
def test_performer_normalize_false_skips_slays_extra_normalisation(cls):
    m = _module(cls, "slay", performer_normalize=False, constant_alpha=True)
    x = _x() * 0.05  # short vectors: the extra normalisation (eps inside the root) matters
    with torch.no_grad():
        out, ref = m(x), _reference(m, x)
        on = _module(cls, "slay", constant_alpha=True)(x)
    assert _rel(out, ref) < RTOL
    assert _rel(out, on) > 1e-8  # the flag changes the result: it is not ignored


def test_cross_attention_of_another_length():
    m = _module("mha", "radial")
    q, kv = _x(length=5, seed=2), _x(length=9, seed=3)
    with torch.no_grad():
        out, ref = m(q, kv), _reference(m, q, kv)
    assert out.shape == (B, 5, E)
    assert _rel(out, ref) < RTOL


def test_unbatched_input_equals_batched():
    m = _module("rotary", "maclaurin", causal=True)
    x = _x(batch=1)
    with torch.no_grad():
        assert torch.equal(m(x[0]), m(x)[0])


# --- the projection: drawn from torch's RNG, non-trainable, in the checkpoint -----------
def test_projection_is_drawn_from_torch_seed_after_the_weights():
    a, b, c = (
        _module("rotary", "slay", seed=0),
        _module("rotary", "slay", seed=0),
        _module("rotary", "slay", seed=5),
    )
    assert torch.equal(a.perf_projections, b.perf_projections)
    assert not torch.equal(a.perf_projections, c.perf_projections)
    torch.manual_seed(0)
    exact = yat.RotaryYatAttention(
        E, H, max_seq_len=16, dtype=torch.float64, param_dtype=torch.float64
    )
    # the projections' weights are drawn first: the same as the exact module's
    assert torch.equal(exact.q_proj.weight, a.q_proj.weight)
    assert not any(k.startswith("perf_") for k in exact.state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_fixes_the_projection(kind):
    a, b = (
        _module("rotary", kind, seed=0, causal=True),
        _module("rotary", kind, seed=1, causal=True),
    )
    x = _x()
    with torch.no_grad():
        assert _rel(b(x), a(x)) > 1e-6  # another seed: other weights and projection
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        buf.seek(0)
        b.load_state_dict(torch.load(buf), strict=True)
        assert torch.equal(b(x), a(x))
    keys = {k for k in a.state_dict() if k.startswith("perf_")}
    assert keys == {f"perf_{k}" for k in a._performer.keys} and keys


@pytest.mark.parametrize("cls", CLASSES)
def test_projection_is_not_trainable_and_gradients_reach_the_weights(cls):
    m = _module(cls, "slay", causal=True).train()
    assert not any("perf_" in name for name, _ in m.named_parameters())
    assert all(not buf.requires_grad for name, buf in m.named_buffers() if "perf_" in name)
    m(_x()).square().sum().backward()
    o = m.out_proj if cls == "mha" else m.o_proj
    for layer in (m.q_proj, m.k_proj, m.v_proj, o):
        assert layer.weight.grad is not None and float(layer.weight.grad.abs().max()) > 0
    assert float(m.alpha.grad.abs().max()) > 0


def test_to_casts_and_moves_the_projection():
    m = yat.MultiHeadYatAttention(
        E, H, use_performer=True, performer_kind="maclaurin", param_dtype=torch.float64, **SMALL
    )
    assert m.perf_omegas.dtype == torch.float64
    m = m.to(torch.float32)
    assert m.perf_omegas.dtype == torch.float32 and m.perf_degrees.dtype == torch.int64
    assert m(_x().float()).dtype == torch.float32


# --- (4) causal, (5) key-padding masks ---------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_causal_output_ignores_later_tokens(cls, kind):
    m = _module(cls, kind, causal=True)
    x = _x()
    y = x.clone()
    y[:, 4:] = _x(seed=9)[:, 4:]
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[:, :4], b[:, :4], rtol=0, atol=1e-13)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("kind", KINDS)
def test_key_padding_mask_hides_keys(kind):
    m = _module("mha", kind)
    q, kv = _x(length=5, seed=2), _x(seed=3)
    keep = torch.ones(B, 1, 1, L, dtype=torch.bool)
    keep[0, ..., 5:] = False
    keep[1, ..., :2] = False
    other = torch.where(keep[:, 0, 0, :, None], kv, _x(seed=4))
    with torch.no_grad():
        a, b = m(q, kv, mask=keep), m(q, other, mask=keep)
        ref = _reference(m, q, kv, mask=keep)
    assert torch.allclose(a, b, rtol=0, atol=1e-13)
    assert _rel(a, ref) < RTOL
    assert _rel(m(q, kv).detach(), a) > 1e-6  # the mask does hide something


def test_query_dependent_mask_is_refused():
    m = _module("rotary", "slay")
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="key-padding"):
        m(_x(), mask=mask)


def test_decode_with_performer_is_refused():
    m = _module("rotary", "radial", causal=True)
    m.init_cache(B, 8)
    with pytest.raises(ValueError, match=r"decode=True.*use_performer=True"):
        m(_x(length=1), decode=True)
    mha = _module("mha", "slay")
    with pytest.raises(ValueError, match=r"decode=True.*use_performer=True"):
        mha(_x(length=1), decode=True)


# --- (7) compiled ---------------------------------------------------------------------
@pytest.mark.parametrize("cls, kind", [("rotary", "slay"), ("mha", "radial")])
def test_torch_compile_equals_eager(cls, kind):
    m = _module(cls, kind, causal=True)
    x = _x()
    with torch.no_grad():
        eager = m(x)
        compiled = torch.compile(m)(x)
    assert _rel(compiled, eager) < 1e-12


# --- (8) causal=True in exact mode ----------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_exact_causal_equals_a_causal_mask(cls):
    torch.manual_seed(0)
    kw = {"dtype": torch.float64, "param_dtype": torch.float64}
    if cls == "mha":
        plain, causal = (
            yat.MultiHeadYatAttention(E, H, **kw),
            yat.MultiHeadYatAttention(E, H, causal=True, **kw),
        )
    else:
        plain = yat.RotaryYatAttention(E, H, max_seq_len=16, **kw)
        causal = yat.RotaryYatAttention(E, H, max_seq_len=16, causal=True, **kw)
    causal.load_state_dict(plain.state_dict())
    x = _x()
    tril = torch.ones(L, L, dtype=torch.bool).tril()
    pad = torch.ones(B, 1, 1, L, dtype=torch.bool)
    pad[0, ..., 0] = False  # query 0 of sequence 0 sees no key: a zero output row
    with torch.no_grad():
        assert _rel(causal(x), plain(x, mask=tril)) < RTOL
        both = causal(x, mask=pad)
        assert _rel(both, plain(x, mask=tril & pad)) < RTOL
        assert float(both[0, 0].abs().max()) == 0.0
        assert _rel(causal(x), plain(x)) > 1e-6  # causal does change the output


# --- (9) bad arguments ----------------------------------------------------------------
@pytest.mark.parametrize("kw, name", BAD_ARGUMENTS)
@pytest.mark.parametrize("cls", CLASSES)
def test_bad_arguments_name_themselves(cls, kw, name):
    with pytest.raises(ValueError, match=name):
        _module(cls, **kw)


def test_bad_kind_is_refused_without_use_performer_too():
    with pytest.raises(ValueError, match="performer_kind"):
        yat.RotaryYatAttention(E, H, performer_kind="favor")
    with pytest.raises(TypeError, match="causal"):
        yat.MultiHeadYatAttention(E, H, causal="yes")


def test_maclaurin_projection_has_nmns_nnx_layout():
    """Rademacher omegas of shape (M, nmax, d), as nmn's NNX stores them."""
    m = _module("mha", "maclaurin")
    assert m.perf_omegas.shape == (32, 40, D)
    assert set(np.unique(m.perf_omegas.numpy())) <= {-1.0, 1.0}
