"""The demo's models in raw TensorFlow (``tf.Module``, no Keras): yat layers from
``nmn_array.frameworks.tf``, trained with ``GradientTape`` under ``tf.function``.

The ReLU baselines and the optimiser are written here with plain ``tf`` ops, because the
``tf`` framework module, like ``nmn.tf``, deliberately does not depend on Keras.
"""

from __future__ import annotations

import math

import numpy as np

from nmn_array.demo.train import Config, ModelSpec


def configure_before_import(threads: int) -> None:
    """Nothing to set before TensorFlow starts (see :func:`configure`)."""


def configure(threads: int) -> None:
    """Use ``threads`` CPU threads (one is fastest for these tiny models)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TF already started in this process: keep its settings
        pass


def version() -> str:
    """``tensorflow <version>``."""
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"


def _glorot(tf, shape, fan_in: int, fan_out: int):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return tf.Variable(tf.random.uniform(shape, -limit, limit), name="kernel")


def _baselines():
    """Plain Dense and Conv2D tf.Modules for the ReLU models (Keras' default initialisers)."""
    import tensorflow as tf

    class Dense(tf.Module):
        def __init__(self, n_in: int, n_out: int) -> None:
            super().__init__()
            self.kernel = _glorot(tf, (n_in, n_out), n_in, n_out)
            self.bias = tf.Variable(tf.zeros((n_out,)), name="bias")

        def __call__(self, x):
            return tf.matmul(x, self.kernel) + self.bias

    class Conv2D(tf.Module):
        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            self.kernel = _glorot(tf, (3, 3, c_in, c_out), 9 * c_in, 9 * c_out)
            self.bias = tf.Variable(tf.zeros((c_out,)), name="bias")

        def __call__(self, x):
            return tf.nn.conv2d(x, self.kernel, 1, "SAME") + self.bias

    return Dense, Conv2D


def _network(spec: ModelSpec, config: Config):
    import tensorflow as tf

    from nmn_array.frameworks.tf import YatConv2D, YatNMN

    Dense, Conv2D = _baselines()
    h = config.hidden
    c1, c2 = config.channels

    def pool(x):
        return tf.nn.avg_pool2d(x, 2, 2, "VALID")

    class Net(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            if not spec.conv and spec.yat:
                self.layers = [YatNMN(h), YatNMN(10)]
            elif not spec.conv:
                self.layers = [Dense(64, h), Dense(h, 10)]
            elif spec.yat:
                self.layers = [
                    YatConv2D(c1, 3, padding="same"),
                    YatConv2D(c2, 3, padding="same"),
                    YatNMN(10),
                ]
            else:
                self.layers = [Conv2D(1, c1), Conv2D(c1, c2), Dense(c2 * 4, 10)]

        def __call__(self, x):
            a, b, c = (self.layers + [None])[:3]
            if not spec.conv:
                hidden = a(x)
                # No activation in the yat model: the yat product is the non-linearity.
                return b(hidden if spec.yat else tf.nn.relu(hidden))
            x = tf.reshape(x, (-1, 8, 8, 1))
            if spec.yat:
                x = pool(b(pool(a(x))))
            else:
                x = pool(tf.nn.relu(b(pool(tf.nn.relu(a(x))))))
            return c(tf.reshape(x, (tf.shape(x)[0], -1)))

    return Net()


class Adam:
    """Adam (Kingma & Ba) on a list of ``tf.Variable``, with bias correction."""

    def __init__(self, variables, lr: float, b1: float = 0.9, b2: float = 0.999, eps=1e-7):
        import tensorflow as tf

        self.variables = list(variables)
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.t = tf.Variable(0.0)
        self.m = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self.v = [tf.Variable(tf.zeros_like(v)) for v in self.variables]

    def apply(self, grads) -> None:
        self.t.assign_add(1.0)
        scale = self.lr * (1.0 - self.b2**self.t) ** 0.5 / (1.0 - self.b1**self.t)
        for var, g, m, v in zip(self.variables, grads, self.m, self.v):
            m.assign(self.b1 * m + (1.0 - self.b1) * g)
            v.assign(self.b2 * v + (1.0 - self.b2) * g * g)
            var.assign_sub(scale * m / (v**0.5 + self.eps))


class TfModel:
    """A ``tf.Module`` network with a jitted (``tf.function``) training step."""

    def __init__(self, spec: ModelSpec, config: Config, first_rows: np.ndarray | None) -> None:
        import tensorflow as tf

        tf.random.set_seed(config.seed)
        self.net = _network(spec, config)
        self.net(tf.zeros((1, 64)))  # the yat layers create their variables on first call
        if first_rows is not None:  # tf YatNMN.kernel is (features, in): one neuron per row
            self.net.layers[0].kernel.assign(first_rows)
        variables = self.net.trainable_variables
        self.n_params = int(sum(np.prod(v.shape) for v in variables))
        self.opt = Adam(variables, config.lr)

        # autograph=False: the step has no tensor-dependent Python control flow to convert.
        @tf.function(reduce_retracing=True, autograph=False)
        def step(x, y):
            with tf.GradientTape() as tape:
                logits = self.net(x)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                )
            self.opt.apply(tape.gradient(loss, variables))
            return loss

        self._step = step
        self._forward = tf.function(self.net.__call__, reduce_retracing=True, autograph=False)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self._step(x, y))

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x).numpy()

    def prototypes(self) -> np.ndarray | None:
        return self.net.layers[0].kernel.numpy().copy()


def build(spec: ModelSpec, config: Config, first_rows: np.ndarray | None = None) -> TfModel:
    """The model ``spec`` with fresh parameters seeded by ``config.seed``; ``first_rows``
    (hidden, 64), if given, replaces the neurons of the yat MLP's first layer."""
    return TfModel(spec, config, first_rows)
