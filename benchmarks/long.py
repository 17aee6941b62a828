"""The long-context attention study (issue 13): which cases run at which length, the
targets, and the printed table and plot.

``nmn-array bench --study long`` runs it: self-attention of ``x (1, L, 256)``, 8 heads of
32 features, float32, forward + backward, at every length of ``Sizes.long_lengths`` up to
``--max-tokens``. Each length is one group of cases timed round-robin (so every ratio
within a length is measured side by side); peak memory of the torch cases comes from the
memory workers (one process per case), the JAX temp memory from XLA's own analysis of the
compiled step. Nothing here imports a framework: the workers do, in their own processes.
"""

from __future__ import annotations

from typing import Any

from ._common import Sizes
from .report import Ratio, _fmt

#: Group name prefix of the study: the group of length ``L`` is ``f"long-{L}"``.
PREFIX = "long-"

#: Torch cases: name -> label (``{block}`` and ``{window}`` are filled from the sizes).
TORCH_LABELS = {
    "ours": "nmn_array MultiHeadYatAttention(block_size={block!r})",
    "materialised": "nmn_array MultiHeadYatAttention(block_size=None)",
    "sdpa": "Linear q/k/v/out + F.sdpa",
    "causal": "MultiHeadYatAttention(window=(None, 0)), causal",
    "window": "MultiHeadYatAttention(window={window})",
}

#: JAX cases (under ``jax.jit``): name -> label.
JAX_LABELS = {
    "ours": "nmn_array nnx MultiHeadAttention(block_size={block!r})",
    "materialised": "nmn_array nnx MultiHeadAttention(block_size=None)",
    "native": "nnx.MultiHeadAttention + jax.nn.dot_product_attention(xla)",
}


def group(length: int) -> str:
    """The group name of sequence length ``length``.

    Examples
    --------
    >>> group(4096), length_of("long-4096"), length_of("attention")
    ('long-4096', 4096, None)
    """
    return f"{PREFIX}{length}"


def length_of(name: str) -> int | None:
    """The sequence length of a long-study group name, None for any other group."""
    if not name.startswith(PREFIX):
        return None
    return int(name[len(PREFIX) :])


def label(labels: dict[str, str], name: str, sz: Sizes) -> str:
    """The printed label of case ``name``."""
    return labels[name].format(block=sz.long_block, window=tuple(sz.long_window))


def lengths(sz: Sizes, span: tuple[int, int] | None = None) -> list[int]:
    """The lengths of the study from ``span[0]`` to ``span[1]`` tokens (default: up to
    ``sz.long_max``)."""
    lo, hi = (0, sz.long_max) if span is None else span
    return [n for n in sz.long_lengths if lo <= n <= hi]


def materialised_fits(sz: Sizes, length: int) -> bool:
    """Whether the materialised path is run at ``length``."""
    return length <= sz.long_materialised_max


def score_mib(sz: Sizes, length: int) -> float:
    """MiB of one float32 ``(B, H, L, L)`` score array."""
    return sz.long_batch * sz.attn_heads * length * length * 4 / 2**20


def skip_reasons(sz: Sizes, span: tuple[int, int] | None = None) -> list[str]:
    """One printed line per case of the study that is left out, and why."""
    out = []
    for n in lengths(sz, span):
        if not materialised_fits(sz, n):
            out.append(
                f"long study: ours materialised (block_size=None) not run at {n} tokens "
                f"(limit {sz.long_materialised_max}): one (B, H, L, L) float32 score array "
                f"is {score_mib(sz, n):,.1f} MiB and that path holds several at once"
            )
    lo, hi = (0, sz.long_max) if span is None else span
    for n in sorted({sz.long_short, sz.long_mid, sz.long_len}):
        if not lo <= n <= hi:
            out.append(
                f"long study: the targets at {n} tokens are not measured "
                f"(outside --min-tokens {lo} .. --max-tokens {hi})"
            )
    return out


def torch_names(sz: Sizes, length: int) -> list[str]:
    """The torch cases timed at ``length`` (ours first; causal and window at ``long_len``)."""
    names = ["ours"] + (["materialised"] if materialised_fits(sz, length) else []) + ["sdpa"]
    if length == sz.long_len:
        names += ["causal", "window"]
    return names


def memory_names(sz: Sizes, length: int) -> list[str]:
    """The torch cases whose peak memory is measured at ``length``."""
    return ["ours"] + (["materialised"] if materialised_fits(sz, length) else []) + ["sdpa"]


def memory_cases(sz: Sizes, span: tuple[int, int] | None = None) -> list[tuple[str, str]]:
    """``(group, name)`` of every torch memory case of the study."""
    return [(group(n), name) for n in lengths(sz, span) for name in memory_names(sz, n)]


def ratios(sz: Sizes) -> tuple[Ratio, ...]:
    """The issue-13 targets at the lengths of ``sz``, and a few ratios for information."""
    short, mid, long_ = group(sz.long_short), group(sz.long_mid), group(sz.long_len)
    left, right = sz.long_window
    n_short, n_mid, n_long = sz.long_short, sz.long_mid, sz.long_len

    def r(
        measure: str,
        suite: str,
        grp: str,
        num: str,
        den: str,
        text: str,
        op: str | None = None,
        t: float | None = None,
    ) -> Ratio:
        return Ratio(text, measure, suite, grp, num, den, op, t)

    return (
        r("time", "torch", short, "ours", "sdpa", f"torch {n_short} tok / SDPA module", "<=", 1.6),
        r("time", "torch", mid, "ours", "sdpa", f"torch {n_mid} tok / SDPA module", "<=", 2.0),
        r("time", "torch", long_, "ours", "sdpa", f"torch {n_long} tok / SDPA module", "<=", 2.0),
        r(
            "memory",
            "torch",
            long_,
            "ours",
            "sdpa",
            f"torch {n_long} tok peak mem / SDPA module",
            "<=",
            2.0,
        ),
        r("time", "torch", long_, "causal", "ours", f"torch {n_long} tok causal / full", "<=", 0.6),
        r(
            "time",
            "torch",
            long_,
            "window",
            "causal",
            f"torch {n_long} tok window ({left}, {right}) / causal",
            "<=",
            0.25,
        ),
        r(
            "memory",
            "jax",
            long_,
            "ours",
            "materialised",
            f"jax {n_long} tok XLA temp mem: blocked / materialised",
            "<=",
            0.125,
        ),
        r(
            "time",
            "jax",
            mid,
            "ours",
            "native",
            f"jax {n_mid} tok / dot_product_attention(xla)",
            "<=",
            1.5,
        ),
        # for information: the materialised path against the same references
        r(
            "time",
            "torch",
            short,
            "materialised",
            "sdpa",
            f"torch {n_short} tok materialised / SDPA",
        ),
        r("time", "torch", mid, "materialised", "sdpa", f"torch {n_mid} tok materialised / SDPA"),
        r(
            "time",
            "torch",
            long_,
            "materialised",
            "sdpa",
            f"torch {n_long} tok materialised / SDPA",
        ),
        r(
            "memory",
            "torch",
            long_,
            "materialised",
            "sdpa",
            f"torch {n_long} tok peak mem materialised / SDPA",
        ),
        r("time", "jax", mid, "materialised", "native", f"jax {n_mid} tok materialised / xla"),
    )


def _by(records: list[dict], key: str) -> dict[tuple[str, int, str], float]:
    out = {}
    for rec in records:
        n = length_of(rec["group"])
        if n is not None and key in rec:
            out[(rec["suite"], n, rec["name"])] = rec[key]
    return out


def rows(cases: list[dict], memory: list[dict]) -> list[dict[str, Any]]:
    """One row per torch length of the study: median ms and peak MiB of ours (blocked),
    ours materialised and the SDPA module, with the ratios to SDPA and the timed rounds."""
    times, mems = _by(cases, "median_ms"), _by(memory, "peak_mb")
    rounds = _by(cases, "n")
    found = sorted({n for s, n, _ in list(times) + list(mems) if s == "torch"})
    out = []
    for n in found:
        row: dict[str, Any] = {"tokens": n}
        for name in ("ours", "materialised", "sdpa"):
            row[f"{name}_ms"] = times.get(("torch", n, name))
            row[f"{name}_mib"] = mems.get(("torch", n, name))
        row["rounds"] = rounds.get(("torch", n, "ours"))
        out.append(row)
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(cases: list[dict], memory: list[dict], notes: list[str]) -> str:
    """Markdown table of the study (time and peak memory against length), the XLA temp
    memory of the JAX steps, and the ``notes`` (skipped cases)."""
    lines = [
        "**long-context attention** (torch, forward+backward, batch 1; blocked = "
        "`block_size` of the study, materialised = `block_size=None`)\n",
        "| tokens | blocked ms | materialised ms | SDPA ms | blocked / SDPA "
        "| blocked MiB | materialised MiB | SDPA MiB | blocked / SDPA mem | rounds |",
        "|---:|" + "---:|" * 9,
    ]
    for row in rows(cases, memory):
        lines.append(
            f"| {row['tokens']} | {_fmt(row['ours_ms'])} | {_fmt(row['materialised_ms'])} | "
            f"{_fmt(row['sdpa_ms'])} | {_fmt(_div(row['ours_ms'], row['sdpa_ms']))} | "
            f"{_fmt(row['ours_mib'], '.1f')} | {_fmt(row['materialised_mib'], '.1f')} | "
            f"{_fmt(row['sdpa_mib'], '.1f')} | "
            f"{_fmt(_div(row['ours_mib'], row['sdpa_mib']))} | {row['rounds'] or '-'} |"
        )
    xla = [m for m in memory if m.get("suite") == "jax" and length_of(m["group"]) is not None]
    if xla:
        lines.append("")
        lines.append(
            "JAX, XLA temp memory of the compiled forward+backward (`memory_analysis()`): "
            + ", ".join(
                f"{m['name']} {m['peak_mb']:,.1f} MiB at {length_of(m['group'])} tokens"
                for m in xla
            )
        )
    lines += [""] + notes if notes else []
    return "\n".join(lines)


def plot(cases: list[dict], memory: list[dict], path: str) -> str | None:
    """Log-log plot of time and peak memory against length; returns the path written, or
    None if there is nothing to plot or matplotlib is missing."""
    data = rows(cases, memory)
    if not data:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = {"ours": "blocked (ours)", "materialised": "materialised (ours)", "sdpa": "SDPA module"}
    for ax, unit, ylabel in zip(axes, ("ms", "mib"), ("median ms", "peak MiB")):
        for name, text in names.items():
            pts = [(r["tokens"], r[f"{name}_{unit}"]) for r in data if r[f"{name}_{unit}"]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=text)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(f"forward + backward, {ylabel}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("torch attention, time")
    axes[1].set_title("torch attention, peak memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
