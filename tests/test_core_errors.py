"""Bad input gets a clear error naming the argument and the offending shapes or values."""

from __future__ import annotations

import numpy as np
import pytest

import nmn_array as na

X = np.ones((2, 3, 8))
W = np.ones((4, 3, 3))
WT = np.ones((3, 4, 3))


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (
            lambda: na.yat(np.ones((2, 3)), np.ones((4, 5))),
            ValueError,
            ["feature sizes", "(2, 3)", "(4, 5)"],
        ),
        (
            lambda: na.yat(np.ones((2, 3), dtype=np.int64), np.ones((4, 3))),
            TypeError,
            ["x", "int64"],
        ),
        (lambda: na.yat(np.ones((2, 3)), np.ones((4, 3), dtype=bool)), TypeError, ["w", "bool"]),
        (
            lambda: na.yat(np.ones((2, 3)), np.ones((4, 3)), epsilon=0.0),
            ValueError,
            ["epsilon", "0.0"],
        ),
        (lambda: na.yat(np.ones((2, 3)), np.ones((4, 3)), epsilon=-1e-5), ValueError, ["epsilon"]),
        (
            lambda: na.yat(np.ones((2, 3)), np.ones((4, 3)), bias=np.ones(3)),
            ValueError,
            ["bias", "(3,)"],
        ),
        (
            lambda: na.yat(np.ones((2, 3)), np.ones((4, 3)), alpha=np.ones(2)),
            ValueError,
            ["alpha", "(2,)"],
        ),
        (lambda: na.yat(np.ones((2, 3)), np.ones((2, 4, 3))), ValueError, ["w", "(2, 4, 3)"]),
        (lambda: na.yat_conv(X, np.ones((4, 2, 3))), ValueError, ["w", "(4, 2, 3)", "C/groups"]),
        (lambda: na.yat_conv(X, W, groups=2), ValueError, ["in channels (3)", "groups (2)"]),
        (
            lambda: na.yat_conv(np.ones((2, 4, 8)), np.ones((3, 2, 3)), groups=2),
            ValueError,
            ["out channels (3)", "groups (2)"],
        ),
        (
            lambda: na.yat_conv(X, np.ones((4, 3, 9))),
            ValueError,
            ["kernel", "larger than the padded input"],
        ),
        (lambda: na.yat_conv(X, W, padding="full"), ValueError, ["padding", "'full'"]),
        (lambda: na.yat_conv(X, W, padding=-1), ValueError, ["padding", "-1"]),
        (
            lambda: na.yat_conv(X, W, padding_mode="mirror"),
            ValueError,
            ["padding_mode", "'mirror'"],
        ),
        (lambda: na.yat_conv(X, W, data_format="NCHW"), ValueError, ["data_format", "'NCHW'"]),
        (lambda: na.yat_conv(X, W, stride=0), ValueError, ["stride", ">= 1"]),
        (lambda: na.yat_conv(X, W, dilation=(1, 1)), ValueError, ["dilation", "(1, 1)"]),
        (
            lambda: na.yat_conv(np.ones((2, 3, 8, 8)), np.ones((4, 3, 3, 3)), padding="causal"),
            ValueError,
            ["causal", "1-D"],
        ),
        (
            lambda: na.yat_conv(X, W, padding=8, padding_mode="reflect"),
            ValueError,
            ["reflect", "smaller than the input size"],
        ),
        (lambda: na.yat_conv(X, W, epsilon=0.0), ValueError, ["epsilon"]),
        (lambda: na.yat_conv(np.ones((2, 3)), W), ValueError, ["x", "3, 4 or 5 axes", "(2, 3)"]),
        (lambda: na.yat_conv(X, W, bias=np.ones(3)), ValueError, ["bias", "(4,)", "(3,)"]),
        (lambda: na.yat_conv_transpose(X, W), ValueError, ["w", "(C, O/groups, *k)", "(4, 3, 3)"]),
        (
            lambda: na.yat_conv_transpose(X, WT, stride=2, output_padding=2),
            ValueError,
            ["output_padding", "stride"],
        ),
        (
            lambda: na.yat_conv_transpose(X, WT, padding="causal"),
            ValueError,
            ["padding", "'causal'"],
        ),
        (
            lambda: na.yat_conv_transpose(np.ones((1, 3, 1)), WT, padding=3),
            ValueError,
            ["padding", "crops"],
        ),
        (
            lambda: na.yat_attention(np.ones((2, 5, 4)), np.ones((2, 6, 3)), np.ones((2, 6, 4))),
            ValueError,
            ["feature size", "(2, 5, 4)", "(2, 6, 3)"],
        ),
        (
            lambda: na.yat_attention(np.ones((2, 5, 4)), np.ones((2, 6, 4)), np.ones((2, 7, 4))),
            ValueError,
            ["v", "Lk = 6"],
        ),
        (
            lambda: na.yat_attention(
                np.ones((5, 4)), np.ones((6, 4)), np.ones((6, 4)), mask=np.ones((5, 6), np.int64)
            ),
            TypeError,
            ["mask", "bool", "floating", "int64"],
        ),
        (
            lambda: na.yat_attention(
                np.ones((5, 4)), np.ones((6, 4)), np.ones((6, 4)), mask=np.ones((5, 5), dtype=bool)
            ),
            ValueError,
            ["mask", "(5, 5)", "6"],
        ),
        (
            lambda: na.yat_attention_weights(
                np.ones((5, 4)), np.ones((6, 4)), normalization="sparsemax"
            ),
            ValueError,
            ["normalization", "'sparsemax'"],
        ),
        (
            lambda: na.yat_attention_weights(np.ones((5, 4)), np.ones((6, 4)), power=0.0),
            ValueError,
            ["power"],
        ),
        (
            lambda: na.yat_attention_weights(np.ones((5, 4)), np.ones((6, 4)), epsilon=0),
            ValueError,
            ["epsilon"],
        ),
        (lambda: na.rotary_embedding(np.ones((5, 3))), ValueError, ["even d", "(5, 3)"]),
        (
            lambda: na.rotary_embedding(np.ones((5, 4)), np.arange(4)),
            ValueError,
            ["positions", "(5,)", "(4,)"],
        ),
        (
            lambda: na.rotary_embedding(np.ones((5, 4)), np.arange(5.0)),
            TypeError,
            ["positions", "integer"],
        ),
        (lambda: na.softermax(np.ones(3), n=0.0), ValueError, ["n", "0.0"]),
        (lambda: na.softer_sigmoid(np.ones(3), n=-1), ValueError, ["n", "-1"]),
        (lambda: na.soft_tanh(np.ones(3), n=0), ValueError, ["n"]),
        (lambda: na.softermax(np.ones(3), axis=2), ValueError, ["axis", "2"]),
        (lambda: na.softer_sigmoid(np.arange(3)), TypeError, ["x", "int"]),
        (lambda: na.yat([1.0, 2.0], [1.0, 2.0]), TypeError, ["unsupported array type", "list"]),
        (
            lambda: na.yat(np.ones((2, 3)), np.ones((4, 3)), distance_floor=-0.5),
            ValueError,
            ["distance_floor", "-0.5"],
        ),
        (
            lambda: na.yat(np.ones((2, 3)), np.ones((4, 3)), distance_floor=float("inf")),
            ValueError,
            ["distance_floor", "inf"],
        ),
        (lambda: na.drop_connect(np.ones(3), rate=1.0), ValueError, ["rate", "[0, 1)", "1.0"]),
        (lambda: na.drop_connect(np.ones(3), rate=-0.1), ValueError, ["rate", "-0.1"]),
        (lambda: na.drop_connect(np.ones(3), rate=float("nan")), ValueError, ["rate", "nan"]),
        (lambda: na.drop_connect(np.ones(3), rate=True), TypeError, ["rate", "True"]),
        (
            lambda: na.drop_connect(np.ones((2, 3)), np.ones((3, 2), dtype=bool), rate=0.5),
            ValueError,
            ["keep", "(2, 3)", "(3, 2)"],
        ),
        (
            lambda: na.drop_connect(np.ones((2, 3)), np.ones((2, 3)), rate=0.5),
            TypeError,
            ["keep", "boolean", "float64"],
        ),
        (
            lambda: na.drop_connect(np.ones((2, 3)), mask=np.ones(3)),
            ValueError,
            ["mask", "(2, 3)", "(3,)"],
        ),
        (
            lambda: na.drop_connect(np.ones((2, 3)), mask=np.ones((2, 3), dtype=np.int64)),
            TypeError,
            ["mask", "int64"],
        ),
        (lambda: na.drop_connect(np.arange(3), mask=np.ones(3)), TypeError, ["kernel", "int"]),
    ],
)
def test_bad_input_raises_clear_error(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"error message {message!r} lacks {missing}"


def test_mixed_array_libraries_raise():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="different libraries"):
        na.yat(np.ones((2, 3)), torch.ones(4, 3, dtype=torch.float64))


def test_mixed_tensorflow_and_numpy_raise():
    tf = pytest.importorskip("tensorflow")
    with pytest.raises(TypeError, match="different libraries"):
        na.yat(tf.ones((2, 3)), np.ones((4, 3), dtype=np.float32))


def test_validation_happens_at_call_time_on_lazy_dask():
    da = pytest.importorskip("dask.array")
    with pytest.raises(ValueError, match="feature sizes"):
        na.yat(da.ones((2, 3)), da.ones((4, 5)))
    with pytest.raises(ValueError, match="epsilon"):
        na.yat_conv(da.ones((2, 3, 8)), da.ones((4, 3, 3)), epsilon=-1.0)
