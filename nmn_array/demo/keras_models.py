"""The demo's models in Keras 3 (whichever backend ``KERAS_BACKEND`` selects): yat layers
from ``nmn_array.frameworks.keras``, trained with ``train_on_batch``."""

from __future__ import annotations

import numpy as np

from nmn_array.demo.nnx_models import configure_before_import as _xla_threads
from nmn_array.demo.train import Config, ModelSpec


def configure_before_import(threads: int) -> None:
    """Limit XLA's threads in case the Keras backend is JAX (read when JAX starts)."""
    _xla_threads(threads)


def configure(threads: int) -> None:
    """Use ``threads`` CPU threads in the Keras backend (one is fastest for tiny models)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TF already started in this process: keep its settings
            pass
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)


def version() -> str:
    """``keras <version>, backend <name>``."""
    import keras

    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


def _network(spec: ModelSpec, config: Config):
    import keras

    from nmn_array.frameworks.keras import YatConv2D, YatNMN

    layers = keras.layers
    h = config.hidden
    c1, c2 = config.channels
    if not spec.conv:
        if spec.yat:
            # No activation: the yat product is the non-linearity.
            body = [YatNMN(h), YatNMN(10)]
        else:
            body = [layers.Dense(h, activation="relu"), layers.Dense(10)]
    elif spec.yat:
        body = [
            layers.Reshape((8, 8, 1)),
            YatConv2D(c1, 3, padding="same"),
            layers.AveragePooling2D(2),
            YatConv2D(c2, 3, padding="same"),
            layers.AveragePooling2D(2),
            layers.Flatten(),
            YatNMN(10),
        ]
    else:
        body = [
            layers.Reshape((8, 8, 1)),
            layers.Conv2D(c1, 3, padding="same", activation="relu"),
            layers.AveragePooling2D(2),
            layers.Conv2D(c2, 3, padding="same", activation="relu"),
            layers.AveragePooling2D(2),
            layers.Flatten(),
            layers.Dense(10),
        ]
    return keras.Sequential([keras.Input((64,)), *body])


class KerasModel:
    """A compiled ``keras.Sequential`` (Adam, sparse cross-entropy on logits)."""

    def __init__(self, spec: ModelSpec, config: Config, first_rows: np.ndarray | None) -> None:
        import keras

        keras.utils.set_random_seed(config.seed)
        self.model = _network(spec, config)
        if first_rows is not None:  # keras YatNMN.kernel is (in, units): one neuron per column
            self.model.layers[0].kernel.assign(first_rows.T)
        self.model.compile(
            optimizer=keras.optimizers.Adam(config.lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        self.n_params = int(self.model.count_params())

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        # train_on_batch reports the running mean since the last reset: reset for this batch's loss.
        self.model.reset_metrics()
        return float(np.asarray(self.model.train_on_batch(x, y)))

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(x))

    def prototypes(self) -> np.ndarray | None:
        import keras

        return keras.ops.convert_to_numpy(self.model.layers[0].kernel).T.copy()


def build(spec: ModelSpec, config: Config, first_rows: np.ndarray | None = None) -> KerasModel:
    """The model ``spec`` with fresh parameters seeded by ``config.seed``; ``first_rows``
    (hidden, 64), if given, replaces the neurons of the yat MLP's first layer."""
    return KerasModel(spec, config, first_rows)
