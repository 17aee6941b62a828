"""Yat, attention, rotary and squasher invariants. Each check computes both sides on the
backend under test and allows the sum of both sides' tolerances (docs/testing.md)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

import nmn_array
from tests.backends import Backend
from tests.harness import calls, families, tolerance
from tests.harness.case import ArrayParam, Case, plain
from tests.harness.spec import Spec


def _what(spec: Spec, prop: str, b: Backend, dtype: str) -> str:
    return f"{spec.name} {prop} on {b}:{dtype}"


def _rng(case: Case) -> np.random.Generator:
    """A generator seeded by the case's data: deterministic, but different per example."""
    seed = 0
    for name in sorted(case.arrays):
        a = case.arrays[name]
        if a is not None:
            seed = zlib.crc32(np.ascontiguousarray(a).tobytes(), seed)
    return np.random.default_rng(seed)


def _pair(spec: Spec, b: Backend, dtype: str, a: Case, c: Case) -> tuple[Any, Any, Any]:
    """Outputs of two cases and the tolerance of their difference."""
    ya = calls.run(spec, b, a, dtype)
    yc = calls.run(spec, b, c, dtype)
    tol = tolerance.allowed(spec, a, dtype) + tolerance.allowed(spec, c, dtype)
    return ya, yc, tol


# -- yat ---------------------------------------------------------------------------------


def nonnegative(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``alpha >= 0`` and a square over a clamped distance plus epsilon: never negative."""
    y = calls.run(spec, b, case, dtype)
    assert np.all(np.isfinite(y)), f"{_what(spec, 'nonnegative', b, dtype)}: non-finite output"
    assert np.all(y >= 0), (
        f"{_what(spec, 'nonnegative', b, dtype)}: {int((y < 0).sum())} negative outputs, "
        f"min {y.min()!r} (boundary={case.boundary!r})"
    )


def _plain_dense(case: Case) -> Case:
    return case.replace(
        params={"spherical": False, "weight_normalized": False}, arrays={"bias": None}
    )


def self_response(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``yat(w, w) = alpha |w|^4 / epsilon`` (distance 0), to a tolerance that stays bounded.

    The distance of each input to its nearest neuron is computed directly (docs/math.md,
    "Accuracy"), so the diagonal is exact up to ``3 k |y|`` (``k`` from the accumulation
    length): rounding of the numerator twice, of the norms once. Rows that have another row
    within the expanded form's own error are not isolated and carry the documented weaker
    bound; they are left out of this check.
    """
    case = _plain_dense(case)
    w = case.arrays["w"]
    c = case.replace(arrays={"x": w.copy()})
    y = calls.run(spec, b, c, dtype)
    wr = calls.rounded(w, dtype)
    alpha = calls.param(c, "alpha")
    alpha = 1.0 if alpha is None else float(calls.rounded(c.params["alpha"], dtype))
    eps = float(calls.rounded(c.params.get("epsilon", 1e-5), dtype))
    sq = np.sum(wr * wr, axis=-1)
    want = alpha * sq**2 / eps
    k = tolerance.accumulation_k(spec, c, dtype)
    if w.ndim == 2:
        y = np.diagonal(y)
        isolated = _isolated_rows(wr, k)
        y, want = y[isolated], want[isolated]
    tolerance.assert_close(y, want, 3 * k * np.abs(want), _what(spec, "self_response", b, dtype))


def _isolated_rows(w: np.ndarray, k: float) -> np.ndarray:
    """Rows whose every other row is farther than the expanded distance's error bound."""
    diff = w[:, None, :] - w[None, :, :]
    dist = np.sum(diff * diff, axis=-1)
    sq = np.sum(w * w, axis=-1)
    near = dist <= 8 * k * (sq[:, None] + sq[None, :])
    np.fill_diagonal(near, False)
    return ~np.any(near, axis=-1)


def orthogonal_zero(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``x`` orthogonal to neuron 0 (and no bias) gives 0 for that neuron."""
    case = case.replace(arrays={"bias": None})
    x, w = case.arrays["x"], case.arrays["w"]
    w0 = calls.rounded(w if w.ndim == 1 else w[0], dtype)
    norm = float(w0 @ w0)
    if norm > 0:
        x = x - (x @ w0)[..., None] * w0 / norm
    c = case.replace(arrays={"x": x})
    y = calls.run(spec, b, c, dtype)
    y0 = y if w.ndim == 1 else y[..., 0]
    tol = tolerance.allowed(spec, c, dtype)
    tol0 = tol if w.ndim == 1 else tol[..., 0]
    # the rounded inputs are orthogonal only to rounding: compare with the reference's value
    ref = calls.reference(spec, c, dtype)
    ref0 = ref if w.ndim == 1 else ref[..., 0]
    tolerance.assert_close(
        y0, np.zeros_like(y0), tol0 + np.abs(ref0), _what(spec, "orthogonal_zero", b, dtype)
    )


def joint_sign_flip(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Negating the listed inputs together leaves the output unchanged."""
    names = spec.options("joint_sign_flip").get("negate") or list(families.ROLES[spec.family])
    flipped = {n: -case.arrays[n] for n in names if n and case.arrays.get(n) is not None}
    y, yf, tol = _pair(spec, b, dtype, case, case.replace(arrays=flipped))
    tolerance.assert_close(yf, y, tol, _what(spec, "joint_sign_flip", b, dtype))


def joint_rotation(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Rotating the listed inputs by one orthogonal matrix leaves the output unchanged."""
    names = spec.options("joint_rotation").get("rotate") or list(families.ROLES[spec.family])
    d = case.arrays[names[0]].shape[-1]
    q, r = np.linalg.qr(_rng(case).normal(size=(d, d)))
    q = q * np.sign(np.diagonal(r))
    rotated = {n: case.arrays[n] @ q.T for n in names if case.arrays.get(n) is not None}
    y, yr, tol = _pair(spec, b, dtype, case, case.replace(arrays=rotated))
    tolerance.assert_close(yr, y, tol, _what(spec, "joint_rotation", b, dtype))


def eps_monotone(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """A larger epsilon never increases the output."""
    eps = float(calls.param(case, "epsilon", 1e-5))
    bigger = case.replace(params={"epsilon": eps * 10.0 + 1e-3})
    y, yb, tol = _pair(spec, b, dtype, case, bigger)
    over = yb > y + tol
    assert not over.any(), (
        f"{_what(spec, 'eps_monotone', b, dtype)}: {int(over.sum())} outputs grew when epsilon "
        f"went from {eps} to {eps * 10 + 1e-3}; e.g. {y[over][0]!r} -> {yb[over][0]!r}"
    )


def kernel1_equals_dense(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """A 1x1 yat convolution is the dense yat product applied at every position."""
    x, w = case.arrays["x"], case.arrays["w"]
    groups = int(calls.param(case, "groups", 1))
    nd = x.ndim - 2
    tap = w[(slice(None), slice(None), *([0] * nd))]  # (O, C/groups)
    dense_w = np.concatenate([tap] * groups, axis=1) if groups > 1 else tap  # (O, C)
    conv_w = dense_w.reshape(dense_w.shape + (1,) * nd)
    c = case.replace(
        arrays={"w": conv_w},
        params={
            "stride": 1,
            "dilation": 1,
            "padding": 0,
            "groups": 1,
            "padding_mode": "zeros",
        },
    )
    y_conv = calls.run(spec, b, c, dtype)
    last = calls.param(case, "data_format") == "channels_last"
    x_last = x if last else np.moveaxis(x, 1, -1)
    kwargs = {
        name: case.params[name]
        for name in ("alpha", "epsilon", "weight_normalized")
        if name in case.params
    }
    dense_spec = _dense_view(spec)
    dense_case = Case(
        params=kwargs,
        dims={},
        arrays={"x": x_last, "w": dense_w, "bias": case.arrays.get("bias")},
    )
    y_dense = calls.run(dense_spec, b, dense_case, dtype, fn=nmn_array.yat)
    if not last:
        y_dense = np.moveaxis(y_dense, -1, 1)
    tol = 2.0 * tolerance.allowed(spec, c, dtype)
    tolerance.assert_close(y_conv, y_dense, tol, _what(spec, "kernel1_equals_dense", b, dtype))


class _DenseView:
    """Just enough of a Spec to call ``nmn_array.yat`` through :func:`calls.run`."""

    name = "yat"
    arrays = {"x": {}, "w": {}, "bias": {"optional": True}}
    call = ["x", "w", "bias"]
    params = {"alpha": {}, "epsilon": {}, "weight_normalized": {}}
    data = {"output": {"dtype": "x"}}  # the keys calls.call / calls.run read
    fn = staticmethod(nmn_array.yat)


def _dense_view(spec: Spec) -> Any:
    return _DenseView()


# -- attention ---------------------------------------------------------------------------


def rows_normalized(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Weight rows sum to 1 (softmax), ``T / (T + eps)`` (l1) or ``U / (1e-12 + U)``
    (softermax) over the visible keys; rows with no visible key sum to 0."""
    y = calls.run(spec, b, case, dtype)
    t = tolerance.attention_terms(spec, case, dtype)
    vis, scores = t["visible"], t["scores"]
    norm = str(calls.param(case, "normalization", "softmax")).lower()
    any_visible = vis.any(axis=-1)
    if norm == "softmax":
        want = np.where(any_visible, 1.0, 0.0)
    elif norm == "l1":
        total = np.sum(np.where(vis, scores, 0.0), axis=-1)
        want = total / (total + float(t["eps"]))
    else:
        p = float(calls.param(case, "power", 1.0))
        total = np.sum(np.where(vis, scores, 0.0) ** p, axis=-1)
        want = total / (1e-12 + total)
    want = np.broadcast_to(want, y.shape[:-1])
    allowed = np.sum(np.broadcast_to(tolerance.allowed(spec, case, dtype), y.shape), axis=-1)
    tolerance.assert_close(y.sum(axis=-1), want, allowed, _what(spec, "rows_normalized", b, dtype))


def kv_permutation(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Permuting keys and values together (and the mask's key axis) changes nothing."""
    case = case.replace(params={"causal": False})
    lk = case.arrays["k"].shape[-2]
    perm = _rng(case).permutation(lk)
    arrays = {n: case.arrays[n][..., perm, :] for n in ("k", "v")}
    mask = case.arrays.get("mask")
    if mask is not None and mask.shape[-1] == lk:
        arrays["mask"] = mask[..., perm]
    y, yp, tol = _pair(spec, b, dtype, case, case.replace(arrays=arrays))
    tolerance.assert_close(yp, y, tol, _what(spec, "kv_permutation", b, dtype))


def causal_prefix(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """With ``causal=True``, changing keys (and values) a query cannot see leaves its output
    unchanged, and its weights on those keys are exactly 0."""
    case = case.replace(params={"causal": True})
    k = case.arrays["k"]
    lq, lk = case.arrays["q"].shape[-2], k.shape[-2]
    cut = lk // 2
    rng = _rng(case)
    arrays = {"k": k.copy()}
    arrays["k"][..., cut:, :] = rng.uniform(-3, 3, size=arrays["k"][..., cut:, :].shape)
    if case.arrays.get("v") is not None:
        arrays["v"] = case.arrays["v"].copy()
        arrays["v"][..., cut:, :] = rng.uniform(-3, 3, size=arrays["v"][..., cut:, :].shape)
    changed = case.replace(arrays=arrays)
    y, yc, tol = _pair(spec, b, dtype, case, changed)
    # query i sees key j iff j <= i + lk - lq: queries with i + lk - lq < cut see none changed
    blind = [i for i in range(lq) if i + lk - lq < cut]
    what = _what(spec, "causal_prefix", b, dtype)
    if blind:
        tolerance.assert_close(
            yc[..., blind, :], y[..., blind, :], tol[..., blind, :], what + f" (queries {blind})"
        )
    if spec.family == "attention_weights":
        future = np.arange(lk)[None, :] > np.arange(lq)[:, None] + (lk - lq)
        leaked = np.broadcast_to(future, y.shape) & (y != 0)
        assert not leaked.any(), f"{what}: {int(leaked.sum())} nonzero weights on future keys"


def _window_visible(lq: int, lk: int, window: tuple[int | None, int | None]) -> np.ndarray:
    """The ``(Lq, Lk)`` visibility of ``window=(left, right)``, end-aligned like ``causal``:
    query ``i`` sits at key position ``p = i + Lk - Lq`` and sees ``p - left <= j <= p + right``
    (``None``: that side unlimited)."""
    left, right = window
    p = np.arange(lq)[:, None] + (lk - lq)
    j = np.arange(lk)[None, :]
    seen = np.ones((lq, lk), dtype=bool)
    if left is not None:
        seen &= j >= p - left
    if right is not None:
        seen &= j <= p + right
    return seen


def _with_window_mask(case: Case, window: tuple[int | None, int | None] | None) -> Case:
    """``case`` whose ``mask`` also hides what ``window`` hides (for the tolerance only)."""
    if window is None:
        return case
    lq, lk = case.arrays["q"].shape[-2], case.arrays["k"].shape[-2]
    seen = _window_visible(lq, lk, window)
    mask = case.arrays.get("mask")
    return case.replace(arrays={"mask": seen if mask is None else np.logical_and(mask, seen)})


def _rounded_case(case: Case, dtype: str) -> Case:
    """``case`` with its float arrays and float parameters rounded to ``dtype`` (still
    float64): the inputs a ``dtype`` run sees, for a float64 run on the same values."""
    params = {}
    for name, value in case.params.items():
        if isinstance(value, ArrayParam):
            params[name] = ArrayParam(calls.rounded(value, dtype), value.shape)
        elif isinstance(value, float):
            params[name] = calls.rounded(value, dtype)
    arrays = {n: calls.rounded(a, dtype) for n, a in case.arrays.items() if a is not None}
    return case.replace(params=params, arrays=arrays)


#: float32 gradients of the tiled path may be this many times further from the float64
#: gradient than the materialised path's (tiles sum in another order; measured up to ~1.5x)
TILED_GRAD_ERROR_FACTOR = 4.0


def blocked_equals_exact(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``block_size=1`` and ``2`` (tiles smaller than the sequences: running normalisers,
    skipped tiles) equal the materialised ``block_size=None``, without and with a window drawn
    from the case's data.

    Outputs: within the sum of both sides' tolerances (the window's hidden keys count as
    masked). Gradients w.r.t. q, k, v on autodiff backends: float64 within ``1e-9`` of the
    largest |gradient| (of q, k and v); float32 no further from the float64 gradient (of the
    same rounded inputs) than :data:`TILED_GRAD_ERROR_FACTOR` times the materialised float32
    gradient's largest error, plus the spec's grad tolerance relative to the largest
    |gradient|. A float32 gradient summed over several terms loses digits to cancellation,
    so the materialised path itself is only that accurate; the bound follows it, never more.
    """
    from tests.harness import checks  # checks imports this module

    rng = _rng(case)
    lk = case.arrays["k"].shape[-2]
    sides: list[int | None] = [int(rng.integers(0, lk)), int(rng.integers(0, lk))]
    unlimited = int(rng.integers(0, 4))  # 0: left side unlimited, 1: right, else neither
    if unlimited < 2:
        sides[unlimited] = None
    names = ["q", "k", "v"]
    for window in (None, (sides[0], sides[1])):
        exact = {"block_size": None, "window": window}
        y = calls.run(spec, b, case, dtype, extra=exact)
        tol = 2.0 * tolerance.allowed(spec, _with_window_mask(case, window), dtype)
        if b.autodiff:
            want = checks.gradients(spec, b, case, dtype, names, extra=exact)
            # float64: relative to the largest gradient of all three, because d/dq or d/dk
            # can cancel to ~1e-12 (a saturated softermax weight) and keep the absolute
            # rounding error of its O(1) terms, which d/dv (sums of weights) has the size of
            scale64 = max(float(np.max(np.abs(g), initial=0.0)) for g in want)
            if dtype != "float64":
                truth = checks.gradients(
                    spec, b, _rounded_case(case, dtype), "float64", names, extra=exact
                )
        for size in (1, 2):
            what = _what(spec, "blocked_equals_exact", b, dtype) + f" ({size=}, {window=})"
            tiled = {"block_size": size, "window": window}
            tolerance.assert_close(calls.run(spec, b, case, dtype, extra=tiled), y, tol, what)
            if not b.autodiff:
                continue
            got = checks.gradients(spec, b, case, dtype, names, extra=tiled)
            for i, name in enumerate(names):
                grad_tol = spec.tolerances["grad"]
                if dtype == "float64":
                    bound = 1e-9 * scale64
                    tolerance.assert_close(got[i], want[i], bound, what + f" d/d{name}")
                    continue
                exact_error = float(np.max(np.abs(want[i] - truth[i]), initial=0.0))
                scale = float(np.max(np.abs(truth[i]), initial=0.0))
                bound = (
                    TILED_GRAD_ERROR_FACTOR * exact_error
                    + grad_tol["rtol"] * scale
                    + grad_tol["atol"]
                )
                tolerance.assert_close(
                    got[i],
                    truth[i],
                    bound,
                    what + f" d/d{name} vs float64 (materialised float32 error {exact_error:.3e})",
                )


def symmetric_reflexive(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """A neighbourhood relation: every token sees itself, and ``a`` sees ``b`` iff ``b``
    sees ``a``."""
    m = calls.run(spec, b, case, dtype) != 0
    what = _what(spec, "symmetric_reflexive", b, dtype)
    assert np.all(np.diagonal(m)), (
        f"{what}: tokens {np.flatnonzero(~np.diagonal(m))} miss themselves"
    )
    asym = m != m.T
    assert not asym.any(), f"{what}: asymmetric at {np.argwhere(asym)[:5].tolist()}"


def grid_window_contains(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``grid_window(grid_shape, radius)`` is the smallest symmetric 1-D window containing
    the mask: no visible pair lies outside it, and one lies on its edge."""
    from nmn_array.attention import grid_window

    m = calls.run(spec, b, case, dtype) != 0
    left, right = grid_window(case.params["grid_shape"], case.params["radius"])
    offset = np.arange(m.shape[1])[None, :] - np.arange(m.shape[0])[:, None]
    what = _what(spec, "grid_window_contains", b, dtype) + f" (window ({left}, {right}))"
    outside = m & ((offset < -left) | (offset > right))
    assert not outside.any(), (
        f"{what}: visible pairs outside at {np.argwhere(outside)[:5].tolist()}"
    )
    widest = int(np.max(np.abs(offset[m])))
    assert widest == left == right, f"{what}: the widest visible offset is {widest}"


def masked_keys_zero(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """Masked keys get weight exactly 0; a query that sees no key gets all zeros, no NaN."""
    y = calls.run(spec, b, case, dtype)
    what = _what(spec, "masked_keys_zero", b, dtype)
    assert np.all(np.isfinite(y)), f"{what}: non-finite weights"
    vis = tolerance.attention_terms(spec, case, dtype)["visible"]
    hidden = np.broadcast_to(~vis, y.shape) & (y != 0)
    assert not hidden.any(), (
        f"{what}: {int(hidden.sum())} masked (query, key) pairs have nonzero weight, e.g. "
        f"{y[hidden][0]!r}"
    )


# -- rotary and squashers ----------------------------------------------------------------


def rotation_preserves_norm(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """RoPE rotates each interleaved pair: every pair keeps its length."""
    y = calls.run(spec, b, case, dtype)
    x = calls.rounded(case.arrays["x"], dtype)
    got = y[..., 0::2] ** 2 + y[..., 1::2] ** 2
    want = x[..., 0::2] ** 2 + x[..., 1::2] ** 2
    allowed = tolerance.allowed(spec, case, dtype)
    pair_tol = (allowed[..., 0::2] + allowed[..., 1::2]) * 2.0 * np.sqrt(want + 1e-300)
    tolerance.assert_close(
        got, want, pair_tol + 1e-300, _what(spec, "rotation_preserves_norm", b, dtype)
    )


def relative_position(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """For fixed contents, the yat score ``(a.b)^2 / (|a - b|^2 + eps)`` between a row
    rotated at ``p`` and a row rotated at ``r`` depends only on ``p - r``: shifting every
    position by the same amount (per axis in 2-D) leaves the scores between all rows alike."""
    x = case.arrays["x"]
    length = x.shape[-2]
    pos = case.arrays.get("positions")
    pos = np.arange(length, dtype=np.int64) if pos is None else np.asarray(pos)
    shift = np.array([7, 3], dtype=np.int64)[: 1 if pos.ndim == 1 else 2]
    ys = [
        calls.run(spec, b, case.replace(arrays={"positions": p}), dtype) for p in (pos, pos + shift)
    ]
    # each output is within ``allowed`` of its exact value, and the exact scores are equal
    errs = [
        tolerance.allowed(spec, case.replace(arrays={"positions": p}), dtype)
        for p in (pos, pos + shift)
    ]
    # G = a.b and D = |a - b|^2 of the two runs differ by at most d_gram and d_dist
    eps = 1e-5
    y = ys[0]
    na = sum(np.linalg.norm(e, axis=-1) for e in errs)
    ny = np.linalg.norm(y, axis=-1) + na  # bounds the exact rows' norms too
    gram = [t @ np.swapaxes(t, -1, -2) for t in ys]
    dist = [np.sum((t[..., :, None, :] - t[..., None, :, :]) ** 2, axis=-1) for t in ys]
    score = [g**2 / (q + eps) for g, q in zip(gram, dist)]
    d_gram = na[..., :, None] * ny[..., None, :] + ny[..., :, None] * na[..., None, :]
    d_gram = d_gram + na[..., :, None] * na[..., None, :]
    pair = na[..., :, None] + na[..., None, :]
    d_dist = 2.0 * (np.sqrt(dist[0]) + pair) * pair + pair**2
    room = np.maximum(dist[0] + eps - d_dist, 0.0)
    with np.errstate(divide="ignore"):
        bound = (2.0 * np.abs(gram[0]) * d_gram + d_gram**2 + score[0] * d_dist) / room
    tolerance.assert_close(
        score[1],
        score[0],
        1.01 * bound + 1e-300,
        _what(spec, "relative_position", b, dtype) + f" (positions shifted by {shift.tolist()})",
    )


def squasher_range(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """softermax in [0, 1] with row sums <= 1; softer_sigmoid in [0, 1] with value 1/2 at 1;
    soft_tanh in [-1, 1] with value 0 at 1."""
    what = _what(spec, "squasher_range", b, dtype)
    y = calls.run(spec, b, case, dtype)
    assert np.all(np.isfinite(y)), f"{what}: non-finite output"
    low = -1.0 if spec.family == "soft_tanh" else 0.0
    assert np.all(y >= low) and np.all(y <= 1.0), (
        f"{what}: outputs outside [{low}, 1]: {y.min()}, {y.max()}"
    )
    if spec.family == "softermax":
        axis = int(calls.param(case, "axis", -1))
        assert np.all(y.sum(axis=axis) <= 1.0 + 1e-5), f"{what}: a row sums above 1"
        return
    ones = case.replace(arrays={"x": np.ones_like(case.arrays["x"])})
    at_one = calls.run(spec, b, ones, dtype)
    want = 0.0 if spec.family == "soft_tanh" else 0.5
    tolerance.assert_close(
        at_one, np.full_like(at_one, want), 4 * np.finfo(dtype).eps, what + " at x = 1"
    )


def soft_tanh_identity(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``soft_tanh(x, n) == 2 softer_sigmoid(x, n) - 1``."""
    st = calls.run(spec, b, case, dtype)
    ss = calls.run(spec, b, case, dtype, fn=nmn_array.softer_sigmoid)
    tol = 2.0 * tolerance.allowed(spec, case, dtype) + 4 * np.finfo(dtype).eps
    tolerance.assert_close(st, 2.0 * ss - 1.0, tol, _what(spec, "soft_tanh_identity", b, dtype))


def nonpositive_n_raises(spec: Spec, b: Backend, dtype: str, case: Case) -> None:
    """``n <= 0`` raises ValueError (at call time, also under jit)."""
    for n in (0.0, -1.0, -2.5):
        try:
            calls.call(spec, b, case.replace(params={"n": n}), dtype)
        except ValueError as exc:
            assert "n" in str(exc), f"the ValueError for n={n} does not name n: {exc}"
        else:
            raise AssertionError(
                f"{_what(spec, 'nonpositive_n_raises', b, dtype)}: n={n} did not raise ValueError"
            )


INVARIANTS: dict[str, Callable[[Spec, Backend, str, Case], None]] = {
    "nonnegative": nonnegative,
    "self_response": self_response,
    "orthogonal_zero": orthogonal_zero,
    "joint_sign_flip": joint_sign_flip,
    "joint_rotation": joint_rotation,
    "kernel1_equals_dense": kernel1_equals_dense,
    "eps_monotone": eps_monotone,
    "rows_normalized": rows_normalized,
    "kv_permutation": kv_permutation,
    "causal_prefix": causal_prefix,
    "blocked_equals_exact": blocked_equals_exact,
    "masked_keys_zero": masked_keys_zero,
    "symmetric_reflexive": symmetric_reflexive,
    "grid_window_contains": grid_window_contains,
    "rotation_preserves_norm": rotation_preserves_norm,
    "relative_position": relative_position,
    "squasher_range": squasher_range,
    "soft_tanh_identity": soft_tanh_identity,
    "nonpositive_n_raises": nonpositive_n_raises,
}

_ = plain  # re-exported helpers stay importable from here
