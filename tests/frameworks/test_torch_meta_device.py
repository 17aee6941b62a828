"""Every torch layer class takes ``device=`` and ``dtype=``, builds on the ``meta`` device
(no memory, no values) and materialises with ``to_empty(device=...)`` then
``reset_parameters()`` (issue 18): what FSDP and large-model initialisation do.

The check is exact: after ``to_empty`` every parameter and buffer is first overwritten with
a sentinel (NaN, or an impossible integer), so a tensor that ``reset_parameters`` leaves
alone fails the comparison; then, with torch's generator seeded as it was before a normal
construction, the materialised layer must equal the normally built one bit for bit
(parameters, buffers, ``requires_grad``, and the output on one input).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from nmn_array.frameworks import torch as ours

from tests.frameworks import _banks

F64 = torch.float64
_fresh_banks = _banks.fresh_banks(ours._BANKS)
bank_id = _banks.bank_id

#: One 0/1 float mask of YatConv2D(4, 6, 3, groups=2)'s weight shape (6, 2, 3, 3).
_MASK = (torch.arange(6 * 2 * 3 * 3).reshape(6, 2, 3, 3) % 3 != 0).float()
_PERF = dict(num_anchor_features=4, num_prf_features=3, performer_num_features=8)
_PERF.update(performer_nmax=4, performer_sketch_m=8, performer_num_radial=2)
_PERF.update(performer_radial_dim=6)

#: name -> (class, constructor arguments, input shape)
CASES: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    "dense": ("YatNMN", dict(in_features=6, out_features=5), (3, 6)),
    "dense_all_options": (
        "YatNMN",
        dict(
            in_features=6,
            out_features=5,
            learnable_epsilon=True,
            epsilon=1e-3,
            positive_init=True,
            weight_normalized=True,
            softplus_bias=True,
        ),
        (3, 6),
    ),
    "dense_scalar_bias_lazy": (
        "YatNMN",
        dict(in_features=6, out_features=5, scalar_bias=True, lazy=True),
        (3, 6),
    ),
    "dense_initializers_f64": (
        "YatNMN",
        dict(
            in_features=6,
            out_features=5,
            param_dtype=F64,
            dtype=F64,
            kernel_init=torch.nn.init.orthogonal_,
            bias_init=lambda b: torch.nn.init.normal_(b, 0.0, 0.1),
            alpha_init=lambda a: torch.nn.init.constant_(a, 1.5),
        ),
        (3, 6),
    ),
    "conv1d": ("YatConv1D", dict(in_channels=2, out_channels=4, kernel_size=3), (2, 2, 7)),
    "conv2d": ("YatConv2D", dict(in_channels=2, out_channels=4, kernel_size=3), (2, 2, 6, 5)),
    "conv3d": ("YatConv3D", dict(in_channels=2, out_channels=4, kernel_size=2), (1, 2, 4, 3, 4)),
    "conv2d_all_options": (
        "YatConv2D",
        dict(
            in_channels=4,
            out_channels=6,
            kernel_size=3,
            groups=2,
            padding=1,
            learnable_epsilon=True,
            epsilon=1e-3,
            weight_normalized=True,
            mask=_MASK,
            param_dtype=F64,
            dtype=F64,
        ),
        (2, 4, 5, 5),
    ),
    "conv2d_scalar_bias": (
        "YatConv2D",
        dict(in_channels=2, out_channels=4, kernel_size=3, scalar_bias=True, softplus_bias=True),
        (2, 2, 5, 5),
    ),
    "conv_transpose1d": (
        "YatConvTranspose1D",
        dict(in_channels=2, out_channels=4, kernel_size=3),
        (2, 2, 5),
    ),
    "conv_transpose2d": (
        "YatConvTranspose2D",
        dict(in_channels=2, out_channels=4, kernel_size=3, stride=2),
        (2, 2, 4, 3),
    ),
    "conv_transpose3d": (
        "YatConvTranspose3D",
        dict(in_channels=2, out_channels=4, kernel_size=2),
        (1, 2, 3, 2, 3),
    ),
    "conv_transpose2d_options": (
        "YatConvTranspose2D",
        dict(
            in_channels=2,
            out_channels=4,
            kernel_size=3,
            learnable_epsilon=True,
            scalar_bias=True,
            dtype=F64,
        ),
        (2, 2, 4, 4),
    ),
    "embed": ("YatEmbed", dict(num_embeddings=11, features=4), (3, 4)),
    "embed_normalized_f64": (
        "YatEmbed",
        dict(num_embeddings=11, features=4, weight_normalized=True, dtype=F64),
        (3, 4),
    ),
    "attention": ("MultiHeadYatAttention", dict(embed_dim=8, num_heads=2), (2, 5, 8)),
    "attention_no_out_f64": (
        "MultiHeadYatAttention",
        dict(embed_dim=8, num_heads=2, use_out_proj=False, bias=False, dtype=F64),
        (2, 5, 8),
    ),
    "rotary": (
        "RotaryYatAttention",
        dict(embed_dim=8, num_heads=2, max_seq_len=16, learnable_epsilon=True, bias=True),
        (2, 5, 8),
    ),
    **{
        f"rotary_performer_{kind}": (
            "RotaryYatAttention",
            dict(
                embed_dim=8,
                num_heads=2,
                max_seq_len=16,
                use_performer=True,
                performer_kind=kind,
                **_PERF,
            ),
            (2, 5, 8),
        )
        for kind in ("slay", "maclaurin", "radial")
    },
}

#: Every layer class the module exports (aliases once): a new class needs a case above.
LAYERS = sorted(
    {
        getattr(ours, name).__name__
        for name in ours.__all__
        if isinstance(getattr(ours, name), type)
        and issubclass(getattr(ours, name), torch.nn.Module)
    }
)


def _build(name: str, how: str) -> torch.nn.Module:
    """The layer of case ``name``: ``how`` = "cpu" (normally), "meta_kwarg" (``device="meta"``)
    or "meta_context" (``with torch.device("meta")``)."""
    cls, kwargs, _ = CASES[name]
    layer = getattr(ours, cls)
    if how == "cpu":
        return layer(**kwargs)
    if how == "meta_kwarg":
        return layer(**kwargs, device="meta")
    with torch.device("meta"):
        return layer(**kwargs)


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and (non-None) buffer by name."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _forward(module: torch.nn.Module, name: str) -> torch.Tensor:
    shape = CASES[name][2]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    if isinstance(module, ours.YatEmbed):
        return module.attend(x.to(module.embedding.dtype))
    with torch.no_grad():
        return module(x if module_dtype(module) == F64 else x.float())


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype a layer computes in (its ``dtype``/``compute_dtype``, else its first
    parameter's)."""
    dtype = getattr(module, "compute_dtype", None) or getattr(module, "dtype", None)
    return dtype or next(module.parameters()).dtype


def _sentinel(module: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer: NaN, or -7 / True for integer and bool ones."""
    with torch.no_grad():
        for t in _tensors(module).values():
            t.fill_(
                float("nan") if t.is_floating_point() else (True if t.dtype == torch.bool else -7)
            )


@pytest.mark.parametrize("how", ["meta_kwarg", "meta_context"])
@pytest.mark.parametrize("name", CASES)
def test_meta_then_to_empty_and_reset_equals_a_normal_build(name: str, how: str) -> None:
    torch.manual_seed(123)
    expected = _build(name, "cpu")
    meta = _build(name, how)
    got, want = _tensors(meta), _tensors(expected)
    assert got.keys() == want.keys()
    for key, t in got.items():
        # the mask is the tensor given to the constructor (a CPU one here), kept as it is
        assert t.is_meta or key == "mask", f"{name}: {key} on {t.device}, not meta"
        assert (t.shape, t.dtype) == (want[key].shape, want[key].dtype), key
    meta.to_empty(device="cpu")
    _sentinel(meta)
    torch.manual_seed(123)
    meta.reset_parameters()
    got = _tensors(meta)
    for key, t in want.items():
        assert got[key].device.type == "cpu", key
        assert torch.equal(got[key], t), f"{name}: {key} differs after reset_parameters"
    grads = {k: p.requires_grad for k, p in meta.named_parameters()}
    assert grads == {k: p.requires_grad for k, p in expected.named_parameters()}
    out = _forward(meta, name)
    assert torch.isfinite(out).all() and torch.equal(out, _forward(expected, name))


@pytest.mark.parametrize("name", ["dense", "conv2d_all_options", "embed", "rotary"])
def test_reset_parameters_redraws_the_random_parameters_only(name: str) -> None:
    """Without re-seeding, a second reset draws new random parameters and puts the fixed
    ones (alpha, epsilon, mask) back as they were: the same distribution, not a copy."""
    torch.manual_seed(0)
    layer = _build(name, "cpu")
    before = {k: t.clone() for k, t in _tensors(layer).items()}
    with torch.no_grad():
        for key in ("alpha", "epsilon_param"):
            if key in before:
                _tensors(layer)[key].add_(0.25)  # a trained value, which reset undoes
    layer.reset_parameters()
    after = _tensors(layer)
    fixed = {"alpha", "epsilon_param", "mask"}
    for key, t in before.items():
        if key in fixed:
            assert torch.equal(after[key], t), key
        elif t.numel() > 1:
            assert not torch.equal(after[key], t), f"{key} was not re-drawn"
    assert "alpha" in before


def test_every_layer_takes_device_and_dtype() -> None:
    for cls in LAYERS:
        params = inspect.signature(getattr(ours, cls)).parameters
        assert {"device", "dtype"} <= params.keys(), cls
        assert callable(getattr(getattr(ours, cls), "reset_parameters", None)), cls
    assert {c for c, _, _ in CASES.values()} == set(LAYERS)


def test_a_meta_mask_cannot_be_restored() -> None:
    with torch.device("meta"):
        conv = ours.YatConv2D(4, 6, 3, groups=2, mask=torch.ones(6, 2, 3, 3))
    conv.to_empty(device="cpu")
    with pytest.raises(RuntimeError, match="mask given to the constructor is on the meta device"):
        conv.reset_parameters()


@pytest.mark.parametrize(
    "make",
    [
        lambda bank: ours.YatNMN(4, 3, tie_kernel_bank=True, kernel_bank_id=bank, device="meta"),
        lambda bank: ours.YatConv2D(
            2, 4, 3, tie_kernel_bank=True, kernel_bank_id=bank, device="meta"
        ),
    ],
    ids=["dense", "conv2d"],
)
def test_a_tied_kernel_bank_refuses_to_empty(make: Callable[[str], Any], bank_id: str) -> None:
    """A tied bank is one Parameter shared by several layers: materialising one layer would
    untie it, so ``to_empty`` raises (as ``.to()`` does), naming the way out."""
    layer = make(bank_id)
    assert layer.weight.is_meta
    with pytest.raises(RuntimeError, match="tie_kernel_bank=True.*construct the layers with"):
        layer.to_empty(device="cpu")
