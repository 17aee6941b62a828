"""``nmn-array demo``: a quick run writes the PNG and prints the table, runs are
deterministic for a seed, and the yat MLP (no activation) reaches 95 % on digits."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nmn_array.demo.data import load_digits
from nmn_array.demo.run import TARGET_ACCURACY, prototype_init
from nmn_array.demo.train import Config, fit, model_specs

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("yat-mlp", "relu-mlp", "yat-cnn", "relu-cnn")
LIBRARY = {"torch": "torch", "nnx": "flax", "keras": "keras", "tf": "tensorflow"}


def run_demo(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nmn_array", "demo", "--quick", "--quiet", "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def table_rows(stdout: str) -> dict[str, list[str]]:
    """model -> [framework, activations, accuracy, params] (the time column is dropped)."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in MODELS and len(parts) >= 8:
            rows[parts[0]] = parts[1:6]
    return rows


@pytest.fixture(scope="module")
def quick_torch(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("demo") / "demo.png"
    proc = run_demo(out, "--framework", "torch", "--seed", "3")
    return out, proc


def test_quick_demo_writes_png_and_table(quick_torch) -> None:
    out, proc = quick_torch
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure: {out.resolve()}" in proc.stdout
    assert "test acc" in proc.stdout and "params" in proc.stdout and "train time" in proc.stdout
    rows = table_rows(proc.stdout)
    assert set(rows) == set(MODELS), proc.stdout
    assert rows["yat-mlp"][1] == "none" and rows["relu-mlp"][1] == "ReLU"
    assert "XOR" in proc.stdout
    assert "\x1b[" not in proc.stderr  # no progress bar when stderr is not a terminal


def test_demo_is_deterministic_for_a_seed(quick_torch, tmp_path: Path) -> None:
    _, first = quick_torch
    second = run_demo(tmp_path / "again.png", "--framework", "torch", "--seed", "3")
    assert second.returncode == 0, second.stderr
    assert table_rows(first.stdout) == table_rows(second.stdout)


def test_yat_layers_have_no_activation() -> None:
    """The yat models are built from yat layers, pooling and reshapes only."""
    pytest.importorskip("torch")
    import torch.nn as nn
    from nmn_array.frameworks.torch import YatConv2D, YatNMN

    from nmn_array.demo import torch_models

    config = Config(hidden=8, channels=(2, 4))
    for spec in model_specs(8, (2, 4)):
        net = torch_models.build(spec, config).net
        kinds = {type(m) for m in net}
        if spec.yat:
            assert kinds <= {YatNMN, YatConv2D, nn.AvgPool2d, nn.Flatten, nn.Unflatten}, kinds
        else:
            assert nn.ReLU in kinds


@pytest.mark.parametrize("framework", ["torch", "nnx", "keras", "tf"])
def test_yat_mlp_reaches_target_accuracy(framework: str, request: pytest.FixtureRequest) -> None:
    """The demo's yat MLP with its default settings, trained in-process (about 1-6 s)."""
    if importlib.util.find_spec(LIBRARY[framework]) is None:
        pytest.skip(f"{LIBRARY[framework]} is not installed")
    models = importlib.import_module(f"nmn_array.demo.{framework}_models")
    if framework == "torch":
        # As the demo does: one thread is far faster for these tiny models on a busy machine.
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        request.addfinalizer(lambda: torch.set_num_threads(threads))
    data = load_digits()
    config = Config()
    spec = model_specs(config.hidden, config.channels)[0]
    rows = prototype_init(data, config.hidden, config.seed)
    result = fit(models.build(spec, config, rows), spec, data, config, progress=False)
    assert result.accuracy >= TARGET_ACCURACY, (framework, result.test_acc)
    assert result.prototypes is not None and result.prototypes.shape == (config.hidden, 64)
    assert np.isfinite(result.train_loss).all()
