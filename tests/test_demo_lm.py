"""``nmn-array demo lm``: both quick runs (torch, nnx) train, validation loss falls, the
two models have the same size, sampling with the key/value cache gives the tokens that
recomputing the prefix gives, and bad options fail with one-line errors."""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nmn_array.cli import main
from nmn_array.demo import lm
from nmn_array.demo.lm_data import load_text, windows

LIBRARY = {"torch": "torch", "nnx": "flax"}
SAMPLE = 30  # characters sampled in the tests (the demo samples 200)


def need(framework: str) -> None:
    if importlib.util.find_spec(LIBRARY[framework]) is None:
        pytest.skip(f"{LIBRARY[framework]} is not installed")


@pytest.fixture(scope="module", params=["torch", "nnx"])
def quick(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One in-process quick run per framework: its result and its printed lines."""
    need(request.param)
    if request.param == "torch":
        # as the demo does (--threads 1); restored after the module's tests
        import torch

        threads = torch.get_num_threads()
        request.addfinalizer(lambda: torch.set_num_threads(threads))
    lines: list[str] = []
    opts = lm.LMOptions(
        framework=request.param,
        quick=True,
        sample_chars=SAMPLE,
        out=str(tmp_path_factory.mktemp("lm") / "lm.png"),
    )
    result = lm.execute(opts, out=lambda *a, **k: lines.append(" ".join(map(str, a))))
    return request.param, result, "\n".join(lines)


def test_validation_loss_falls(quick) -> None:
    framework, run, _ = quick
    for r in run.results:
        assert len(r.val_loss) == run.config.evals, r
        assert r.val_loss[-1] < r.val_loss[0], (framework, r.kind, r.val_loss)
        # better than guessing uniformly among the characters
        assert r.final_val < math.log(run.data.vocab_size), (framework, r.kind, r.final_val)
        assert np.isfinite(r.train_loss).all()


def test_models_have_the_same_parameter_count(quick) -> None:
    framework, run, output = quick
    yat, standard = run.results
    assert abs(yat.n_params - standard.n_params) <= lm.PARAM_TOLERANCE * standard.n_params
    models = importlib.import_module(f"nmn_array.demo.lm_models_{framework}")
    for kind, r in zip(("yat", "standard"), run.results):
        assert models.count_params(kind, run.config) == r.n_params
    assert f"{yat.n_params:,}" in output and f"{standard.n_params:,}" in output


def test_report_table_sample_and_figure(quick) -> None:
    framework, run, output = quick
    assert "val bits/char" in output and "tokens/s" in output
    for r in run.results:
        assert f"{r.bits_per_char:.3f}" in output
    assert lm.PROMPT + run.data.decode(run.tokens) in output
    assert len(run.tokens) == SAMPLE
    assert run.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step" in output  # progress lines


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cached_and_uncached_sampling_agree(quick, temperature: float) -> None:
    """Same seed, same tokens, with the cache or recomputing the prefix; and the seed
    matters (so the comparison is not between two constant outputs)."""
    _, run, _ = quick
    model = run.models["yat"]
    prompt = run.data.encode(lm.PROMPT)
    kw = dict(seed=5, temperature=temperature)
    cached, _ = lm.sample(model, prompt, SAMPLE, cached=True, **kw)
    full, _ = lm.sample(model, prompt, SAMPLE, cached=False, **kw)
    assert cached == full
    if temperature:
        other, _ = lm.sample(model, prompt, SAMPLE, cached=True, seed=6, temperature=temperature)
        assert other != cached


def test_cached_logits_match_recomputed_logits(quick) -> None:
    """Token by token, the cache's logits equal the full causal forward's (float32), also
    past the context length, where the window (context - 1, 0) slides."""
    _, run, _ = quick
    model = run.models["yat"]
    ids = run.data.val[: run.config.context + 8]
    model.start_decoding(len(ids))
    for t in range(len(ids)):
        cached = model.decode(ids[t : t + 1])
        full = model.last_logits(ids[: t + 1])
        np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4, err_msg=f"position {t}")


def test_learning_rate_is_optaxs_schedule() -> None:
    """The torch models follow learning_rate(); the NNX models use optax's schedule."""
    optax = pytest.importorskip("optax")
    config = lm.LMConfig(vocab_size=10, steps=50, warmup=7, lr=3e-3)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 7, 50, 3e-4)
    for step in range(0, 55):
        assert math.isclose(
            lm.learning_rate(step, config), float(schedule(step)), rel_tol=1e-5, abs_tol=1e-9
        ), step


@pytest.mark.parametrize("framework", ["torch", "nnx"])
def test_default_models_match_in_size(framework: str) -> None:
    need(framework)
    models = importlib.import_module(f"nmn_array.demo.lm_models_{framework}")
    config = lm.match_widths(models, lm.LMConfig(vocab_size=load_text().vocab_size))
    yat, standard = (models.count_params(k, config) for k in ("yat", "standard"))
    assert abs(yat - standard) <= lm.PARAM_TOLERANCE * standard, (yat, standard)


class _Counts:
    """A stand-in for a framework's ``count_params`` (the real models always match): the
    standard model has 100 parameters, the yat model 1000 + 10 per feed-forward unit."""

    @staticmethod
    def count_params(kind: str, config: lm.LMConfig) -> int:
        return 100 if kind == "standard" else 1000 + 10 * config.yat_hidden


def test_match_widths_fails_when_sizes_cannot_match() -> None:
    with pytest.raises(ValueError, match="cannot match the standard model's 100 parameters"):
        lm.match_widths(_Counts, lm.LMConfig(vocab_size=10))


def test_batches_and_validation_windows() -> None:
    data = load_text()
    x, y = windows(data.train, 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16) and (x[:, 1:] == y[:, :-1]).all()
    again, _ = windows(data.train, 4, 16, np.random.default_rng(0))
    assert (again == x).all()
    vx, vy = lm.validation_windows(data.val, 64)
    assert vx.shape[0] == (len(data.val) - 1) // 64
    assert (vx.ravel() == data.val[: vx.size]).all() and (
        vy.ravel() == data.val[1 : vy.size + 1]
    ).all()
    with pytest.raises(ValueError, match="too few for windows of length 64"):
        windows(data.val[:10], 1, 64, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
        (["--temperature", "-1"], "argument --temperature: must be a finite number >= 0"),
        (["--sample-chars", "x"], "argument --sample-chars: invalid _positive_int value"),
        (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "lm", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["demo", "lm", "--framework", "keras"],
            "unknown framework 'keras'; choose one of torch, nnx",
        ),
        (["demo", "--quick", "lm"], "options before 'lm' belong to the digits demo (--quick)"),
    ],
)
def test_bad_choices_are_one_line_errors(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_run_rejects_bad_options_from_python(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_chars must be >= 1, got 0"):
        lm.execute(lm.LMOptions(sample_chars=0, out=str(tmp_path / "x.png")))
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        lm.execute(replace(lm.LMOptions(), steps=0))
