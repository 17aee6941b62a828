"""``nmn-array demo lm --grid``: pages of characters, their masks, and a quick run of the
2-D and 1-D models (validation loss falls for both, the positions change the model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nmn_array.cli import main
from nmn_array.demo import lm, lm_grid
from nmn_array.demo.lm_data import load_text

torch = pytest.importorskip("torch")


def test_page_lines_cut_and_pad():
    data = load_text()
    lines = lm_grid.page_lines(data.val, data.chars, 16)
    text = data.decode(data.val)
    want = [line[:16].ljust(16) for line in text.split("\n")[: len(lines)]]
    assert [data.decode(row) for row in lines] == want


def test_masked_pages_hide_about_the_rate_and_at_least_one():
    lines = np.arange(40 * 8, dtype=np.int32).reshape(40, 8)
    rng = np.random.default_rng(0)
    x, y = lm_grid.masked_pages(lines, np.array([0, 5, 30]), 4, 999, rng)
    assert x.shape == y.shape == (3, 32)
    hidden = x == 999
    assert hidden.any(axis=1).all()
    np.testing.assert_array_equal(y == lm_grid.IGNORE, ~hidden)
    pages = lines[np.array([0, 5, 30])[:, None] + np.arange(4)].reshape(3, -1)
    np.testing.assert_array_equal(np.where(hidden, y, x), pages)
    big = lm_grid.masked_pages(lines, np.arange(36), 4, 999, rng)[0]
    assert abs((big == 999).mean() - lm_grid.MASK_RATE) < 0.05


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    lines: list[str] = []
    opts = lm.LMOptions(quick=True, grid=True, out=str(tmp_path_factory.mktemp("g") / "g.png"))
    try:
        run = lm.execute(opts, out=lambda *a, **k: lines.append(" ".join(map(str, a))))
    finally:
        torch.set_num_threads(threads)
    return run, "\n".join(lines)


def test_quick_grid_run_learns_and_positions_matter(quick):
    run, printed = quick
    assert [r.kind for r in run.results] == ["yat 2-D", "yat 1-D"]
    vocab = load_text().vocab_size
    for r in run.results:
        assert r.val_loss[-1] < r.val_loss[0], (r.kind, r.val_loss)
        assert r.final_val < math.log(vocab), (r.kind, r.final_val)
    two, one = run.results
    assert two.n_params == one.n_params
    # same seed, pages and masks: only the positions differ, and they change the training
    assert two.train_loss != one.train_loss
    assert "bits per masked character" in printed and run.figure.exists()


def test_grid_on_another_framework_is_a_clear_error(capsys):
    assert main(["demo", "lm", "--grid", "--quick", "--framework", "nnx"]) == 2
    assert "--grid runs on torch only" in capsys.readouterr().err
