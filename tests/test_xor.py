"""XOR, the papers' first example: one yat neuron separates it, one linear neuron cannot.

The yat neuron is each framework's own ``YatNMN`` with one output unit, its weight written
into that framework's parameter layout (``nmn_array.demo.xor.yat_scores``).
"""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

from nmn_array.demo import xor

LIBRARY = {"numpy": "numpy", "torch": "torch", "nnx": "flax", "linen": "flax", "keras": "keras"}
LIBRARY["tf"] = "tensorflow"


@pytest.mark.parametrize("framework", xor.XOR_FRAMEWORKS)
def test_one_yat_neuron_separates_xor(framework: str) -> None:
    if importlib.util.find_spec(LIBRARY[framework]) is None:
        pytest.skip(f"{LIBRARY[framework]} is not installed")
    scores = xor.yat_scores(framework)
    eps = 1e-5  # YatNMN's default epsilon
    # (0,0) and (1,1) are orthogonal to w = (1,-1): score exactly 0; (0,1): 1/(5+eps); (1,0): 1/(1+eps)
    np.testing.assert_allclose(scores, [0.0, 1 / (5 + eps), 1 / (1 + eps), 0.0], rtol=1e-6, atol=0)
    predictions = (scores > xor.THRESHOLD).astype(int)
    assert predictions.tolist() == xor.XOR_Y.tolist(), (framework, scores)


def test_trained_linear_neuron_gets_at_most_three_of_four() -> None:
    accuracy, w, b = xor.train_linear_neuron()
    assert accuracy == 0.75, (accuracy, w, b)


def test_no_linear_threshold_separates_xor() -> None:
    """Exhaustively over a grid of weights and biases: never 4/4 (and 3/4 is reached)."""
    grid = np.linspace(-2.0, 2.0, 41)
    x = xor.XOR_X.astype(np.float64)
    best = 0.0
    for w1, w2, b in itertools.product(grid, grid, grid):
        pred = (x @ np.array([w1, w2]) + b > 0).astype(int)
        best = max(best, float(np.mean(pred == xor.XOR_Y)))
    assert best == 0.75


def test_report_names_both_results() -> None:
    text = xor.report("numpy")
    assert "4/4 correct" in text
    assert "3/4" in text
