"""Meta-tests of the spec harness: a deliberately broken implementation must fail each
property. Every test wraps or monkeypatches the function under test (never the package's
source) and runs the same check the generated tests run, expecting an AssertionError.

The checks are driven by hypothesis exactly like the generated tests (derandomized, no
shrinking), so "the property catches this bug" is tested on the same input distribution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

import nmn_array
from nmn_array import _epilogue
from tests.harness import cases, checks, load
from tests.harness.spec import Spec

YAT = load("functions/yat.yaml")
CONV2D = load("functions/yat_conv.yaml", variant="yat_conv2d")
CONV1D = load("functions/yat_conv.yaml", variant="yat_conv1d")
ATTN = load("functions/yat_attention.yaml")
WEIGHTS = load("functions/yat_attention_weights.yaml")
ROTARY = load("functions/rotary_embedding.yaml", variant="rotary_embedding")
ROTARY_2D = load("functions/rotary_embedding.yaml", variant="rotary_embedding_2d")
SOFTERMAX = load("functions/softermax.yaml")
SIGMOID = load("functions/softer_sigmoid.yaml")
TANH = load("functions/soft_tanh.yaml")
WINDOW_MASK = load("functions/local_window_mask.yaml")
SLAY = load("functions/slay_features.yaml")
MACLAURIN = load("functions/maclaurin_features.yaml")
RADIAL = load("functions/radial_features.yaml")
LINEAR = load("functions/yat_linear_attention.yaml")

_SETTINGS = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)


def verdict(spec: Spec, prop: str, target: str, **draw: Any) -> AssertionError | None:
    """Run ``prop`` of ``spec`` on ``target`` over hypothesis examples; the first failure."""

    @_SETTINGS
    @given(case=cases(spec, prop, **draw))
    def check(case: Any) -> None:
        checks.run(spec, prop, target, case)

    try:
        check()
    except AssertionError as exc:
        return exc
    return None


def must_fail(spec: Spec, prop: str, target: str, broken: Callable[..., Any], **draw: Any) -> str:
    """The property fails for ``broken`` (and passes for the real function)."""
    assert verdict(spec, prop, target, **draw) is None, f"{prop} fails on the real function"
    failure = verdict(spec.with_function(broken), prop, target, **draw)
    assert failure is not None, f"{prop} did not catch the broken implementation"
    return str(failure)


# -- the three bugs the issue names --------------------------------------------------------


def test_bias_outside_the_square_fails_matches_reference():
    def broken(x, w, bias=None, **kw):
        y = nmn_array.yat(x, w, None, **kw)
        return y if bias is None else np.asarray(y + bias)

    message = must_fail(YAT, "matches_reference", "numpy:float64", broken, present=("bias",))
    assert "outside the tolerance" in message


def test_unclamped_distance_fails_nonnegative(monkeypatch):
    def unclamped_ratio(xp, dot, dist, *, bias=None, alpha=None, epsilon=1e-5, floor=0.0):
        num = dot if bias is None else dot + bias
        out = num * num / (dist + epsilon)  # no max(dist, floor)
        return out if alpha is None else out * alpha

    import nmn_array.dense

    assert verdict(YAT, "nonnegative", "numpy:float32", epsilon=1e-8) is None
    monkeypatch.setattr(nmn_array.dense, "yat_ratio", unclamped_ratio)
    failure = verdict(YAT, "nonnegative", "numpy:float32", epsilon=1e-8)
    assert failure is not None and "negative outputs" in str(failure)
    monkeypatch.setattr(nmn_array.dense, "yat_ratio", _epilogue.yat_ratio)


def test_conv_ignoring_dilation_fails_matches_reference():
    def broken(x, w, bias=None, *, dilation=1, **kw):
        return nmn_array.yat_conv(x, w, bias, **kw)

    must_fail(CONV2D, "matches_reference", "numpy:float64", broken, dilation=2)


# -- generic properties --------------------------------------------------------------------


def test_backend_specific_error_fails_cross_backend():
    import torch

    def broken(x, w, bias=None, **kw):
        y = nmn_array.yat(x, w, bias, **kw)
        return y * 1.001 if isinstance(y, torch.Tensor) else y

    must_fail(YAT, "cross_backend", "torch:float64", broken)


def test_portable_path_bug_fails_portable_equals_native():
    def broken(x, w, bias=None, *, _native=True, epsilon=1e-5, **kw):
        eps = epsilon if _native else epsilon * 3.0
        return nmn_array.yat_conv(x, w, bias, _native=_native, epsilon=eps, **kw)

    must_fail(CONV1D, "portable_equals_native", "torch:float64", broken)


def test_mixing_batch_entries_fails_batch_consistency():
    def broken(x, w, bias=None, **kw):
        # scales every row by a statistic of the whole batch
        return nmn_array.yat(x, w, bias, **kw) * (1.0 + 0.1 * float(np.abs(np.asarray(x)).max()))

    must_fail(YAT, "batch_consistency", "numpy:float64", broken)


def test_coupled_units_fail_output_slicing():
    def broken(x, w, bias=None, **kw):
        return nmn_array.yat(x, w / (1.0 + np.abs(w).sum()), bias, **kw)

    must_fail(YAT, "output_slicing", "numpy:float64", broken)


def test_conv_group_leak_fails_output_slicing():
    def broken(x, w, bias=None, **kw):
        y = nmn_array.yat_conv(x, w, bias, **kw)
        return y + 0.01 * float(np.asarray(x).sum())

    must_fail(CONV1D, "output_slicing", "numpy:float64", broken, groups=2)


def test_trace_dependent_result_fails_jit_equals_eager():
    import tensorflow as tf

    def broken(x, w, bias=None, **kw):
        y = nmn_array.yat(x, w, bias, **kw)
        return y if tf.executing_eagerly() else y * 1.01

    must_fail(YAT, "jit_equals_eager", "tensorflow:float64", broken)


def test_sqrt_of_zero_fails_grad_finite():
    import torch

    def broken(x, w, bias=None, **kw):
        # value unchanged, but d/dx sqrt(|x|^2) is inf * 0 = NaN at x == 0
        return nmn_array.yat(x, w, bias, **kw) + 0.0 * torch.sqrt(torch.sum(x * x))

    must_fail(YAT, "grad_finite", "torch:float64", broken)


def test_wrong_gradient_fails_grad_matches_finite_differences():
    import torch

    def broken(x, w, bias=None, **kw):
        # forward unchanged, gradient of x shifted by 0.5
        return nmn_array.yat(x, w, bias, **kw) + 0.5 * torch.sum(x - x.detach())

    must_fail(YAT, "grad_matches_finite_differences", "torch:float64", broken)


# -- yat invariants ------------------------------------------------------------------------


def test_wrong_epsilon_fails_self_response():
    def broken(x, w, bias=None, *, epsilon=1e-5, **kw):
        return nmn_array.yat(
            x, w, bias, epsilon=2.0 * float(np.asarray(epsilon).reshape(-1)[0]), **kw
        )

    must_fail(YAT, "self_response", "numpy:float64", broken)


def test_offset_fails_orthogonal_zero():
    def broken(x, w, bias=None, **kw):
        return nmn_array.yat(x, w, bias, **kw) + 1e-3

    must_fail(YAT, "orthogonal_zero", "numpy:float64", broken)


def test_shifted_input_fails_joint_sign_flip():
    def broken(x, w, bias=None, **kw):
        return nmn_array.yat(x + 0.5, w, bias, **kw)

    must_fail(YAT, "joint_sign_flip", "numpy:float64", broken)


def test_anisotropic_scaling_fails_joint_rotation():
    def broken(x, w, bias=None, **kw):
        scale = 1.0 + np.arange(np.shape(x)[-1])
        return nmn_array.yat(x * scale, w, bias, **kw)

    must_fail(YAT, "joint_rotation", "numpy:float64", broken)


def test_inverted_epsilon_fails_eps_monotone():
    def broken(x, w, bias=None, *, epsilon=1e-5, **kw):
        eps = float(np.asarray(epsilon).reshape(-1)[0])
        return nmn_array.yat(x, w, bias, epsilon=1.0 / eps, **kw)

    must_fail(YAT, "eps_monotone", "numpy:float64", broken)


def test_conv_dropping_bias_fails_kernel1_equals_dense():
    def broken(x, w, bias=None, **kw):
        return nmn_array.yat_conv(x, w, None, **kw)

    must_fail(CONV2D, "kernel1_equals_dense", "numpy:float64", broken, present=("bias",))


# -- attention invariants ------------------------------------------------------------------


def test_unnormalized_weights_fail_rows_normalized():
    def broken(q, k, **kw):
        return 0.9 * nmn_array.yat_attention_weights(q, k, **kw)

    must_fail(WEIGHTS, "rows_normalized", "numpy:float64", broken)


def test_position_dependent_values_fail_kv_permutation():
    def broken(q, k, v, **kw):
        ramp = np.linspace(1.0, 2.0, np.shape(v)[-2])[:, None]
        return nmn_array.yat_attention(q, k, v * ramp, **kw)

    must_fail(ATTN, "kv_permutation", "numpy:float64", broken)


def test_ignoring_causal_fails_causal_prefix():
    def broken(q, k, v, *, causal=False, **kw):
        return nmn_array.yat_attention(q, k, v, **kw)

    must_fail(ATTN, "causal_prefix", "numpy:float64", broken)


def test_ignoring_mask_fails_masked_keys_zero():
    def broken(q, k, *, mask=None, **kw):
        return nmn_array.yat_attention_weights(q, k, **kw)

    must_fail(WEIGHTS, "masked_keys_zero", "numpy:float64", broken)


def test_tiles_ignoring_the_window_fail_blocked_equals_exact():
    def broken(q, k, v, *, block_size="auto", window=None, **kw):
        tiled = block_size is not None
        return nmn_array.yat_attention(
            q, k, v, block_size=block_size, window=None if tiled else window, **kw
        )

    message = must_fail(ATTN, "blocked_equals_exact", "numpy:float64", broken)
    assert "window=(" in message


def test_tiled_gradient_off_by_1e_3_fails_blocked_equals_exact_float32():
    # the forward is untouched: only the float32 gradient bound can catch this
    def broken(q, k, v, *, block_size="auto", **kw):
        y = nmn_array.yat_attention(q, k, v, block_size=block_size, **kw)
        if block_size is None:
            return y
        return y + 1e-3 * (q - q.detach()).sum(-1, keepdim=True)

    message = must_fail(ATTN, "blocked_equals_exact", "torch:float32", broken)
    assert "d/dq vs float64" in message


def test_column_major_numbering_fails_local_window_mask_reference():
    def broken(grid_shape, radius, **kw):
        # numbering the tokens column-major is the row-major mask of the reversed grid
        r = tuple(reversed(radius)) if isinstance(radius, tuple) else radius
        return nmn_array.local_window_mask(tuple(reversed(grid_shape)), r, **kw)

    must_fail(WINDOW_MASK, "matches_reference", "numpy:float64", broken)


def test_one_sided_window_mask_fails_symmetric_reflexive():
    def broken(grid_shape, radius, *, xp=None, **kw):
        m = np.asarray(nmn_array.local_window_mask(grid_shape, radius, xp=xp, **kw))
        return np.triu(m)

    must_fail(WINDOW_MASK, "symmetric_reflexive", "numpy:float64", broken)


def test_too_narrow_grid_window_fails_grid_window_contains(monkeypatch):
    from nmn_array import attention

    assert verdict(WINDOW_MASK, "grid_window_contains", "numpy:float64") is None
    real = attention.grid_window
    monkeypatch.setattr(
        attention, "grid_window", lambda g, r: tuple(max(0, w - 1) for w in real(g, r))
    )
    assert verdict(WINDOW_MASK, "grid_window_contains", "numpy:float64") is not None


# -- rotary and squashers ------------------------------------------------------------------


def test_scaled_rotation_fails_rotation_preserves_norm():
    def broken(x, positions=None, **kw):
        return 1.01 * nmn_array.rotary_embedding(x, positions, **kw)

    must_fail(ROTARY, "rotation_preserves_norm", "numpy:float64", broken)


@pytest.mark.parametrize("spec", [ROTARY, ROTARY_2D], ids=["1d", "2d"])
def test_absolute_angles_fail_relative_position(spec):
    def broken(x, positions=None, **kw):
        # the angle grows with the square of the position: only absolute positions count
        if positions is None:
            positions = np.arange(x.shape[-2])
        return nmn_array.rotary_embedding(x, positions * positions, **kw)

    must_fail(spec, "relative_position", "numpy:float64", broken)
    must_fail(spec, "relative_position", "torch:float32", broken)


def test_wrong_denominator_fails_squasher_range():
    def broken(x, n=1.0):
        p = np.asarray(x) ** n
        return p / (0.5 + p)

    must_fail(SIGMOID, "squasher_range", "numpy:float64", broken)


def test_wrong_offset_fails_soft_tanh_identity():
    def broken(x, n=1.0):
        return nmn_array.soft_tanh(x, n) * 0.99

    must_fail(TANH, "soft_tanh_identity", "numpy:float64", broken)


def test_missing_check_fails_nonpositive_n_raises():
    def broken(x, n=1.0, **kw):
        return nmn_array.softermax(x, abs(n) or 1.0, **kw)

    must_fail(SOFTERMAX, "nonpositive_n_raises", "numpy:float64", broken)


def test_reference_agreement_is_not_vacuous():
    """A float32 result perturbed by 1e-3 relative is outside the float32 tolerance."""

    def broken(x, w, bias=None, **kw):
        return nmn_array.yat(x, w, bias, **kw) * (1.0 + 1e-3)

    must_fail(YAT, "matches_reference", "numpy:float32", broken)


# -- module == function ----------------------------------------------------------------------

ATTN_LAYER = load("layers/attention.yaml")
DENSE_LAYER = load("layers/dense.yaml")


@pytest.mark.parametrize("target", ["torch:float64", "mlx:float64"])
def test_attention_ignoring_alpha_fails_module_equals_function(target):
    """The harness-side projections and the function call are compared, not just shapes."""

    def broken(q, k, v, **kw):
        kw["alpha"] = None
        return nmn_array.yat_attention(q, k, v, **kw)

    # alpha pinned to a value other than 1: which alpha modes the derandomized draws reach
    # depends on the whole spec (adding a framework's entry changed them)
    must_fail(ATTN_LAYER, "module_equals_function", target, broken, alpha_mode="constant")


@pytest.mark.parametrize("framework", ["nnx", "mlx"])
def test_forgotten_weight_fails_module_equals_function(framework):
    """JAX modules are built abstractly and MLX modules poisoned after their first call; a
    variable the spec does not set is NaN, so a spec that forgets one fails instead of
    comparing against an arbitrary initial value."""
    data = {**DENSE_LAYER.data, "modules": dict(DENSE_LAYER.data["modules"])}
    data["modules"][framework] = {
        **data["modules"][framework],
        "weights": {"alpha": "alpha if alpha_mode == 'learnable' else None"},
    }
    unit = dataclasses.replace(
        DENSE_LAYER.unit, file=dataclasses.replace(DENSE_LAYER.unit.file, data=data)
    )
    failure = verdict(Spec(unit), "module_equals_function", f"{framework}:float64")
    assert failure is not None and "nan" in str(failure).lower()


@pytest.mark.parametrize("prop", sorted(checks.CHECKS))
def test_every_check_is_exercised_here(prop):
    """Each harness check has at least one meta-test above (module == function aside)."""
    source = open(__file__).read()
    assert f'"{prop}"' in source, f"no meta-test breaks {prop}"


# -- random features and linear attention ---------------------------------------------------


def test_features_scaled_by_1e_5_fail_matches_reference_float32():
    # the "bound" tolerance is tight: a relative error of 1e-5 is far outside float32 rounding
    def broken(x, projection, **kw):
        return nmn_array.maclaurin_features(x, projection, **kw) * (1.0 + 1e-5)

    must_fail(MACLAURIN, "matches_reference", "numpy:float32", broken)


def test_slay_features_in_nodes_major_order_fail_matches_reference():
    def broken(x, projection, **kw):
        y = nmn_array.slay_features(x, projection, **kw)
        p = np.shape(projection["anchors"])[0]
        r, m = np.shape(projection["projections"])[:2]
        y = np.reshape(y, (*np.shape(y)[:-1], p, m, r))
        return np.reshape(np.swapaxes(y, -1, -2), np.shape(y)[:-3] + (p * m * r,))

    must_fail(SLAY, "matches_reference", "numpy:float64", broken)


def test_radial_features_without_the_bias_coordinate_fail_matches_reference():
    def broken(x, projection, **kw):
        return nmn_array.radial_features(x, {**projection, "bias": np.zeros(())}, **kw)

    must_fail(RADIAL, "matches_reference", "numpy:float64", broken)


def test_causal_chunks_seeing_their_own_future_fail_causal_prefix():
    def broken(q, k, v, features, *, causal=False, **kw):
        # every chunk of two tokens sees both of its tokens: a within-chunk leak
        out = nmn_array.yat_linear_attention(q, k, v, features, causal=causal, **kw)
        if not causal or np.shape(q)[-2] < 2:
            return out
        pair = nmn_array.yat_linear_attention(q[..., :2, :], k[..., :2, :], v[..., :2, :], features)
        return np.concatenate([pair[..., :1, :], out[..., 1:, :]], axis=-2)

    must_fail(LINEAR, "causal_prefix", "numpy:float64", broken)


def test_linear_attention_ignoring_the_mask_fails_matches_reference():
    def broken(q, k, v, features, *, mask=None, **kw):
        return nmn_array.yat_linear_attention(q, k, v, features, **kw)

    must_fail(LINEAR, "matches_reference", "numpy:float64", broken)


# -- float16 / bfloat16 ----------------------------------------------------------------------

#: parameters the hand-written low-precision yat below does not implement
_PLAIN_YAT = {"alpha": None, "spherical": False, "weight_normalized": False, "epsilon": 1e-3}


def _yat_in_the_format(x, w, bias=None, *, epsilon=1e-5, **_):
    """The yat product computed in the input's own dtype (float16): the squares overflow at
    |x| ~ 256, the expanded distance cancels, and y beyond 65504 is inf."""
    dt = x.dtype
    w2 = w if w.ndim == 2 else w[None, :]
    dot = x @ w2.T
    num = dot if bias is None else dot + bias
    dist = np.sum(x * x, axis=-1)[..., None] + np.sum(w2 * w2, axis=-1) - dot * np.asarray(2, dt)
    y = num * num / (np.maximum(dist, np.asarray(0, dt)) + np.asarray(epsilon, dt))
    return (y if w.ndim == 2 else y[..., 0]).astype(dt)


@pytest.mark.parametrize("prop", ["matches_reference", "large_inputs_finite"])
def test_yat_computed_in_float16_fails(prop):
    message = must_fail(YAT, prop, "numpy:float16", _yat_in_the_format, **_PLAIN_YAT)
    assert "outside the tolerance" in message or "not finite" in message


def _float32_result(x, w, bias=None, **kw):
    """The right values, returned in float32 instead of the input's dtype."""
    y = nmn_array.yat(x, w, bias, **kw)
    return y.float() if hasattr(y, "float") else np.asarray(y, dtype=np.float32)


@pytest.mark.parametrize("target", ["numpy:float16", "torch:bfloat16"])
@pytest.mark.parametrize("prop", ["matches_reference", "large_inputs_finite"])
def test_float32_result_for_low_precision_input_fails(prop, target):
    message = must_fail(YAT, prop, target, _float32_result)
    assert "output dtype float32" in message


def _unsaturated_cast(x, w, bias=None, **kw):
    """float32 compute, then a plain cast back: values beyond 65504 become inf."""
    if hasattr(x, "float"):  # torch
        up = [None if a is None else a.float() for a in (x, w, bias)]
        return nmn_array.yat(*up, **kw).to(x.dtype)
    up = [None if a is None else np.asarray(a, np.float32) for a in (x, w, bias)]
    return np.asarray(nmn_array.yat(*up, **kw)).astype(x.dtype)


@pytest.mark.parametrize("target", ["numpy:float16", "torch:float16"])
@pytest.mark.parametrize("prop", ["matches_reference", "large_inputs_finite"])
def test_cast_back_without_saturation_fails(prop, target):
    # epsilon 1e-5: at the spec's x == w boundary y = (|x|^2 + b)^2 / epsilon passes 65504
    message = must_fail(YAT, prop, target, _unsaturated_cast, epsilon=1e-5)
    assert "inf" in message


@pytest.mark.parametrize("prop", ["matches_reference", "large_inputs_finite"])
def test_exact_saturation_is_required(prop):
    """Where even the reference minus its tolerance exceeds the format's largest value, the
    output must be exactly +-max: a cast back that stops one float16 step short fails."""

    def short_of_max(x, w, bias=None, **kw):
        y = nmn_array.yat(x, w, bias, **kw)
        return np.where(y == np.float16(65504), np.float16(65472), y).astype(y.dtype)

    message = must_fail(YAT, prop, "numpy:float16", short_of_max, epsilon=1e-5)
    assert "got np.float64(65472.0), expected np.float64(65504.0)" in message
