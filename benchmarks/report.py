"""Ratios, targets, the printed tables and the scaling plot of a benchmark run."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ratio:
    """One ratio of medians between two cases of the same run.

    Attributes
    ----------
    label : str
        What is printed.
    measure : {"time", "memory"}
        Median time of the forward + backward, or peak RSS of one step.
    suite, group : str
        Where both cases live.
    num, den : str
        Case names; the ratio is ``num / den``.
    op : {"<=", ">="} or None
        Direction of the target (None: reported for information).
    target : float or None
    """

    label: str
    measure: str
    suite: str
    group: str
    num: str
    den: str
    op: str | None = None
    target: float | None = None


def _r(spec: str, label: str, op: str | None = None, target: float | None = None) -> Ratio:
    """``spec`` is ``"measure suite group num den"``."""
    measure, suite, group, num, den = spec.split()
    return Ratio(label, measure, suite, group, num, den, op, target)


RATIOS: tuple[Ratio, ...] = (
    _r("time torch dense ours native", "torch dense / Linear+ReLU", "<=", 1.25),
    _r("time torch conv ours native", "torch conv2d / Conv2d+ReLU", "<=", 1.3),
    _r("time torch attention ours sdpa", "torch attention / SDPA module", "<=", 1.6),
    _r("time torch attention ours mha", "torch attention / nn.MultiheadAttention"),
    _r("time torch attention ours mha_fast", "torch attention / nn.MHA(need_weights=False)"),
    _r("memory torch attention ours mha", "torch attention peak mem / nn.MHA", "<=", 2.0),
    _r("memory torch attention ours mha_fast", "torch attention peak mem / MHA(no weights)"),
    _r("memory torch attention ours sdpa", "torch attention peak mem / SDPA module"),
    _r("time torch dense nmn ours", "torch dense: nmn 0.3.5 / ours", ">=", 1.25),
    _r("time torch conv nmn ours", "torch conv2d: nmn 0.3.5 / ours", ">=", 1.25),
    _r("time torch attention nmn ours", "torch attention: nmn 0.3.5 / ours", ">=", 1.25),
    _r("memory torch attention nmn ours", "torch attention peak mem: nmn 0.3.5 / ours"),
    _r("time torch dense refined expanded", "torch dense: refined / expanded distance"),
    _r("time torch attention refined expanded", "torch attention: refined / expanded distance"),
    _r("memory torch attention refined expanded", "torch attention peak mem: refined / expanded"),
    _r("time torch dense nmn native", "torch dense: nmn 0.3.5 / Linear+ReLU"),
    _r("time torch conv nmn native", "torch conv2d: nmn 0.3.5 / Conv2d+ReLU"),
    _r("time torch attention nmn sdpa", "torch attention: nmn 0.3.5 / SDPA module"),
    _r(
        "time torch dense-compiled ours native",
        "torch compiled dense / compiled Linear+ReLU",
        "<=",
        1.15,
    ),
    _r(
        "time torch conv-compiled ours native",
        "torch compiled conv2d / compiled Conv2d+ReLU",
        "<=",
        1.2,
    ),
    _r(
        "time torch attention-compiled ours native",
        "torch compiled attention / compiled SDPA module",
        "<=",
        1.5,
    ),
    _r("time torch dense-compiled ours eager", "torch dense: compiled / eager"),
    _r("time torch conv-compiled ours eager", "torch conv2d: compiled / eager"),
    _r("time torch attention-compiled ours eager", "torch attention: compiled / eager"),
    _r("time torch dense-compiled native native_eager", "torch Linear+ReLU: compiled / eager"),
    _r("time torch conv-compiled native native_eager", "torch Conv2d+ReLU: compiled / eager"),
    _r("time torch attention-compiled native native_eager", "torch SDPA module: compiled / eager"),
    _r("time torch dense-bf16 ours native", "torch bf16 dense / bf16 Linear+ReLU"),
    _r("time torch conv-bf16 ours native", "torch bf16 conv2d / bf16 Conv2d+ReLU"),
    _r("time torch attention-bf16 ours native", "torch bf16 attention / bf16 SDPA module"),
    _r("time torch dense-bf16 ours ours_f32", "torch dense: bf16 / float32"),
    _r("time torch conv-bf16 ours ours_f32", "torch conv2d: bf16 / float32"),
    _r("time torch attention-bf16 ours ours_f32", "torch attention: bf16 / float32"),
    _r("time torch dense-bf16 native native_f32", "torch Linear+ReLU: bf16 / float32"),
    _r("time torch conv-bf16 native native_f32", "torch Conv2d+ReLU: bf16 / float32"),
    _r("time torch attention-bf16 native native_f32", "torch SDPA module: bf16 / float32"),
    _r("time jax dense ours native", "jax dense / nnx.Linear+relu", "<=", 1.2),
    _r("time jax conv ours native", "jax conv / nnx.Conv+relu", "<=", 1.2),
    _r("time jax conv-fn ours native", "jax yat_conv / lax.conv+bias+relu", "<=", 1.2),
    _r("time jax attention ours native", "jax attention / nnx.MultiHeadAttention"),
    _r("time jax dense nmn ours", "jax dense: nmn 0.3.5 / ours", ">=", 1.25),
    _r("time jax conv nmn ours", "jax conv: nmn 0.3.5 / ours", ">=", 1.25),
    _r("time jax attention nmn ours", "jax attention: nmn 0.3.5 / ours", ">=", 1.25),
    _r("time jax dense nmn native", "jax dense: nmn 0.3.5 / nnx.Linear+relu"),
    _r("time jax conv nmn native", "jax conv: nmn 0.3.5 / nnx.Conv+relu"),
    _r("time jax attention nmn native", "jax attention: nmn 0.3.5 / nnx.MultiHeadAttention"),
    _r("time tf dense ours native", "tf dense / keras Dense"),
    _r("time tf conv ours native", "tf conv / keras Conv2D"),
    _r("time tf dense ours_fn native", "tf dense (no Keras) / keras Dense"),
    _r("time tf conv ours_fn native", "tf conv (no Keras) / keras Conv2D"),
    _r("time tf dense nmn ours", "tf dense: nmn 0.3.5 / ours"),
    _r("time tf conv nmn ours", "tf conv: nmn 0.3.5 / ours"),
)

#: The reference case each torch group's "/ reference" column divides by (the groups of the
#: long-context study, ``long-<L>``, divide by ``sdpa`` on torch and ``native`` on JAX; the
#: compiled and bf16 groups by their ``native``, which is the SDPA module for attention).
REFERENCE = {"dense": "native", "conv": "native", "attention": "sdpa"}


def reference(suite: str, group: str) -> str:
    """The case that ``group`` of ``suite`` is compared with in the cases table."""
    if suite == "torch" and (group in REFERENCE or group.startswith("long-")):
        return REFERENCE.get(group, "sdpa")
    return "native"


def _index(records: list[dict], key: str = "median_ms") -> dict[tuple, dict]:
    return {(r["suite"], r["group"], r["name"]): r for r in records if key in r}


def compute_ratios(
    cases: list[dict],
    memory: list[dict],
    *,
    judge: bool,
    ratios: Sequence[Ratio] = RATIOS,
) -> list[dict[str, Any]]:
    """Evaluate ``ratios`` (default :data:`RATIOS`) on the records of one run.

    A ratio whose cases are missing is skipped. ``judge=False`` (smoke mode) reports values
    without PASS/MISS.
    """
    times = _index(cases)
    mems = _index(memory, "peak_mb")
    out = []
    for ratio in ratios:
        key_n = (ratio.suite, ratio.group, ratio.num)
        key_d = (ratio.suite, ratio.group, ratio.den)
        if ratio.measure == "time":
            if key_n not in times or key_d not in times:
                continue
            a, b = times[key_n], times[key_d]
            value = a["median_ms"] / b["median_ms"]
            paired = statistics.median(x / y for x, y in zip(a["samples_ms"], b["samples_ms"]))
            cpu = a["cpu_median_ms"] / b["cpu_median_ms"] if b["cpu_median_ms"] > 0 else None
        else:
            if key_n not in mems or key_d not in mems:
                continue
            den = mems[key_d]["peak_mb"]
            value = mems[key_n]["peak_mb"] / den if den > 0 else None
            paired = cpu = None
        status = "-"
        if ratio.op is not None and judge and value is not None:
            ok = value <= ratio.target if ratio.op == "<=" else value >= ratio.target
            status = "PASS" if ok else "MISS"
        out.append(
            {
                "label": ratio.label,
                "measure": ratio.measure,
                "suite": ratio.suite,
                "group": ratio.group,
                "num": ratio.num,
                "den": ratio.den,
                "value": value,
                "paired_median": paired,
                "cpu_ratio": cpu,
                "target": None if ratio.op is None else f"{ratio.op} {ratio.target}",
                "status": status,
            }
        )
    return out


def _fmt(v: float | None, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def cases_table(cases: list[dict], memory: list[dict]) -> str:
    """Markdown table of every timed case, with its ratio to the group's reference and its
    peak memory where measured. A median is marked "(noisy)" when the interquartile range
    exceeds half of it (the machine was busy during part of the rounds)."""
    times = _index(cases)
    mems = _index(memory, "peak_mb")
    lines = [
        "| suite | group | case | implementation | median ms | IQR ms | CPU ms | n | / reference "
        "| peak MiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in cases:
        s, g, n = r["suite"], r["group"], r["name"]
        ref = reference(s, g)
        ref_rec = times.get((s, g, ref))
        rel = r["median_ms"] / ref_rec["median_ms"] if ref_rec else None
        mem = mems.get((s, g, n), {}).get("peak_mb")
        label = r["label"] + ("" if n not in ("ours",) else f" [{r.get('impl', '?')}]")
        noisy = r["q3_ms"] - r["q1_ms"] > 0.5 * r["median_ms"]
        lines.append(
            f"| {s} | {g} | {n} | {label} | {_fmt(r['median_ms'])}{' (noisy)' if noisy else ''} | "
            f"{_fmt(r['q1_ms'])}-{_fmt(r['q3_ms'])} | {_fmt(r['cpu_median_ms'])} | {r['n']} | "
            f"{_fmt(rel)} | {_fmt(mem, '.1f')} |"
        )
    return "\n".join(lines)


def ratios_table(ratios: list[dict]) -> str:
    """Markdown table of the ratios with their targets and PASS/MISS."""
    lines = [
        "| ratio | measure | value | paired median | CPU-time ratio | target | status |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['label']} | {r['measure']} | {_fmt(r['value'])} | "
            f"{_fmt(r['paired_median'])} | {_fmt(r['cpu_ratio'])} | {r['target'] or '-'} | "
            f"{r['status']} |"
        )
    return "\n".join(lines)


def compile_lines(checks: list[dict], failed: list[dict]) -> list[str]:
    """One line per ``fullgraph=True`` compile check and per case left out of its group
    because building or warming it up raised (e.g. a compile error), with the reason."""
    lines = []
    for c in checks:
        verdict = "compiles as one graph" if c["ok"] else f"does not compile: {c['error']}"
        lines.append(f"{c['suite']} {c['group']}: {c['label']} {verdict}")
    for f in failed:
        lines.append(
            f"{f['suite']} {f['group']}/{f['name']} ({f['label']}) not timed: {f['error']}"
        )
    return lines


def scaling_table(scaling: list[dict]) -> str:
    """Markdown table of the scaling studies: one row per point, one column per case."""
    if not scaling:
        return "(no scaling study in this run)"
    lines = []
    for study in dict.fromkeys(r["group"] for r in scaling):
        rows = [r for r in scaling if r["group"] == study]
        names = list(dict.fromkeys(r["name"] for r in rows))
        ref = names[1]
        axis = "sequence length" if study.startswith("attention") else "batch"
        head = " | ".join(f"{n} ms" for n in names)
        lines.append(f"**{study}** ({axis})\n")
        lines.append(f"| {axis} | {head} | ours / {ref} | nmn / ours |")
        lines.append("|---:|" + "---:|" * (len(names) + 2))
        for x in dict.fromkeys(r["x"] for r in rows):
            by = {r["name"]: r["median_ms"] for r in rows if r["x"] == x}
            cells = " | ".join(_fmt(by.get(n)) for n in names)
            rel = by["ours"] / by[ref] if "ours" in by and ref in by else None
            nmn = by["nmn"] / by["ours"] if "nmn" in by and "ours" in by else None
            lines.append(f"| {x} | {cells} | {_fmt(rel)} | {_fmt(nmn)} |")
        lines.append("")
    return "\n".join(lines)


def plot_scaling(scaling: list[dict], path: str) -> str | None:
    """Log-log plot of median time against batch size / sequence length; returns the path
    written, or None if there is nothing to plot or matplotlib is missing."""
    if not scaling:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    studies = list(dict.fromkeys(r["group"] for r in scaling))
    fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 4), squeeze=False)
    for ax, study in zip(axes[0], studies):
        rows = [r for r in scaling if r["group"] == study]
        for name in dict.fromkeys(r["name"] for r in rows):
            pts = sorted((r["x"], r["median_ms"]) for r in rows if r["name"] == name)
            label = next(r["label"] for r in rows if r["name"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length" if study.startswith("attention") else "batch size")
        ax.set_ylabel("forward + backward, median ms")
        ax.set_title(f"torch {study}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
