"""nmn_array.frameworks.torch against nmn.torch 0.3.5: parity, checkpoints, training."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nmn_torch = pytest.importorskip("nmn.torch")

from nmn_array.frameworks import torch as ours  # noqa: E402

import nmn_array  # noqa: E402
from tests.frameworks._parity import RTOL_F64, assert_parity  # noqa: E402

F64 = torch.float64


def _seed(n: int = 0) -> torch.Generator:
    torch.manual_seed(n)


def _pair(our_cls, their_cls, *args, **kwargs):
    """Build nmn's module and ours (float64), perturb nmn's scalars so they matter, and copy
    every parameter and buffer into ours BY NAME (``load_state_dict(strict=True)``)."""
    _seed(0)
    theirs = their_cls(*args, **kwargs).to(F64)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith("alpha"):
                p.fill_(1.3)
            elif name.endswith("epsilon_param"):
                p.add_(0.5)  # epsilon ~ softplus(raw + 0.5): clearly not the default
    mine = our_cls(*args, **kwargs).to(F64)
    mine.load_state_dict(theirs.state_dict(), strict=True)
    return mine, theirs


def _x(*shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64)


# --------------------------------------------------------------------------------------
# YatNMN
# --------------------------------------------------------------------------------------
BIAS = {
    "learnable": dict(bias=True),
    "none": dict(bias=False),
    "constant": dict(constant_bias=0.375),
    "scalar": dict(scalar_bias=True),
    "softplus": dict(softplus_bias=True),
}
ALPHA = {
    "learnable": dict(alpha=True),
    "none": dict(alpha=False),
    "const_sqrt2": dict(constant_alpha=True),
    "const_float": dict(constant_alpha=1.7),
}
MODE = {
    "plain": {},
    "spherical": dict(spherical=True),
    "weight_normalized": dict(weight_normalized=True),
    "both": dict(spherical=True, weight_normalized=True),
    "learnable_eps": dict(learnable_epsilon=True, epsilon=1e-3),
}


@pytest.mark.parametrize("mode", MODE)
@pytest.mark.parametrize("alpha", ALPHA)
@pytest.mark.parametrize("bias", BIAS)
def test_yatnmn_parity(bias, alpha, mode):
    kw = {**BIAS[bias], **ALPHA[alpha], **MODE[mode]}
    mine, theirs = _pair(ours.YatNMN, nmn_torch.YatNMN, 6, 5, **kw)
    x = _x(2, 3, 6)
    assert_parity(mine(x), theirs(x), RTOL_F64, f"YatNMN[{bias},{alpha},{mode}]")


def test_yatnmn_attributes_and_aliases():
    layer = ours.YatNMN(4, 3, constant_alpha=True, constant_bias=0.5)
    assert ours.YatDense is ours.YatNMN
    assert layer.alpha is None and layer.bias is None and layer.use_alpha and layer.use_bias
    assert layer.weight.shape == (3, 4)
    torch.testing.assert_close(
        layer(torch.ones(1, 4)),
        nmn_array.yat(torch.ones(1, 4), layer.weight, 0.5, alpha=math.sqrt(2.0)),
    )


def test_yatnmn_init_lazy_positive_dtype():
    _seed(0)
    layer = ours.YatNMN(50, 40, positive_init=True, lazy=True)
    assert not layer.weight.requires_grad and layer.bias.requires_grad
    assert (layer.weight >= 0).all()
    bound = 1 / math.sqrt(50)
    assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0  # nmn: U(+-1/sqrt(in))
    # xavier normal: std sqrt(2 / (in + out))
    unsigned = ours.YatNMN(200, 100).weight
    assert abs(float(unsigned.detach().std()) - math.sqrt(2 / 300)) < 0.01
    wn = ours.YatNMN(8, 3, weight_normalized=True)
    torch.testing.assert_close(wn.weight.norm(dim=1), torch.ones(3), rtol=1e-6, atol=1e-6)
    # dtype = compute dtype, param_dtype = storage dtype
    layer = ours.YatNMN(4, 3, dtype=F64, param_dtype=torch.float32)
    assert layer.weight.dtype == torch.float32
    assert layer(torch.ones(2, 4)).dtype == F64
    half = ours.YatNMN(4, 3)(torch.ones(2, 4, dtype=torch.float16))
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


def test_yatnmn_learnable_epsilon_init_and_grads():
    layer = ours.YatNMN(4, 3, learnable_epsilon=True, epsilon=1e-5)
    assert layer.epsilon_param.dtype == torch.float32
    assert abs(float(torch.nn.functional.softplus(layer.epsilon_param.double())) - 1e-5) < 1e-12
    layer(torch.randn(5, 4)).sum().backward()
    for name in ("weight", "bias", "alpha", "epsilon_param"):
        grad = getattr(layer, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------
CONV_CASES = {
    "basic": (2, dict()),
    "groups_stride_dilation": (2, dict(groups=2, stride=2, dilation=2, padding=2)),
    "same": (2, dict(padding="same", dilation=(1, 2))),
    "valid_rect": (2, dict(padding="valid", kernel_size=(3, 2), stride=(2, 1))),
    "reflect": (2, dict(padding=1, padding_mode="reflect")),
    "replicate": (2, dict(padding=(2, 1), padding_mode="replicate")),
    "circular": (2, dict(padding=1, padding_mode="circular", stride=2)),
    "same_even_circular": (2, dict(padding="same", kernel_size=4, padding_mode="circular")),
    "no_bias": (2, dict(bias=False, use_alpha=False)),
    "constant_bias_alpha": (2, dict(constant_bias=0.375, constant_alpha=True)),
    "scalar_softplus_bias": (2, dict(scalar_bias=True, softplus_bias=True)),
    "weight_normalized": (2, dict(weight_normalized=True, constant_alpha=2.5)),
    "learnable_eps": (2, dict(learnable_epsilon=True, epsilon=1e-3)),
    "1d_groups": (1, dict(groups=2, padding=1, stride=3)),
    "1d_same_reflect": (1, dict(padding="same", padding_mode="reflect", dilation=2)),
    "3d": (3, dict(padding=1, stride=(1, 2, 1))),
    "3d_groups_circular": (3, dict(groups=2, padding=1, padding_mode="circular")),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_parity(case):
    nd, kw = CONV_CASES[case]
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    cls = f"YatConv{nd}D"
    mine, theirs = _pair(getattr(ours, cls), getattr(nmn_torch, cls), 4, 6, k, **kw)
    x = _x(2, 4, *([9, 8, 7][:nd] if nd < 3 else [6, 5, 4]))
    assert_parity(mine(x), theirs(x), RTOL_F64, f"{cls}[{case}]")


def test_conv_fixed_mask():
    _seed(0)
    mask = (torch.rand(6, 2, 3, 3) > 0.3).to(F64)
    mine, theirs = _pair(ours.YatConv2D, nmn_torch.YatConv2D, 4, 6, 3, groups=2, mask=mask)
    assert "mask" in mine.state_dict()
    x = _x(1, 4, 7, 7)
    assert_parity(mine(x), theirs(x), RTOL_F64, "YatConv2D[mask]")


def test_conv_constant_bias_false_is_learnable_decision_4():
    # Decision 4: constant_bias=False means "no constant" -> a learnable bias (nmn torch conv
    # drops the bias). With that bias at zero both agree.
    mine = ours.YatConv2D(3, 4, 3, constant_bias=False).to(F64)
    theirs = nmn_torch.YatConv2D(3, 4, 3, constant_bias=False).to(F64)
    assert theirs.bias is None and isinstance(mine.bias, torch.nn.Parameter)
    with torch.no_grad():
        mine.weight.copy_(theirs.weight)
        mine.alpha.copy_(theirs.alpha)
        mine.bias.zero_()
    x = _x(2, 3, 6, 6)
    assert_parity(mine(x), theirs(x), RTOL_F64, "YatConv2D[constant_bias=False, Decision 4]")


CONV_T_CASES = {
    "basic": (2, dict()),
    "stride_padding": (2, dict(stride=2, padding=1)),
    "output_padding": (2, dict(stride=3, padding=1, output_padding=2)),
    "groups_dilation": (2, dict(groups=2, dilation=2, stride=2)),
    "rect": (2, dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    "no_bias_const_alpha": (2, dict(bias=False, constant_alpha=True)),
    "constant_bias_learnable_eps": (2, dict(constant_bias=-0.25, learnable_epsilon=True)),
    "scalar_bias": (2, dict(scalar_bias=True, use_alpha=False)),
    "1d": (1, dict(stride=2, output_padding=1)),
    "1d_k_lt_s": (1, dict(kernel_size=2, stride=3, groups=2)),
    "3d": (3, dict(stride=2, padding=1, output_padding=(1, 0, 1))),
}


@pytest.mark.parametrize("case", CONV_T_CASES)
def test_conv_transpose_parity(case):
    nd, kw = CONV_T_CASES[case]
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    cls = f"YatConvTranspose{nd}D"
    mine, theirs = _pair(getattr(ours, cls), getattr(nmn_torch, cls), 4, 6, k, **kw)
    x = _x(2, 4, *([5, 4, 3][:nd]))
    assert_parity(mine(x), theirs(x), RTOL_F64, f"{cls}[{case}]")


def test_conv_transpose_output_size():
    mine, theirs = _pair(ours.YatConvTranspose2D, nmn_torch.YatConvTranspose2D, 3, 2, 3, stride=2)
    x = _x(1, 3, 4, 4)
    out = mine(x, output_size=[10, 10])
    assert out.shape == (1, 2, 10, 10)
    assert_parity(out, theirs(x, output_size=[10, 10]), RTOL_F64, "YatConvTranspose2D[output_size]")


# --------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------
EMBED_CASES = {
    "learnable_alpha": dict(),
    "no_alpha": dict(use_alpha=False),
    "constant_alpha": dict(constant_alpha=True),
    "weight_normalized": dict(weight_normalized=True),
}


@pytest.mark.parametrize("case", EMBED_CASES)
def test_embed_parity(case):
    mine, theirs = _pair(ours.YatEmbed, nmn_torch.YatEmbed, 11, 6, **EMBED_CASES[case])
    ids = torch.tensor([[0, 3, 10], [5, 5, 1]])
    assert torch.equal(mine(ids), theirs(ids))
    q = _x(2, 4, 6)
    assert_parity(mine.attend(q), theirs.attend(q), RTOL_F64, f"YatEmbed.attend[{case}]")


def test_embed_spherical_decision_7():
    # Decision 7: v / (|v| + 1e-8) instead of nmn torch's v / max(|v|, 1e-8): agreement to
    # ~1e-8 relative, not 1e-10.
    mine, theirs = _pair(ours.YatEmbed, nmn_torch.YatEmbed, 11, 6, spherical=True)
    q = _x(3, 6)
    assert_parity(mine.attend(q), theirs.attend(q), 1e-6, "YatEmbed.attend[spherical, Decision 7]")


# --------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------
def _causal(lq, lk):
    return torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)


MHA_CASES = {
    "self": dict(),
    "no_bias_no_alpha": dict(bias=False, use_alpha=False),
    "constant_alpha": dict(constant_alpha=True),
    "constant_alpha_float": dict(constant_alpha=0.7),
    "normalize_qk": dict(normalize_qk=True),
    "spherical": dict(spherical=True),
    "spherical_normalize_qk": dict(spherical=True, normalize_qk=True),
    "no_out_proj": dict(use_out_proj=False),
}


@pytest.mark.parametrize("mask", ["none", "causal", "padding", "fully_masked_row"])
@pytest.mark.parametrize("case", MHA_CASES)
def test_mha_parity(case, mask):
    mine, theirs = _pair(
        ours.MultiHeadYatAttention, nmn_torch.MultiHeadYatAttention, 12, 3, **MHA_CASES[case]
    )
    mine.eval(), theirs.eval()
    x = _x(2, 5, 12)
    m = None
    if mask == "causal":
        m = _causal(5, 5)
    elif mask == "padding":
        m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    elif mask == "fully_masked_row":
        m = _causal(5, 5).clone()
        m[2] = False
    out = mine(x, mask=m)
    assert_parity(out, theirs(x, mask=m), RTOL_F64, f"MultiHeadYatAttention[{case},{mask}]")
    if mask == "fully_masked_row":
        assert torch.equal(out[:, 2], torch.zeros_like(out[:, 2]))


def test_mha_cross_attention_lengths():
    mine, theirs = _pair(ours.MultiHeadYatAttention, nmn_torch.MultiHeadYatAttention, 8, 2)
    q, kv = _x(2, 3, 8), _x(2, 7, 8, seed=2)
    m = _causal(3, 7)
    assert_parity(mine(q, kv, mask=m), theirs(q, kv, mask=m), RTOL_F64, "MHA[cross, causal 3x7]")
    v = _x(2, 7, 8, seed=3)
    assert_parity(mine(q, kv, v), theirs(q, kv, v), RTOL_F64, "MHA[cross, separate value]")


def test_mha_dropout_training_only():
    _seed(0)
    attn = ours.MultiHeadYatAttention(8, 2, dropout=0.5).to(F64)
    ref = nmn_torch.MultiHeadYatAttention(8, 2, dropout=0.5).to(F64)
    ref.load_state_dict(attn.state_dict())
    x = _x(2, 6, 8)
    attn.train()
    a, b = attn(x), attn(x)
    assert not torch.allclose(a, b)  # dropout is active and random
    torch.testing.assert_close(attn(x, deterministic=True), ref.eval()(x))
    attn.eval()
    torch.testing.assert_close(attn(x), ref(x))


# --------------------------------------------------------------------------------------
# Rotary attention (no nmn torch layer: parity with nmn.nnx's RotaryYatAttention)
# --------------------------------------------------------------------------------------
def test_rotary_parity_with_nmn_nnx():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    nnx = pytest.importorskip("flax.nnx")
    nmn_nnx = pytest.importorskip("nmn.nnx")
    if not jax.config.jax_enable_x64:
        pytest.skip("needs JAX_ENABLE_X64 (set by tests/conftest.py)")
    ref = nmn_nnx.RotaryYatAttention(
        8, 2, max_seq_len=32, param_dtype=jnp.float64, use_bias=True, rngs=nnx.Rngs(0)
    )
    ref.alpha[...] = jnp.array([1.25])  # exact in float32 (nmn casts alpha to f32)
    mine = ours.RotaryYatAttention(8, 2, max_seq_len=32, bias=True).to(F64)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = getattr(ref, name)
            getattr(mine, name).weight.copy_(torch.from_numpy(np.asarray(lin.kernel[...]).T))
            bias = np.asarray(jax.random.normal(jax.random.key(len(name)), (8,), jnp.float64))
            lin.bias[...] = jnp.asarray(bias)
            getattr(mine, name).bias.copy_(torch.from_numpy(bias))
        mine.alpha.fill_(1.25)
    x = _x(2, 5, 8)
    xj = jnp.asarray(x.numpy())
    assert_parity(mine(x), ref(xj), RTOL_F64, "RotaryYatAttention[vs nmn.nnx]")
    m = _causal(5, 5)
    assert_parity(
        mine(x, m, position_offset=7),
        ref(xj, jnp.asarray(m.numpy()), position_offset=7),
        RTOL_F64,
        "RotaryYatAttention[vs nmn.nnx, causal, offset]",
    )
    with pytest.raises(ValueError, match="max_seq_len"):
        mine(x, position_offset=30)


# --------------------------------------------------------------------------------------
# Checkpoints, compile, training
# --------------------------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self, lib):
        super().__init__()
        self.conv = lib.YatConv2D(3, 4, 3, padding=1, constant_alpha=True)
        self.up = lib.YatConvTranspose2D(4, 2, 2, stride=2)
        self.attn = lib.MultiHeadYatAttention(8, 2)
        self.embed = lib.YatEmbed(10, 8)
        self.head = lib.YatNMN(8, 5, learnable_epsilon=True)

    def forward(self, img, ids):
        h = self.up(self.conv(img)).flatten(2)  # (N, 2, 64)
        h = h.reshape(h.shape[0], 16, 8) + self.embed(ids)[:, None, :]
        return self.head(self.attn(h)).mean(1) + self.embed.attend(h.mean(1))[:, :5]


def test_nmn_state_dict_loads_strict_and_matches():
    _seed(0)
    theirs = _Net(nmn_torch).to(F64).eval()
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    buf.seek(0)
    mine = _Net(ours).to(F64).eval()
    result = mine.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(mine.state_dict()) == set(theirs.state_dict())
    img, ids = _x(2, 3, 4, 4), torch.tensor([1, 7])
    assert_parity(mine(img, ids), theirs(img, ids), RTOL_F64, "checkpoint[_Net]")
    # and back: our state_dict loads into nmn's model
    theirs.load_state_dict(mine.state_dict(), strict=True)


def test_torch_compile_fullgraph():
    _seed(0)
    layer = ours.YatNMN(6, 4, learnable_epsilon=True)
    conv = ours.YatConv1D(2, 3, 3, padding="same", padding_mode="circular")
    x, s = torch.randn(5, 6), torch.randn(2, 2, 9)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))
    compiled_conv = torch.compile(conv, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled_conv(s), conv(s))


#: (module, input of size n): one of each layer class, for compiling over varying sizes
COMPILE_CASES = {
    "YatNMN": (lambda: ours.YatNMN(8, 4), lambda n: torch.randn(n, 8)),
    "YatConv1D": (lambda: ours.YatConv1D(3, 4, 3), lambda n: torch.randn(2, 3, n)),
    "YatConv2D": (lambda: ours.YatConv2D(3, 4, 3, padding=1), lambda n: torch.randn(2, 3, n, n)),
    "YatConv3D": (lambda: ours.YatConv3D(3, 4, 3), lambda n: torch.randn(2, 3, n, n, n)),
    "YatConvTranspose1D": (
        lambda: ours.YatConvTranspose1D(3, 4, 3),
        lambda n: torch.randn(2, 3, n),
    ),
    "YatConvTranspose2D": (
        lambda: ours.YatConvTranspose2D(3, 4, 3, stride=2),
        lambda n: torch.randn(2, 3, n, n),
    ),
    "YatConvTranspose3D": (
        lambda: ours.YatConvTranspose3D(3, 4, 3),
        lambda n: torch.randn(2, 3, n, n, n),
    ),
    "YatEmbed": (lambda: ours.YatEmbed(10, 8), lambda n: torch.randint(0, 10, (2, n))),
    "MultiHeadYatAttention": (
        lambda: ours.MultiHeadYatAttention(16, 2),
        lambda n: torch.randn(2, n, 16),
    ),
    "RotaryYatAttention": (
        lambda: ours.RotaryYatAttention(16, 2, 32),
        lambda n: torch.randn(2, n, 16),
    ),
}


@pytest.mark.parametrize("name", sorted(COMPILE_CASES))
def test_torch_compile_fullgraph_over_changing_sizes(name):
    """A second input size makes dynamo trace sizes symbolically (automatic dynamic shapes):
    the layers must stay one graph (fullgraph=True) and equal eager at every size, outputs
    and gradients (a CNN sees several resolutions; a language model several lengths).
    Compiled code runs the plain operators and autograd's backward, eager code the fused
    Functions and their hand-written backward."""
    _seed(0)
    make, sample = COMPILE_CASES[name]
    layer = make()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    params = [p for p in layer.parameters() if p.requires_grad]
    for n in (5, 6, 7, 9):
        grads, x0 = [], sample(n)
        for run in (compiled, layer):  # compiled: the plain operators, eager: the Functions
            x = x0.clone().requires_grad_(True) if x0.is_floating_point() else x0
            out = run(x)
            out = out[0] if isinstance(out, tuple) else out
            wrt = [x, *params] if x.requires_grad else params
            loss = out.square().sum()
            grads.append((out, torch.autograd.grad(loss, wrt, materialize_grads=True)))
        (out, got), (ref, want) = grads
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_inductor_training_step_of_attention_equals_eager():
    """The real compiler on the layer where it matters most (the plain operators let inductor
    fuse the scores with the softmax): one forward and backward, equal to eager."""
    _seed(0)
    layer = ours.MultiHeadYatAttention(16, 2)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    x0 = torch.randn(2, 7, 16)
    results = []
    for run in (compiled, layer):
        x = x0.clone().requires_grad_(True)
        out = run(x)[0]
        results.append((out, torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])))
    (out, got), (ref, want) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["YatConv3D", "YatConvTranspose3D"])
def test_inductor_inference_of_3d_convolutions_over_changing_sizes(name):
    """The real compiler (inductor) with symbolic sizes, forward only: it could not lower the
    6-D grouped view of a 3-D convolution's output (fixed by not taking it for one group).
    Training with changing sizes still fails inside inductor in torch 2.13 for any 3-D
    convolution (a plain ``F.conv3d`` reproduces it; docs/frameworks/torch.md)."""
    _seed(0)
    make, sample = COMPILE_CASES[name]
    layer = make()
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        for n in (6, 9):
            x = sample(n)
            torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


def test_training_smoke():
    _seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long()
    model = torch.nn.Sequential(
        ours.YatConv1D(1, 4, 3, padding=1),
        torch.nn.Flatten(),
        ours.YatNMN(32, 2, learnable_epsilon=True),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_squashers_reexported():
    # softermax wraps nmn_array.softermax with nmn's signature (dim=, positional epsilon)
    x = torch.rand(2, 3, dtype=torch.float64)
    torch.testing.assert_close(
        ours.softermax(x, 2.0, 1e-9, 0), nmn_array.softermax(x, 2.0, epsilon=1e-9, axis=0)
    )
    assert ours.softer_sigmoid is nmn_array.softer_sigmoid
    assert ours.soft_tanh is nmn_array.soft_tanh
    torch.testing.assert_close(
        ours.softermax(torch.tensor([1.0, 2.0])), torch.tensor([1 / 3, 2 / 3])
    )
