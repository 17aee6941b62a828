"""Helpers shared by the framework modules (frameworks/_common.py)."""

import pytest
from nmn_array.frameworks._common import known_size, ntuple


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("n", [1, 2])
def test_ntuple_rejects_bool_naming_the_argument(value, n):
    # A bool is an int to isinstance; as a kernel size or stride it is a mistake.
    with pytest.raises(
        ValueError, match=r"kernel_size must be an int or \d ints, got (True|False)"
    ):
        ntuple(value, n, "kernel_size")


def test_ntuple_expands_and_checks():
    assert ntuple(3, 2, "stride") == (3, 3)
    assert ntuple((1, 2), 2, "stride") == (1, 2)
    with pytest.raises(ValueError, match="stride must be an int or 2 ints, got"):
        ntuple((1, 2, 3), 2, "stride")


def test_known_size_names_the_unknown_axis():
    assert known_size(5, "the last axis of the input") == 5
    with pytest.raises(ValueError, match="the last axis of the input must have a known size"):
        known_size(None, "the last axis of the input")


def test_tf_layer_with_unknown_feature_axis_names_it():
    tf = pytest.importorskip("tensorflow")
    from nmn_array.frameworks.tf import YatNMN

    layer = YatNMN(3)
    # An input whose last axis is unknown: int(None) used to raise a bare TypeError.
    with pytest.raises(ValueError, match="the last axis of the input must have a known size"):
        layer.build(tf.TensorShape([None, None]))
