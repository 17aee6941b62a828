"""The functional attention API of every framework module against nmn 0.3.5's.

``nmn.<fw>`` exports ``yat_attention``, ``yat_attention_weights``, ``yat_attention_normalized``
and ``normalize_qk`` (NNX also dot-product attention and Flax's mask helpers), in the layout
``(batch, length, heads, dim)``. Ours are thin calls of ``nmn_array.yat_attention``; these
tests hold them to nmn's outputs on the same inputs, and check dropout, masks and errors.

Tolerances: torch, Keras (on TensorFlow) and TF compute in float64 like nmn (1e-10, scaled
error); nmn's NNX and Linen functions compute in float32 whatever the input, so those are
compared in float32, where a softmax of scores ~1e2 loses ~1e-6 relative: 2e-5. nmn.mlx runs
float64 through MLX's float64 ``exp``, which is only float32-accurate (ours rebuilds it, see
docs/frameworks/mlx.md): 2e-7.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.frameworks._parity import RTOL_F64, assert_parity, to_numpy  # noqa: E402

RTOL_F32 = 2e-5
RTOL_MLX = 2e-7
FRAMEWORKS = ("torch", "nnx", "linen", "keras", "tf", "mlx")


class Api:
    """One framework's functions (ours and nmn's) and how to make its arrays."""

    def __init__(self, name: str) -> None:
        import importlib

        self.name = name
        self.ours = importlib.import_module(f"nmn_array.frameworks.{name}")
        # nmn.torch keeps them in its attention package, the others at the top level
        self.ref = importlib.import_module(
            "nmn.torch.attention" if name == "torch" else f"nmn.{name}"
        )
        self.flax = name in ("nnx", "linen")
        self.dtype = np.float32 if self.flax else np.float64
        self.rtol = RTOL_F32 if self.flax else RTOL_MLX if name == "mlx" else RTOL_F64

    def array(self, a: np.ndarray) -> Any:
        a = a.astype(self.dtype) if a.dtype.kind == "f" else a
        if self.name == "torch":
            import torch

            return torch.from_numpy(a)
        if self.flax:
            import jax.numpy as jnp

            return jnp.asarray(a)
        if self.name == "mlx":
            import mlx.core as mx

            # explicit dtype: mx.array makes float32 of a NumPy float64 array
            return mx.array(a, dtype=getattr(mx, "bool_" if a.dtype == bool else a.dtype.name))
        import tensorflow as tf

        return tf.constant(a)

    def no_dropout(self) -> dict[str, Any]:
        """Keyword arguments that switch dropout off in both APIs."""
        if self.name == "torch":
            return {"training": False}
        if self.name == "nnx":
            return {"deterministic": True}
        return {}


@pytest.fixture(params=FRAMEWORKS)
def api(request) -> Api:
    return Api(request.param)


@pytest.fixture
def rng(request) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _qkv(rng: np.random.Generator, api: Api, lq: int = 5, lk: int = 4) -> tuple[Any, ...]:
    q = rng.normal(size=(2, lq, 3, 4)) * 1.5
    k = rng.normal(size=(2, lk, 3, 4))
    v = rng.normal(size=(2, lk, 3, 6))
    return tuple(api.array(a) for a in (q, k, v))


def _mask(rng: np.random.Generator, api: Api, lq: int = 5, lk: int = 4) -> Any:
    mask = rng.random((2, 3, lq, lk)) < 0.7
    mask[..., 0] = True  # every query sees a key (fully hidden rows are tested below)
    return api.array(mask)


OPTIONS = {
    "plain": {},
    "epsilon": {"epsilon": 0.3},
    "alpha": {"alpha": np.array([1.7])},
    "spherical": {"spherical": True},
}


@pytest.mark.parametrize("case", sorted(OPTIONS))
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_matches_nmn(api: Api, rng, case: str, masked: bool) -> None:
    q, k, v = _qkv(rng, api)
    options = {
        name: api.array(value) if isinstance(value, np.ndarray) else value
        for name, value in OPTIONS[case].items()
    }
    mask = _mask(rng, api) if masked else None
    rtol = api.rtol
    if case == "spherical" and api.name == "linen":
        # Decision 7: nmn.linen's functional spherical path puts the true norms into the
        # expanded distance; ours (and nmn's other frameworks) use max(2 - 2 q.k, 0).
        rtol = 1e-4
    extra = api.no_dropout()
    weights = api.ours.yat_attention_weights(q, k, mask=mask, **options, **extra)
    out = api.ours.yat_attention(q, k, v, mask=mask, **options, **extra)
    assert tuple(weights.shape) == (2, 3, 5, 4)
    assert tuple(out.shape) == (2, 5, 3, 6)
    if case == "spherical" and api.name == "nnx":
        # nmn.nnx has no spherical flag: its spherical function is yat_attention_normalized
        ref_w = None
        ref_out = api.ref.yat_attention_normalized(q, k, v, mask=mask, **extra)
    else:
        ref_w = api.ref.yat_attention_weights(q, k, mask=mask, **options, **extra)
        ref_out = api.ref.yat_attention(q, k, v, mask=mask, **options, **extra)
        assert_parity(weights, ref_w, rtol, f"{api.name}:weights:{case}")
    assert_parity(out, ref_out, rtol, f"{api.name}:attention:{case}")


def test_normalized_and_normalize_qk_match_nmn(api: Api, rng) -> None:
    q, k, v = _qkv(rng, api)
    extra = api.no_dropout()
    ours = api.ours.yat_attention_normalized(q, k, v, **extra)
    ref = api.ref.yat_attention_normalized(q, k, v, **extra)
    assert_parity(ours, ref, api.rtol, f"{api.name}:normalized")
    for got, want in zip(api.ours.normalize_qk(q, k), api.ref.normalize_qk(q, k), strict=True):
        assert_parity(got, want, api.rtol, f"{api.name}:normalize_qk")


@pytest.mark.parametrize("fw", ["torch", "keras", "tf", "mlx"])
def test_scale_matches_nmn(fw: str) -> None:
    api = Api(fw)
    q, k, v = _qkv(np.random.default_rng(3), api)
    ours = api.ours.yat_attention(q, k, v, scale=2**0.5, **api.no_dropout())
    ref = api.ref.yat_attention(q, k, v, scale=2**0.5, **api.no_dropout())
    assert_parity(ours, ref, api.rtol, f"{fw}:scale")


@pytest.mark.parametrize("normalization", ["l1", "softermax"])
def test_nnx_normalizations_and_bias_match_nmn(normalization: str) -> None:
    api = Api("nnx")
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, api)
    mask = _mask(rng, api)
    kw = {"mask": mask, "deterministic": True, "normalization": normalization, "power": 2.0}
    ours = api.ours.yat_attention(q, k, v, **kw)
    ref = api.ref.yat_attention(q, k, v, **kw)
    assert_parity(ours, ref, api.rtol, f"nnx:{normalization}")
    logits = np.where(rng.random((2, 3, 5, 4)) < 0.3, -np.inf, rng.normal(size=(2, 3, 5, 4)))
    kw = {"bias": api.array(logits), "mask": mask, "deterministic": True}
    ours = api.ours.yat_attention(q, k, v, **kw)
    ref = api.ref.yat_attention(q, k, v, **kw)
    assert_parity(ours, ref, api.rtol, "nnx:bias")


def test_fully_hidden_query_gets_zero_weights(api: Api, rng) -> None:
    q, k, v = _qkv(rng, api)
    hidden = np.ones((2, 3, 5, 4), dtype=bool)
    hidden[:, :, 2, :] = False
    weights = to_numpy(
        api.ours.yat_attention_weights(q, k, mask=api.array(hidden), **api.no_dropout())
    )
    assert np.all(weights[:, :, 2, :] == 0.0)
    np.testing.assert_allclose(np.delete(weights, 2, axis=2).sum(-1), 1.0, rtol=1e-6)


def _dropout_kwargs(api: Api, rate: float) -> dict[str, Any]:
    if api.name == "torch":
        return {"dropout_p": rate, "training": True}
    if api.flax:
        import jax

        return {"dropout_rate": rate, "deterministic": False, "dropout_rng": jax.random.key(1)}
    return {"dropout_rate": rate, "training": True}


def test_dropout_keeps_or_zeroes_each_weight(api: Api, rng) -> None:
    """Inverted dropout: every weight is 0 or its undropped value / keep probability."""
    q, k, _ = _qkv(rng, api)
    plain = to_numpy(api.ours.yat_attention_weights(q, k, **api.no_dropout()))
    dropped = to_numpy(api.ours.yat_attention_weights(q, k, **_dropout_kwargs(api, 0.5)))
    zero = dropped == 0.0
    assert 0 < zero.sum() < zero.size, "dropout at rate 0.5 dropped nothing or everything"
    np.testing.assert_allclose(dropped[~zero], 2.0 * plain[~zero], rtol=1e-6)


def test_flax_dropout_without_rng_is_refused(api: Api, rng) -> None:
    if not api.flax:
        pytest.skip("the dropout key is a Flax argument")  # torch/keras/tf draw their own
    q, k, _ = _qkv(rng, api)
    with pytest.raises(ValueError, match="dropout_rng"):
        api.ours.yat_attention_weights(q, k, dropout_rate=0.1, deterministic=False)


@pytest.mark.parametrize("name", ["query", "key"])
def test_wrong_layout_names_the_argument(api: Api, rng, name: str) -> None:
    q, k, _ = _qkv(rng, api)
    args = {"query": q, "key": k}
    args[name] = args[name][0, :, 0]  # (length, dim): no heads axis
    with pytest.raises(ValueError, match=name):
        api.ours.yat_attention_weights(args["query"], args["key"], **api.no_dropout())


def test_bad_dropout_rate_names_the_argument(api: Api, rng) -> None:
    q, k, _ = _qkv(rng, api)
    kwargs = _dropout_kwargs(api, 1.5)
    name = "dropout_p" if api.name == "torch" else "dropout_rate"
    with pytest.raises(ValueError, match=name):
        api.ours.yat_attention_weights(q, k, **kwargs)


def test_nnx_mask_helpers_and_dot_product_match_nmn() -> None:
    import jax
    import jax.numpy as jnp
    import nmn.nnx as ref
    from nmn_array.frameworks import nnx as ours

    tokens = jnp.array([[1, 2, 0, 0], [3, 0, 0, 0]])
    for name, args in {
        "make_attention_mask": (tokens > 0, tokens > 0),
        "make_causal_mask": (tokens,),
        "causal_attention_mask": (4,),
    }.items():
        np.testing.assert_array_equal(getattr(ours, name)(*args), getattr(ref, name)(*args))
    a, b = ours.make_causal_mask(tokens), ours.make_attention_mask(tokens > 0, tokens > 0)
    np.testing.assert_array_equal(ours.combine_masks(a, b), ref.combine_masks(a, b))
    q = jax.random.normal(jax.random.key(0), (2, 4, 3, 8))
    mask = ours.combine_masks(a, b)
    got = ours.dot_product_attention(q, q, q, mask=mask, deterministic=True)
    want = ref.dot_product_attention(q, q, q, mask=mask, deterministic=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # a Flax float mask (ones = visible) selects keys in the yat functions as well
    np.testing.assert_array_equal(
        ours.yat_attention_weights(q, q, mask=mask, deterministic=True),
        ours.yat_attention_weights(q, q, mask=mask > 0, deterministic=True),
    )


def test_nnx_module_records_the_weights() -> None:
    import jax
    from flax import nnx
    from nmn_array.frameworks import nnx as ours

    class Holder(nnx.Module):
        pass

    holder = Holder()
    q = jax.random.normal(jax.random.key(0), (1, 4, 2, 8))
    out = ours.yat_attention(q, q, q, module=holder, deterministic=True)
    recorded = holder.attention_weights.get_value()
    weights = ours.yat_attention_weights(q, q, deterministic=True)
    np.testing.assert_allclose(recorded[0], weights, rtol=1e-6)
    assert out.shape == (1, 4, 2, 8)
