"""Where the time goes: operator profiles of the torch cases and XLA cost analysis of the
JAX cases.

``python -m benchmarks.profile`` (or ``python -m nmn_array.benchmarks.profile``) prints, for
each torch case, the operators by self CPU time (``torch.profiler``), the number of
operator calls in the forward and in the backward, and the tensors autograd saves for the
backward (count and MiB, deduplicated by storage); for each JAX case, XLA's flop and
byte counts of the compiled forward + backward. Wall-clock numbers here come from one
profiled run and are only indicative; the ratios that count are those of ``benchmarks``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from typing import Any

from ._common import DEFAULT_THREADS, pin_cpus, sizes_for, thread_env


def saved_tensors(group: str, name: str, sz: Any) -> dict[str, Any]:
    """Count and size of the tensors autograd saves for the backward in one forward."""
    import torch

    from . import torch_cases as tc

    torch.manual_seed(0)
    _, factory = tc.CASES[group][name]
    module, inputs = factory(sz)
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    params |= {t.untyped_storage().data_ptr() for t in inputs}
    seen: dict[int, int] = {}
    shapes: Counter = Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = t.untyped_storage().nbytes()
            shapes[tuple(t.shape)] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*inputs)
    out.sum().backward()
    return {
        "count": len(seen),
        "mib": sum(seen.values()) / 2**20,
        "shapes": dict(shapes.most_common(8)),
    }


def torch_profile(group: str, name: str, sz: Any, steps: int = 3, top: int = 14) -> dict[str, Any]:
    """Operator profile of ``steps`` forward + backward passes of one torch case."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from . import torch_cases as tc

    torch.manual_seed(0)
    _, factory = tc.CASES[group][name]
    module, inputs = factory(sz)
    params = [p for p in module.parameters() if p.requires_grad]

    def clear() -> None:
        for t in params + list(inputs):
            t.grad = None

    for _ in range(2):
        clear()
        module(*inputs).sum().backward()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            clear()
            with record_function("FORWARD"):
                out = module(*inputs).sum()
            with record_function("BACKWARD"):
                out.backward()
    passes = _passes(prof.events(), _big_numel(group, sz), steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    table = [
        {
            "op": e.key,
            "calls": e.count // steps,
            "self_ms": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
        }
        for e in rows
        if e.key not in ("FORWARD", "BACKWARD")
    ][:top]
    # top-level operator calls inside each phase (children of the phase markers)
    fwd = bwd = 0
    for evt in prof.events():
        parent = evt.cpu_parent
        if parent is None:
            continue
        if parent.name == "FORWARD" and evt.name.startswith("aten::"):
            fwd += 1
        elif parent.name.startswith("autograd::engine::evaluate_function"):
            bwd += 1
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    return {
        "table": table,
        "forward_ops": fwd / steps,
        "backward_nodes_ops": bwd / steps,
        "total_ms": total_ms,
        **passes,
    }


#: Operators that move no data (views) or are the layer's linear algebra.
_NOT_A_PASS = (
    "aten::as_strided",
    "aten::view",
    "aten::transpose",
    "aten::expand",
    "aten::t",
    "aten::reshape",
    "aten::detach",
    "detach",
    "aten::resolve_conj",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::select",
    "aten::slice",
    "aten::permute",
    "aten::alias",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::_unsafe_view",
    "aten::unflatten",
    "aten::flatten",
    "aten::split",
    "aten::chunk",
    "aten::narrow",
    "aten::mm",
    "aten::bmm",
    "aten::addmm",
    "aten::baddbmm",
    "aten::matmul",
    "aten::convolution_backward",
    "aten::mkldnn_convolution",
    "aten::_convolution",
    "aten::convolution",
    "aten::conv2d",
    "aten::linear",
    "aten::as_strided_",
    "aten::resize_",
    "aten::to",
    "aten::_reshape_alias",
    "aten::result_type",
    "aten::fill_",
    "aten::zero_",
    "aten::new_empty",
    "aten::unfold",
    "aten::expand_as",
)


def _big_numel(group: str, sz: Any) -> int:
    """Number of elements of the layer's widest tensor: the dense/conv output, or the
    attention's L x L scores."""
    if group == "dense":
        return sz.dense_batch * sz.dense_out
    if group == "conv":
        return sz.conv_batch * sz.conv_out * sz.conv_hw**2
    return sz.attn_batch * sz.attn_heads * sz.attn_len**2


def _passes(events: Any, numel: int, steps: int) -> dict[str, float]:
    """Leaf operators (no aten child) reading or writing a tensor of ``numel`` elements or
    more, outside matmul/convolution: the elementwise and reduction passes over the widest
    tensors, per phase."""
    counts = {"FORWARD": 0, "BACKWARD": 0}
    compiled = {"FORWARD": 0, "BACKWARD": 0}

    def is_pass(evt: Any) -> bool:
        return evt.name.startswith("aten::") and evt.name not in _NOT_A_PASS

    for evt in events:
        fused = evt.name.startswith("## Call CompiledFxGraph")
        if not fused and (not is_pass(evt) or any(is_pass(c) for c in evt.cpu_children)):
            continue
        if not fused and not any(math.prod(s) >= numel for s in evt.input_shapes if s):
            continue
        parent = evt.cpu_parent
        while parent is not None and parent.name not in counts:
            parent = parent.cpu_parent
        if parent is not None:
            (compiled if fused else counts)[parent.name] += 1
    return {
        "forward_passes": counts["FORWARD"] / steps,
        "backward_passes": counts["BACKWARD"] / steps,
        "forward_compiled": compiled["FORWARD"] / steps,
        "backward_compiled": compiled["BACKWARD"] / steps,
    }


def _print_torch(group: str, name: str, sz: Any) -> None:
    prof = torch_profile(group, name, sz)
    saved = saved_tensors(group, name, sz)
    print(f"\n### torch {group}/{name}")
    print(
        f"total {prof['total_ms']:.1f} ms/step (profiled, indicative); passes over the widest "
        f"tensor: forward {prof['forward_passes']:.0f}, backward {prof['backward_passes']:.0f} "
        f"(+ compiled kernels: {prof['forward_compiled']:.0f}, {prof['backward_compiled']:.0f}); "
        f"top-level aten ops in forward: {prof['forward_ops']:.0f}; ops run by backward "
        f"nodes: {prof['backward_nodes_ops']:.0f}; saved for backward: {saved['count']} "
        f"tensors, {saved['mib']:.1f} MiB {saved['shapes']}"
    )
    print("| op | calls/step | self ms/step | share |\n|---|---:|---:|---:|")
    for row in prof["table"]:
        print(f"| {row['op']} | {row['calls']} | {row['self_ms']:.2f} | {row['share']:.0%} |")


def _print_jax(group: str, sz: Any) -> None:
    from . import jax_cases as jc

    print(f"\n### jax {group} (XLA cost analysis of the jitted value_and_grad)")
    print(
        "| case | GFLOP | MiB accessed | kernels writing a widest-size array (of which "
        "dot/conv/ynn) |\n|---|---:|---:|---:|"
    )
    for name in jc.CASES[group]:
        c = jc.cost_analysis(group, name, sz)
        print(
            f"| {name} | {c['flops'] / 1e9:.3f} | {c['bytes accessed'] / 2**20:.1f} | "
            f"{c['wide_kernels']:.0f} ({c['matmul_conv']:.0f}) |"
        )


def main(argv: list[str] | None = None) -> int:
    """Print the profiles; ``--suite``/``--group``/``--case`` narrow them down."""
    p = argparse.ArgumentParser(prog="benchmarks.profile")
    p.add_argument("--suite", choices=("torch", "jax", "all"), default="all")
    p.add_argument("--group", action="append", default=None)
    p.add_argument("--case", action="append", default=None, help="case names (torch)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = p.parse_args(argv)
    for k, v in thread_env(args.threads).items():
        os.environ.setdefault(k, v)
    pin_cpus(args.threads)
    sz = sizes_for("smoke" if args.smoke else "full")
    groups = args.group or ["dense", "conv", "attention"]
    if args.suite in ("torch", "all"):
        import torch

        from . import torch_cases as tc

        torch.set_num_threads(args.threads)
        cases = tc.CASES
        for group in groups:
            for name in cases[group]:
                if args.case is None or name in args.case:
                    _print_torch(group, name, sz)
    if args.suite in ("jax", "all"):
        for group in groups:
            _print_jax(group, sz)
    return 0


if __name__ == "__main__":
    sys.exit(main())
