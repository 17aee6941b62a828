"""MLX modules (``mlx.nn.Module``) over the pure functions of ``nmn_array``.

Drop-in replacements for the dense, convolution, embedding and attention layers of
``nmn.mlx`` 0.3.5 (class names, arguments, parameter names and layouts), so nmn.mlx weights
load unchanged (the rotary layer's RoPE tables aside: ``docs/frameworks/mlx.md``), and
nmn.mlx's functional attention API. Parameters are made on the first call (or by
``build``); each ``__call__`` makes one ``nmn_array`` call on ``mx.array`` arguments
(through nmn_array's MLX namespace adapter), so ``mx.grad``, ``mx.compile`` and
``mlx.nn.value_and_grad`` see plain MLX operations. Constructor arguments, as in
``nmn.mlx``:

- ``features`` (dense), ``filters`` (convolutions): the number of neurons / filters.
- ``use_bias`` / ``constant_bias``: a learnable bias ``(features,)`` (zeros) inside the
  square, or a fixed float instead. ``use_alpha`` / ``constant_alpha``: a learnable output
  scale ``alpha`` ``(1,)`` (ones), or a constant (``True`` means sqrt(2)).
- ``epsilon``: added to the squared distance; ``learnable_epsilon`` learns it as
  ``softplus(epsilon_param)`` (Decision 11's initialisation, stored in float32 or wider).
- ``spherical``, ``weight_normalized``: as for ``nmn_array.yat``; ``positive_init``: ``abs``
  of the initial kernel; ``lazy`` / ``freeze_kernel``: ``freeze(keys=["kernel"])``;
  ``return_weights``: ``__call__`` returns ``(y, kernel)``.
- ``use_dropconnect`` / ``drop_rate``: DropConnect on the kernel when called with
  ``deterministic=False`` (the default ``True`` leaves it off, as in nmn.mlx).
- ``kernel_size``, ``strides``, ``dilation_rate``: ints or one int per spatial axis;
  ``groups``; ``padding``: ``"valid"`` (default), ``"same"`` (XLA's rule), an int, one int
  per spatial axis (symmetric), ``"CIRCULAR"``, ``"REFLECT"`` or ``"CAUSAL"`` (1-D).
- ``num_embeddings``, ``features`` (``YatEmbed``): the table ``embedding (num_embeddings,
  features)``; ``weight_normalized`` normalises its rows once, at construction (Decision 7).
- ``output_padding`` (transposed convolutions): extra output positions on the high side;
  ``padding`` there is ``"valid"`` (PyTorch's rule, ``(L - 1) s + d (k - 1) + 1``), an int
  or one int per axis (PyTorch's ``padding``), or ``"same"`` (``L * s + output_padding``).
- ``dtype`` (default ``mx.float32``): parameters and outputs (inputs are cast to it).
  float16/bfloat16 are computed in float32 and cast back (Decision 3; nmn.mlx computes in
  the low precision itself).
- Attention (``MultiHeadYatAttention``, ``RotaryYatAttention``): ``embed_dim``,
  ``num_heads``, ``dropout``, ``normalize_qk``, ``spherical``, ``use_out_proj`` and, for
  rotary, ``max_seq_len`` and ``theta``, as nmn.mlx; more, keyword-only, in their docstrings.

Layouts (nmn.mlx's): embedding table ``(num_embeddings, features)``; dense kernel
``(features, in)``; convolution input ``(N, *spatial, C)`` and kernel ``(filters,
*kernel_size, C / groups)``; transposed-convolution kernel ``(filters, *kernel_size, C)``;
attention projections ``q_kernel``/``k_kernel``/``v_kernel`` ``(input_dim, embed_dim)`` and
``out_kernel`` ``(embed_dim, embed_dim)``, inputs ``(batch, length, features)``.

Examples
--------
>>> import mlx.core as mx
>>> from nmn_array.frameworks.mlx import YatConv2D, YatNMN
>>> layer = YatNMN(4, constant_alpha=True)
>>> layer(mx.ones((2, 3), dtype=mx.float32)).shape, sorted(layer.parameters())
((2, 4), ['bias', 'kernel'])
>>> YatConv2D(4, 3, strides=2, groups=2, padding="same")(mx.ones((1, 9, 9, 2))).shape
(1, 5, 5, 4)
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Sequence
from typing import Any

from nmn_array.frameworks import _attention_api as _api
from nmn_array.frameworks._common import (
    alpha_config,
    bias_config,
    check_epsilon,
    dtype_name,
    lax_conv_padding,
    learnable_epsilon,
    ntuple,
    require,
    unit_normalized,
)
from nmn_array.frameworks._common import softermax as softermax
from nmn_array.frameworks._keras_tf import (
    YatAttentionShell,
    check_cache_room,
    projection_storage,
    settings,
)

import nmn_array
from nmn_array import soft_tanh as soft_tanh
from nmn_array import softer_sigmoid as softer_sigmoid

mx: Any = require("mlx.core")
nn: Any = require("mlx.nn")

__all__ = [
    "MultiHeadYatAttention",
    "RotaryYatAttention",
    "YatConv1D",
    "YatConv1d",
    "YatConv2D",
    "YatConv2d",
    "YatConv3D",
    "YatConv3d",
    "YatConvTranspose1D",
    "YatConvTranspose1d",
    "YatConvTranspose2D",
    "YatConvTranspose2d",
    "YatConvTranspose3D",
    "YatConvTranspose3d",
    "YatDense",
    "YatEmbed",
    "YatNMN",
    "normalize_qk",
    "soft_tanh",
    "softer_sigmoid",
    "softermax",
    "yat_attention",
    "yat_attention_normalized",
    "yat_attention_weights",
]


def _check_rate(drop_rate: float) -> float:
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)):
        raise TypeError(f"drop_rate must be a float in [0, 1), got {drop_rate!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    return float(drop_rate)


class _YatModule(nn.Module):
    """The bias / alpha / epsilon parameters shared by the layers, and their reads."""

    def _setup(self, s: dict[str, Any], width: int, what: str) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{what} must be a positive int, got {width!r}")
        dtype_name(s["dtype"])  # a floating dtype, or a TypeError naming it
        self.dtype = s["dtype"]
        self._bias_cfg = bias_config(s["use_bias"], s["constant_bias"])
        self._alpha_cfg = alpha_config(s["use_alpha"], s["constant_alpha"])
        # nmn reports use_bias/use_alpha as True when a constant is set
        self.use_bias = self._bias_cfg.mode != "none"
        self.use_alpha = self._alpha_cfg.mode != "none"
        self.constant_bias = s["constant_bias"]
        self.constant_alpha = s["constant_alpha"]
        self.epsilon = check_epsilon(s["epsilon"])
        self.learnable_epsilon = bool(s["learnable_epsilon"])
        self.weight_normalized = bool(s["weight_normalized"])
        self.use_dropconnect = bool(s["use_dropconnect"])
        self.drop_rate = _check_rate(s["drop_rate"])
        if self.learnable_epsilon:
            # validated now, as nmn does, rather than as an inf at the first call
            self._raw_epsilon = learnable_epsilon(self.epsilon, self.dtype)
        self.is_built = False

    def _build_yat(self, n_out: int) -> None:
        if self._bias_cfg.mode == "learnable":
            self.bias = mx.zeros((n_out,), dtype=self.dtype)
        if self._alpha_cfg.mode == "learnable":
            self.alpha = mx.ones((1,), dtype=self.dtype)
        if self.learnable_epsilon:
            raw, storage = self._raw_epsilon
            self.epsilon_param = mx.array([raw], dtype=getattr(mx, storage))
        self.is_built = True

    def _input(self, inputs: Any) -> Any:
        if not isinstance(inputs, mx.array):
            raise TypeError(f"inputs must be an mlx.core.array, got {type(inputs).__name__}")
        return inputs if inputs.dtype == self.dtype else inputs.astype(self.dtype)

    def _kernel(self, deterministic: bool) -> Any:
        """The kernel, after DropConnect when it is on (the one draw per call)."""
        kernel = self.kernel
        if self.use_dropconnect and not deterministic and self.drop_rate > 0.0:
            keep = mx.random.bernoulli(1.0 - self.drop_rate, kernel.shape)
            kernel = nmn_array.drop_connect(kernel, keep, rate=self.drop_rate)
        return kernel

    def _yat_args(self) -> dict[str, Any]:
        """``bias``, ``alpha`` and ``epsilon`` to call the pure function with."""
        bias = self._bias_cfg.value if self._bias_cfg.mode == "constant" else None
        if self._bias_cfg.mode == "learnable":
            bias = self.bias
        alpha = self._alpha_cfg.value if self._alpha_cfg.mode == "constant" else None
        if self._alpha_cfg.mode == "learnable":
            alpha = self.alpha
        epsilon: Any = self.epsilon
        if self.learnable_epsilon:
            epsilon = nn.softplus(self.epsilon_param)
        return {"bias": bias, "alpha": alpha, "epsilon": epsilon}


# --- dense ---------------------------------------------------------------------------
class YatNMN(_YatModule):
    """Yat dense module: ``y = alpha * (x.w_j + b_j)^2 / (|x - w_j|^2 + epsilon)``.

    Kernel ``(features, input_dim)`` (nmn.mlx's layout) from ``N(0, 2 / (input_dim +
    features))`` on the first call; arguments and an example: the module docstring.
    """

    def __init__(
        self,
        features: int,
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        positive_init: bool = False,
        use_dropconnect: bool = False,
        drop_rate: float = 0.0,
        fused: bool = False,
        dtype: Any = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        weight_normalized: bool = False,
        return_weights: bool = False,
        lazy: bool = False,
        freeze_kernel: bool | None = None,
    ) -> None:
        super().__init__()
        s = dict(locals())
        s["dtype"] = mx.float32 if dtype is None else dtype
        self._setup(s, features, "features")
        self.features = int(features)
        self.positive_init = bool(positive_init)
        self.spherical = bool(spherical)
        self.return_weights = bool(return_weights)
        # fused=True selects nmn.mlx's Metal kernel; here the one portable computation serves
        # every device, so the flag is kept for compatibility only
        self.fused = bool(fused)
        self.lazy = bool(lazy) or bool(freeze_kernel)
        self.input_dim: int | None = None

    def build(self, last_dim: int) -> None:
        """Create the parameters for inputs whose last axis has ``last_dim`` features."""
        if self.is_built:
            return
        self.input_dim = int(last_dim)
        std = math.sqrt(2.0 / (self.input_dim + self.features))
        kernel = mx.random.normal((self.features, self.input_dim), dtype=mx.float32) * std
        kernel = mx.abs(kernel) if self.positive_init else kernel
        self.kernel = kernel.astype(self.dtype)
        self._build_yat(self.features)
        if self.lazy:
            self.freeze(keys=["kernel"], recurse=False)

    def __call__(self, inputs: Any, *, deterministic: bool = True) -> Any:
        inputs = self._input(inputs)
        if inputs.ndim < 1:
            raise ValueError(f"inputs must have a feature axis, got shape {inputs.shape}")
        if not self.is_built:
            self.build(inputs.shape[-1])
        elif inputs.shape[-1] != self.input_dim:
            raise ValueError(
                f"Input shape changed: expected last dimension {self.input_dim}, "
                f"got {inputs.shape[-1]} (inputs of shape {inputs.shape})"
            )
        args = self._yat_args()
        y = nmn_array.yat(
            inputs,
            self._kernel(deterministic),
            args.pop("bias"),
            spherical=self.spherical,
            weight_normalized=self.weight_normalized,
            **args,
        )
        return (y, self.kernel) if self.return_weights else y

    def get_weights(self) -> list[Any]:
        """``[kernel, bias?, alpha?, epsilon_param?]`` (those that exist), as nmn orders them."""
        if not self.is_built:
            raise ValueError("Layer must be built before weights can be retrieved.")
        names = ("kernel", "bias", "alpha", "epsilon_param")
        return [self[n] for n in names if n in self]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set the parameters in the order of :meth:`get_weights` (cast to their dtypes)."""
        current = self.get_weights()
        if len(weights) != len(current):
            raise ValueError(f"Expected {len(current)} weight tensors, got {len(weights)}")
        names = [n for n in ("kernel", "bias", "alpha", "epsilon_param") if n in self]
        for name, old, new in zip(names, current, weights):
            new = mx.array(new) if not isinstance(new, mx.array) else new
            if tuple(new.shape) != tuple(old.shape):
                raise ValueError(
                    f"weight {name!r} has shape {tuple(old.shape)}, got {tuple(new.shape)}"
                )
            self[name] = new.astype(old.dtype)


YatDense = YatNMN


# --- convolutions --------------------------------------------------------------------
class _YatConvND(_YatModule):
    """Yat convolution over ``(N, *spatial, C)`` inputs; kernel ``(filters, *kernel_size,
    C / groups)`` from ``N(0, 1 / fan_in)`` on the first call."""

    _nd = 0

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = "valid",
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        use_dropconnect: bool = False,
        drop_rate: float = 0.0,
        weight_normalized: bool = False,
        dtype: Any = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
    ) -> None:
        super().__init__()
        s = dict(locals())
        s["dtype"] = mx.float32 if dtype is None else dtype
        self._setup(s, filters, "filters")
        nd = self._nd
        self.filters = int(filters)
        self.kernel_size = ntuple(kernel_size, nd, "kernel_size")
        self.strides = ntuple(strides, nd, "strides")
        self.dilation_rate = ntuple(dilation_rate, nd, "dilation_rate")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be an int >= 1, got {groups!r}")
        if self.filters % groups:
            raise ValueError(f"filters ({self.filters}) must be divisible by groups ({groups})")
        self.groups = groups
        self.padding = padding
        # the padding is checked now (a bad one raises here, not at the first call)
        self._pad, self._pad_mode = lax_conv_padding(padding, self.kernel_size, self.dilation_rate)
        self.input_channels: int | None = None

    def build(self, input_channels: int) -> None:
        """Create the parameters for inputs with ``input_channels`` channels."""
        if self.is_built:
            return
        if input_channels % self.groups:
            raise ValueError(
                f"Input channels ({input_channels}) must be divisible by groups ({self.groups})"
            )
        self.input_channels = int(input_channels)
        per_group = input_channels // self.groups
        fan_in = per_group * math.prod(self.kernel_size)
        shape = (self.filters, *self.kernel_size, per_group)
        kernel = mx.random.normal(shape, dtype=mx.float32) * math.sqrt(1.0 / max(fan_in, 1))
        self.kernel = kernel.astype(self.dtype)
        self._build_yat(self.filters)

    def __call__(self, inputs: Any, *, deterministic: bool = True) -> Any:
        inputs = self._input(inputs)
        if inputs.ndim != self._nd + 2:
            raise ValueError(
                f"expected input with {self._nd + 2} dims (N, *spatial, C_in), "
                f"got shape {inputs.shape}"
            )
        if not self.is_built:
            self.build(inputs.shape[-1])
        elif inputs.shape[-1] != self.input_channels:
            raise ValueError(
                f"Input channels changed: expected {self.input_channels}, "
                f"got {inputs.shape[-1]} (inputs of shape {inputs.shape})"
            )
        # (filters, *k, C/g) -> the pure function's (filters, C/g, *k): a layout change only
        kernel = mx.moveaxis(self._kernel(deterministic), -1, 1)
        args = self._yat_args()
        return nmn_array.yat_conv(
            inputs,
            kernel,
            args.pop("bias"),
            stride=self.strides,
            padding=self._pad,
            dilation=self.dilation_rate,
            groups=self.groups,
            padding_mode=self._pad_mode,
            data_format="channels_last",
            weight_normalized=self.weight_normalized,
            **args,
        )


class YatConv1D(_YatConvND):
    """1-D yat convolution; input ``(N, L, C)``, kernel ``(filters, k, C / groups)``."""

    _nd = 1


class YatConv2D(_YatConvND):
    """2-D yat convolution; input ``(N, H, W, C)``, kernel ``(filters, kh, kw, C / groups)``."""

    _nd = 2


class YatConv3D(_YatConvND):
    """3-D yat convolution; input ``(N, D, H, W, C)``, kernel ``(filters, kd, kh, kw, C / g)``."""

    _nd = 3


YatConv1d, YatConv2d, YatConv3d = YatConv1D, YatConv2D, YatConv3D


# --- embedding -----------------------------------------------------------------------
class YatEmbed(_YatModule):
    """Token embedding whose ``attend`` scores queries against every embedding with yat.

    ``__call__(ids)`` gathers rows of ``embedding (num_embeddings, features)`` (created at
    construction from ``N(0, 1/features)``, unit rows when ``weight_normalized``);
    ``attend(q)`` returns ``alpha * (q.e_v)^2 / (max(|q - e_v|^2, 0) + epsilon)`` of shape
    ``(..., num_embeddings)`` (no bias). Other arguments: the module docstring.

    Examples
    --------
    >>> import mlx.core as mx
    >>> from nmn_array.frameworks.mlx import YatEmbed
    >>> emb = YatEmbed(10, 4)
    >>> h = emb(mx.array([[1, 2, 3]], dtype=mx.int32))
    >>> h.shape, emb.attend(h).shape
    ((1, 3, 4), (1, 3, 10))
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
        dtype: Any = None,
    ) -> None:
        super().__init__()
        s = dict(locals())
        s["dtype"] = mx.float32 if dtype is None else dtype
        s.update(use_bias=False, constant_bias=None, learnable_epsilon=False)
        s.update(use_dropconnect=False, drop_rate=0.0)
        self._setup(s, num_embeddings, "num_embeddings")
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}")
        self.num_embeddings, self.features = int(num_embeddings), int(features)
        self.spherical = bool(spherical)
        shape = (self.num_embeddings, self.features)
        table = mx.random.normal(shape, dtype=mx.float32) * (1.0 / math.sqrt(self.features))
        # Decision 7: nmn normalises the table once, at construction
        table = unit_normalized(table, 0) if self.weight_normalized else table
        self.embedding = table.astype(self.dtype)
        self._build_yat(0)

    def __call__(self, inputs: Any) -> Any:
        if not isinstance(inputs, mx.array) or not mx.issubdtype(inputs.dtype, mx.integer):
            what = inputs.dtype if isinstance(inputs, mx.array) else type(inputs).__name__
            raise ValueError(f"YatEmbed inputs must be an integer mx.array; got {what}")
        return mx.take(self.embedding, inputs, axis=0)

    def attend(self, query: Any) -> Any:
        """Yat logits of ``query (..., features)`` against the table: ``(..., num_embeddings)``."""
        query = self._input(query)
        if query.ndim < 1 or query.shape[-1] != self.features:
            raise ValueError(
                f"query must have shape (..., {self.features}), got shape {query.shape}"
            )
        args = self._yat_args()
        # Decision 8: the distance is clamped at 0; attend has no bias
        return nmn_array.yat(
            query,
            self.embedding,
            spherical=self.spherical,
            alpha=args["alpha"],
            epsilon=args["epsilon"],
        )


# --- transposed convolutions ---------------------------------------------------------
class _YatConvTransposeND(_YatModule):
    """Yat transposed convolution over ``(N, *spatial, C)`` inputs (``mx.conv_transpose``'s
    semantics, no groups); kernel ``(filters, *kernel_size, C)`` from ``N(0, 1 / fan_in)``."""

    _nd = 0

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = "valid",
        dilation_rate: int | Sequence[int] = 1,
        output_padding: int | Sequence[int] = 0,
        use_bias: bool = True,
        constant_bias: float | None = None,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        use_dropconnect: bool = False,
        drop_rate: float = 0.0,
        dtype: Any = None,
        epsilon: float = 1e-5,
        learnable_epsilon: bool = False,
    ) -> None:
        super().__init__()
        s = dict(locals())
        s["dtype"] = mx.float32 if dtype is None else dtype
        s["weight_normalized"] = False  # (nmn.mlx's transposed convolutions have no flag)
        self._setup(s, filters, "filters")
        nd = self._nd
        self.filters = int(filters)
        self.kernel_size = ntuple(kernel_size, nd, "kernel_size")
        self.strides = ntuple(strides, nd, "strides")
        self.dilation_rate = ntuple(dilation_rate, nd, "dilation_rate")
        self.output_padding = ntuple(output_padding, nd, "output_padding")
        if isinstance(padding, str):
            if padding.upper() not in ("VALID", "SAME"):
                raise ValueError(f"padding must be 'valid', 'same' or ints, got {padding!r}")
        else:
            ntuple(padding, nd, "padding")
        self.padding = padding
        self.input_channels: int | None = None

    def build(self, input_channels: int) -> None:
        """Create the parameters for inputs with ``input_channels`` channels."""
        if self.is_built:
            return
        self.input_channels = int(input_channels)
        fan_in = self.input_channels * math.prod(self.kernel_size)
        shape = (self.filters, *self.kernel_size, self.input_channels)
        kernel = mx.random.normal(shape, dtype=mx.float32) * math.sqrt(1.0 / max(fan_in, 1))
        self.kernel = kernel.astype(self.dtype)
        self._build_yat(self.filters)

    def _torch_padding(self, sizes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], Any]:
        """PyTorch ``padding`` / ``output_padding`` giving nmn.mlx's output, and the crop of
        the high side (``"same"``: ``L * s + output_padding``, from the symmetric padding
        ``max(k_eff - s, 0) // 2`` that nmn.mlx also starts from)."""
        if not isinstance(self.padding, str):
            return ntuple(self.padding, self._nd, "padding"), self.output_padding, None
        if self.padding.upper() == "VALID":
            return (0,) * self._nd, self.output_padding, None
        pads, extra, target = [], [], []
        for n, k, s, d, op in zip(
            sizes, self.kernel_size, self.strides, self.dilation_rate, self.output_padding
        ):
            k_eff = d * (k - 1) + 1
            p = max(k_eff - s, 0) // 2
            natural = (n - 1) * s - 2 * p + k_eff + op
            pads.append(p)
            # short of L * s + op: the missing high positions get no input, as PyTorch's
            # output_padding positions do
            extra.append(op + max(n * s + op - natural, 0))
            target.append(n * s + op)
        return tuple(pads), tuple(extra), tuple(target)

    def __call__(self, inputs: Any, *, deterministic: bool = True) -> Any:
        inputs = self._input(inputs)
        if inputs.ndim != self._nd + 2:
            raise ValueError(
                f"expected input with {self._nd + 2} dims (N, *spatial, C_in), "
                f"got shape {inputs.shape}"
            )
        if not self.is_built:
            self.build(inputs.shape[-1])
        elif inputs.shape[-1] != self.input_channels:
            raise ValueError(
                f"Input channels changed: expected {self.input_channels}, "
                f"got {inputs.shape[-1]} (inputs of shape {inputs.shape})"
            )
        pads, output_padding, target = self._torch_padding(inputs.shape[1:-1])
        # (filters, *k, C) -> PyTorch's (C, filters, *k): mx.conv_transpose's kernel is not
        # flipped relative to PyTorch's, so this is a layout change only
        axes = (self._nd + 1, 0, *range(1, self._nd + 1))
        kernel = mx.transpose(self._kernel(deterministic), axes)
        args = self._yat_args()
        y = nmn_array.yat_conv_transpose(
            inputs,
            kernel,
            args.pop("bias"),
            stride=self.strides,
            padding=pads,
            dilation=self.dilation_rate,
            output_padding=output_padding,
            data_format="channels_last",
            **args,
        )
        if target is not None:
            y = y[(slice(None), *(slice(0, t) for t in target), slice(None))]
        return y


class YatConvTranspose1D(_YatConvTransposeND):
    """1-D yat transposed convolution; input ``(N, L, C)``, kernel ``(filters, k, C)``."""

    _nd = 1


class YatConvTranspose2D(_YatConvTransposeND):
    """2-D yat transposed convolution; input ``(N, H, W, C)``, kernel ``(filters, kh, kw, C)``."""

    _nd = 2


class YatConvTranspose3D(_YatConvTransposeND):
    """3-D yat transposed convolution; input ``(N, D, H, W, C)``."""

    _nd = 3


YatConvTranspose1d, YatConvTranspose2d = YatConvTranspose1D, YatConvTranspose2D
YatConvTranspose3d = YatConvTranspose3D


# --- attention -----------------------------------------------------------------------
# The keras.ops names the shared attention shell (_keras_tf.YatAttentionShell) uses, as MLX
# functions.
_OPS = types.SimpleNamespace(
    broadcast_to=mx.broadcast_to,
    expand_dims=mx.expand_dims,
    reshape=mx.reshape,
    shape=lambda t: tuple(t.shape),
    cast=lambda t, dtype: t.astype(dtype),
    transpose=mx.transpose,
    where=mx.where,
    zeros_like=mx.zeros_like,
    any=mx.any,
    softplus=nn.softplus,
)


class _Entry:
    """An entry of the module's dict read as an attribute, None when absent.

    The shared attention shell declares its optional weights (``alpha``, ``out_kernel``, ...)
    as class attributes defaulting to None; on an ``nn.Module`` (a dict whose arrays are its
    parameters) such a class attribute would hide the dict entry of the same name.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else obj.get(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        if value is None:
            obj.pop(self.name, None)
        else:
            obj[self.name] = value

    def __delete__(self, obj: Any) -> None:
        obj.pop(self.name, None)


class _Slot:
    """A mutable holder of one key/value-cache array (or the int index): an attribute that
    is not an array, so the cache stays out of ``parameters()`` (out of optimisers, gradients
    and ``save_weights``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)


def _drop(weights: Any, rate: float) -> Any:
    """Dropout of attention weights: each kept with probability ``1 - rate`` and rescaled."""
    keep = mx.random.bernoulli(1.0 - rate, weights.shape)
    return nmn_array.drop_connect(weights, keep, rate=rate)


class _Attention(YatAttentionShell, nn.Module):
    """What the attention modules share: projections ``q_kernel``/``k_kernel``/``v_kernel``
    ``(in, embed_dim)`` and ``out_kernel`` ``(embed_dim, embed_dim)`` from ``N(0, 2 / (in +
    embed_dim))`` on the first call (biases zeros), dropout, the key/value cache and the
    performer's projection (a frozen dict entry, ``performer_projection``)."""

    _ops = _OPS
    alpha = _Entry()
    bias = _Entry()
    epsilon_param = _Entry()
    out_kernel = _Entry()
    out_bias = _Entry()
    performer_projection = _Entry()

    @staticmethod
    def _read(value: Any) -> Any:
        return value.value if isinstance(value, _Slot) else value

    def _new_weight(self, name: str, shape: tuple, fill: float, dtype: Any = None) -> Any:
        dtype = getattr(mx, dtype) if isinstance(dtype, str) else dtype
        return mx.full(shape, fill, dtype=dtype or self.dtype)

    def _param_dtype(self) -> Any:
        return self.dtype

    def _setup_attention(self, s: dict[str, Any], rotary: bool) -> None:
        """Record the settings, make alpha / epsilon_param and the performer's projection."""
        layer = type(self).__name__
        for name in ("embed_dim", "num_heads"):
            value = s[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
        s["dtype"] = mx.float32 if s["dtype"] is None else s["dtype"]
        dtype_name(s["dtype"])  # a floating dtype, or a TypeError naming it
        self.dtype = s["dtype"]
        self.dropout = self._init_rotary(s) if rotary else self._init_attention(s)
        self.is_built = False
        self._build_alpha()
        if rotary:  # (nmn's MultiHeadYatAttention has no learnable_epsilon)
            self._build_epsilon()
        # the projection's NumPy seed is a draw of MLX's generator: mx.random.seed reproduces it
        arrays = self._init_performer(s, lambda: int(mx.random.randint(0, 2**31 - 1, ()).item()))
        if arrays is not None:
            storage = getattr(mx, projection_storage(self.dtype))
            self.performer_projection = {
                key: mx.array(a, dtype=mx.int32 if key == "degrees" else storage)
                for key, a in arrays.items()
            }
            # drawn once and kept (saved with the weights), never trained
            self.freeze(keys=["performer_projection"], recurse=False)

    def _build_kernels(self, rows: Sequence[int]) -> None:
        """q/k/v kernels ``(rows, embed_dim)``, the biases and the output projection."""
        if self.is_built:
            return
        self._dims = tuple(int(n) for n in rows)
        std = math.sqrt(2.0 / (self._dims[0] + self.embed_dim))

        def kernel(name: str, n: int) -> Any:
            return (mx.random.normal((int(n), self.embed_dim)) * std).astype(self.dtype)

        self._build_projections(kernel, self._dims)
        self.is_built = True

    def _inputs(self, names: Sequence[str], arrays: Sequence[Any]) -> list[Any]:
        """Each of ``arrays`` as an ``(batch, length, features)`` mx.array of the module's
        dtype, with the feature size the projections were built for."""
        out = []
        for i, (name, a) in enumerate(zip(names, arrays)):
            if not isinstance(a, mx.array):
                raise TypeError(f"{name} must be an mlx.core.array, got {type(a).__name__}")
            if a.ndim != 3:
                raise ValueError(
                    f"{type(self).__name__}: {name} must have shape (batch, length, features), "
                    f"got shape {a.shape}"
                )
            if self.is_built and a.shape[-1] != self._dims[i]:
                raise ValueError(
                    f"{type(self).__name__}: {name} has {a.shape[-1]} features, the "
                    f"projections were built for {self._dims[i]} (shape {a.shape})"
                )
            out.append(a if a.dtype == self.dtype else a.astype(self.dtype))
        return out

    def _refuse_traced_decode(self, x: Any) -> None:
        """ValueError for ``decode=True`` under ``mx.compile`` or ``mx.vmap``: the cache and its
        index are Python state, updated as the call runs, which a compiled graph would replay
        without (silently attending to a frozen cache)."""
        try:
            x[:0].sum().item()  # reading an input's value is refused while MLX traces
        except ValueError as exc:
            raise ValueError(
                f"{type(self).__name__}: decode=True cannot run under mx.compile or mx.vmap (the "
                "key/value cache is Python state that a compiled graph would not update); call "
                "the decoding steps eagerly"
            ) from exc

    def _mask(self, mask: Any, length: int, decode: bool) -> Any:
        """``mask`` checked; when decoding, nmn.mlx's form over the ``index + L`` keys cached
        so far is widened to the cache's ``max_length`` slots (the later ones hidden)."""
        if mask is None:
            return None
        if not isinstance(mask, mx.array):
            raise TypeError(f"mask must be an mlx.core.array, got {type(mask).__name__}")
        if not decode or mask.ndim == 0:
            return mask
        seen, slots = int(self._cache_index()) + length, self.cache_key.shape[2]
        if 1 < seen < slots and mask.shape[-1] == seen:
            hidden = False if mask.dtype == mx.bool_ else -math.inf
            widths = [(0, 0)] * (mask.ndim - 1) + [(0, slots - seen)]
            mask = mx.pad(mask, widths, constant_values=hidden)
        return mask

    def _dropout_fn(self, training: bool) -> Any:
        return _api.rate_dropout(_drop, self.dropout, training, "dropout")

    # --- the key/value cache (the hooks of YatAttentionShell) ------------------------
    def init_cache(self, batch_size: int, max_length: int | None = None, dtype: Any = None) -> None:
        """Make a zeroed key/value cache of ``max_length`` slots (default ``max_seq_len``,
        rotary only) for ``batch_size`` sequences and set its index to 0; ``decode=True``
        calls then write their tokens into it. Called again, it replaces the cache."""
        if max_length is None:
            if self.max_seq_len is None:
                raise ValueError(
                    f"{type(self).__name__}.init_cache: give max_length, the number of cache slots"
                )
            max_length = self.max_seq_len
        super().init_cache(batch_size, max_length, dtype)

    def reset_cache(self) -> None:
        """Zero the key/value cache and set its index back to 0."""
        self._require_cache()
        for slot in (self.cache_key, self.cache_value):
            slot.value = mx.zeros_like(slot.value)
        self.cache_index.value = 0

    def _cache_variables(self, shape: tuple[int, ...], dtype: Any) -> None:
        zeros = mx.zeros(shape, dtype=self.dtype if dtype is None else dtype)
        self.cache_key, self.cache_value = _Slot(zeros), _Slot(zeros)
        self.cache_index = _Slot(0)

    @staticmethod
    def _assign(slot: _Slot, value: Any) -> None:
        slot.value = value

    @staticmethod
    def _update_slice(array: Any, start: list, update: Any) -> Any:
        starts = mx.array([int(i) for i in start], dtype=mx.int32)
        return mx.slice_update(array, update, starts, axes=list(range(array.ndim)))

    @staticmethod
    def _positions(start: Any, length: int) -> Any:
        return mx.arange(length, dtype=mx.int32) + int(start)

    @staticmethod
    def _check_room(index: Any, length: int, max_length: int) -> None:
        check_cache_room(index, length, max_length)


class MultiHeadYatAttention(_Attention):
    """Multi-head attention whose scores are yat products of queries and keys.

    ``softmax(alpha * (q.k)^2 / ((|q - k|^2 + epsilon) * sqrt(head_dim))) @ v`` per head
    (:func:`nmn_array.yat_attention`), as ``nmn.mlx.MultiHeadYatAttention`` 0.3.5: linear
    projections ``q_kernel``/``k_kernel``/``v_kernel`` ``(input_dim, embed_dim)``, biases
    ``q_bias`` ... ``out_bias`` ``(embed_dim,)`` (zeros; ``use_bias``), ``out_kernel``
    ``(embed_dim, embed_dim)`` (``use_out_proj``), from ``N(0, 2 / (input_dim + embed_dim))``
    on the first call; ``alpha`` ``(1,)`` at construction.

    ``dropout``: on the attention weights when called with ``training=True``;
    ``use_alpha``/``constant_alpha`` scale the scores before the softmax (Decision 1);
    ``normalize_qk``: ``q / max(|q|, 1e-12)`` per head (Decision 2; nmn.mlx divides by
    ``sqrt(|q|^2 + 1e-6)``); ``spherical``: q and k normalised inside the score; ``epsilon``;
    ``dtype`` (default ``mx.float32``). Keyword-only, beyond nmn.mlx: ``window=(left,
    right)`` and ``block_size`` (local attention and the tiling of
    :func:`nmn_array.yat_attention`), ``causal``, and linear-time attention with
    ``use_performer`` (``performer_kind`` and the feature counts; see
    ``docs/frameworks/mlx.md``).

    ``__call__(query, key=None, value=None, mask=None, training=False, *, decode=False)``:
    inputs ``(batch, length, features)``; ``mask`` broadcasts to ``(batch, heads, q_len,
    kv_len)``, boolean (True = attend) or floating (additive; -inf hides a key); a query
    that sees no key outputs zeros. ``decode=True`` (after :meth:`init_cache`): the L new
    tokens are written into the key/value cache at its index and attend causally to it.

    Examples
    --------
    >>> import mlx.core as mx
    >>> from nmn_array.frameworks.mlx import MultiHeadYatAttention
    >>> mha = MultiHeadYatAttention(embed_dim=8, num_heads=2)
    >>> causal = mx.tril(mx.ones((5, 5), dtype=mx.bool_))
    >>> y = mha(mx.random.normal((2, 5, 8)), mask=causal)
    >>> y.shape, sorted(mha.parameters())
    ((2, 5, 8), ['alpha', 'k_bias', 'k_kernel', 'out_bias', 'out_kernel', 'q_bias', 'q_kernel', 'v_bias', 'v_kernel'])
    """  # noqa: E501

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        use_bias: bool = True,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        normalize_qk: bool = False,
        spherical: bool = False,
        use_out_proj: bool = True,
        epsilon: float = 1e-5,
        dtype: Any = None,
        *,
        window: tuple[int | None, int | None] | None = None,
        block_size: int | str | None = "auto",
        causal: bool = False,
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
        performer_normalize: bool = True,
    ) -> None:
        super().__init__()
        self._setup_attention(settings(locals()), rotary=False)

    def build(
        self, input_dim: int, key_dim: int | None = None, value_dim: int | None = None
    ) -> None:
        """Create the projections for query (and key, value) feature sizes."""
        key_dim = input_dim if key_dim is None else key_dim
        self._build_kernels((input_dim, key_dim, key_dim if value_dim is None else value_dim))

    def __call__(
        self,
        query: Any,
        key: Any = None,
        value: Any = None,
        mask: Any = None,
        training: bool = False,
        *,
        decode: bool = False,
    ) -> Any:
        key = query if key is None else key
        value = key if value is None else value
        query, key, value = self._inputs(("query", "key", "value"), (query, key, value))
        if not self.is_built:
            self.build(query.shape[-1], key.shape[-1], value.shape[-1])
        if decode:
            self._refuse_traced_decode(query)
        mask = self._mask(mask, query.shape[1], decode)
        dropout = self._dropout_fn(training)
        return self._attend(query, key, value, mask, self._alpha_arg(), dropout, decode=decode)


class RotaryYatAttention(_Attention):
    """Multi-head yat attention with rotary position embeddings (RoPE, interleaved pairs),
    as ``nmn.mlx.RotaryYatAttention`` 0.3.5.

    Self-attention of ``x (batch, L, input_dim)``: projections as
    :class:`MultiHeadYatAttention` (``use_bias`` defaults to True, as in nmn.mlx); q and k
    rotated by :func:`nmn_array.rotary_embedding` (``theta``) at positions
    ``position_offset + t`` (below ``max_seq_len``); ``embed_dim / num_heads`` must be even.
    nmn.mlx's frequency tables ``freqs_cos``/``freqs_sin`` are not kept (RoPE is computed
    from the positions; see ``docs/frameworks/mlx.md``). Keyword-only, beyond nmn.mlx:
    ``normalize_qk``, ``learnable_epsilon`` (``epsilon_param (1,)``), ``normalization``
    (``"softmax"``, ``"softermax"`` (``use_softermax``) or ``"l1"``, to ``power``), and
    ``window``, ``block_size``, ``causal``, ``use_performer`` ... as
    :class:`MultiHeadYatAttention`.

    ``__call__(x, mask=None, *, training=False, position_offset=0, decode=False,
    positions=None)``: ``positions``, an integer mx.array ``(L,)``, or ``(L, 2)`` / ``(batch,
    L, 2)`` for 2-D RoPE, replaces ``position_offset + t``. ``decode=True`` (after :meth:`init_cache`): positions continue
    from the cache index; ``mask`` then covers the ``max_length`` cache slots or, as in
    nmn.mlx, the ``index + L`` keys cached so far.

    Examples
    --------
    >>> import mlx.core as mx
    >>> from nmn_array.frameworks.mlx import RotaryYatAttention
    >>> attn = RotaryYatAttention(8, 2, max_seq_len=16)
    >>> x = mx.random.normal((2, 5, 8))
    >>> full = attn(x)
    >>> attn.init_cache(batch_size=2, max_length=16)
    >>> steps = [attn(x[:, t : t + 1], decode=True) for t in range(5)]
    >>> bool(mx.allclose(mx.concatenate(steps, axis=1), attn(x, mask=mx.tril(mx.ones((5, 5))) > 0)))
    True
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        max_seq_len: int = 2048,
        *,
        theta: float = 10000.0,
        dropout: float = 0.0,
        use_bias: bool = True,
        use_alpha: bool = True,
        constant_alpha: bool | float | None = None,
        use_out_proj: bool = True,
        epsilon: float = 1e-5,
        dtype: Any = None,
        normalize_qk: bool = False,
        learnable_epsilon: bool = False,
        normalization: str = "softmax",
        use_softermax: bool = False,
        power: float = 1.0,
        window: tuple[int | None, int | None] | None = None,
        block_size: int | str | None = "auto",
        causal: bool = False,
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
        performer_normalize: bool = True,
    ) -> None:
        super().__init__()
        self._setup_attention(settings(locals()), rotary=True)

    def build(self, input_dim: int) -> None:
        """Create the projections for inputs of ``input_dim`` features."""
        self._build_kernels((input_dim,) * 3)

    def __call__(
        self,
        x: Any,
        mask: Any = None,
        *,
        training: bool = False,
        position_offset: int = 0,
        decode: bool = False,
        positions: Any = None,
    ) -> Any:
        (x,) = self._inputs(("x",), (x,))
        if not self.is_built:
            self.build(x.shape[-1])
        if decode:
            self._refuse_traced_decode(x)
        mask = self._mask(mask, x.shape[1], decode)
        rotary = functools.partial(
            self._rotary_positions, offset=position_offset, positions=positions, decode=decode
        )
        dropout = self._dropout_fn(training)
        return self._attend(x, x, x, mask, self._alpha_arg(), dropout, rotary, decode)


# nmn.mlx's functional attention: q, k, v (batch, length, heads, dim)
yat_attention_weights, yat_attention, yat_attention_normalized = _api.keras_style_api(_drop)
normalize_qk = _api.normalize_qk
