"""The digits demo's torch models trained under ``torch.autocast("cpu", bfloat16)`` learn as
in float32 (docs/mixed_precision.md; about 20 s on 2 shared cores)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nmn_array.demo import torch_models  # noqa: E402
from nmn_array.demo.data import load_digits  # noqa: E402
from nmn_array.demo.run import prototype_init  # noqa: E402
from nmn_array.demo.train import Config, fit, model_specs  # noqa: E402

#: 15 epochs of 21 steps: every model passes 90 % test accuracy (the full demo runs 30).
CONFIG = Config(epochs=15)


@pytest.fixture(scope="module")
def trained():
    torch_models.configure(1)
    data = load_digits()
    results = {}
    for spec in model_specs(CONFIG.hidden, CONFIG.channels):
        first = spec.yat and not spec.conv
        rows = prototype_init(data, CONFIG.hidden, CONFIG.seed) if first else None
        for amp in (None, "bfloat16"):
            model = torch_models.build(spec, CONFIG, rows, autocast=amp)
            results[spec.key, amp] = fit(model, spec, data, CONFIG, progress=False)
    return results


@pytest.mark.parametrize("key", [s.key for s in model_specs()])
def test_autocast_training_matches_float32(trained, key):
    f32, amp = trained[key, None], trained[key, "bfloat16"]
    assert f32.accuracy > 0.9 and amp.accuracy > 0.9, (f32.test_acc, amp.test_acc)
    assert abs(amp.accuracy - f32.accuracy) <= 0.01, (f32.accuracy, amp.accuracy)


@pytest.mark.parametrize("key", ["yat-mlp", "yat-cnn"])
def test_yat_models_train_exactly_as_float32_under_autocast(trained, key):
    """The yat models hold only yat layers, pooling and reshapes: under autocast they compute
    in float32, so their curves are float32's to the bit (in bfloat16 they drift)."""
    f32, amp = trained[key, None], trained[key, "bfloat16"]
    assert amp.train_loss == f32.train_loss
    assert amp.test_acc == f32.test_acc


def test_autocast_dtype_is_checked():
    spec = model_specs()[0]
    with pytest.raises(ValueError, match="autocast"):
        torch_models.build(spec, CONFIG, autocast="int8")
