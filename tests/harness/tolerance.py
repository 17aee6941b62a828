"""Per-element allowed errors, computed from reference-side quantities (docs/testing.md).

``yat_ratio`` (dense, conv, transposed conv): ``y = alpha (s + b)^2 / (D + eps)`` with the
expanded distance ``D = |p|^2 + |w|^2 - 2 s``. Rounding in the dot products and norms moves
``D`` by about ``k (|p|^2 + |w|^2)`` and ``s`` by about ``k |p| |w|`` (``k = c (n + 2) u``,
``n`` the accumulation length, ``u`` the unit roundoff), so to first order

    |dy| <= k (|y| + (|y| + 2 alpha |s + b|) Q / (D + eps)) + alpha (k Q)^2 / (D + eps)

with ``Q = D + 2 |s| >= |p|^2 + |w|^2 - ...`` (here ``Q = D + 2 (|s + b| + |b|)``, an upper
bound of ``|p|^2 + |w|^2``). ``D + eps`` and ``|s + b|`` come from two reference calls, at
``eps`` and ``eps + 1``: ``1 / y`` is affine in ``eps``, so
``D + eps = y(eps + 1) / (y(eps) - y(eps + 1))`` and ``alpha (s + b)^2 = y (D + eps)``, with no
access to the reference's internals. Then ``rtol |y| + atol`` is added.

``attention``: the same bound for every score (computed here directly, in float64), pushed
through the normalisation (softmax: relative ``expm1(dS_j + max dS)``; l1 and softermax:
quotient rule) and through ``weights @ v``.

``bound``: ``k * bound(inputs)``, the spec naming a float64 function of the inputs that
bounds each element's first-order rounding error in units of ``k`` (derived per function in
tests/reference.py), plus ``rtol |y| + atol``.

``rotary``: ``k (1 + 10 |angle|) (|x_even| + |x_odd|)`` (the angle is rounded to ``u |angle|``
and its frequency to ~10 u). ``elementwise``: ``rtol |y| + atol`` only.
"""

from __future__ import annotations

import math

import numpy as np

from nmn_array._spec import expr
from tests.harness import calls, families
from tests.harness.case import Case
from tests.harness.spec import Spec, resolve


def unit_roundoff(dtype: str) -> float:
    """The unit roundoff of the dtype ``dtype`` inputs are computed in (float32 for
    float16 and bfloat16: the library upcasts them)."""
    return float(np.finfo(calls.compute_dtype(dtype)).eps) / 2.0


def format_roundoff(dtype: str) -> float:
    """The unit roundoff of ``dtype`` itself (2^-11 for float16, 2^-8 for bfloat16)."""
    return float(calls.finfo(dtype).eps) / 2.0


def accumulation_k(spec: Spec, case: Case, dtype: str) -> float:
    """``k = c (n + 2) u``: the relative rounding of one accumulated dot product or norm."""
    tol = spec.tolerances
    n_acc = float(expr.evaluate(tol.get("accumulation", 1), case.env()))
    return float(tol.get("c", 4.0)) * (n_acc + 2.0) * unit_roundoff(dtype)


def _rtol_atol(spec: Spec, dtype: str) -> tuple[float, float]:
    t = spec.tolerances[dtype]
    return float(t["rtol"]), float(t.get("atol", 0.0))


def allowed(spec: Spec, case: Case, dtype: str) -> np.ndarray:
    """The allowed absolute error of every output element of ``case`` in ``dtype``."""
    key = ("allowed", spec.ref, spec.name, case.digest(), dtype)
    value = calls.SHARED.get(key)
    if value is None:
        policy = spec.tolerances["policy"]
        fn = {
            "yat_ratio": _yat_ratio,
            "attention": _attention,
            "elementwise": _elementwise,
            "bound": _bound,
        }[policy]
        value = fn(spec, case, dtype)
        if dtype in calls.LOW_PRECISION:
            value = _low_precision(spec, case, dtype, value)
        value = calls.SHARED.put(key, value)
    return value


def _low_precision(spec: Spec, case: Case, dtype: str, compute: np.ndarray) -> np.ndarray:
    """float16 / bfloat16: the float32 computation's allowed error ``compute`` (the policy
    evaluated with float32's unit roundoff on the format-rounded inputs, plus the spec's
    rtol/atol of the format), then the cast back: round to nearest moves a value by at most
    ``u_fmt`` of itself, or half the smallest subnormal below the normal range. Where the
    reference exceeds the format's largest value the output is compared with ``+-max``
    (:func:`saturated`)."""
    y = np.abs(calls.reference(spec, case, dtype))
    info = calls.finfo(dtype)
    tiny = float(info.smallest_subnormal)
    return compute + format_roundoff(dtype) * (y + compute) + 0.5 * tiny


def saturated(
    want: np.ndarray, allowed_err: np.ndarray, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """The expected output of a float16 / bfloat16 result and its allowed error: the
    reference clipped to ``+-max`` (the cast back saturates), and exactly ``+-max`` (allowed
    error 0) where even the reference minus its allowed error is beyond ``max``."""
    if dtype not in calls.LOW_PRECISION:
        return want, allowed_err
    big = float(calls.finfo(dtype).max)
    allowed_err = np.broadcast_to(allowed_err, np.shape(want))
    beyond = np.abs(want) - allowed_err > big
    return np.clip(want, -big, big), np.where(beyond, 0.0, allowed_err)


def _elementwise(spec: Spec, case: Case, dtype: str) -> np.ndarray:
    y = calls.reference(spec, case, dtype)
    rtol, atol = _rtol_atol(spec, dtype)
    out = atol + rtol * np.abs(y)
    if spec.family == "rotary":
        out = out + _rotary_extra(spec, case, dtype)
    return out


def _bound(spec: Spec, case: Case, dtype: str) -> np.ndarray:
    """``k * bound + rtol |y| + atol``, ``bound`` the spec's error-scale function of the
    dtype-rounded inputs (float64)."""
    scale = calls.evaluate(spec, case, dtype, resolve(spec.tolerances["bound"]))
    return accumulation_k(spec, case, dtype) * scale + _elementwise(spec, case, dtype)


def rotary_angles(positions: np.ndarray, d: int, theta: float) -> np.ndarray:
    """The angle ``(L, d/2)`` each pair turns by at ``positions`` ``(L,)`` or, axially,
    ``(L, 2)`` (the first half of the pairs by the row, the second by the column)."""
    if positions.ndim == 1:
        return positions[:, None] * theta ** (-2.0 * np.arange(d // 2) / d)
    freq = theta ** (-4.0 * np.arange(d // 4) / d)
    return np.concatenate([positions[:, :1] * freq, positions[:, 1:] * freq], axis=-1)


def _rotary_extra(spec: Spec, case: Case, dtype: str) -> np.ndarray:
    x = calls.rounded(case.arrays["x"], dtype)
    length, d = x.shape[-2:]
    positions = case.arrays.get("positions")
    pos = np.arange(length) if positions is None else np.asarray(positions, dtype=np.float64)
    theta = float(calls.param(case, "theta", 10000.0))
    angle = np.abs(rotary_angles(pos, d, theta))  # (L, d/2)
    pair = np.abs(x[..., 0::2]) + np.abs(x[..., 1::2])  # (..., L, d/2)
    bound = accumulation_k(spec, case, dtype) * (1.0 + 10.0 * angle) * pair
    return np.repeat(bound, 2, axis=-1)


def _yat_ratio(spec: Spec, case: Case, dtype: str) -> np.ndarray:
    y1 = calls.reference(spec, case, dtype)
    eps = float(calls.rounded(case.params.get("epsilon", 1e-5), dtype))
    delta = 1.0
    y2 = calls.reference(spec, case, dtype, {"epsilon": eps + delta})
    alpha = calls.param(case, "alpha")
    alpha = 1.0 if alpha is None else float(alpha)
    gap = y1 - y2
    positive = (y1 > 0) & (gap > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        big_e = np.where(positive, delta * y2 / np.where(positive, gap, 1.0), eps)
    big_e = np.maximum(big_e, eps)  # D + eps >= eps
    sb = np.sqrt(np.maximum(y1, 0.0) * big_e / alpha) if alpha > 0 else np.zeros_like(y1)
    b = families.bias_broadcast(spec, case, y1.shape)
    q = np.maximum(big_e - eps, 0.0) + 2.0 * (sb + b)
    # where the reference is exactly 0 (s + b == 0), y says nothing about |x|^2 + |w|^2:
    # bound it by n * (max x^2 + max w^2) (each of the n accumulated terms is at most that)
    q = np.where(positive, q, _global_q(spec, case, dtype) + 2.0 * b)
    k = accumulation_k(spec, case, dtype)
    ay = np.abs(y1)
    bound = k * (ay + (ay + 2.0 * alpha * sb) * q / big_e) + alpha * (k * q) ** 2 / big_e
    rtol, atol = _rtol_atol(spec, dtype)
    return atol + rtol * ay + bound


def _global_q(spec: Spec, case: Case, dtype: str) -> float:
    """An upper bound of ``|patch|^2 + |w|^2`` over all outputs."""
    if calls.param(case, "spherical", False):
        return 4.0
    n_acc = float(expr.evaluate(spec.tolerances.get("accumulation", 1), case.env()))
    total = 0.0
    for name in families.ROLES.get(spec.family, ()):
        a = case.arrays.get(name) if name else None
        if a is not None and a.size:
            total += float(np.max(calls.rounded(a, dtype) ** 2))
    if calls.param(case, "weight_normalized", False):
        total += 1.0
    return n_acc * total


def attention_terms(spec: Spec, case: Case, dtype: str) -> dict[str, np.ndarray]:
    """Scores, their allowed errors and the visibility mask, in float64 (broadcast shapes)."""
    key = ("attention_terms", dtype)
    if key in case.cache:
        return case.cache[key]
    q = calls.rounded(case.arrays["q"], dtype)
    k = calls.rounded(case.arrays["k"], dtype)
    eps = float(calls.rounded(case.params.get("epsilon", 1e-5), dtype))
    alpha = calls.param(case, "alpha")
    alpha = 1.0 if alpha is None else float(alpha)
    scale = calls.param(case, "scale")
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    a = alpha * scale
    if calls.param(case, "spherical", False):
        q = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + eps)
        k = k / np.sqrt(np.sum(k * k, axis=-1, keepdims=True) + eps)
    s = q @ np.swapaxes(k, -1, -2)
    diff = q[..., :, None, :] - k[..., None, :, :]
    dist = np.sum(diff * diff, axis=-1)
    if calls.param(case, "spherical", False):
        # nmn's spherical distance is 2 - 2 q.k, i.e. |q - k|^2 + (1 - |q|^2) + (1 - |k|^2)
        qq = 1.0 - np.sum(q * q, axis=-1)[..., :, None]
        kq = 1.0 - np.sum(k * k, axis=-1)[..., None, :]
        dist = np.maximum(dist + qq + kq, 0.0)
    big_e = dist + eps
    scores = a * s * s / big_e
    qq = dist + 2.0 * np.abs(s)
    kk = accumulation_k(spec, case, dtype)
    d_scores = (
        kk * (scores + (scores + 2.0 * a * np.abs(s)) * qq / big_e) + a * (kk * qq) ** 2 / big_e
    )
    lq, lk = s.shape[-2:]
    visible = np.ones((lq, lk), dtype=bool)
    if calls.param(case, "causal", False):
        visible = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq)
    mask = case.arrays.get("mask")
    if mask is not None:
        visible = np.logical_and(visible, mask)
    shape = np.broadcast_shapes(scores.shape, visible.shape)
    out = {
        "scores": np.broadcast_to(scores, shape),
        "d_scores": np.broadcast_to(d_scores, shape),
        "visible": np.broadcast_to(visible, shape),
        "eps": np.asarray(eps),
        "k": np.asarray(kk),
    }
    case.cache[key] = out
    return out


def weights_and_errors(spec: Spec, case: Case, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 attention weights and the allowed error of each (before rtol/atol)."""
    t = attention_terms(spec, case, dtype)
    scores, ds, vis = t["scores"], t["d_scores"], t["visible"]
    kk = float(t["k"])
    norm = str(calls.param(case, "normalization", "softmax")).lower()
    s_vis = np.where(vis, scores, 0.0)
    ds_vis = np.where(vis, ds, 0.0)
    if norm == "softmax":
        top = np.max(np.where(vis, scores, -np.inf), axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        e = np.where(vis, np.exp(np.where(vis, scores, top) - top), 0.0)
        total = np.sum(e, axis=-1, keepdims=True)
        w = e / np.where(total > 0, total, 1.0)
        worst = np.max(ds_vis, axis=-1, keepdims=True)
        err = w * np.expm1(np.minimum(ds_vis + worst, 50.0)) + kk * w
    elif norm == "l1":
        total = np.sum(s_vis, axis=-1, keepdims=True) + float(t["eps"])
        w = s_vis / total
        err = (ds_vis + w * np.sum(ds_vis, axis=-1, keepdims=True)) / total + kk * w
    else:
        p = float(calls.param(case, "power", 1.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(s_vis > 0, ds_vis / np.where(s_vis > 0, s_vis, 1.0), np.inf)
            pw = s_vis**p
            dp = np.where(s_vis > 0, pw * np.expm1(np.minimum(p * np.log1p(rel), 50.0)), ds_vis**p)
        total = 1e-12 + np.sum(pw, axis=-1, keepdims=True)
        w = pw / total
        err = (dp + w * np.sum(dp, axis=-1, keepdims=True)) / total + kk * w
    return np.where(vis, w, 0.0), np.where(vis, np.minimum(err, 1.0), 0.0)


def _attention(spec: Spec, case: Case, dtype: str) -> np.ndarray:
    rtol, atol = _rtol_atol(spec, dtype)
    y = calls.reference(spec, case, dtype)
    w, dw = weights_and_errors(spec, case, dtype)
    if spec.family == "attention_weights":
        return atol + rtol * np.abs(y) + np.broadcast_to(dw, y.shape)
    v = np.abs(calls.rounded(case.arrays["v"], dtype))
    kk = float(attention_terms(spec, case, dtype)["k"])
    bound = dw @ v + kk * (w @ v)
    return atol + rtol * np.abs(y) + np.broadcast_to(bound, y.shape)


def assert_close(got: np.ndarray, want: np.ndarray, allowed_err: np.ndarray, what: str) -> None:
    """``|got - want| <= allowed`` elementwise, with a message locating the worst element."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    allowed_err = np.broadcast_to(np.asarray(allowed_err, dtype=np.float64), want.shape)
    if got.size == 0:
        return
    finite = np.isfinite(want)
    bad_nan = finite & ~np.isfinite(got)
    err = np.where(finite, np.abs(got - want), 0.0)
    err = np.where(bad_nan, np.inf, err)
    over = err > allowed_err
    if not over.any():
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(over, err / np.maximum(allowed_err, 1e-300), 0.0)
    idx = np.unravel_index(int(np.argmax(ratio)), want.shape)
    raise AssertionError(
        f"{what}: {int(over.sum())} of {want.size} elements outside the tolerance; worst at "
        f"{tuple(int(i) for i in idx)}: got {got[idx]!r}, expected {want[idx]!r}, "
        f"|error| {err[idx]:.3e} > allowed {allowed_err[idx]:.3e}"
    )
