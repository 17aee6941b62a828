"""PyTorch cases: our layers, the native layers they replace, and nmn 0.3.5's layers.

Every case is built by a factory ``(sizes) -> (module, inputs)``; :func:`make_step` turns it
into one forward + backward pass of ``module(*inputs).sum()`` with respect to the parameters
and the inputs (a layer in the middle of a network needs both). Our side goes through
``nmn_array.frameworks.torch`` when it imports, through the small local wrappers below
otherwise (the JSON records which one ran, as ``impl``). The variant groups
``<group>-compiled`` and ``<group>-bf16`` run ours and the native layer under
``torch.compile`` and under bfloat16 autocast (:func:`run_variants`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nmn_array

from ._common import Sizes

Factory = Callable[[Sizes], tuple[nn.Module, tuple[torch.Tensor, ...]]]


# --------------------------------------------------------------------------------------
# Fallback wrappers: parameters held here, arithmetic in the nmn_array pure functions.
# --------------------------------------------------------------------------------------
class LocalYatDense(nn.Module):
    """Dense yat layer holding ``weight (out, in)``, ``bias (out,)`` and ``alpha (1,)``."""

    def __init__(self, in_features: int, out_features: int, distance: str = "refined") -> None:
        super().__init__()
        self.distance = distance
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_normal_(self.weight)
        bound = 1.0 / math.sqrt(in_features)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.alpha = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in)`` -> ``(..., out)``."""
        return nmn_array.yat(x, self.weight, self.bias, alpha=self.alpha, distance=self.distance)


class LocalYatConv2d(nn.Conv2d):
    """Yat 2-D convolution on ``nn.Conv2d``'s parameters plus ``alpha (1,)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.alpha = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C, H, W)`` -> ``(N, O, H', W')``."""
        return nmn_array.yat_conv(x, self.weight, self.bias, padding=self.padding, alpha=self.alpha)


class LocalYatAttention(nn.Module):
    """Multi-head yat self-attention with ``nn.Linear`` q/k/v/out projections."""

    def __init__(self, embed_dim: int, num_heads: int, distance: str = "refined") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.distance = distance
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.alpha = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, E)`` -> ``(B, L, E)``."""
        q, k, v = (
            split_heads(p(x), self.num_heads) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        y = nmn_array.yat_attention(q, k, v, alpha=self.alpha, distance=self.distance)
        return self.out_proj(merge_heads(y))


# --------------------------------------------------------------------------------------
# Native references
# --------------------------------------------------------------------------------------
def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, H*d)`` -> ``(B, H, L, d)``."""
    b, length, _ = x.shape
    return x.reshape(b, length, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, d)`` -> ``(B, L, H*d)``."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class SDPAAttention(nn.Module):
    """Softmax attention with the same q/k/v/out ``nn.Linear`` projections as ours, through
    ``F.scaled_dot_product_attention``."""

    def __init__(self, embed_dim: int, num_heads: int, distance: str = "refined") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.distance = distance
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, E)`` -> ``(B, L, E)``."""
        q, k, v = (
            split_heads(p(x), self.num_heads) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class TorchMHA(nn.Module):
    """``nn.MultiheadAttention`` (batch first) called as self-attention."""

    def __init__(self, embed_dim: int, num_heads: int, need_weights: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, E)`` -> ``(B, L, E)``."""
        return self.mha(x, x, x, need_weights=self.need_weights)[0]


class SelfAttention(nn.Module):
    """Calls an attention module with ``x`` as query, key and value."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, E)`` -> ``(B, L, E)``."""
        return self.inner(x)


# --------------------------------------------------------------------------------------
# Our side: the framework module when it imports, else the wrapper
# --------------------------------------------------------------------------------------
def frameworks_module() -> Any:
    """``nmn_array.frameworks.torch`` or None if it does not import (yet)."""
    try:
        from nmn_array.frameworks import torch as fw
    except Exception:  # noqa: BLE001 - any failure means "use the fallback"
        return None
    needed = ("YatNMN", "YatConv2D", "MultiHeadYatAttention")
    return fw if all(hasattr(fw, name) for name in needed) else None


def ours_impl() -> str:
    """``"frameworks"`` when our side runs through ``nmn_array.frameworks.torch``."""
    return "frameworks" if frameworks_module() is not None else "wrapper"


def _x(*shape: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(*shape).requires_grad_(True),)


def _dense_input(sz: Sizes) -> tuple[torch.Tensor, ...]:
    return _x(sz.dense_batch, sz.dense_in)


def _conv_input(sz: Sizes) -> tuple[torch.Tensor, ...]:
    return _x(sz.conv_batch, sz.conv_in, sz.conv_hw, sz.conv_hw)


def _attn_input(sz: Sizes) -> tuple[torch.Tensor, ...]:
    return _x(sz.attn_batch, sz.attn_len, sz.attn_dim)


def dense_ours(sz: Sizes):
    """Our YatNMN."""
    fw = frameworks_module()
    cls = fw.YatNMN if fw is not None else LocalYatDense
    return cls(sz.dense_in, sz.dense_out), _dense_input(sz)


def dense_expanded(sz: Sizes):
    """The pure function with ``distance="expanded"`` (no near-collision refinement)."""
    return LocalYatDense(sz.dense_in, sz.dense_out, "expanded"), _dense_input(sz)


def dense_refined(sz: Sizes):
    """The pure function with ``distance="refined"`` (the default)."""
    return LocalYatDense(sz.dense_in, sz.dense_out, "refined"), _dense_input(sz)


def dense_native(sz: Sizes):
    """``nn.Linear`` followed by ReLU."""
    return nn.Sequential(nn.Linear(sz.dense_in, sz.dense_out), nn.ReLU()), _dense_input(sz)


def dense_nmn(sz: Sizes):
    """nmn 0.3.5's YatNMN."""
    from nmn.torch import YatNMN

    return YatNMN(sz.dense_in, sz.dense_out), _dense_input(sz)


def conv_ours(sz: Sizes):
    """Our YatConv2D."""
    fw = frameworks_module()
    cls = fw.YatConv2D if fw is not None else LocalYatConv2d
    return cls(sz.conv_in, sz.conv_out, sz.conv_k, padding=sz.conv_k // 2), _conv_input(sz)


def conv_native(sz: Sizes):
    """``nn.Conv2d`` followed by ReLU."""
    conv = nn.Conv2d(sz.conv_in, sz.conv_out, sz.conv_k, padding=sz.conv_k // 2)
    return nn.Sequential(conv, nn.ReLU()), _conv_input(sz)


def conv_nmn(sz: Sizes):
    """nmn 0.3.5's YatConv2D."""
    from nmn.torch import YatConv2D

    return YatConv2D(sz.conv_in, sz.conv_out, sz.conv_k, padding=sz.conv_k // 2), _conv_input(sz)


def attn_ours(sz: Sizes):
    """Our MultiHeadYatAttention."""
    fw = frameworks_module()
    cls = fw.MultiHeadYatAttention if fw is not None else LocalYatAttention
    return SelfAttention(cls(sz.attn_dim, sz.attn_heads)), _attn_input(sz)


def attn_expanded(sz: Sizes):
    """The pure function with ``distance="expanded"`` (no near-collision refinement)."""
    return SelfAttention(LocalYatAttention(sz.attn_dim, sz.attn_heads, "expanded")), _attn_input(sz)


def attn_refined(sz: Sizes):
    """The pure function with ``distance="refined"`` (the default)."""
    return SelfAttention(LocalYatAttention(sz.attn_dim, sz.attn_heads, "refined")), _attn_input(sz)


def attn_sdpa(sz: Sizes):
    """Same projections, ``F.scaled_dot_product_attention``."""
    return SDPAAttention(sz.attn_dim, sz.attn_heads), _attn_input(sz)


def attn_mha(sz: Sizes):
    """``nn.MultiheadAttention`` as users call it (``need_weights=True``, the default)."""
    return TorchMHA(sz.attn_dim, sz.attn_heads, need_weights=True), _attn_input(sz)


def attn_mha_fast(sz: Sizes):
    """``nn.MultiheadAttention(..., need_weights=False)`` (its SDPA path)."""
    return TorchMHA(sz.attn_dim, sz.attn_heads, need_weights=False), _attn_input(sz)


def attn_nmn(sz: Sizes):
    """nmn 0.3.5's MultiHeadYatAttention."""
    from nmn.torch import MultiHeadYatAttention

    return SelfAttention(MultiHeadYatAttention(sz.attn_dim, sz.attn_heads)), _attn_input(sz)


#: group -> name -> (label, factory). The first entry of each group is ours.
CASES: dict[str, dict[str, tuple[str, Factory]]] = {
    "dense": {
        "ours": ("nmn_array YatNMN", dense_ours),
        "native": ("nn.Linear+ReLU", dense_native),
        "nmn": ("nmn 0.3.5 YatNMN", dense_nmn),
        "refined": ("nmn_array.yat, distance='refined'", dense_refined),
        "expanded": ("nmn_array.yat, distance='expanded'", dense_expanded),
    },
    "conv": {
        "ours": ("nmn_array YatConv2D", conv_ours),
        "native": ("nn.Conv2d+ReLU", conv_native),
        "nmn": ("nmn 0.3.5 YatConv2D", conv_nmn),
    },
    "attention": {
        "ours": ("nmn_array MultiHeadYatAttention", attn_ours),
        "sdpa": ("Linear q/k/v/out + F.sdpa", attn_sdpa),
        "mha": ("nn.MultiheadAttention", attn_mha),
        "mha_fast": ("nn.MultiheadAttention(need_weights=False)", attn_mha_fast),
        "nmn": ("nmn 0.3.5 MultiHeadYatAttention", attn_nmn),
        "refined": ("yat_attention, distance='refined'", attn_refined),
        "expanded": ("yat_attention, distance='expanded'", attn_expanded),
    },
}

#: scaling study -> (group of CASES, Sizes field varied, Sizes field of the point list, names)
SCALING = {
    "dense-batch": ("dense", "dense_batch", "dense_batches", ("ours", "native", "nmn")),
    "conv-batch": ("conv", "conv_batch", "conv_batches", ("ours", "native", "nmn")),
    "attention-seq": ("attention", "attn_len", "attn_lengths", ("ours", "sdpa", "nmn")),
}


def long_factory(group: str, name: str) -> Factory:
    """The factory of case ``name`` of the long-context study at the length of ``group``
    (batch ``long_batch``; ours through ``nmn_array.frameworks.torch`` with the study's
    ``block_size`` and window)."""
    from . import long

    length = long.length_of(group)

    def factory(sz: Sizes):
        x = _x(sz.long_batch, length, sz.attn_dim)
        if name == "sdpa":
            return SDPAAttention(sz.attn_dim, sz.attn_heads), x
        from nmn_array.frameworks import torch as fw

        options = {
            "ours": {"block_size": sz.long_block},
            "materialised": {"block_size": None},
            "causal": {"block_size": sz.long_block, "window": (None, 0)},
            "window": {"block_size": sz.long_block, "window": tuple(sz.long_window)},
        }[name]
        return SelfAttention(fw.MultiHeadYatAttention(sz.attn_dim, sz.attn_heads, **options)), x

    return factory


def case(group: str, name: str, sz: Sizes) -> tuple[str, Factory]:
    """``(label, factory)`` of a case of :data:`CASES` or of the long-context study."""
    from . import long

    if long.length_of(group) is None:
        return CASES[group][name]
    return long.label(long.TORCH_LABELS, name, sz), long_factory(group, name)


def make_step(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], *, autocast: bool = False
) -> Callable[[], None]:
    """One forward + backward of ``module(*inputs).sum()``; gradients are reset to None
    first, as ``optimizer.zero_grad()`` does. ``autocast``: the forward (and the ``sum``)
    under ``torch.autocast("cpu", dtype=torch.bfloat16)``, the backward outside it, as the
    autocast documentation prescribes."""
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        for t in params:
            t.grad = None
        for t in inputs:
            t.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
            loss = module(*inputs).sum()
        loss.backward()

    return step


def make_autocast_step(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """:func:`make_step` under bfloat16 autocast."""
    return make_step(module, inputs, autocast=True)


# --------------------------------------------------------------------------------------
# Variants: torch.compile and bfloat16 autocast of each layer and the native layer it
# replaces, in groups "<group>-compiled" and "<group>-bf16"
# --------------------------------------------------------------------------------------
#: The native case each layer group is compared with (its first entry is ours).
NATIVE = {"dense": "native", "conv": "native", "attention": "sdpa"}

#: How a variant case runs its module: eager float32, ``torch.compile`` (default inductor
#: backend) or eager under bfloat16 autocast.
HOW = ("eager", "compile", "bf16")


def variant_cases(group: str) -> dict[str, tuple[str, str, str]]:
    """Cases of variant group ``group`` (``dense-compiled``, ``conv-bf16``, ...): name ->
    ``(label, case of the base group, how)``. The first two are ours and the native layer
    run the variant's way (their ratio is the variant's headline); the other two run the
    same modules eagerly in float32, so each variant is also compared with the plain step
    in the same round-robin."""
    base, variant = group.rsplit("-", 1)
    ours, native = CASES[base]["ours"][0], CASES[base][NATIVE[base]][0]
    if variant == "compiled":
        return {
            "ours": (f"torch.compile({ours})", "ours", "compile"),
            "native": (f"torch.compile({native})", NATIVE[base], "compile"),
            "eager": (f"{ours}, eager", "ours", "eager"),
            "native_eager": (f"{native}, eager", NATIVE[base], "eager"),
        }
    if variant == "bf16":
        return {
            "ours": (f"{ours}, autocast bf16", "ours", "bf16"),
            "native": (f"{native}, autocast bf16", NATIVE[base], "bf16"),
            "ours_f32": (f"{ours}, float32", "ours", "eager"),
            "native_f32": (f"{native}, float32", NATIVE[base], "eager"),
        }
    raise ValueError(f"unknown variant group {group!r}")


#: The variant groups, in the order they run.
VARIANT_GROUPS = tuple(f"{g}-{v}" for v in ("compiled", "bf16") for g in NATIVE)


def build_variant(group: str, name: str, sz: Sizes, fullgraph: bool = False):
    """The step of one variant case (same seed, hence same weights and input, as the base
    case). ``torch.compile`` only wraps the module here: dynamo and inductor compile the
    forward and the backward on the first call, i.e. in the warm-up."""
    _, base_name, how = variant_cases(group)[name]
    torch.manual_seed(0)
    module, inputs = CASES[group.rsplit("-", 1)[0]][base_name][1](sz)
    if how == "compile":
        return make_step(torch.compile(module, fullgraph=fullgraph), inputs)
    if how == "bf16":
        return make_autocast_step(module, inputs)
    return make_step(module, inputs)


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message`` plus dynamo's ``Explanation:`` line when there is
    one (its messages run to dozens of lines; the first alone is often too terse), on one
    line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    kept = lines[:1] + [line for line in lines[1:] if line.startswith("Explanation:")][:1]
    return f"{type(exc).__name__}: {' '.join(kept)}".rstrip(": ")[:400]


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def fullgraph_check(group: str, sz: Sizes) -> dict[str, Any]:
    """Whether ``torch.compile(ours, fullgraph=True)`` compiles one forward + backward of
    the base group's layer (run once, not timed); the reason when it does not."""
    check = {"suite": "torch", "group": group, "name": "ours", "fullgraph": True}
    check["label"] = variant_cases(group)["ours"][0].replace(")", ", fullgraph=True)", 1)
    try:
        build_variant(group, "ours", sz, fullgraph=True)()
    except Exception as exc:  # noqa: BLE001 - a graph break is a result to report
        return {**check, "ok": False, "error": _reason(exc)}
    return {**check, "ok": True, "error": None}


def warm_variant_group(
    group: str, sz: Sizes
) -> tuple[dict[str, Callable[[], None]], dict[str, int], list[dict]]:
    """Build every case of variant group ``group`` and call each once (torch.compile
    compiles there). A case that raises is left out and reported with the reason instead
    of failing the suite.

    Returns ``(steps, graph_breaks, failed)``: the steps that ran, the graph breaks dynamo
    counted while compiling each, and one record per case left out.
    """
    steps, breaks, failed = {}, {}, []
    for name, (label, _, _) in variant_cases(group).items():
        before = _graph_breaks()
        try:
            step = build_variant(group, name, sz)
            step()
        except Exception as exc:  # noqa: BLE001 - reported, the other cases still run
            failed.append(
                {"suite": "torch", "group": group, "name": name, "label": label}
                | {"error": _reason(exc)}
            )
            continue
        steps[name] = step
        breaks[name] = _graph_breaks() - before
    return steps, breaks, failed


def run_variants(sz: Sizes) -> tuple[list[dict], list[dict], list[dict]]:
    """Time every variant group round-robin, as the base groups, after
    :func:`warm_variant_group` (the warm-up then adds ``sz.warmup`` untimed rounds).

    Before each compiled group dynamo's caches are reset and
    ``torch.compile(ours, fullgraph=True)`` is tried first, on a fresh cache: when it
    compiles, the default compile of ours finds that graph in the cache (the same code,
    no graph break) and reuses it: the timed "ours" is then the fullgraph program too.

    Returns ``(records, failed, checks)``.
    """
    from ._common import interleaved, record

    impl = ours_impl()
    records, failed, checks = [], [], []
    for group in VARIANT_GROUPS:
        base = group.rsplit("-", 1)[0]
        if group.endswith("-compiled"):
            torch._dynamo.reset()
            checks.append(fullgraph_check(group, sz))
        steps, breaks, left_out = warm_variant_group(group, sz)
        failed += left_out
        if len(steps) < 2:
            continue  # nothing to compare with
        times = interleaved(steps, reps=sz.reps[base], warmup=sz.warmup, budget_s=sz.budget_s[base])
        for name, samples in times.items():
            label, base_name, how = variant_cases(group)[name]
            extra: dict[str, Any] = {"impl": _impl(base_name, impl), "how": how}
            if how == "compile":
                extra["graph_breaks"] = breaks[name]
            records.append(record("torch", group, name, label, samples, **extra))
    return records, failed, checks


def build(group: str, name: str, sz: Sizes) -> Callable[[], None]:
    """The step of one case, with a fixed seed so every case sees the same input."""
    torch.manual_seed(0)
    _, factory = case(group, name, sz)
    module, inputs = factory(sz)
    return make_step(module, inputs)


def setup_threads(threads: int) -> None:
    """Cap PyTorch's intra-op pool (inter-op work is not used by these cases)."""
    torch.set_num_threads(threads)


def run_suite(
    sz: Sizes, *, scaling: bool, skip: Collection[str] = (), variants: bool = True
) -> dict[str, Any]:
    """Time every torch group (interleaved within the group), then the compiled and
    bfloat16 variant groups (:func:`run_variants`, unless ``variants`` is false) and,
    optionally, the scaling studies (interleaved within each point); cases named in
    ``skip`` are left out."""
    from ._common import interleaved, record, select

    impl = ours_impl()
    records, scale_records = [], []
    for group, entries in select(CASES, skip).items():
        steps = {name: build(group, name, sz) for name in entries}
        times = interleaved(
            steps, reps=sz.reps[group], warmup=sz.warmup, budget_s=sz.budget_s[group]
        )
        for name, samples in times.items():
            records.append(
                record("torch", group, name, entries[name][0], samples, impl=_impl(name, impl))
            )
    failed: list[dict] = []
    checks: list[dict] = []
    if variants:
        more, failed, checks = run_variants(sz)
        records += more
    if scaling:
        # every point of every study in one round-robin, so a slow phase of the machine
        # spreads over all points instead of spoiling a few of them
        steps, meta = {}, {}
        for study, (group, field_name, points_name, names) in SCALING.items():
            for point in getattr(sz, points_name):
                psz = dataclasses.replace(sz, **{field_name: point})
                for name in (n for n in names if n not in skip):
                    key = f"{study}|{point}|{name}"
                    steps[key] = build(group, name, psz)
                    meta[key] = (study, point, name, CASES[group][name][0])
        times = interleaved(
            steps, reps=sz.reps["scaling"], warmup=1, budget_s=sz.budget_s["scaling"]
        )
        for key, samples in times.items():
            study, point, name, label = meta[key]
            rec = record("torch", study, name, label, samples)
            rec["x"] = point
            scale_records.append(rec)
    return {
        "cases": records,
        "scaling": scale_records,
        "impl": impl,
        "failed_cases": failed,
        "compile_checks": checks,
    }


def run_long(sz: Sizes, span: tuple[int, int]) -> dict[str, Any]:
    """Time the long-context study: at each length, its cases round-robin (a length is one
    group, so the ratios of a length are measured side by side). From
    ``sz.long_single_from`` tokens on, one round without warm-up."""
    from . import long
    from ._common import interleaved, record

    records = []
    for length in long.lengths(sz, span):
        grp = long.group(length)
        names = long.torch_names(sz, length)
        steps = {name: build(grp, name, sz) for name in names}
        single = length >= sz.long_single_from
        times = interleaved(
            steps,
            reps=1 if single else sz.reps["long"],
            warmup=0 if single else 1,
            budget_s=sz.budget_s["long"],
        )
        for name, samples in times.items():
            kind = "frameworks" if name != "sdpa" else "reference"
            label = long.label(long.TORCH_LABELS, name, sz)
            records.append(record("torch", grp, name, label, samples, impl=kind, x=length))
        del steps  # free this length's modules and inputs before the next one
    return {"cases": records, "scaling": [], "impl": "frameworks"}


def _impl(name: str, impl: str) -> str:
    return impl if name == "ours" else "reference"
