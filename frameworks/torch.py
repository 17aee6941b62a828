"""PyTorch modules over the pure functions of ``nmn_array``: drop-in replacements for
``nmn.torch`` 0.3.5 (class names, constructor arguments, ``state_dict`` keys, shapes, layouts,
initialisers; saved weights load with ``strict=True``). Each ``forward`` holds its parameters
in the PyTorch way and makes one call of an ``nmn_array`` function; the few differences from
``nmn`` are in ``docs/migration/torch.md``.

The layers' arguments mean the same everywhere (as in ``nmn.torch`` 0.3.5; each class
docstring names the ones it takes):

- ``bias``: a learnable bias (YatNMN's starts U(-1/sqrt(in), 1/sqrt(in)); attention: of the
  ``nn.Linear`` projections). ``constant_bias``: a fixed bias instead (no parameter; ``None``
  or ``False``: no constant, Decision 4). ``softplus_bias``: the learnable bias passes
  through softplus. ``scalar_bias``: one learnable bias of shape ``(1,)`` (YatNMN's drawn
  like its full bias, as nmn.torch does; the convolutions' zeros).
- ``alpha`` / ``use_alpha``: a learnable output scale (shape ``(1,)``, initialised to 1;
  attention: on the scores before normalisation, Decision 1). ``constant_alpha``: ``True`` =
  sqrt(2), a float = that value; replaces the learnable one.
- ``epsilon``: the positive constant of the denominator. ``learnable_epsilon``:
  ``epsilon = softplus(epsilon_param)``, stored in at least float32 (Decision 11).
- ``dtype``: the computation dtype (default: the input's; YatEmbed: the table's).
  ``param_dtype``: the storage dtype (default ``dtype``; YatNMN: float32). ``device``: where
  the parameters are made. Every layer can be made on the ``meta`` device (``device="meta"``
  or ``with torch.device("meta")``: shapes only, no memory) and materialised with
  ``to_empty(device=...)`` then ``reset_parameters()``, which draws every parameter and
  buffer as the constructor does (the same generator calls, in the same order), as FSDP's
  deferred initialisation needs; a tied kernel bank cannot be materialised that way.
- ``weight_normalized``: unit-norm neurons, filters or rows (normalised once at construction;
  dense and conv again in every forward). ``spherical``: inputs and neurons at unit length
  (``v / (|v| + 1e-8)``, Decision 7; attention: ``v / sqrt(|v|^2 + epsilon)``), distance
  ``2 - 2 x.w``.
- ``positive_init``: ``abs()`` of the initial kernel. ``lazy`` / ``freeze_kernel``: freeze the
  kernel (``requires_grad = False``). ``kernel_init``, ``bias_init``, ``alpha_init``: in-place
  initialisers, as ``torch.nn.init`` functions.
- ``use_dropconnect`` (convolutions): DropConnect while ``self.training and not
  deterministic``; each weight is dropped with probability ``drop_rate`` (in ``[0, 1)``) and
  the kept ones are scaled by ``1 / (1 - drop_rate)``, drawn with ``torch.bernoulli`` as nmn
  draws, so that the same torch seed drops the same weights. ``mask``: a fixed kernel mask.
- ``tie_kernel_bank`` (YatNMN, YatConv1D/2D/3D): the layers that name one
  ``kernel_bank_id`` and agree on the rest of the kernel's shape, its dtype and device (and,
  dense, ``kernel_init`` and ``positive_init``) share one ``weight`` Parameter of the bank's
  full shape (``kernel_bank_size`` units, at least the layer's); each uses its first
  ``out_features`` / ``out_channels`` rows, so their gradients add up in it. A later, larger
  layer grows the bank (the old rows kept) until one of its layers has run; ``.to()`` /
  ``.half()`` of a tied layer raise RuntimeError, as in nmn.
- Attention: ``embed_dim`` split into ``num_heads`` heads; ``dropout`` on the attention
  weights in training mode; ``use_out_proj``: an output projection; ``normalize_qk``:
  ``q / max(|q|, 1e-12)`` per head (Decision 2; before RoPE). Rotary: ``max_seq_len``
  (largest ``position_offset + L``), ``theta`` (the RoPE base), ``normalization``
  (``"softmax"``, ``"softermax"`` or ``"l1"``; ``use_softermax=True``: softermax), ``power``.
  Both (keyword): ``window=(left, right)``, local attention as in
  :func:`nmn_array.yat_attention` (with ``mask``, a key must pass both); ``block_size``
  (``None``, ``"auto"``, int) as there, the materialised path when dropout needs the weights.
  ``causal`` (not in nmn.torch): key ``j`` visible to query ``i`` iff ``j <= i + Lk - Lq``,
  combined with any ``mask`` and ``window`` (decoding is causal anyway).
- Linear-time attention (both, keyword; nmn.nnx's Rotary arguments and defaults):
  ``use_performer``, ``performer_kind`` ("slay", "maclaurin", "radial"),
  ``num_anchor_features``, ``num_prf_features``, ``num_quad_nodes`` (SLAY),
  ``performer_num_features``, ``performer_nmax`` (MAY), ``performer_sketch_m``,
  ``performer_num_radial``, ``performer_radial_dim`` (RAY), ``performer_bias`` (MAY, RAY),
  ``performer_normalize`` (SLAY: q and k first scaled to ``v / sqrt(|v|^2 + epsilon)``, as
  nmn; the feature map normalises them again). The forward is
  :func:`nmn_array.linear_attention.performer_attention` of the heads after the
  projections, ``normalize_qk`` and RoPE, with ``causal``, the layer's epsilon, its output
  times alpha (learnable or constant: after normalisation a score factor would cancel, so
  nmn.nnx scales the output), then dropout on that output in training mode. ``mask`` must
  be a key-padding mask broadcastable to ``(B, H, 1, Lk)`` (boolean); ``decode=True`` and
  ``window`` are refused; ``spherical``, ``normalization``, ``power`` and ``block_size``
  do not apply. The projection is drawn once at construction by NumPy, seeded by a draw
  from torch's default generator after the projections' weights (``torch.manual_seed``
  reproduces it; the weights equal the exact module's of that seed), and stored in
  persistent buffers ``perf_<key>`` (SLAY: ``perf_anchors``, ``perf_projections``,
  ``perf_quad_nodes``, ``perf_quad_weights``; MAY: ``perf_omegas``, ``perf_degrees``,
  ``perf_Z``; RAY: ``perf_W1``, ``perf_W2``, ``perf_omegas``, ``perf_phases``,
  ``perf_coef``, ``perf_bias``): ``state_dict`` saves them, ``.to()`` casts and moves
  them, they are not parameters.

The functional attention API (``yat_attention``, ``yat_attention_weights``,
``yat_attention_normalized``, ``normalize_qk``) and ``softermax`` have ``nmn.torch``'s
signatures and its ``(batch, length, heads, dim)`` layout.

Examples
--------
>>> import torch
>>> from nmn_array.frameworks import torch as yat
>>> q = torch.randn(2, 5, 3, 4)
>>> yat.yat_attention_weights(q, q).shape, yat.yat_attention(q, q, q).shape
(torch.Size([2, 3, 5, 5]), torch.Size([2, 5, 3, 4]))
>>> yat.yat_attention_normalized(q, q, q).shape
torch.Size([2, 5, 3, 4])
>>> yat.softermax(torch.ones(2, 2), dim=None).tolist()
[[0.25, 0.25], [0.25, 0.25]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from nmn_array.frameworks import _attention_api as _api
from nmn_array.frameworks import _common, _performer

import nmn_array
from nmn_array import soft_tanh, softer_sigmoid
from nmn_array._attention_blocks import merge_windows

torch = _common.require("torch")
# Any: the module is imported at run time and its classes are our base classes; mypy
# takes a base class from an Any-typed name, not from a plain module object.
nn: Any = torch.nn
F = torch.nn.functional

__all__ = [
    "DEFAULT_CONSTANT_ALPHA",
    "MultiHeadYatAttention",
    "RotaryYatAttention",
    "YatConv1D",
    "YatConv2D",
    "YatConv3D",
    "YatConvTranspose1D",
    "YatConvTranspose2D",
    "YatConvTranspose3D",
    "YatDense",
    "YatEmbed",
    "YatNMN",
    "soft_tanh",
    "softer_sigmoid",
    "softermax",
    "normalize_qk",
    "yat_attention",
    "yat_attention_normalized",
    "yat_attention_weights",
]

#: nmn's constant alpha, ``constant_alpha=True``.
DEFAULT_CONSTANT_ALPHA = math.sqrt(2.0)

Tensor = Any  # torch.Tensor, kept loose so the docs build without torch

#: The shared kernel banks of this module's layers (``tie_kernel_bank=True``).
_BANKS = _common.KernelBanks()


class _YatParams(nn.Module):
    """Alpha, bias and epsilon as parameters or constants (the rules live in _common); the
    set-up methods read nmn's argument names from the constructor's ``locals()``, ``a``."""

    DEFAULT_CONSTANT_ALPHA = DEFAULT_CONSTANT_ALPHA
    tie_kernel_bank = False  # the layers with kernel banks set it per instance

    def _keep(self, a: dict[str, Any], names: str) -> None:
        """Keep the constructor arguments ``names`` (space-separated) as attributes."""
        for name in names.split():
            setattr(self, name, a[name])

    def _setup_yat(self, a: dict[str, Any], storage: Any, weight: Tensor | None = None) -> None:
        """Epsilon and alpha in nmn's order: ``epsilon_param``, ``weight`` (if given), ``alpha``."""
        self.epsilon = _common.check_epsilon(a["epsilon"])
        self.learnable_epsilon = bool(a.get("learnable_epsilon", False))
        self.register_parameter("epsilon_param", None)
        self._epsilon_raw: float | None = None  # what reset_parameters puts back
        if self.learnable_epsilon:
            # validated here (as nmn); stored in at least float32 (see _apply)
            self._epsilon_raw, dtype = _common.learnable_epsilon(self.epsilon, storage)
            raw = torch.full(
                (1,), self._epsilon_raw, dtype=getattr(torch, dtype), device=a["device"]
            )
            self.epsilon_param = nn.Parameter(raw)
        if weight is not None:  # a bank's Parameter is shared as it is
            self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        # YatNMN calls it alpha
        alpha = _common.alpha_config(bool(a.get("use_alpha", a.get("alpha"))), a["constant_alpha"])
        self._constant_alpha_value = alpha.value if alpha.mode == "constant" else None
        self.register_parameter("alpha", None)
        if alpha.mode == "learnable":
            self.alpha = nn.Parameter(torch.ones(1, device=a["device"], dtype=storage))
        self.use_alpha = alpha.mode != "none"  # nmn: True for a constant alpha too
        self.constant_alpha = a["constant_alpha"]

    def _setup_bias(self, a: dict[str, Any], storage: Any, shape: tuple[int, ...] | None) -> None:
        """nmn's bias; ``shape``: of a learnable bias made here (zeros), None if torch made it."""
        cfg = _common.bias_config(a["bias"], a["constant_bias"])
        self._constant_bias_value = cfg.value if cfg.mode == "constant" else None
        if cfg.mode != "learnable":
            self.register_parameter("bias", None)
        elif shape is not None:
            self.bias = nn.Parameter(torch.zeros(shape, device=a["device"], dtype=storage))
        self.use_bias = cfg.mode != "none"
        self.constant_bias = a["constant_bias"]
        self.softplus_bias = bool(a["softplus_bias"] and self.bias is not None)
        self.scalar_bias = bool(a["scalar_bias"] and self.bias is not None)

    def _attach_bank(
        self, a: dict[str, Any], key: tuple[Any, ...], units: int, make: Any, init: Any
    ) -> tuple[Any, bool]:
        """The bank Parameter of ``key`` for ``units`` rows (``make(size)`` makes it; a
        growth fills the new rows with ``init``), and whether this layer made it."""
        self._keep(a, "tie_kernel_bank kernel_bank_size kernel_bank_id")
        self._bank_key, made = key, []

        def new(size: int) -> Any:
            made.append(size)
            return make(size)

        def grow(bank: Any, old: int, size: int) -> None:
            grown = torch.empty((size, *bank.shape[1:]), dtype=bank.dtype, device=bank.device)
            with torch.no_grad():
                init(grown)
                grown[:old] = bank.data
            bank.data = grown  # in place: every layer holds this one Parameter

        bank = _BANKS.attach(key, units=units, size=a["kernel_bank_size"], make=new, grow=grow)
        return bank, bool(made)

    def _kernel(self, units: int) -> Tensor:
        """The layer's kernel: the first ``units`` rows of a bank (which is then used and
        can no longer grow), or ``weight``."""
        if not self.tie_kernel_bank:
            return self.weight
        _BANKS.mark_used(self._bank_key)
        return self.weight[:units]

    def _setup_kernel(self, a: dict[str, Any], made: bool = True) -> None:
        """nmn's kernel-bank settings and ``weight_normalized`` (the transposed convolutions
        have neither); ``made``: whether this layer made its kernel (a layer that joined
        another's bank leaves it alone)."""
        self.weight_normalized = bool(a.get("weight_normalized", False))
        banks = ("tie_kernel_bank", "kernel_bank_size", "kernel_bank_id")
        self._keep(a, " ".join(n for n in banks if n in a))
        self._made_bank = made

    def _normalize_kernel(self) -> None:
        """With ``weight_normalized``, unit neurons or filters: the stored weight is
        normalised once at initialisation and again in every forward."""
        if self.weight_normalized:
            with torch.no_grad():
                self.weight.copy_(_common.unit_normalized(self.weight, 0))

    def _reset_scalars(self, alpha_init: Callable[[Tensor], object] | None = None) -> None:
        """What the constructor sets without drawing: ``alpha`` (1, or ``alpha_init``) and the
        learnable epsilon's raw value."""
        with torch.no_grad():
            if self.epsilon_param is not None:
                self.epsilon_param.fill_(self._epsilon_raw)
            if self.alpha is not None:
                (alpha_init or nn.init.ones_)(self.alpha)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        if getattr(self, "tie_kernel_bank", False):
            # a cast or move would give this layer its own copy, silently untying it
            raise RuntimeError(
                f"{type(self).__name__}(tie_kernel_bank=True): device/dtype migration of a "
                "tied kernel bank is not supported (as in nmn); construct the layers with "
                "the target device= and dtype"
            )
        # .half() / .to(torch.bfloat16) cast every parameter; the raw epsilon stays float32,
        # as nmn keeps it (softplus^-1 of a small epsilon is far outside float16's range)
        raw = self.__dict__["_parameters"].get("epsilon_param")
        before = None if raw is None else raw.data
        super()._apply(fn, recurse)
        raw = self.epsilon_param
        if before is not None and raw is not None and raw.dtype in (torch.float16, torch.bfloat16):
            # the value from before the cast: rounding it through float16 would move epsilon
            raw.data = before.to(device=raw.device, dtype=torch.float32)
        return self

    def _bias_value(self) -> Any:
        if self._constant_bias_value is not None:
            return self._constant_bias_value
        return F.softplus(self.bias) if self.softplus_bias else self.bias

    def _scalars(self) -> dict[str, Any]:
        """``alpha=`` and ``epsilon=`` of the ``nmn_array`` call."""
        alpha = self._constant_alpha_value
        # softplus keeps a learnable epsilon strictly positive (Decision 11)
        eps = F.softplus(self.epsilon_param) if self.learnable_epsilon else self.epsilon
        return {"alpha": self.alpha if alpha is None else alpha, "epsilon": eps}


# --- Dense ---------------------------------------------------------------------------
def _init_rows(rows: Tensor, init: Callable[[Tensor], object], positive: bool) -> None:
    """``kernel_init`` (and ``positive_init``) of the new rows of a grown bank, in place."""
    init(rows)
    if positive:
        rows.abs_()


class YatNMN(_YatParams):
    """Yat dense layer ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``, as
    ``nmn.torch.YatNMN`` 0.3.5: parameters ``weight (out, in)``, ``bias``, ``alpha`` and
    ``epsilon_param``; arguments ``in_features``, ``out_features`` and those of the module
    docstring.

    Examples
    --------
    >>> layer = YatNMN(4, 2, constant_alpha=True)
    >>> bool((layer(torch.randn(3, 4)) >= 0).all())
    True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        constant_bias: float | None = None,
        softplus_bias: bool = False,
        scalar_bias: bool = False,
        alpha: bool = True,
        constant_alpha: bool | float | None = None,
        dtype: Any = None,
        param_dtype: Any = torch.float32,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        positive_init: bool = False,
        weight_normalized: bool = False,
        lazy: bool = False,
        freeze_kernel: bool = False,
        tie_kernel_bank: bool = False,
        kernel_bank_size: int | None = None,
        kernel_bank_id: str = "default",
        kernel_init: Callable[[Tensor], object] | None = None,
        bias_init: Callable[[Tensor], object] | None = None,
        alpha_init: Callable[[Tensor], object] | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        self._keep(locals(), "in_features out_features dtype param_dtype spherical positive_init")
        self.lazy = bool(lazy or freeze_kernel)
        factory = {"device": device, "dtype": param_dtype}
        weight, made = torch.empty((out_features, in_features), **factory), True
        if tie_kernel_bank:
            init = kernel_init or nn.init.xavier_normal_
            where = torch.empty((), device=device).device
            key = ("YatNMN", kernel_bank_id, in_features, param_dtype, where, init, positive_init)
            make = lambda n: nn.Parameter(torch.empty((n, in_features), **factory))  # noqa: E731
            fill = partial(_init_rows, init=init, positive=positive_init)
            weight, made = self._attach_bank(locals(), key, out_features, make, fill)
            if not made and weight.requires_grad == self.lazy:
                raise ValueError(
                    f"YatNMN(tie_kernel_bank=True, lazy={self.lazy}): the layers of kernel "
                    f"bank {kernel_bank_id!r} share one Parameter and must agree on "
                    "lazy/freeze_kernel"
                )
        self._setup_yat(locals(), param_dtype, weight)
        self._setup_bias(locals(), param_dtype, (1,) if scalar_bias else (out_features,))
        self._setup_kernel(locals(), made)
        # kept for reset_parameters() (materialising a layer built on the meta device)
        self._initializers = (kernel_init, bias_init, alpha_init)
        self.reset_parameters(initialize_kernel=made)
        self.weight.requires_grad_(not self.lazy)

    def reset_parameters(
        self,
        kernel_init: Callable[[Tensor], object] | None = None,
        bias_init: Callable[[Tensor], object] | None = None,
        alpha_init: Callable[[Tensor], object] | None = None,
        *,
        initialize_kernel: bool = True,
    ) -> None:
        """Initialise every parameter as the constructor does, drawing from torch's default
        generator in the same order: ``weight`` (the constructor's ``kernel_init``, default
        xavier normal; ``abs()`` with ``positive_init``; unit rows with ``weight_normalized``;
        not if ``initialize_kernel`` is False: a layer that joins a kernel bank keeps it),
        ``bias`` (``bias_init``, default U(+-1/sqrt(in))), ``alpha`` (``alpha_init``, default
        1) and ``epsilon_param``. An initialiser given here replaces the constructor's for
        this call. After ``to_empty(device=...)`` this materialises a layer built on the
        ``meta`` device; with the generator seeded as before construction, exactly.

        Examples
        --------
        >>> layer = YatNMN(4, 2, device="meta").to_empty(device="cpu")
        >>> layer.reset_parameters()
        >>> bool(layer.bias.abs().max() <= 0.5), layer.alpha.tolist()
        (True, [1.0])
        """
        kernel_init = kernel_init or self._initializers[0] or nn.init.xavier_normal_
        bias_init = bias_init or self._initializers[1]
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        with torch.no_grad():
            if initialize_kernel:
                kernel_init(self.weight)
            if initialize_kernel and self.positive_init:
                self.weight.abs_()
            if initialize_kernel:
                self._normalize_kernel()
            if self.bias is not None:
                (bias_init or partial(nn.init.uniform_, a=-bound, b=bound))(self.bias)
        self._reset_scalars(alpha_init or self._initializers[2])

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., in_features)`` -> ``(..., out_features)``."""
        x = x if self.dtype is None else x.to(self.dtype)
        options = {"spherical": self.spherical, "weight_normalized": self.weight_normalized}
        kernel = self._kernel(self.out_features)
        return nmn_array.yat(x, kernel, self._bias_value(), **options, **self._scalars())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, alpha={self.alpha is not None}, "
            f"constant_alpha={self.constant_alpha}, lazy={self.lazy}, "
            f"spherical={self.spherical}, dtype={self.dtype}, param_dtype={self.param_dtype}"
        )


YatDense = YatNMN


# --- Convolutions: torch.nn.Conv*d / ConvTranspose*d subclasses ----------------------
_GEOMETRY = ("stride", "padding", "output_padding", "dilation", "groups", "padding_mode")


def _fan_in_uniform_(bias: Tensor, weight: Tensor) -> None:
    """``torch.nn.Conv*d``'s bias initialiser, U(+-1/sqrt(fan_in)), in place."""
    fan_in = weight[0].numel()  # in/groups * prod(k), or out/groups * prod(k) transposed
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(bias, -bound, bound)


class _YatConv(_YatParams):
    """What a yat convolution adds to its torch base class (nmn's settings, one call)."""

    _ready = False  # torch's __init__ calls reset_parameters before nmn's settings exist

    def _setup(self, a: dict[str, Any]) -> None:
        """torch's weight, bias and geometry (and initialisers), then nmn's settings; a
        tied layer's weight is its kernel bank (``made``: whether this layer made it)."""
        tie, units = a.get("tie_kernel_bank", False), a["out_channels"]
        storage = a["dtype"] if a["param_dtype"] is None else a["param_dtype"]
        # torch's per-channel bias is nmn's learnable bias unless that is a scalar
        # (Decision 4: constant_bias=False leaves it learnable)
        bias_mode = _common.bias_config(a["bias"], a["constant_bias"]).mode
        own = bias_mode == "learnable" and not a["scalar_bias"]
        kw = {key: a[key] for key in _GEOMETRY if key in a}
        # a tied layer's torch weight is made with the bank's size: the bank if it is first
        rows = (a["kernel_bank_size"] or units) if tie else units
        size = (a["in_channels"], rows, a["kernel_size"])
        super().__init__(*size, bias=own and not tie, **kw, device=a["device"], dtype=storage)
        self.out_channels, self._made_bank = units, True
        if tie:
            w = self.weight
            shape = (a["in_channels"], tuple(self.kernel_size), self.groups)
            key = (type(self).__name__, a["kernel_bank_id"], *shape, w.dtype, w.device)
            # new filters as torch's Conv*d initialises its weight (kaiming uniform, a=sqrt 5)
            init = partial(nn.init.kaiming_uniform_, a=math.sqrt(5))
            self.weight, self._made_bank = self._attach_bank(a, key, units, lambda n: w, init)
            if own:  # torch's Conv*d bias of the layer's own size
                self.bias = nn.Parameter(torch.empty(units, device=a["device"], dtype=storage))
                with torch.no_grad():
                    _fan_in_uniform_(self.bias, w)
        self.compute_dtype = a["dtype"]
        self.param_dtype = storage
        self.use_dropconnect = bool(a["use_dropconnect"])
        self.drop_rate = _common.check_rate(a["drop_rate"], "drop_rate")
        self._setup_yat(a, storage)
        self._setup_bias(a, storage, (1,) if a["scalar_bias"] else None)
        mask, shape = a["mask"], tuple(self.weight[:units].shape if tie else self.weight.shape)
        if mask is not None and tuple(mask.shape) != shape:
            raise ValueError(f"mask must have the weight's shape {shape}, got {tuple(mask.shape)}")
        self.register_buffer("mask", mask)
        # the tensor given, which reset_parameters copies back (to_empty leaves the buffer empty)
        self._given_mask = mask
        self._setup_kernel(a, self._made_bank)
        if self._made_bank:
            self._normalize_kernel()
        self._ready = True

    def reset_parameters(self) -> None:
        """Initialise every parameter and the ``mask`` buffer as the constructor does, drawing
        from torch's default generator in the same order: ``weight`` as ``torch.nn.Conv*d``
        (kaiming uniform, ``a = sqrt(5)``; unit filters with ``weight_normalized``; a layer
        that joined another's kernel bank leaves it), a per-channel ``bias``
        U(+-1/sqrt(fan_in)), then a scalar bias 0, ``alpha`` 1, ``epsilon_param``, and the
        ``mask`` given to the constructor. After ``to_empty(device=...)`` this materialises a
        layer built on the ``meta`` device; with the generator seeded as before construction,
        exactly.

        Examples
        --------
        >>> conv = YatConv2D(2, 4, 3, device="meta").to_empty(device="cpu")
        >>> conv.reset_parameters()
        >>> conv.alpha.tolist(), bool(conv.weight.abs().max() <= 1 / 18**0.5)
        ([1.0], True)
        """
        if not self._ready:  # inside torch's __init__: its own initialisation
            super().reset_parameters()
            return
        with torch.no_grad():
            if self._made_bank:
                nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
                self._normalize_kernel()
            if self.bias is not None:
                if self.scalar_bias:
                    self.bias.zero_()
                else:
                    _fan_in_uniform_(self.bias, self.weight)
            if self.mask is not None and self.mask is not self._given_mask:
                if self._given_mask.is_meta:
                    raise RuntimeError(
                        f"{type(self).__name__}.reset_parameters: the mask given to the "
                        "constructor is on the meta device and holds no values; give the "
                        "constructor a mask on a real device, or load it with load_state_dict"
                    )
                self.mask.copy_(self._given_mask)
        self._reset_scalars()

    def _batched(self, input: Tensor) -> tuple[Tensor, bool]:
        """``input`` with a batch axis, and whether one was added: ``(C, *spatial)`` is
        accepted as unbatched exactly where ``torch.nn.Conv{nd}d`` accepts it."""
        nd, rank = len(self.kernel_size), input.dim()
        if rank not in (nd + 1, nd + 2):
            raise ValueError(
                f"{type(self).__name__}: input must be {nd + 1}-D (C, *spatial), unbatched, or "
                f"{nd + 2}-D (N, C, *spatial), got input of shape {tuple(input.shape)}"
            )
        return (input.unsqueeze(0), True) if rank == nd + 1 else (input, False)

    def _yat(
        self, input: Tensor, fn: Callable[..., Tensor], deterministic: bool, **options: Any
    ) -> Tensor:
        """``fn`` (yat_conv or yat_conv_transpose) of ``input`` with the kernel after
        DropConnect (in training mode unless ``deterministic``) and the fixed mask."""
        x, unbatched = self._batched(input)
        x = x if self.compute_dtype is None else x.to(self.compute_dtype)
        keep, rate, kernel = None, self.drop_rate, self._kernel(self.out_channels)
        if self.training and not deterministic and self.use_dropconnect and rate > 0.0:
            # drawn as nmn draws (Bernoulli(1 - rate) in the compute dtype, float32 at least),
            # so that the same torch seed drops the same weights
            dtype = torch.promote_types(x.dtype, torch.float32)
            keep = torch.bernoulli(torch.full_like(kernel, 1.0 - rate, dtype=dtype)).bool()
        kernel = nmn_array.drop_connect(kernel, keep, rate=rate, mask=self.mask)
        options.update(stride=self.stride, dilation=self.dilation, groups=self.groups)
        y = fn(x, kernel, self._bias_value(), **options, **self._scalars())
        return y.squeeze(0) if unbatched else y


class _Conv(_YatConv):
    """The constructor and forward of ``YatConv{1,2,3}D``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        constant_bias: float | None = None,
        softplus_bias: bool = False,
        scalar_bias: bool = False,
        padding_mode: str = "zeros",
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        use_dropconnect: bool = False,
        mask: Tensor | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        drop_rate: float = 0.0,
        weight_normalized: bool = False,
        tie_kernel_bank: bool = False,
        kernel_bank_size: int | None = None,
        kernel_bank_id: str = "default",
        device: Any = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ) -> None:
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        self._setup(locals())

    def forward(self, input: Tensor, *, deterministic: bool = False) -> Tensor:
        """``input (N, C, *spatial)`` -> ``(N, O, *out)``, or unbatched ``(C, *spatial)``
        -> ``(O, *out)``; ``deterministic=True`` turns DropConnect off in training mode."""
        padding, mode = _common.torch_conv_padding(self.padding, self.padding_mode)
        options = dict(padding=padding, padding_mode=mode, weight_normalized=self.weight_normalized)
        return self._yat(input, nmn_array.yat_conv, deterministic, **options)


class _ConvTranspose(_YatConv):
    """The constructor and forward of ``YatConvTranspose{1,2,3}D``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        groups: int = 1,
        bias: bool = True,
        constant_bias: float | None = None,
        softplus_bias: bool = False,
        scalar_bias: bool = False,
        dilation: int | Sequence[int] = 1,
        padding_mode: str = "zeros",
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        use_dropconnect: bool = False,
        mask: Tensor | None = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        drop_rate: float = 0.0,
        device: Any = None,
        dtype: Any = None,
        param_dtype: Any = None,
    ) -> None:
        self._setup(locals())

    def forward(
        self, input: Tensor, output_size: list[int] | None = None, *, deterministic: bool = False
    ) -> Tensor:
        """``input (N, C, *spatial)`` -> ``(N, O, *out)``, or unbatched ``(C, *spatial)``
        -> ``(O, *out)``, with PyTorch's output sizes; ``output_size`` picks
        ``output_padding`` as ``torch.nn.ConvTranspose*d`` does; ``deterministic`` as in
        ``YatConv*D``."""
        self._batched(input)  # a wrong rank is reported first
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        out_pad, nd = self.output_padding, len(self.kernel_size)
        if output_size is not None:
            geometry = (self.stride, self.padding, self.kernel_size, nd, self.dilation)
            out_pad = self._output_padding(input, output_size, *geometry)
        options = {"padding": self.padding, "output_padding": tuple(out_pad)}
        return self._yat(input, nmn_array.yat_conv_transpose, deterministic, **options)


_CONV_DOC = """{nd}-D yat convolution: a ``torch.nn.Conv{nd}d`` whose output is the yat product
``alpha * (<patch, w_o> + b_o)^2 / (|patch - w_o|^2 + epsilon)`` of every patch with every
filter, with the constructor, parameters (``weight (out, in/groups, *k)``, ``bias``, ``alpha``,
``epsilon_param``), ``mask`` buffer (a fixed kernel mask of the weight's shape that multiplies
it) and initialisers of ``nmn.torch.YatConv{nd}D`` 0.3.5. Arguments: ``torch.nn.Conv{nd}d``'s
and those of the module docstring (``dtype`` is the compute dtype).

Examples
--------
>>> conv = YatConv{nd}D(2, 4, 3, padding=1)
>>> tuple(conv(torch.randn((1, 2) + (5,) * {nd})).shape)
{shape}
"""
_CONV_T_DOC = """{nd}-D yat transposed convolution: a ``torch.nn.ConvTranspose{nd}d`` whose
output is ``alpha * (s + b)^2 / (|patch|^2 + |w_o|^2 - 2 s + epsilon)`` with ``s =
conv_transpose(x, w)`` and ``|w_o|^2`` over all taps (Decision 9), with the constructor,
parameters (``weight (in, out/groups, *k)``, ``bias``, ``alpha``, ``epsilon_param``), ``mask``
buffer, initialisers and output sizes (``output_padding``, ``output_size``) of
``nmn.torch.YatConvTranspose{nd}D`` 0.3.5. Arguments: ``torch.nn.ConvTranspose{nd}d``'s and
those of :class:`YatConv{nd}D` that nmn has here (no ``weight_normalized``, no kernel banks).

Examples
--------
>>> conv = YatConvTranspose{nd}D(2, 4, 3, stride=2)
>>> tuple(conv(torch.randn((1, 2) + (4,) * {nd})).shape)
{shape}
"""


def _conv_class(nd: int, transposed: bool) -> type:
    """The public ``nd``-D class: the shell on torch's ``nd``-D class, documented."""
    shell, doc, size = (_ConvTranspose, _CONV_T_DOC, 9) if transposed else (_Conv, _CONV_DOC, 5)
    base = getattr(nn, f"ConvTranspose{nd}d" if transposed else f"Conv{nd}d")
    name = f"YatConvTranspose{nd}D" if transposed else f"YatConv{nd}D"
    doc = doc.format(nd=nd, shape=(1, 4) + (size,) * nd)
    return type(name, (shell, base), {"__doc__": doc, "__module__": __name__})


YatConv1D, YatConv2D, YatConv3D = (_conv_class(nd, False) for nd in (1, 2, 3))
YatConvTranspose1D, YatConvTranspose2D, YatConvTranspose3D = (
    _conv_class(nd, True) for nd in (1, 2, 3)
)


# --- Embedding -----------------------------------------------------------------------
class YatEmbed(_YatParams):
    """Embedding table with a yat ``attend``, as ``nmn.torch.YatEmbed`` 0.3.5: ``forward(ids)``
    looks rows up, ``attend(query)`` gives ``alpha * (q.e_v)^2 / (|q - e_v|^2 + epsilon)`` for
    every row ``e_v`` (no bias). Arguments: ``num_embeddings``, ``features`` and those of the
    module docstring.

    Examples
    --------
    >>> emb = YatEmbed(10, 4)
    >>> tuple(emb(torch.tensor([1, 2])).shape), tuple(emb.attend(torch.randn(3, 4)).shape)
    ((2, 4), (3, 10))
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        epsilon: float = 1e-5,
        spherical: bool = False,
        weight_normalized: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self._keep(locals(), "num_embeddings features spherical weight_normalized")
        size, factory = (num_embeddings, features), {"device": device, "dtype": dtype}
        self.embedding = nn.Parameter(torch.empty(size, **factory))
        self._setup_yat(locals(), dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the table from torch's default generator as the constructor does (variance
        scaling, fan_in, normal: std ``1/sqrt(features)``, as nmn; unit rows with
        ``weight_normalized``), and set ``alpha`` to 1. After ``to_empty(device=...)`` this
        materialises a layer built on the ``meta`` device; with the generator seeded as before
        construction, exactly."""
        table = self.embedding
        drawn = torch.randn(table.shape, device=table.device, dtype=table.dtype)
        drawn = drawn / math.sqrt(self.features)
        if self.weight_normalized:
            drawn = drawn / drawn.norm(dim=1, keepdim=True).clamp(min=1e-8)
        with torch.no_grad():
            table.copy_(drawn)
        self._reset_scalars()

    def forward(self, inputs: Tensor) -> Tensor:
        """Rows of the table: ``(*inputs.shape, features)``."""
        return F.embedding(inputs, self.embedding)

    def attend(self, query: Tensor) -> Tensor:
        """Yat similarity of ``query (..., features)`` with every row: ``(..., num_embeddings)``."""
        return nmn_array.yat(query, self.embedding, spherical=self.spherical, **self._scalars())


# --- Attention -----------------------------------------------------------------------
class _YatAttention(_YatParams):
    """``nn.Linear`` projections, head split, one ``nmn_array`` call, head merge."""

    def _setup(self, a: dict[str, Any], out_name: str) -> None:
        """``out_name``: nmn's ``out_proj``, or ``o_proj`` as in ``nmn.nnx``."""
        super().__init__()
        self._normalize_qk, self._spherical = a["normalize_qk"], a.get("spherical", False)
        # MultiHeadYatAttention has neither of these: nmn's softmax of the plain scores
        normalization = "softermax" if a.get("use_softermax") else a.get("normalization", "softmax")
        self.normalization, self.power = normalization, a.get("power", 1.0)
        embed_dim, num_heads = a["embed_dim"], a["num_heads"]
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        self._keep(a, "embed_dim num_heads use_out_proj")
        self.head_dim = embed_dim // num_heads
        self.dropout = _common.check_rate(a["dropout"], "dropout")
        self.compute_dtype = a["dtype"]
        self.param_dtype = a["dtype"] if a["param_dtype"] is None else a["param_dtype"]
        self._setup_yat(a, self.param_dtype)
        factory = {"bias": a["bias"], "device": a["device"], "dtype": self.param_dtype}
        linear = partial(nn.Linear, embed_dim, embed_dim, **factory)
        self.q_proj, self.k_proj, self.v_proj = linear(), linear(), linear()  # in nmn's order
        setattr(self, out_name, linear() if a["use_out_proj"] else None)
        self._out_name = out_name
        self._device = a["device"]  # of the performer projection drawn in _setup_performer
        self.window, self.block_size = _common.attention_window(a["window"], a["block_size"])
        # the key/value cache of decode=True (init_cache makes it): buffers, so .to() moves
        # them, but not persistent, so state_dict keeps nmn's keys
        for name in ("cached_key", "cached_value", "cache_index"):
            self.register_buffer(name, None, persistent=False)
        self._setup_performer(a)

    def _setup_performer(self, a: dict[str, Any]) -> None:
        """The performer settings; with ``use_performer``, the projection drawn with a seed
        from torch's default generator (after the projections' weights, which are then those
        of the exact module) into persistent buffers ``perf_<key>``: state_dict saves them,
        ``.to()`` moves and casts them, no optimiser sees them."""
        self._performer = _performer.settings(a)
        _performer.refuse_conflicts(type(self).__name__, self._performer, window=self.window)
        self._keep(a, "use_performer performer_kind causal performer_normalize")
        self.performer_kind = self._performer.kind
        for name in _performer.COUNTS:
            setattr(self, name, a[name])
        self._draw_projection()

    def _draw_projection(self) -> None:
        """With ``use_performer``, the projection drawn by NumPy from a seed drawn from torch's
        default generator, into the buffers ``perf_<key>`` (made here by the constructor,
        filled in place by :meth:`reset_parameters`)."""
        if not self._performer.use:
            return
        # on the CPU generator, also under `with torch.device("meta")`: the seed is read here
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device="cpu"))
        projection = _performer.draw(self._performer, self.head_dim, seed, self.epsilon)
        for key in self._performer.keys:
            value, name = torch.as_tensor(projection[key]), f"perf_{key}"
            if value.is_floating_point():
                value = value.to(self.param_dtype or torch.get_default_dtype())
            if getattr(self, name, None) is None:
                self.register_buffer(name, value.to(self._device))
            else:
                with torch.no_grad():
                    getattr(self, name).copy_(value)

    def reset_parameters(self) -> None:
        """Initialise every parameter as the constructor does, drawing from torch's default
        generator in the same order: the projections (``torch.nn.Linear``'s initialisation),
        ``alpha`` 1, ``epsilon_param``, and with ``use_performer`` a new projection (the
        ``perf_*`` buffers). After ``to_empty(device=...)`` this materialises a layer built on
        the ``meta`` device; with the generator seeded as before construction, exactly."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, getattr(self, self._out_name)):
            if proj is not None:
                proj.reset_parameters()
        self._reset_scalars()
        self._draw_projection()

    def _projection(self) -> dict[str, Tensor]:
        """The stored performer projection, by nmn's keys."""
        return {key: getattr(self, f"perf_{key}") for key in self._performer.keys}

    def init_cache(
        self, batch_size: int, max_length: int, dtype: Any = None, device: Any = None
    ) -> None:
        """Create a zeroed key/value cache of ``max_length`` slots for ``batch_size``
        sequences, at index 0, for ``forward(..., decode=True)``: the buffers ``cached_key``
        and ``cached_value`` ``(batch_size, num_heads, max_length, head_dim)`` (keys stored
        after ``normalize_qk`` and RoPE) and ``cache_index`` (a 0-d int64 tensor, the next
        slot). ``dtype`` and ``device`` default to the module's (its ``dtype``, else its
        parameters'). A second call replaces the cache."""
        for name, n in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"init_cache: {name} must be a positive int, got {n!r}")
        weight = self.q_proj.weight
        dtype = dtype or self.compute_dtype or weight.dtype
        device = weight.device if device is None else device
        shape = (batch_size, self.num_heads, max_length, self.head_dim)
        self.cached_key = torch.zeros(shape, dtype=dtype, device=device)
        self.cached_value = torch.zeros(shape, dtype=dtype, device=device)
        self.cache_index = torch.zeros((), dtype=torch.int64, device=device)

    def reset_cache(self) -> None:
        """Zero the cache and set its index back to 0 (in place: a compiled module keeps
        its buffers)."""
        self._cache_shape()
        with torch.no_grad():
            for t in (self.cached_key, self.cached_value, self.cache_index):
                t.zero_()

    def _cache_shape(self) -> tuple[int, ...]:
        """``(batch, heads, max_length, head_dim)`` of the cache; ValueError without one."""
        if self.cached_key is None:
            raise ValueError(
                f"{type(self).__name__} has no key/value cache: call "
                "init_cache(batch_size, max_length) before decode=True or reset_cache()"
            )
        return tuple(self.cached_key.shape)

    def _cache_start(self, b: int, lq: int, lk: int) -> Tensor:
        """The cache index for ``lq`` new tokens of batch ``b`` (``lk`` keys), after
        checking that they fit the cache."""
        batch, _, max_length, _ = self._cache_shape()
        if b != batch or lk != lq:
            raise ValueError(
                f"decode=True: the new tokens must be (batch, L, E) with the cache's batch "
                f"{batch} and as many keys as queries; got batch {b}, {lq} queries and {lk} "
                f"keys (cached_key of shape {tuple(self.cached_key.shape)})"
            )
        index = self.cache_index
        advice = "call reset_cache() or init_cache() with a larger max_length"
        if torch.compiler.is_compiling():
            # reading the index would break the graph: a RuntimeError from the compiled step
            torch._assert_async(
                index + lq <= max_length,
                f"decode=True: the cache is full: index + L > max_length={max_length} for "
                f"L={lq} new tokens; {advice}",
            )
        else:
            start = int(index)
            if start + lq > max_length:
                raise ValueError(
                    f"decode=True: the cache is full: max_length={max_length}, index={start}, "
                    f"L={lq} new tokens; {advice}"
                )
        return index

    def _write_cache(self, k: Tensor, v: Tensor, mask: Any, index: Tensor) -> tuple:
        """Write the new keys and values ``(B, H, L, d)`` at slots ``index ...`` and advance
        the index; returns the whole cache and the mask of the slots each query sees
        (:func:`_common.decode_visibility`, with the left side of ``window``, and ``mask``)."""
        b, h, lq, _ = k.shape
        max_length = self.cached_key.shape[2]
        slots = index + torch.arange(lq, dtype=index.dtype, device=index.device)
        if torch.compiler.is_compiling():
            # in bounds, so that the step's assertion (_cache_start) reports a full cache
            slots = slots.clamp(max=max_length - 1)
        with torch.no_grad():  # the cache holds values, not autograd history
            self.cached_key.index_copy_(2, slots, k.detach().to(self.cached_key.dtype))
            self.cached_value.index_copy_(2, slots, v.detach().to(self.cached_value.dtype))
        visible = _common.decode_visibility(index, lq, max_length, self.window, k)
        visible = torch.broadcast_to(visible, (b, h, lq, max_length))
        mask = visible if mask is None else _common.restrict_mask(mask, visible)
        keys, values = (t.to(k.dtype) for t in (self.cached_key, self.cached_value))
        with torch.no_grad():
            self.cache_index.add_(lq)
        return keys, values, mask

    def _linear(self, x: Tensor, proj: Any) -> Tensor:
        # run in the compute dtype while keeping stored parameters as they are
        dtype = x.dtype if self.compute_dtype is None else self.compute_dtype
        bias = None if proj.bias is None else proj.bias.to(dtype)
        return F.linear(x.to(dtype), proj.weight.to(dtype), bias)

    def _attend(
        self,
        inputs: dict[str, Tensor],
        mask: Any,
        deterministic: bool,
        *,
        decode: bool = False,
        offset: int | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Query, key, value (one input: all three; unbatched ``(L, E)`` as in
        ``torch.nn.MultiheadAttention``) -> heads (unit q, k if ``_normalize_qk``; RoPE at
        ``positions``, else ``offset + t``, else the cache index + t when decoding; None:
        no RoPE) -> with ``decode``, k and v written into the cache, which the queries then
        attend -> yat attention (dropout on the weights when training) -> output
        projection; a query that sees no key in any head gives zeros."""
        (first, x), *others = inputs.items()
        rank = x.dim()
        if rank not in (2, 3):
            raise ValueError(
                f"{first} must be (B, L, E) or unbatched (L, E), got {first} of shape "
                f"{tuple(x.shape)}"
            )
        for name, t in others:
            if t.dim() != rank:
                raise ValueError(
                    f"{name} must have the rank of {first} ({rank}-D), got {name} of shape "
                    f"{tuple(t.shape)} and {first} of shape {tuple(x.shape)}"
                )
        tensors = [t.unsqueeze(0) if rank == 2 else t for t in inputs.values()] * 3
        b, lq, lk, h = tensors[0].shape[0], tensors[0].shape[1], tensors[1].shape[1], self.num_heads
        if decode and self._performer.use:
            _performer.refuse_decode(type(self).__name__)
        index = self._cache_start(b, lq, lk) if decode else None
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (
            self._linear(t, proj).reshape(b, t.shape[1], h, -1).transpose(1, 2)
            for t, proj in zip(tensors, projections)
        )
        if self._normalize_qk:
            q, k = nmn_array.attention.unit_heads(q), nmn_array.attention.unit_heads(k)
        if offset is not None:
            positions = self._positions(lq, offset, positions, index, q.device)
            q, k = (nmn_array.rotary_embedding(t, positions, theta=self.theta) for t in (q, k))
        p = self.dropout if self.training and not deterministic else 0.0
        if index is not None:
            lk = self.cached_key.shape[2]  # the cache's slots are the keys
        if self._performer.use:
            x, window, masked = self._linear_attention(q, k, v, mask, p), None, mask is not None
            if masked:  # a key-padding mask (the core refused any other)
                _common.check_mask_shape(mask, (b, h, 1, lk), "(batch, heads, 1, Lk)")
                mask = torch.broadcast_to(mask, (b, h, 1, lk))
        else:
            x, mask, window, masked = self._exact_attention(q, k, v, mask, index, p)
        x = x.transpose(1, 2).reshape(b, lq, -1)
        out_proj = getattr(self, self._out_name)
        x = x if out_proj is None else self._linear(x, out_proj)
        # decoding without a mask: each query sees its own slot at least
        keyed = _common.keyed_queries(mask if masked else None, window, lq, lk, q)
        if keyed is not None:
            has_key = keyed.any(dim=-1).any(dim=-2)  # (B, Lq)
            x = torch.where(has_key.unsqueeze(-1), x, torch.zeros_like(x))
        return x.squeeze(0) if rank == 2 else x

    def _exact_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Any, index: Tensor | None, p: float
    ) -> tuple:
        """Yat attention of the heads ``(B, H, L, d)`` (over the cache when decoding, at
        ``index``), dropout ``p`` on its weights; returns the output and the mask and window
        the queries saw (``causal`` merged into the window; decoding: in the mask)."""
        b, h, lq, _ = q.shape
        lk = k.shape[2] if index is None else self.cached_key.shape[2]  # decoding: the slots
        window, masked = self.window, mask is not None
        if masked:
            _common.check_mask_shape(mask, (b, h, lq, lk))
            mask = torch.broadcast_to(mask, (b, h, lq, lk))
        causal = self._performer.causal
        if index is not None:
            # the window's left side is in the decode mask (its right side and causal:
            # the slots after the query's are not visible)
            k, v, mask = self._write_cache(k, v, mask, index)
            window, causal = None, False
        kw = dict(mask=mask, spherical=self._spherical, normalization=self.normalization)
        kw.update(power=self.power, window=window, causal=causal, **self._scalars())
        if p > 0.0:
            # dropout needs the weights themselves: the materialised path
            weights = nmn_array.yat_attention_weights(q, k, **kw)
            x = torch.matmul(F.dropout(weights, p=p, training=True), v)
        else:
            x = nmn_array.yat_attention(q, k, v, block_size=self.block_size, **kw)
        return x, mask, merge_windows(causal, window), masked

    def _linear_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Any, p: float) -> Tensor:
        """The performer attention of the heads ``(B, H, L, d)`` (key-padding ``mask``),
        dropout ``p`` on its output."""
        scalars = self._scalars()
        x = _performer.attention(q, k, v, self._performer, self._projection(), mask=mask, **scalars)
        return F.dropout(x, p=p, training=True) if p > 0.0 else x


class MultiHeadYatAttention(_YatAttention):
    """Multi-head yat attention, as ``nmn.torch.MultiHeadYatAttention`` 0.3.5:
    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) sqrt(d))) v`` per head, with
    ``nn.Linear`` projections ``q_proj``, ``k_proj``, ``v_proj`` and optional ``out_proj``.
    Arguments as in the module docstring.

    Examples
    --------
    >>> attn = MultiHeadYatAttention(8, 2)
    >>> tuple(attn(torch.randn(2, 5, 8)).shape)
    (2, 5, 8)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        normalize_qk: bool = False,
        spherical: bool = False,
        use_out_proj: bool = True,
        epsilon: float = 1e-5,
        device: Any = None,
        dtype: Any = None,
        param_dtype: Any = None,
        *,
        window: tuple[int | None, int | None] | None = None,
        block_size: int | str | None = "auto",
        use_performer: bool = False,
        performer_kind: str = "slay",
        num_anchor_features: int = 16,
        num_prf_features: int = 8,
        num_quad_nodes: int = 1,
        performer_num_features: int = 256,
        performer_bias: float = 1.0,
        performer_nmax: int = 40,
        performer_sketch_m: int = 128,
        performer_num_radial: int = 8,
        performer_radial_dim: int = 64,
        causal: bool = False,
        performer_normalize: bool = True,
    ) -> None:
        self._setup(locals(), "out_proj")

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        deterministic: bool = False,
        decode: bool = False,
    ) -> Tensor:
        """``query (B, Lq, E)``, ``key``/``value`` ``(B, Lk, E)`` (default: self-attention);
        ``mask`` broadcastable to ``(B, H, Lq, Lk)``: boolean (True = attend) or floating
        (additive, -inf hides a key; softmax only). Returns ``(B, Lq, E)``. Unbatched
        ``(L, E)`` inputs (mask broadcastable to ``(H, Lq, Lk)``) give ``(Lq, E)``.

        ``decode=True`` (after :meth:`init_cache`): the ``L`` new tokens (``Lk = Lq``) are
        written into the cache at its index, which advances by ``L``, and query ``t`` attends
        to the slots ``0 .. index + t`` (and the left side of ``window``); ``mask`` is then
        broadcastable to ``(B, H, L, max_length)``."""
        key = query if key is None else key
        inputs = {"query": query, "key": key, "value": key if value is None else value}
        return self._attend(inputs, mask, deterministic, decode=decode)


class RotaryYatAttention(_YatAttention):
    """Multi-head yat attention with rotary position embeddings (RoPE, interleaved pairs).

    nmn has no PyTorch rotary layer; this one mirrors ``nmn.nnx.RotaryYatAttention``
    (quadratic path) with PyTorch conventions: ``nn.Linear`` projections ``q_proj``,
    ``k_proj``, ``v_proj`` and optional ``o_proj`` (no bias by default), RoPE on q and k at
    positions ``position_offset + t``, then yat attention. Arguments as in the module
    docstring; ``embed_dim / num_heads`` must be even.

    Examples
    --------
    >>> attn = RotaryYatAttention(8, 2, max_seq_len=16)
    >>> tuple(attn(torch.randn(2, 5, 8)).shape)
    (2, 5, 8)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        max_seq_len: int = 2048,
        *,
        theta: float = 10000.0,
        dropout: float = 0.0,
        bias: bool = False,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        normalize_qk: bool = False,
        use_out_proj: bool = True,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        normalization: str = "softmax",
        use_softermax: bool = False,
        power: float = 1.0,
        device: Any = None,
        dtype: Any = None,
        param_dtype: Any = None,
        window: tuple[int | None, int | None] | None = None,
        block_size: int | str | None = "auto",
        use_performer: bool = False,
        performer_kind: str = "slay",
        num_anchor_features: int = 16,
        num_prf_features: int = 8,
        num_quad_nodes: int = 1,
        performer_num_features: int = 256,
        performer_bias: float = 1.0,
        performer_nmax: int = 40,
        performer_sketch_m: int = 128,
        performer_num_radial: int = 8,
        performer_radial_dim: int = 64,
        causal: bool = False,
        performer_normalize: bool = True,
    ) -> None:
        if embed_dim % num_heads == 0 and (embed_dim // num_heads) % 2:
            raise ValueError(f"head_dim ({embed_dim // num_heads}) must be even for RoPE.")
        self._setup(locals(), "o_proj")
        self._keep(locals(), "max_seq_len theta normalize_qk")

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        position_offset: int = 0,
        deterministic: bool = False,
        decode: bool = False,
        positions: Tensor | None = None,
    ) -> Tensor:
        """``x (B, L, E)`` -> ``(B, L, E)``, or unbatched ``(L, E)`` -> ``(L, E)``; ``mask``
        broadcastable to ``(B, H, L, L)``: boolean (True = attend) or floating (additive,
        -inf hides a key; softmax only).

        RoPE turns q and k at ``positions`` (an integer tensor of shape ``(L,)``, passed to
        :func:`nmn_array.rotary_embedding` as it is), else at ``position_offset + t``, or
        when decoding at ``index + t``. ``decode=True`` (after :meth:`init_cache`): as
        :meth:`MultiHeadYatAttention.forward`; the cache keeps the rotated keys."""
        if decode and position_offset:
            raise ValueError(
                f"decode=True takes the positions from the cache index; got "
                f"position_offset={position_offset} (pass positions= to override them)"
            )
        return self._attend(
            {"x": x}, mask, deterministic, decode=decode, offset=position_offset,
            positions=positions,
        )  # fmt: skip

    def init_cache(
        self, batch_size: int, max_length: int, dtype: Any = None, device: Any = None
    ) -> None:
        """As :meth:`MultiHeadYatAttention.init_cache`; ``max_length`` is at most
        ``max_seq_len`` (the positions of the cache are its slots)."""
        if isinstance(max_length, int) and max_length > self.max_seq_len:
            raise ValueError(
                f"init_cache: max_length={max_length} exceeds max_seq_len={self.max_seq_len}"
            )
        super().init_cache(batch_size, max_length, dtype, device)

    def _positions(
        self, length: int, offset: int, positions: Any, index: Tensor | None, device: Any
    ) -> Tensor:
        """The RoPE positions of ``length`` tokens (see :meth:`forward`), checked against
        ``max_seq_len`` when they are 1-D (decoding: by :meth:`init_cache`)."""
        if positions is not None:
            return _common.explicit_positions(positions, offset, self.max_seq_len)
        if index is not None:
            return index + torch.arange(length, dtype=index.dtype, device=index.device)
        if offset + length > self.max_seq_len:
            raise ValueError(
                f"position_offset + seq_len = {offset + length} exceeds "
                f"max_seq_len={self.max_seq_len}"
            )
        return torch.arange(offset, offset + length, device=device)


# --- nmn.torch's functional attention: q, k, v (batch, length, heads, dim) -------------
def _torch_dropout(p: float, training: bool) -> _api.Dropout:
    return _api.rate_dropout(torch.nn.functional.dropout, p, training, "dropout_p")


def yat_attention_weights(
    query: Tensor,
    key: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = True,
    epsilon: float = 1e-5,
    alpha: Tensor | None = None,
    scale: float | None = None,
    spherical: bool = False,
) -> Tensor:
    """Yat attention weights ``(batch, heads, Lq, Lk)`` of ``query (batch, Lq, heads, d)``
    and ``key (batch, Lk, heads, d)``, as ``nmn.torch.yat_attention_weights`` 0.3.5: ``mask``
    is boolean (True = attend; a floating mask is additive), ``alpha`` and ``scale`` multiply
    the scores (divided by ``sqrt(d)``), dropout applies when ``training``."""
    return _api.attention_weights(
        query, key, mask=mask, dropout=_torch_dropout(dropout_p, training), epsilon=epsilon,
        alpha=alpha, scale=scale, spherical=spherical,
    )  # fmt: skip


def yat_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = True,
    epsilon: float = 1e-5,
    alpha: Tensor | None = None,
    scale: float | None = None,
    spherical: bool = False,
) -> Tensor:
    """Yat attention of ``value (batch, Lk, heads, dv)``: output ``(batch, Lq, heads, dv)``;
    the other arguments as :func:`yat_attention_weights`."""
    return _api.attention(
        query, key, value, mask=mask, dropout=_torch_dropout(dropout_p, training),
        epsilon=epsilon, alpha=alpha, scale=scale, spherical=spherical,
    )  # fmt: skip


def yat_attention_normalized(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = True,
    epsilon: float = 1e-5,
    alpha: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """:func:`yat_attention` with ``spherical=True``."""
    return yat_attention(query, key, value, mask, dropout_p, training, epsilon, alpha, scale, True)


normalize_qk = _api.normalize_qk


def softermax(
    x: Tensor, n: float = 1.0, epsilon: float = 1e-12, dim: int | None = -1, *, axis: Any = None
) -> Tensor:
    """:func:`nmn_array.softermax` with ``nmn.torch``'s signature: ``x^n / (epsilon + sum
    x^n)`` along ``dim`` (all elements for ``None``); ``axis=`` is accepted as an alias."""
    if axis is not None:
        if dim not in (-1, axis):
            raise TypeError(f"softermax got dim={dim!r} and axis={axis!r}: pass one of them")
        dim = axis
    return _common.softermax(x, n, epsilon, dim)
