"""``nmn-array demo attention``: the table of six attention variants on the copy and reverse
tasks (a quick run with a few steps), the tasks' data, the accuracy, causality of every
variant's model, and the usage errors (exit code 2 with one line naming the option)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from nmn_array.cli import main  # noqa: E402
from nmn_array.demo import attention as demo  # noqa: E402
from nmn_array.demo import registry  # noqa: E402
from nmn_array.demo.attention_models_torch import build  # noqa: E402

ROW = re.compile(
    r"^\| (?P<label>[^|]+?) \| (?P<copy>[0-9.]+) \| (?P<reverse>[0-9.]+) \| (?P<paper>[-0-9.]+) \|"
)


@pytest.fixture(scope="module")
def quick_output() -> str:
    """stdout of ``nmn-array demo attention --quick --workers 1`` (all tasks and variants)."""
    proc = subprocess.run(
        [sys.executable, "-m", "nmn_array", "demo", "attention", "--quick", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_table_has_six_rows_with_accuracies_in_the_unit_interval(quick_output: str) -> None:
    rows = {m["label"]: m for m in map(ROW.match, quick_output.splitlines()) if m}
    assert list(rows) == [demo.LABELS[v] for v in registry.ATTENTION_VARIANTS], quick_output
    for m in rows.values():
        for task in ("copy", "reverse"):
            assert 0.0 <= float(m[task]) <= 1.0, m.group(0)
    papers = {v: rows[demo.LABELS[v]]["paper"] for v in registry.ATTENTION_VARIANTS}
    assert papers == {
        "softmax": "0.51",
        "yat": "-",
        "spherical_yat": "0.33",
        "slay": "0.42",
        "maclaurin": "-",
        "radial": "-",
    }
    assert "| attention | copy acc. | reverse acc. | paper, reverse | seconds |" in quick_output
    assert re.search(r"trained 12 models in \d+ s", quick_output)


def test_progress_names_every_task_and_variant(quick_output: str) -> None:
    lines = [line for line in quick_output.splitlines() if line.startswith("  ")]
    seen = {
        (line.split()[0], line.split("accuracy")[0].split(None, 1)[1].strip()) for line in lines
    }
    assert seen == {
        (t, demo.LABELS[v]) for t in registry.ATTENTION_TASKS for v in registry.ATTENTION_VARIANTS
    }


@pytest.mark.parametrize("task", registry.ATTENTION_TASKS)
def test_batches_hold_the_task(task: str) -> None:
    config = demo.AttentionConfig(seq_len=5, vocab=7)
    x, y = demo.make_batch(task, config, 32, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (32, 10)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    source, sep, target = x[:, :5], x[:, 5], y[:, 5:]
    assert torch.all(sep == 7) and int(source.max()) < 7 and int(target.max()) < 7
    want = source if task == "copy" else source.flip(1)
    assert torch.equal(target, want)
    assert not torch.equal(target, source.flip(1) if task == "copy" else source)


def test_accuracy_counts_only_the_output_half() -> None:
    y = torch.tensor([[1, 2, 3, 4, 5, 6]])
    logits = torch.nn.functional.one_hot(y, 8).float()
    assert demo.output_accuracy(logits, y, 3) == 1.0
    logits[0, :3] = 0.0  # wrong on the input half: not counted
    assert demo.output_accuracy(logits, y, 3) == 1.0
    logits[0, 4] = torch.nn.functional.one_hot(torch.tensor(0), 8).float()
    assert demo.output_accuracy(logits, y, 3) == pytest.approx(2 / 3)


@pytest.mark.parametrize("variant", registry.ATTENTION_VARIANTS)
def test_every_variant_is_causal(variant: str) -> None:
    """Changing the last token changes no earlier logit (beyond rounding), and changing the
    first token changes the last logit (the attention reaches back)."""
    torch.manual_seed(0)
    model = build(variant, vocab=9, length=12, d_model=64, heads=4, layers=2)
    ids = torch.randint(0, 9, (2, 12), generator=torch.Generator().manual_seed(0))
    late, early = ids.clone(), ids.clone()
    late[:, -1] = (late[:, -1] + 1) % 9
    early[:, 0] = (early[:, 0] + 1) % 9
    with torch.no_grad():
        base, a, b = model(ids), model(late), model(early)
    assert torch.isfinite(base).all()
    # exact yat's kernels may round the visible keys' sums differently (an ulp); a leak of
    # the changed token would move the logits by orders of magnitude more
    torch.testing.assert_close(base[:, :-1], a[:, :-1], rtol=0, atol=1e-5)
    assert (base[:, -1] - b[:, -1]).abs().max() > 1e-3


def test_linear_variants_keep_fixed_projections() -> None:
    model = build("slay", vocab=9, length=12, d_model=64, heads=4, layers=2)
    trainable = {n for n, _ in model.named_parameters()}
    buffers = {n for n, _ in model.named_buffers()}
    assert "blocks.0.proj_anchors" in buffers and "blocks.1.proj_projections" in buffers
    assert not any("proj_" in n for n in trainable)
    a0, a1 = model.blocks[0].proj_anchors, model.blocks[1].proj_anchors
    assert a0.shape == (16, 16) and not torch.equal(a0, a1)  # one draw per layer


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
        (["--workers", "-1"], "argument --workers: must be a positive integer, got -1"),
        (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    ],
)
def test_bad_options_exit_2(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "attention", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["demo", "attention", "--tasks", "copy,sort"],
            "--tasks must name one or more of copy, reverse, got 'copy,sort'",
        ),
        (
            ["demo", "attention", "--variants", "softmax,performer"],
            "--variants must name one or more of softmax, yat, spherical_yat, slay, maclaurin, "
            "radial, got 'softmax,performer'",
        ),
        (
            ["demo", "--quick", "attention"],
            "options before 'attention' belong to the digits demo (--quick)",
        ),
    ],
)
def test_bad_choices_are_one_line_errors(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_subset_runs_in_process(capsys) -> None:
    code = main(
        ["demo", "attention", "--quick", "--steps", "2", "--workers", "1", "--tasks", "reverse"]
        + ["--variants", "softmax,slay", "--quiet"]
    )
    assert code == 0
    out = capsys.readouterr().out
    rows = [
        m
        for m in map(
            re.compile(r"^\| ([^|]+?) \| ([0-9.]+) \| ([-0-9.]+) \|").match, out.splitlines()
        )
        if m
    ]
    assert [m[1] for m in rows] == ["softmax (SDPA)", "SLAY (linear)"]
    assert "2 steps of batch 16" in out
    assert not [line for line in out.splitlines() if line.startswith("  ")]  # --quiet


def test_without_torch_is_one_line_naming_the_extra() -> None:
    """torch made unimportable in a fresh process (``sys.modules["torch"] = None``, Python's
    documented way to block an import): exit 2 and one line naming the pip extra."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from nmn_array.cli import main\n"
        "raise SystemExit(main(['demo', 'attention', '--quick']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "nmn-array demo: error: the attention demo needs torch, which is not installed; "
        'install it with: pip install "nmn-array[torch]"'
    )


def test_worker_processes_train_the_same_models() -> None:
    """The default path (spawned worker processes of one thread) trains the same models as
    training in this process: same seeds, same batches, losses equal up to rounding."""
    opts = demo.AttentionOptions(
        quick=True, steps=2, tasks=("reverse",), variants=("softmax", "slay"), quiet=True
    )
    here = demo.execute(replace(opts, workers=1))["results"]
    spawned = demo.execute(replace(opts, workers=2))
    assert sorted(r["variant"] for r in spawned["results"]) == ["slay", "softmax"]
    by_variant = {r["variant"]: r for r in spawned["results"]}
    for r in here:
        assert by_variant[r["variant"]]["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4)
        assert 0.0 <= by_variant[r["variant"]]["accuracy"] <= 1.0
