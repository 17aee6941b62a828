"""nmn_array: the yat product of Neural-Matter Networks on any array library.

Every function takes arrays of one library (NumPy, PyTorch, JAX, TensorFlow, CuPy, Dask,
array-api-strict) and returns that library's array, with the input's dtype and device.

>>> import numpy as np, nmn_array
>>> nmn_array.yat(np.array([1.0, 2.0]), np.array([1.0, 2.0]), epsilon=1.0).item()
25.0
"""

from nmn_array.attention import local_window_mask, yat_attention, yat_attention_weights
from nmn_array.conv import yat_conv, yat_conv_transpose
from nmn_array.dense import yat
from nmn_array.dropconnect import drop_connect
from nmn_array.linear_attention import yat_linear_attention
from nmn_array.random_features import maclaurin_features, radial_features, slay_features
from nmn_array.rotary import rotary_embedding
from nmn_array.squashers import soft_tanh, softer_sigmoid, softermax

__version__ = "0.1.0"

# Inside tf.function, AutoGraph would recompile each of these from its source. They hold no
# tensor-dependent Python control flow, so they run as written: `autograph_info__` is
# AutoGraph's marker for "call unconverted" (what tf.autograph.experimental.do_not_convert
# sets), placed here without importing TensorFlow.
for _public in (
    drop_connect,
    local_window_mask,
    maclaurin_features,
    radial_features,
    rotary_embedding,
    slay_features,
    soft_tanh,
    softer_sigmoid,
    softermax,
    yat,
    yat_attention,
    yat_attention_weights,
    yat_conv,
    yat_conv_transpose,
    yat_linear_attention,
):
    # Through __dict__: a function object takes any attribute, mypy's function type none.
    _public.__dict__["autograph_info__"] = frozenset()
del _public

# The projection builders (slay_projection, maclaurin_projection, radial_projection) draw
# NumPy arrays from a Generator rather than compute on arrays: they stay in
# nmn_array.random_features, next to their feature maps; the frameworks' helpers
# (performer_features, performer_projection, performer_attention) in nmn_array.linear_attention.
from nmn_array import linear_attention as linear_attention  # noqa: E402
from nmn_array import random_features as random_features  # noqa: E402

linear_attention.performer_attention.__dict__["autograph_info__"] = frozenset()

__all__ = [
    "drop_connect",
    "local_window_mask",
    "maclaurin_features",
    "radial_features",
    "rotary_embedding",
    "slay_features",
    "soft_tanh",
    "softer_sigmoid",
    "softermax",
    "yat",
    "yat_attention",
    "yat_attention_weights",
    "yat_conv",
    "yat_conv_transpose",
    "yat_linear_attention",
]
