"""TensorFlow cases: our Keras layers (TensorFlow backend) against Keras Dense / Conv2D.

A step is one ``tf.function`` call that runs the layer under a ``tf.GradientTape`` and
returns the gradients of ``reduce_sum(layer(x))`` with respect to the input and the trainable
variables. Our side runs through ``nmn_array.frameworks.keras`` when it imports, and
through a ``tf.Module`` holding ``tf.Variable`` parameters otherwise; ``ours_fn`` always
runs the latter, which isolates the cost of the Keras layer machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import keras
import tensorflow as tf

import nmn_array

from ._common import Sizes


class TFYatDense(tf.Module):
    """Dense yat layer on ``tf.Variable`` parameters: ``kernel (out, in)``, ``bias``,
    ``alpha``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        init = keras.initializers.GlorotNormal(seed=0)
        self.kernel = tf.Variable(init((out_features, in_features)))
        self.bias = tf.Variable(tf.zeros((out_features,)))
        self.alpha = tf.Variable(tf.ones((1,)))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """``x (..., in)`` -> ``(..., out)``."""
        return nmn_array.yat(x, self.kernel, self.bias, alpha=self.alpha)


class TFYatConv(tf.Module):
    """Yat 2-D convolution (channels last, padding "same") on ``tf.Variable`` parameters."""

    def __init__(self, in_features: int, out_features: int, k: int) -> None:
        super().__init__()
        init = keras.initializers.GlorotNormal(seed=0)
        self.kernel = tf.Variable(init((out_features, in_features, k, k)))
        self.bias = tf.Variable(tf.zeros((out_features,)))
        self.alpha = tf.Variable(tf.ones((1,)))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """``x (N, H, W, C)`` -> ``(N, H, W, O)``."""
        return nmn_array.yat_conv(
            x,
            self.kernel,
            self.bias,
            padding="same",
            data_format="channels_last",
            alpha=self.alpha,
        )


def frameworks_module() -> Any:
    """``nmn_array.frameworks.keras`` or None if it does not import (yet)."""
    try:
        from nmn_array.frameworks import keras as fw
    except Exception:  # noqa: BLE001 - any failure means "use the fallback"
        return None
    return fw if all(hasattr(fw, name) for name in ("YatNMN", "YatConv2D")) else None


def ours_impl() -> str:
    """``"frameworks"`` when our side runs through ``nmn_array.frameworks.keras``."""
    return "frameworks" if frameworks_module() is not None else "wrapper"


def _dense_x(sz: Sizes) -> tf.Tensor:
    return tf.random.normal((sz.dense_batch, sz.dense_in), seed=1)


def _conv_x(sz: Sizes) -> tf.Tensor:
    return tf.random.normal((sz.conv_batch, sz.conv_hw, sz.conv_hw, sz.conv_in), seed=2)


def dense_ours(sz: Sizes):
    """Our Keras YatNMN (or the tf.Module fallback)."""
    fw = frameworks_module()
    layer = fw.YatNMN(sz.dense_out) if fw is not None else TFYatDense(sz.dense_in, sz.dense_out)
    return layer, _dense_x(sz)


def dense_fn(sz: Sizes):
    """``nmn_array.yat`` on ``tf.Variable`` parameters, no Keras."""
    return TFYatDense(sz.dense_in, sz.dense_out), _dense_x(sz)


def dense_native(sz: Sizes):
    """``keras.layers.Dense(activation="relu")``."""
    return keras.layers.Dense(sz.dense_out, activation="relu"), _dense_x(sz)


def dense_nmn(sz: Sizes):
    """nmn 0.3.5's Keras YatNMN."""
    from nmn.keras import YatNMN

    return YatNMN(sz.dense_out), _dense_x(sz)


def conv_ours(sz: Sizes):
    """Our Keras YatConv2D (padding "same")."""
    fw = frameworks_module()
    if fw is not None:
        layer = fw.YatConv2D(sz.conv_out, sz.conv_k, padding="same")
    else:
        layer = TFYatConv(sz.conv_in, sz.conv_out, sz.conv_k)
    return layer, _conv_x(sz)


def conv_fn(sz: Sizes):
    """``nmn_array.yat_conv`` on ``tf.Variable`` parameters, no Keras."""
    return TFYatConv(sz.conv_in, sz.conv_out, sz.conv_k), _conv_x(sz)


def conv_native(sz: Sizes):
    """``keras.layers.Conv2D(padding="same", activation="relu")``."""
    return keras.layers.Conv2D(sz.conv_out, sz.conv_k, padding="same", activation="relu"), _conv_x(
        sz
    )


def conv_nmn(sz: Sizes):
    """nmn 0.3.5's Keras YatConv2D (padding "same")."""
    from nmn.keras import YatConv2D

    return YatConv2D(sz.conv_out, sz.conv_k, padding="same"), _conv_x(sz)


CASES: dict[str, dict[str, tuple[str, Any]]] = {
    "dense": {
        "ours": ("nmn_array keras YatNMN", dense_ours),
        "ours_fn": ("nmn_array.yat on tf.Variables", dense_fn),
        "native": ("keras Dense(relu)", dense_native),
        "nmn": ("nmn 0.3.5 keras YatNMN", dense_nmn),
    },
    "conv": {
        "ours": ("nmn_array keras YatConv2D", conv_ours),
        "ours_fn": ("nmn_array.yat_conv on tf.Variables", conv_fn),
        "native": ("keras Conv2D(relu)", conv_native),
        "nmn": ("nmn 0.3.5 keras YatConv2D", conv_nmn),
    },
}


def make_step(layer: Any, x: tf.Tensor) -> Callable[[], Any]:
    """A ``tf.function`` of the forward + backward; the layer is built by one eager call."""
    layer(x)  # build
    variables = list(layer.trainable_variables)

    @tf.function
    def grads(inp: tf.Tensor) -> list:
        with tf.GradientTape() as tape:
            tape.watch(inp)
            loss = tf.reduce_sum(layer(inp))
        return tape.gradient(loss, [inp, *variables])

    def step() -> Any:
        out = grads(x)
        return out[0].numpy()[..., :1]  # wait for completion

    return step


def build(group: str, name: str, sz: Sizes) -> Callable[[], Any]:
    """The step of one case."""
    keras.utils.set_random_seed(0)
    _, factory = CASES[group][name]
    layer, x = factory(sz)
    return make_step(layer, x)


def setup_threads(threads: int) -> None:
    """Cap TensorFlow's pools (before any op runs)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised: the environment variables apply
        pass


def run_suite(sz: Sizes, skip: Collection[str] = ()) -> dict[str, Any]:
    """Time every TensorFlow group, interleaved within the group; cases named in ``skip``
    are left out."""
    from ._common import interleaved, record, select

    impl = ours_impl()
    records = []
    for group, entries in select(CASES, skip).items():
        steps = {name: build(group, name, sz) for name in entries}
        times = interleaved(
            steps, reps=sz.reps[group], warmup=sz.warmup, budget_s=sz.budget_s[group]
        )
        for name, samples in times.items():
            kind = impl if name == "ours" else ("wrapper" if name == "ours_fn" else "reference")
            records.append(record("tf", group, name, entries[name][0], samples, impl=kind))
    return {"cases": records, "scaling": [], "impl": impl}
