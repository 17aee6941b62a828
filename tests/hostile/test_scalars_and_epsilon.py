"""NumPy scalars wherever Python numbers go, and epsilons the compute dtype cannot hold.

A NumPy scalar (``np.float32(1e-3)``) is a number, not an array: it is accepted next to any
library's arrays and gives exactly the result of the equal Python float. ``np.bool_`` is
refused where a bool is, and a 0-d NumPy *array* follows the array rules (no mixing).
An epsilon below the compute dtype's smallest normal (or above its largest value) turned
``0 / epsilon`` into NaN or inf; it is refused with the dtype and its smallest normal named.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import nmn_array as na

RNG = np.random.default_rng(7)
X2 = RNG.normal(size=(3, 4))
W2 = RNG.normal(size=(2, 4))
X3 = RNG.normal(size=(2, 2, 6))
W3 = RNG.normal(size=(3, 2, 3))
WT3 = RNG.normal(size=(2, 3, 3))
Q = RNG.normal(size=(2, 3, 4))
K = RNG.normal(size=(2, 5, 4))
V = RNG.normal(size=(2, 5, 3))
POS = np.abs(RNG.normal(size=(3, 5)))

# name -> (call(convert, **numbers), numbers with NumPy scalars)
CASES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "yat": (
        lambda c, **kw: na.yat(c(X2), c(W2), kw.pop("bias"), **kw),
        dict(bias=np.float32(0.5), alpha=np.float64(2.0), epsilon=np.float32(1e-3)),
    ),
    "yat_conv": (
        lambda c, **kw: na.yat_conv(c(X3), c(W3), kw.pop("bias"), **kw),
        dict(bias=np.float64(0.25), alpha=np.float32(1.5), epsilon=np.float32(1e-2)),
    ),
    "yat_conv_geometry": (
        lambda c, **kw: na.yat_conv(c(X3), c(W3[:2, :1]), **kw),
        dict(stride=np.int64(2), padding=(np.int32(1),), dilation=np.int64(1), groups=np.int64(2)),
    ),
    "yat_conv_transpose": (
        lambda c, **kw: na.yat_conv_transpose(c(X3), c(WT3), kw.pop("bias"), **kw),
        dict(
            bias=np.float32(0.5),
            alpha=np.float64(0.5),
            epsilon=np.float64(1e-3),
            stride=np.int64(2),
            output_padding=np.int64(1),
        ),
    ),
    "yat_attention": (
        lambda c, **kw: na.yat_attention(c(Q), c(K), c(V), **kw),
        dict(alpha=np.float32(2.0), epsilon=np.float32(1e-4), scale=np.float64(0.3)),
    ),
    "yat_attention_weights_softermax": (
        lambda c, **kw: na.yat_attention_weights(c(Q), c(K), normalization="softermax", **kw),
        dict(power=np.float32(2.0), epsilon=np.float64(1e-4)),
    ),
    "rotary_embedding": (
        lambda c, **kw: na.rotary_embedding(c(Q), **kw),
        dict(theta=np.float32(500.0)),
    ),
    "softermax": (
        lambda c, **kw: na.softermax(c(POS), **kw),
        dict(n=np.float32(2.0), epsilon=np.float32(1e-6), axis=np.int64(0)),
    ),
    "softer_sigmoid": (lambda c, **kw: na.softer_sigmoid(c(POS), **kw), dict(n=np.float64(1.5))),
    "soft_tanh": (lambda c, **kw: na.soft_tanh(c(POS), **kw), dict(n=np.float32(3.0))),
}


def _python(numbers: dict[str, Any]) -> dict[str, Any]:
    """The same numbers as Python scalars (tuples element-wise)."""
    return {
        k: tuple(x.item() for x in v) if isinstance(v, tuple) else v.item()
        for k, v in numbers.items()
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_scalars_are_accepted_like_python_numbers(backend, name):
    call, numbers = CASES[name]
    with_numpy = call(backend.from_numpy, **dict(numbers))
    with_python = call(backend.from_numpy, **_python(numbers))
    assert isinstance(with_numpy, backend.array_type())
    np.testing.assert_array_equal(backend.to_numpy(with_numpy), backend.to_numpy(with_python))


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda c: na.yat(c(X2), c(W2), epsilon=np.True_), ["epsilon", "True"]),
        (lambda c: na.yat(c(X2), c(W2), alpha=np.False_), ["alpha", "False"]),
        (lambda c: na.yat(c(X2), c(W2), np.True_), ["bias", "True"]),
        (lambda c: na.yat_conv(c(X3), c(W3), groups=np.True_), ["groups", "True"]),
        (lambda c: na.yat_conv(c(X3), c(W3), stride=np.True_), ["stride", "True"]),
        (lambda c: na.softermax(c(POS), n=np.True_), ["n", "True"]),
        (lambda c: na.yat_attention(c(Q), c(K), c(V), scale=np.True_), ["scale", "True"]),
    ],
)
def test_numpy_bools_are_refused_where_bools_are(backend, call, words):
    with pytest.raises((TypeError, ValueError)) as info:
        call(backend.from_numpy)
    for word in words:
        assert word in str(info.value)


def test_python_bool_bias_is_refused():
    with pytest.raises(TypeError, match="bias"):
        na.yat(X2, W2, True)


def test_zero_d_numpy_array_is_an_array_not_a_scalar():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="mixed"):
        na.yat(torch.asarray(X2), torch.asarray(W2), epsilon=np.asarray(1e-3))


def test_numpy_scalars_alone_are_not_arrays():
    with pytest.raises(TypeError, match="at least one array"):
        na.yat(np.float64(1.0), np.float32(2.0))


# --- epsilon and the compute dtype -------------------------------------------------------

EPS_CALLS: dict[str, Callable[..., Any]] = {
    "yat": lambda c, dt, eps: na.yat(c(W2, dt), c(W2, dt), epsilon=eps),
    "yat_conv": lambda c, dt, eps: na.yat_conv(c(X3, dt), c(W3, dt), epsilon=eps),
    "yat_conv_transpose": lambda c, dt, eps: na.yat_conv_transpose(
        c(X3, dt), c(WT3, dt), epsilon=eps
    ),
    "yat_attention": lambda c, dt, eps: na.yat_attention(c(Q, dt), c(Q, dt), c(Q, dt), epsilon=eps),
    "softermax": lambda c, dt, eps: na.softermax(c(np.zeros((2, 3)), dt), epsilon=eps),
}


@pytest.mark.parametrize("name", sorted(EPS_CALLS))
@pytest.mark.parametrize(
    "dtype, eps",
    [
        ("float32", 1e-70),
        ("float32", np.float64(1e-70)),
        ("float32", 1e39),
        ("float64", 1e-320),
    ],
    ids=["f32-underflow", "f32-underflow-npscalar", "f32-overflow", "f64-subnormal"],
)
def test_epsilon_outside_the_compute_dtype_is_refused(backend, name, dtype, eps):
    tiny = np.finfo(dtype).tiny
    with pytest.raises(ValueError) as info:
        EPS_CALLS[name](backend.from_numpy, dtype, eps)
    msg = str(info.value)
    assert "epsilon" in msg and repr(float(eps)) in msg
    assert dtype in msg and repr(float(tiny)) in msg


@pytest.mark.parametrize("name", ["yat", "yat_conv", "yat_conv_transpose", "softermax"])
def test_smallest_normal_epsilon_is_accepted_and_not_nan(backend, name):
    """The boundary itself is allowed: at the exact collision x == w (yat) the result is
    |w|^4 / epsilon (inf once it exceeds the dtype), and softermax of zeros is 0, not NaN.
    (Attention's softmax of such infinite scores is the softmax's business, not tested here.)"""
    out = backend.to_numpy(
        EPS_CALLS[name](backend.from_numpy, "float64", float(np.finfo(np.float64).tiny))
    )
    assert not np.isnan(out).any()


def test_half_precision_epsilon_is_checked_against_float32(backend):
    """float16 is computed in float32, so an epsilon below float16's normals is fine."""
    if backend.name == "array_api_strict":
        pytest.skip(f"{backend.name} has no float16")
    out = na.yat(backend.from_numpy(W2, "float16"), backend.from_numpy(W2, "float16"), epsilon=1e-9)
    got = backend.to_numpy(out).astype(np.float64)
    assert np.isfinite(got).all()  # 1e-9 alone would flush to zero in float16


def test_layer_epsilon_accepts_numpy_scalars():
    """Layers validate epsilon in frameworks/_common.py: a NumPy scalar is a float there too."""
    torch = pytest.importorskip("torch")
    from nmn_array.frameworks.torch import YatNMN

    layer = YatNMN(4, 2, epsilon=np.float32(1e-3))
    assert type(layer.epsilon) is float and layer.epsilon == float(np.float32(1e-3))
    out = layer(torch.ones(3, 4))
    assert out.shape == (3, 2) and bool(torch.isfinite(out).all())
    with pytest.raises(TypeError, match="epsilon"):
        YatNMN(4, 2, epsilon=np.True_)
