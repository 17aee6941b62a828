"""PyTorch modules over the pure functions of ``nmn_array``.

Drop-in replacements for ``nmn.torch`` 0.3.5: the same class names, constructor arguments,
``state_dict`` keys, shapes, layouts and initialisers, so ``from nmn.torch import YatNMN``
can become ``from nmn_array.frameworks.torch import YatNMN`` and saved weights load with
``strict=True``. Each ``forward`` holds its parameters in the PyTorch way and makes one
call of an ``nmn_array`` function; the few differences from ``nmn`` are listed in
``docs/migration/torch.md``.

Examples
--------
>>> import torch
>>> from nmn_array.frameworks.torch import YatNMN
>>> layer = YatNMN(4, 3)
>>> tuple(layer(torch.ones(2, 4)).shape)
(2, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nmn_array.frameworks._common import (
    alpha_config,
    bias_config,
    check_epsilon,
    check_rate,
    mask_visibility,
    reject_unsupported_features,
    require,
    softplus_inverse,
    torch_conv_padding,
    unit_normalized,
)

import nmn_array
from nmn_array import soft_tanh, softer_sigmoid, softermax

torch = require("torch")
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
]

#: nmn's constant alpha, ``constant_alpha=True``.
DEFAULT_CONSTANT_ALPHA = math.sqrt(2.0)
# nmn's guard when normalising stored weights at construction (Decision 7).
# Decision 2: normalize_qk is q / max(|q|, 1e-12), which is F.normalize's default.
_QK_NORM_FLOOR = 1e-12

Tensor = Any  # torch.Tensor, kept loose so the docs build without torch


def _epsilon_storage_dtype(param_dtype: Any) -> Any:
    """A learnable epsilon is stored in at least float32: its softplus-inverse of a small
    epsilon is far outside float16's range."""
    if param_dtype in (torch.float16, torch.bfloat16, None):
        return torch.float32
    return param_dtype


class _YatParams:
    """Alpha, bias and epsilon handling shared by every layer (the rules live in _common)."""

    if TYPE_CHECKING:
        # Provided by the framework layer class this mixin is combined with (type checking only).
        register_parameter: Callable[..., None]
        register_buffer: Callable[..., None]
        # Set by each layer's bias setup.
        bias: Any
        softplus_bias: bool
        _constant_bias_value: float | None

    def _setup_alpha(self, use_alpha: bool, constant_alpha: Any, factory: dict) -> None:
        cfg = alpha_config(use_alpha, constant_alpha)
        self._constant_alpha_value = cfg.value if cfg.mode == "constant" else None
        if cfg.mode == "learnable":
            self.alpha = nn.Parameter(torch.ones(1, **factory))
        else:
            self.register_parameter("alpha", None)
        # nmn reports use_alpha=True for a constant alpha.
        self.use_alpha = cfg.mode != "none"
        self.constant_alpha = constant_alpha

    def _setup_epsilon(
        self, epsilon: float, learnable_epsilon: bool, param_dtype: Any, device: Any
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.learnable_epsilon = bool(learnable_epsilon)
        if learnable_epsilon:
            raw = softplus_inverse(self.epsilon)
            dtype = _epsilon_storage_dtype(param_dtype)
            self.epsilon_param = nn.Parameter(torch.full((1,), raw, dtype=dtype, device=device))
        else:
            self.register_parameter("epsilon_param", None)

    def _alpha_value(self) -> Any:
        if self._constant_alpha_value is not None:
            return self._constant_alpha_value
        return self.alpha

    def _epsilon_value(self) -> Any:
        # softplus keeps a learnable epsilon strictly positive (Decision 11)
        if self.learnable_epsilon and self.epsilon_param is not None:
            return F.softplus(self.epsilon_param)
        return self.epsilon

    def _bias_value(self) -> Any:
        if self._constant_bias_value is not None:
            return self._constant_bias_value
        bias = self.bias
        if bias is not None and self.softplus_bias:
            bias = F.softplus(bias)
        return bias


# --------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------
class YatNMN(_YatParams, nn.Module):
    """Yat dense layer: ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``.

    Same constructor, parameters (``weight (out, in)``, ``bias``, ``alpha``,
    ``epsilon_param``) and initialisers as ``nmn.torch.YatNMN`` 0.3.5.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        Learnable bias, initialised U(-1/sqrt(in), 1/sqrt(in)) as in nmn.
    constant_bias : float or None
        A fixed bias (no parameter). ``None`` or ``False``: no constant.
    softplus_bias : bool
        Pass the learnable bias through softplus.
    scalar_bias : bool
        One learnable bias of shape (1,) shared by all neurons.
    alpha : bool
        Learnable output scale (shape (1,), initialised to 1).
    constant_alpha : bool, float or None
        ``True`` = sqrt(2), a float = that value; replaces the learnable alpha.
    dtype : torch.dtype or None
        Computation dtype (default: the input's).
    param_dtype : torch.dtype
        Parameter dtype.
    epsilon : float
    learnable_epsilon : bool
        ``epsilon = softplus(epsilon_param)``.
    spherical : bool
        Normalise inputs and neurons to unit length; distance ``2 - 2 x.w``.
    positive_init : bool
        ``abs()`` of the initial kernel.
    weight_normalized : bool
        Unit-norm neurons (normalised once at construction and in every forward).
    lazy, freeze_kernel : bool
        Freeze the kernel only (``weight.requires_grad = False``).
    tie_kernel_bank, kernel_bank_size, kernel_bank_id
        Shared kernel banks are not implemented (Decision 13): ``tie_kernel_bank=True``
        raises NotImplementedError.
    kernel_init, bias_init, alpha_init : callable or None
        In-place initialisers, as ``torch.nn.init`` functions.
    device : torch.device or None

    Examples
    --------
    >>> import torch
    >>> from nmn_array.frameworks.torch import YatNMN
    >>> layer = YatNMN(4, 2, constant_alpha=True)
    >>> bool((layer(torch.randn(3, 4)) >= 0).all())
    True
    """

    DEFAULT_CONSTANT_ALPHA = DEFAULT_CONSTANT_ALPHA

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
        reject_unsupported_features("YatNMN", tie_kernel_bank=tie_kernel_bank)
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.spherical = spherical
        self.positive_init = positive_init
        self.weight_normalized = weight_normalized
        self.lazy = bool(lazy or freeze_kernel)
        self.tie_kernel_bank = False
        self.kernel_bank_size = kernel_bank_size
        self.kernel_bank_id = kernel_bank_id
        factory = {"device": device, "dtype": param_dtype}
        self._setup_epsilon(epsilon, learnable_epsilon, param_dtype, device)
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        self._setup_alpha(alpha, constant_alpha, factory)

        cfg = bias_config(bias, constant_bias)
        self._constant_bias_value = cfg.value if cfg.mode == "constant" else None
        if cfg.mode == "learnable":
            shape = (1,) if scalar_bias else (out_features,)
            self.bias = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("bias", None)
        self.use_bias = cfg.mode != "none"
        self.constant_bias = constant_bias
        self.softplus_bias = bool(softplus_bias and self.bias is not None)
        self.scalar_bias = bool(scalar_bias and self.bias is not None)

        self.reset_parameters(kernel_init, bias_init, alpha_init)
        if weight_normalized:
            with torch.no_grad():
                self.weight.copy_(unit_normalized(self.weight, 0))
        if self.lazy:
            self.weight.requires_grad_(False)

    def reset_parameters(
        self,
        kernel_init: Callable[[Tensor], object] | None = None,
        bias_init: Callable[[Tensor], object] | None = None,
        alpha_init: Callable[[Tensor], object] | None = None,
    ) -> None:
        """Initialise ``weight`` (xavier normal), ``bias`` (U(+-1/sqrt(in))) and ``alpha`` (1)."""
        with torch.no_grad():
            (kernel_init or nn.init.xavier_normal_)(self.weight)
            if self.positive_init:
                self.weight.abs_()
            if self.bias is not None:
                if bias_init is None:
                    bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
                    nn.init.uniform_(self.bias, -bound, bound)
                else:
                    bias_init(self.bias)
            if self.alpha is not None:
                if alpha_init is None:
                    self.alpha.fill_(1.0)
                else:
                    alpha_init(self.alpha)

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., in_features)`` -> ``(..., out_features)``."""
        if self.dtype is not None:
            x = x.to(self.dtype)
        return nmn_array.yat(
            x,
            self.weight,
            self._bias_value(),
            alpha=self._alpha_value(),
            epsilon=self._epsilon_value(),
            spherical=self.spherical,
            weight_normalized=self.weight_normalized,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, alpha={self.alpha is not None}, "
            f"constant_alpha={self.constant_alpha}, lazy={self.lazy}, "
            f"spherical={self.spherical}, dtype={self.dtype}, param_dtype={self.param_dtype}"
        )


YatDense = YatNMN


# --------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------
class _YatConvMixin(_YatParams):
    if TYPE_CHECKING:
        weight: Any
        mask: Any
    """The yat part of a ``torch.nn.Conv*d`` / ``ConvTranspose*d`` subclass."""

    def _setup_yat(
        self,
        *,
        bias: bool,
        constant_bias: Any,
        softplus_bias: bool,
        scalar_bias: bool,
        use_alpha: bool,
        constant_alpha: Any,
        use_dropconnect: bool,
        drop_rate: float,
        mask: Tensor | None,
        epsilon: float,
        learnable_epsilon: bool,
        storage_dtype: Any,
        compute_dtype: Any,
        device: Any,
    ) -> None:
        reject_unsupported_features(type(self).__name__, use_dropconnect=use_dropconnect)
        cfg = bias_config(bias, constant_bias)
        self._constant_bias_value = cfg.value if cfg.mode == "constant" else None
        if cfg.mode == "learnable" and scalar_bias:
            dtype = storage_dtype if storage_dtype is not None else torch.float32
            self.bias = nn.Parameter(torch.zeros((1,), dtype=dtype, device=device))
        self.use_bias = cfg.mode != "none"
        self.constant_bias = constant_bias
        self.softplus_bias = bool(softplus_bias and self.bias is not None)
        self.scalar_bias = bool(scalar_bias and self.bias is not None)
        self.compute_dtype = compute_dtype
        self.param_dtype = storage_dtype
        self.use_dropconnect = False
        self.drop_rate = check_rate(drop_rate, "drop_rate")
        self._setup_epsilon(epsilon, learnable_epsilon, storage_dtype, device)
        factory = {"device": device, "dtype": storage_dtype}
        self._setup_alpha(use_alpha, constant_alpha, factory)
        if mask is not None and tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"mask must have the weight's shape {tuple(self.weight.shape)}, "
                f"got {tuple(mask.shape)}"
            )
        self.register_buffer("mask", mask)

    def _kernel(self) -> Tensor:
        # a fixed kernel mask multiplies the weight (a parameter transform, as in nmn)
        return self.weight if self.mask is None else self.weight * self.mask

    def _input(self, x: Tensor) -> Tensor:
        return x if self.compute_dtype is None else x.to(self.compute_dtype)

    def _batched(self, input: Tensor, nd: int) -> tuple[Tensor, bool]:
        """``input`` with a batch axis, and whether one was added: ``(C, *spatial)`` is
        accepted as unbatched exactly where ``torch.nn.Conv{nd}d`` accepts it."""
        rank = input.dim()
        if rank not in (nd + 1, nd + 2):
            raise ValueError(
                f"{type(self).__name__}: input must be {nd + 1}-D (C, *spatial), unbatched, or "
                f"{nd + 2}-D (N, C, *spatial), got input of shape {tuple(input.shape)}"
            )
        return (input.unsqueeze(0), True) if rank == nd + 1 else (input, False)


def _parent_bias(bias: bool, constant_bias: Any, scalar_bias: bool) -> bool:
    """Whether torch's own per-channel bias parameter is wanted (Decision 4: False = learnable)."""
    cfg = bias_config(bias, constant_bias)
    return cfg.mode == "learnable" and not scalar_bias


def _make_conv(base: type, nd: int) -> type:
    class _YatConv(_YatConvMixin, base):
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
            reject_unsupported_features(type(self).__name__, tie_kernel_bank=tie_kernel_bank)
            if groups <= 0 or in_channels % groups or out_channels % groups:
                raise ValueError(
                    f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                    f"divisible by groups ({groups})"
                )
            storage_dtype = param_dtype if param_dtype is not None else dtype
            super().__init__(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation,
                groups,
                _parent_bias(bias, constant_bias, scalar_bias),
                padding_mode,
                device,
                storage_dtype,
            )
            self.weight_normalized = weight_normalized
            self.tie_kernel_bank = False
            self.kernel_bank_size = kernel_bank_size
            self.kernel_bank_id = kernel_bank_id
            if weight_normalized:
                with torch.no_grad():
                    self.weight.copy_(unit_normalized(self.weight, 0))
            self._setup_yat(
                bias=bias,
                constant_bias=constant_bias,
                softplus_bias=softplus_bias,
                scalar_bias=scalar_bias,
                use_alpha=use_alpha,
                constant_alpha=constant_alpha,
                use_dropconnect=use_dropconnect,
                drop_rate=drop_rate,
                mask=mask,
                epsilon=epsilon,
                learnable_epsilon=learnable_epsilon,
                storage_dtype=storage_dtype,
                compute_dtype=dtype,
                device=device,
            )

        def forward(self, input: Tensor, *, deterministic: bool = False) -> Tensor:
            """``input (N, C, *spatial)`` -> ``(N, O, *out)``, or unbatched ``(C, *spatial)``
            -> ``(O, *out)``; ``deterministic`` is accepted for nmn compatibility (it only
            switches DropConnect, which is not implemented)."""
            x, unbatched = self._batched(input, nd)
            padding, padding_mode = torch_conv_padding(self.padding, self.padding_mode)
            y = nmn_array.yat_conv(
                self._input(x),
                self._kernel(),
                self._bias_value(),
                stride=self.stride,
                padding=padding,
                dilation=self.dilation,
                groups=self.groups,
                padding_mode=padding_mode,
                alpha=self._alpha_value(),
                epsilon=self._epsilon_value(),
                weight_normalized=self.weight_normalized,
            )
            return y.squeeze(0) if unbatched else y

    return _YatConv


def _make_conv_transpose(base: type, nd: int) -> type:
    class _YatConvTranspose(_YatConvMixin, base):
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
            storage_dtype = param_dtype if param_dtype is not None else dtype
            super().__init__(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                output_padding,
                groups,
                _parent_bias(bias, constant_bias, scalar_bias),
                dilation,
                padding_mode,
                device,
                storage_dtype,
            )
            self._setup_yat(
                bias=bias,
                constant_bias=constant_bias,
                softplus_bias=softplus_bias,
                scalar_bias=scalar_bias,
                use_alpha=use_alpha,
                constant_alpha=constant_alpha,
                use_dropconnect=use_dropconnect,
                drop_rate=drop_rate,
                mask=mask,
                epsilon=epsilon,
                learnable_epsilon=learnable_epsilon,
                storage_dtype=storage_dtype,
                compute_dtype=dtype,
                device=device,
            )

        def forward(
            self,
            input: Tensor,
            output_size: list[int] | None = None,
            *,
            deterministic: bool = False,
        ) -> Tensor:
            """``input (N, C, *spatial)`` -> ``(N, O, *out)``, or unbatched ``(C, *spatial)``
            -> ``(O, *out)``, with PyTorch's output sizes; ``output_size`` picks
            ``output_padding`` as ``torch.nn.ConvTranspose*d`` does."""
            x, unbatched = self._batched(input, nd)
            if self.padding_mode != "zeros":
                raise ValueError(
                    f"Only `zeros` padding mode is supported for {type(self).__name__}"
                )
            output_padding = self.output_padding
            if output_size is not None:
                output_padding = self._output_padding(
                    input,
                    output_size,
                    self.stride,
                    self.padding,
                    self.kernel_size,
                    num_spatial_dims=nd,
                    dilation=self.dilation,
                )
            y = nmn_array.yat_conv_transpose(
                self._input(x),
                self._kernel(),
                self._bias_value(),
                stride=self.stride,
                padding=self.padding,
                output_padding=tuple(output_padding),
                dilation=self.dilation,
                groups=self.groups,
                alpha=self._alpha_value(),
                epsilon=self._epsilon_value(),
            )
            return y.squeeze(0) if unbatched else y

    return _YatConvTranspose


_CONV_DOC = """{nd}-D yat convolution, a ``torch.nn.Conv{nd}d`` whose output is the yat product
of every patch with every filter:
``y = alpha * (<patch, w_o> + b_o)^2 / (|patch - w_o|^2 + epsilon)``.

Constructor, parameters (``weight (out, in/groups, *k)``, ``bias``, ``alpha``,
``epsilon_param``), ``mask`` buffer and initialisers as ``nmn.torch.YatConv{nd}D`` 0.3.5:
``torch.nn.Conv{nd}d``'s arguments and ``padding_mode``, plus ``constant_bias``,
``softplus_bias``, ``scalar_bias``, ``use_alpha``, ``constant_alpha``, ``epsilon``,
``learnable_epsilon``, ``weight_normalized``, a fixed kernel ``mask``, ``dtype`` (compute)
and ``param_dtype`` (storage). ``constant_bias=False`` means a learnable bias (Decision 4).
``use_dropconnect=True`` and ``tie_kernel_bank=True`` raise NotImplementedError
(Decision 13).

Examples
--------
>>> import torch
>>> from nmn_array.frameworks.torch import YatConv{nd}D
>>> conv = YatConv{nd}D(2, 4, 3, padding=1)
>>> tuple(conv(torch.randn((1, 2) + (5,) * {nd})).shape)
{shape}
"""

_CONV_T_DOC = """{nd}-D yat transposed convolution, a ``torch.nn.ConvTranspose{nd}d`` whose
output is ``alpha * (s + b)^2 / (|patch|^2 + |w_o|^2 - 2 s + epsilon)`` with
``s = conv_transpose(x, w)`` and ``|w_o|^2`` over all taps (Decision 9).

Constructor, parameters (``weight (in, out/groups, *k)``, ``bias``, ``alpha``,
``epsilon_param``) and output sizes (``output_padding``, ``output_size``) as
``nmn.torch.YatConvTranspose{nd}D`` 0.3.5. ``use_dropconnect=True`` raises
NotImplementedError (Decision 13).

Examples
--------
>>> import torch
>>> from nmn_array.frameworks.torch import YatConvTranspose{nd}D
>>> conv = YatConvTranspose{nd}D(2, 4, 3, stride=2)
>>> tuple(conv(torch.randn((1, 2) + (4,) * {nd})).shape)
{shape_t}
"""


def _conv_class(name: str, nd: int, transposed: bool) -> type:
    if transposed:
        base = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[nd - 1]
        cls = _make_conv_transpose(base, nd)
        doc = _CONV_T_DOC.format(nd=nd, shape_t=(1, 4) + (9,) * nd)
    else:
        base = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
        cls = _make_conv(base, nd)
        doc = _CONV_DOC.format(nd=nd, shape=(1, 4) + (5,) * nd)
    cls.__name__ = cls.__qualname__ = name
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


YatConv1D = _conv_class("YatConv1D", 1, False)
YatConv2D = _conv_class("YatConv2D", 2, False)
YatConv3D = _conv_class("YatConv3D", 3, False)
YatConvTranspose1D = _conv_class("YatConvTranspose1D", 1, True)
YatConvTranspose2D = _conv_class("YatConvTranspose2D", 2, True)
YatConvTranspose3D = _conv_class("YatConvTranspose3D", 3, True)


# --------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------
class YatEmbed(_YatParams, nn.Module):
    """Embedding table with a yat ``attend``, as ``nmn.torch.YatEmbed`` 0.3.5.

    ``forward(ids)`` looks rows up; ``attend(query)`` gives
    ``alpha * (q.e_v)^2 / (|q - e_v|^2 + epsilon)`` for every row ``e_v`` (no bias).

    Parameters
    ----------
    num_embeddings, features : int
    use_alpha, constant_alpha
        As in :class:`YatNMN`.
    epsilon : float
    spherical : bool
        Normalise query and rows in ``attend`` (``v / (|v| + 1e-8)``, Decision 7).
    weight_normalized : bool
        Normalise the rows once at construction.
    device, dtype
        Parameter device and dtype.

    Examples
    --------
    >>> import torch
    >>> from nmn_array.frameworks.torch import YatEmbed
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
        self.num_embeddings = num_embeddings
        self.features = features
        self.epsilon = check_epsilon(epsilon)
        self.learnable_epsilon = False
        self.spherical = spherical
        self.weight_normalized = weight_normalized
        factory = {"device": device, "dtype": dtype}
        # variance scaling (fan_in, normal): std 1/sqrt(features), as nmn
        self.embedding = nn.Parameter(
            torch.randn(num_embeddings, features, **factory) / math.sqrt(features)
        )
        if weight_normalized:
            with torch.no_grad():
                self.embedding.div_(self.embedding.norm(dim=1, keepdim=True).clamp(min=1e-8))
        self._setup_alpha(use_alpha, constant_alpha, factory)

    def forward(self, inputs: Tensor) -> Tensor:
        """Rows of the table: ``(*inputs.shape, features)``."""
        return F.embedding(inputs, self.embedding)

    def attend(self, query: Tensor) -> Tensor:
        """Yat similarity of ``query (..., features)`` with every row: ``(..., num_embeddings)``."""
        return nmn_array.yat(
            query,
            self.embedding,
            alpha=self._alpha_value(),
            epsilon=self.epsilon,
            spherical=self.spherical,
        )


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------
def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    b, length, _ = x.shape
    return x.reshape(b, length, heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class _AttentionBase(_YatParams, nn.Module):
    """Shared pieces of the torch attention modules."""

    def _promote(self, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
        target = self.compute_dtype
        if target is None:
            target = next((t.dtype for t in tensors if t is not None), torch.float32)
        return tuple(None if t is None else t.to(target) for t in tensors)

    def _linear(self, x: Tensor, proj: Any) -> Tensor:
        # run in the compute dtype while keeping stored parameters as they are
        x, w, b = self._promote(x, proj.weight, proj.bias)
        return F.linear(x, w, b)

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        deterministic: bool,
        spherical: bool,
    ) -> Tensor:
        """Yat attention on head-split ``(B, H, L, d)`` tensors, dropout on the weights."""
        kwargs = dict(
            mask=mask,
            alpha=self._alpha_value(),
            epsilon=self._epsilon_value(),
            spherical=spherical,
            normalization=self.normalization,
            power=self.power,
        )
        p = self.dropout if self.training and not deterministic else 0.0
        if p > 0.0:
            weights = nmn_array.yat_attention_weights(q, k, **kwargs)
            return torch.matmul(F.dropout(weights, p=p, training=True), v)
        return nmn_array.yat_attention(q, k, v, **kwargs)


def _batch_inputs(names: tuple[str, ...], *tensors: Tensor) -> tuple[bool, list[Tensor]]:
    """``(B, L, E)`` inputs as they are, or unbatched ``(L, E)`` ones with a batch axis of 1
    (as ``torch.nn.MultiheadAttention`` accepts); returns whether the axis was added."""
    rank = tensors[0].dim()
    if rank not in (2, 3):
        raise ValueError(
            f"{names[0]} must be (B, L, E) or unbatched (L, E), got {names[0]} of shape "
            f"{tuple(tensors[0].shape)}"
        )
    for name, t in zip(names[1:], tensors[1:]):
        if t.dim() != rank:
            raise ValueError(
                f"{name} must have the rank of {names[0]} ({rank}-D), got {name} of shape "
                f"{tuple(t.shape)} and {names[0]} of shape {tuple(tensors[0].shape)}"
            )
    if rank == 3:
        return False, list(tensors)
    return True, [t.unsqueeze(0) for t in tensors]


def _zero_keyless(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the outputs of queries that see no key in any head (after the projection's bias)."""
    if mask is None:
        return x
    has_key = mask_visibility(mask).any(dim=-1).any(dim=-2)  # (B, Lq)
    return torch.where(has_key.unsqueeze(-1), x, torch.zeros_like(x))


class MultiHeadYatAttention(_AttentionBase):
    """Multi-head yat attention, as ``nmn.torch.MultiHeadYatAttention`` 0.3.5.

    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) sqrt(d))) v`` per head, with
    ``nn.Linear`` projections ``q_proj``, ``k_proj``, ``v_proj`` and optional ``out_proj``.

    Parameters
    ----------
    embed_dim, num_heads : int
    dropout : float
        Dropout on the attention weights in training mode.
    bias : bool
        Bias of the projections.
    use_alpha, constant_alpha
        Learnable (init 1) or constant score scale, applied before the softmax.
    normalize_qk : bool
        ``q / max(|q|, 1e-12)`` per head (Decision 2).
    spherical : bool
        Spherical yat scores (``v / sqrt(|v|^2 + epsilon)``, distance ``2 - 2 q.k``).
    use_out_proj : bool
    epsilon : float
    device, dtype, param_dtype
        ``dtype`` is the compute dtype, ``param_dtype`` (default ``dtype``) the storage one.

    Examples
    --------
    >>> import torch
    >>> from nmn_array.frameworks.torch import MultiHeadYatAttention
    >>> attn = MultiHeadYatAttention(8, 2)
    >>> tuple(attn(torch.randn(2, 5, 8)).shape)
    (2, 5, 8)
    """

    DEFAULT_CONSTANT_ALPHA = DEFAULT_CONSTANT_ALPHA

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
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = check_rate(dropout, "dropout")
        self.use_out_proj = use_out_proj
        self.normalization = "softmax"
        self.power = 1.0
        storage = param_dtype if param_dtype is not None else dtype
        self.compute_dtype = dtype
        self.param_dtype = storage
        factory = {"device": device, "dtype": storage}
        self._setup_epsilon(epsilon, False, storage, device)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.out_proj = (
            nn.Linear(embed_dim, embed_dim, bias=bias, **factory) if use_out_proj else None
        )
        self._normalize_qk = normalize_qk
        self._spherical = spherical
        self._setup_alpha(use_alpha, constant_alpha, factory)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        deterministic: bool = False,
    ) -> Tensor:
        """``query (B, Lq, E)``, ``key``/``value`` ``(B, Lk, E)`` (default: self-attention);
        ``mask`` broadcastable to ``(B, H, Lq, Lk)``: boolean (True = attend) or floating
        (additive, -inf hides a key; softmax only). Returns ``(B, Lq, E)``. Unbatched
        ``(L, E)`` inputs (mask broadcastable to ``(H, Lq, Lk)``) give ``(Lq, E)``."""
        if key is None:
            key = query
        if value is None:
            value = key
        unbatched, (query, key, value) = _batch_inputs(("query", "key", "value"), query, key, value)
        b, lq, _ = query.shape
        lk = key.shape[1]
        h = self.num_heads
        q = _split_heads(self._linear(query, self.q_proj), h)
        k = _split_heads(self._linear(key, self.k_proj), h)
        v = _split_heads(self._linear(value, self.v_proj), h)
        if self._normalize_qk:
            q = F.normalize(q, p=2.0, dim=-1, eps=_QK_NORM_FLOOR)
            k = F.normalize(k, p=2.0, dim=-1, eps=_QK_NORM_FLOOR)
        if mask is not None:
            mask = torch.broadcast_to(mask, (b, h, lq, lk))
        x = _merge_heads(self._attend(q, k, v, mask, deterministic, self._spherical))
        if self.out_proj is not None:
            x = self._linear(x, self.out_proj)
        x = _zero_keyless(x, mask)
        return x.squeeze(0) if unbatched else x


class RotaryYatAttention(_AttentionBase):
    """Multi-head yat attention with rotary position embeddings (RoPE, interleaved pairs).

    nmn has no PyTorch rotary layer; this one mirrors ``nmn.nnx.RotaryYatAttention``
    (quadratic path) with PyTorch conventions: ``nn.Linear`` projections ``q_proj``,
    ``k_proj``, ``v_proj`` and optional ``o_proj`` (no bias by default), RoPE on q and k at
    positions ``position_offset + t``, then yat attention.

    Parameters
    ----------
    embed_dim, num_heads : int
        ``embed_dim / num_heads`` must be even.
    max_seq_len : int
        Largest ``position_offset + L`` accepted.
    theta : float
        RoPE base.
    dropout : float
        Dropout on the attention weights in training mode.
    bias : bool
        Bias of the projections.
    use_alpha, constant_alpha
        Score scale before normalisation (Decision 1).
    normalize_qk : bool
        ``q / max(|q|, 1e-12)`` per head before RoPE (Decision 2).
    use_out_proj : bool
    epsilon, learnable_epsilon
    normalization : {"softmax", "softermax", "l1"}
    use_softermax : bool
        Shortcut for ``normalization="softermax"``.
    power : float
        Softermax power.
    device, dtype, param_dtype

    Examples
    --------
    >>> import torch
    >>> from nmn_array.frameworks.torch import RotaryYatAttention
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
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        if (embed_dim // num_heads) % 2:
            raise ValueError(f"head_dim ({embed_dim // num_heads}) must be even for RoPE.")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.max_seq_len = max_seq_len
        self.theta = theta
        self.dropout = check_rate(dropout, "dropout")
        self.normalize_qk = normalize_qk
        self.use_out_proj = use_out_proj
        self.normalization = "softermax" if use_softermax else normalization
        self.power = power
        storage = param_dtype if param_dtype is not None else dtype
        self.compute_dtype = dtype
        self.param_dtype = storage
        factory = {"device": device, "dtype": storage}
        self._setup_epsilon(epsilon, learnable_epsilon, storage, device)
        self._setup_alpha(use_alpha, constant_alpha, factory)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.o_proj = (
            nn.Linear(embed_dim, embed_dim, bias=bias, **factory) if use_out_proj else None
        )

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        position_offset: int = 0,
        deterministic: bool = False,
    ) -> Tensor:
        """``x (B, L, E)`` -> ``(B, L, E)``, or unbatched ``(L, E)`` -> ``(L, E)``; ``mask``
        broadcastable to ``(B, H, L, L)``: boolean (True = attend) or floating (additive,
        -inf hides a key; softmax only)."""
        unbatched, (x,) = _batch_inputs(("x",), x)
        b, length, _ = x.shape
        if position_offset + length > self.max_seq_len:
            raise ValueError(
                f"position_offset + seq_len = {position_offset + length} exceeds "
                f"max_seq_len={self.max_seq_len}"
            )
        h = self.num_heads
        q = _split_heads(self._linear(x, self.q_proj), h)
        k = _split_heads(self._linear(x, self.k_proj), h)
        v = _split_heads(self._linear(x, self.v_proj), h)
        if self.normalize_qk:
            q = F.normalize(q, p=2.0, dim=-1, eps=_QK_NORM_FLOOR)
            k = F.normalize(k, p=2.0, dim=-1, eps=_QK_NORM_FLOOR)
        positions = torch.arange(position_offset, position_offset + length, device=x.device)
        q = nmn_array.rotary_embedding(q, positions, theta=self.theta)
        k = nmn_array.rotary_embedding(k, positions, theta=self.theta)
        if mask is not None:
            mask = torch.broadcast_to(mask, (b, h, length, length))
        out = _merge_heads(self._attend(q, k, v, mask, deterministic, False))
        if self.o_proj is not None:
            out = self._linear(out, self.o_proj)
        out = _zero_keyless(out, mask)
        return out.squeeze(0) if unbatched else out
