"""Worker of tests/scaling/test_keras_distribution.py: Keras 3 ``DataParallel`` on the JAX
backend over 4 virtual CPU devices.

Run as ``KERAS_BACKEND=jax python -m tests.scaling._keras_worker OUT_DIR`` (the test does, in
a subprocess: Keras fixes its backend at import, and the devices must exist before JAX
starts). It trains one batch with ``train_on_batch`` on one device and again under
``keras.distribution.DataParallel``, from the same weights, and records both.
"""

from __future__ import annotations

import os
import random

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_enable_x64", True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from nmn_array.frameworks.keras import MultiHeadYatAttention, YatConv2D, YatNMN  # noqa: E402

from tests.scaling._worker import Recorder, main_dir, sharding_facts  # noqa: E402

BATCH = 8
LEARNING_RATE = 0.1
#: how the compiled training step shards the batch and the logits: (probe name, sharding)
SEEN: list[tuple[str, str]] = []


class Probe(keras.layers.Layer):
    """Identity that reports, when traced under jit, how the compiler shards its input."""

    def call(self, x):
        if isinstance(x, jax.core.Tracer):
            jax.debug.inspect_array_sharding(x, callback=lambda s: SEEN.append((self.name, str(s))))
        return x


def build(dtype: str) -> keras.Model:
    inp = keras.Input((6, 6, 3), dtype=dtype)
    h = Probe(dtype=dtype, name="batch")(inp)
    h = YatConv2D(4, 3, padding="same", dtype=dtype)(h)
    h = keras.layers.Reshape((36, 4), dtype=dtype)(h)  # 36 tokens of 4 features
    h = MultiHeadYatAttention(embed_dim=4, num_heads=2, dtype=dtype)(h)
    h = keras.layers.GlobalAveragePooling1D(dtype=dtype)(h)
    logits = Probe(dtype=dtype, name="logits")(YatNMN(3, dtype=dtype)(h))
    model = keras.Model(inp, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def data_parallel(rec: Recorder, dtype: str) -> None:
    name = f"dp_{dtype}"
    with rec.section(name) as facts:
        # Keras seeds its global generator from Python's when no seed is given (the same initial
        # weights every run); keras.utils.set_random_seed would also import TensorFlow (~6 s)
        random.seed(0)
        # floatx too: Keras's loss tracker (a Mean metric) accumulates in floatx
        keras.config.set_floatx(dtype)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(BATCH, 6, 6, 3)).astype(dtype)
        labels = rng.integers(0, 3, size=(BATCH,))
        keras.distribution.set_distribution(None)
        single = build(dtype)
        initial = single.get_weights()
        names = [v.path for v in single.weights]
        SEEN.clear()
        loss_single = single.train_on_batch(x, labels)
        facts["single_inside_step"] = list(SEEN)

        devices = keras.distribution.list_devices("cpu")
        distribution = keras.distribution.DataParallel(devices=devices)
        keras.distribution.set_distribution(distribution)
        try:
            dp = build(dtype)
            dp.set_weights(initial)
            SEEN.clear()
            loss_dp = dp.train_on_batch(x, labels)
            facts["dp_inside_step"] = list(SEEN)
            facts["devices"] = devices
            facts["variables"] = [sharding_facts(v.value) for v in dp.weights]
            layout = distribution.get_data_layout(x.shape)
            facts["input"] = sharding_facts(keras.distribution.distribute_tensor(x, layout))
        finally:
            keras.distribution.set_distribution(None)
            keras.config.set_floatx("float32")
        rec.save(name, "single/loss", loss_single)
        rec.save(name, "dp/loss", loss_dp)
        for key, a0, a1, a4 in zip(names, initial, single.get_weights(), dp.get_weights()):
            rec.save(name, f"initial/{key}", a0)
            rec.save(name, f"single/weights/{key}", a1)
            rec.save(name, f"dp/weights/{key}", a4)
        facts["learning_rate"] = LEARNING_RATE


def main() -> None:
    rec = Recorder(main_dir())
    with rec.section("devices") as facts:
        facts["keras_backend"] = keras.backend.backend()
        facts["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND")
        facts["count"] = len(jax.devices())
        facts["platforms"] = sorted({d.platform for d in jax.devices()})
    for dtype in ("float32", "float64"):
        data_parallel(rec, dtype)
    rec.dump()


if __name__ == "__main__":
    main()
