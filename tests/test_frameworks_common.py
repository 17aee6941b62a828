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


@pytest.mark.parametrize(
    ("epsilon", "dtype"),
    [(1e-46, "float32"), (5e-324, "float64"), (1e-310, "float64"), (1e39, "float32")],
)
def test_learnable_epsilon_outside_the_storage_dtype_is_refused(epsilon, dtype):
    import re

    from nmn_array.frameworks._common import learnable_epsilon

    with pytest.raises(ValueError, match=re.escape(f"learnable epsilon={epsilon!r} cannot be")):
        learnable_epsilon(epsilon, dtype)


@pytest.mark.parametrize(
    ("epsilon", "dtype", "storage"),
    [
        (1e-5, "float16", "float32"),  # the raw value -11.5 is fine in float32
        (1e-30, "bfloat16", "float32"),
        (2.0**-1022, "float64", "float64"),  # float64's smallest normal
        (1e150, "float64", "float64"),
        (3e38, "float32", "float32"),
    ],
)
def test_learnable_epsilon_round_trips_through_softplus(epsilon, dtype, storage):
    import math

    import numpy as np
    from nmn_array.frameworks._common import learnable_epsilon

    raw, got = learnable_epsilon(epsilon, dtype)
    assert got == storage
    stored = float(np.asarray(raw, dtype=storage))
    # softplus of the stored raw value, in float64 (log1p(exp(r)) overflows for huge r)
    back = stored + math.log1p(math.exp(-stored)) if stored > 0 else math.log1p(math.exp(stored))
    assert math.isclose(back, epsilon, rel_tol=1e-4 if storage == "float32" else 1e-12)


def test_kernel_banks_make_share_grow_and_refuse():
    from nmn_array.frameworks._common import KernelBanks

    banks, grown = KernelBanks(), []

    def grow(variable, old, new):
        grown.append((old, new))
        variable.extend([None] * (new - old))

    first = banks.attach("a", units=2, size=None, make=lambda n: [0] * n, grow=grow)
    assert banks.attach("a", units=1, size=None, make=list, grow=grow) is first  # shared
    assert banks.attach("a", units=3, size=4, make=list, grow=grow) is first
    assert grown == [(2, 4)] and len(first) == 4
    assert banks.attach("b", units=3, size=None, make=lambda n: [1] * n) == [1, 1, 1]
    banks.mark_used("a")
    with pytest.raises(ValueError, match=r"has 4 units and cannot grow to 5 \(it was used"):
        banks.attach("a", units=5, size=None, make=list, grow=grow)
    with pytest.raises(ValueError, match="fixed capacity.*kernel_bank_size=4"):
        banks.attach("b", units=4, size=None, make=list)
    with pytest.raises(
        ValueError, match=r"kernel_bank_size \(2\) must be at least the units \(3\)"
    ):
        banks.attach("c", units=3, size=2, make=list)
    assert len(first) == 4 and grown == [(2, 4)]  # refused requests change nothing
    banks.clear()
    assert banks.attach("a", units=1, size=None, make=lambda n: ["new"] * n) == ["new"]
