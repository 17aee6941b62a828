"""One performer attention in three frameworks (issue 15): the torch module's weights and
projection copied into the Flax NNX and Linen modules give the same outputs (float64).

Error metric: max |difference| / max |torch output|.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.frameworks._parity import fast_xla_compilation

fast_xla_compilation()  # before JAX creates its CPU backend
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("flax.linen")

from nmn_array.frameworks import linen as LN  # noqa: E402
from nmn_array.frameworks import nnx as NX  # noqa: E402
from nmn_array.frameworks import torch as T  # noqa: E402

from tests.frameworks._parity import scaled_error  # noqa: E402
from tests.frameworks._performer_cases import CLASSES, KINDS, SMALL, B, E, H, L  # noqa: E402

jnp = jax.numpy
# measured (max over kinds, classes, causal, mask): SLAY 6e-16, MAY 3e-14, RAY 1.8e-11
# (its sign-indefinite features cancel)
RTOL = 1e-10

pytestmark = pytest.mark.skipif(
    not jax.config.jax_enable_x64, reason="float64 tests need JAX_ENABLE_X64=1 (tests/conftest)"
)


def _modules(cls, **kw):
    """torch, NNX and Linen modules of one configuration; the torch one in float64 with
    alpha 1.3."""
    torch.manual_seed(0)
    f64 = {"dtype": torch.float64, "param_dtype": torch.float64}
    kw = {"use_performer": True, **SMALL, **kw}
    if cls == "mha":
        t = T.MultiHeadYatAttention(E, H, **f64, **kw)
        n = NX.MultiHeadAttention(H, E, param_dtype=jnp.float64, rngs=nnx.Rngs(1), **kw)
        ln = LN.MultiHeadAttention(num_heads=H, param_dtype=jnp.float64, **kw)
    else:
        t = T.RotaryYatAttention(E, H, max_seq_len=16, **f64, **kw)
        n = NX.RotaryYatAttention(E, H, 16, param_dtype=jnp.float64, rngs=nnx.Rngs(1), **kw)
        ln = LN.RotaryYatAttention(
            embed_dim=E, num_heads=H, max_seq_len=16, param_dtype=jnp.float64, **kw
        )
    with torch.no_grad():
        t.alpha.fill_(1.3)
    return t.eval(), n, ln


def _transfer(t, n, ln, x):
    """torch's weights and projection into the NNX module (in place) and Linen variables."""
    names = ("q_proj", "k_proj", "v_proj", "out_proj" if hasattr(t, "out_proj") else "o_proj")
    nnx_names = (
        ("query", "key", "value", "out") if hasattr(t, "out_proj") else names[:3] + ("o_proj",)
    )
    variables = ln.init(jax.random.key(2), x)
    params = {"alpha": jnp.asarray(t.alpha.detach().numpy())}
    for torch_name, flax_name in zip(names, nnx_names):
        layer = getattr(t, torch_name)
        kernel = jnp.asarray(layer.weight.detach().numpy().T)  # (in, out)
        target = getattr(n, flax_name)
        # NNX MHA's out kernel is (H, d, out)
        target.kernel[...] = kernel.reshape(target.kernel[...].shape)
        params[flax_name] = {"kernel": kernel}
        if layer.bias is not None:
            target.bias[...] = jnp.asarray(layer.bias.detach().numpy())
            params[flax_name]["bias"] = target.bias[...]
    n.alpha[...] = params["alpha"]
    performer = {}
    for key in t._performer.keys:
        target = getattr(n, f"perf_{key}")
        value = jnp.asarray(getattr(t, f"perf_{key}").numpy(), target[...].dtype)
        target[...] = value
        performer[f"perf_{key}"] = value
    assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(jnp.shape, params)
    return {"params": params, "performer": performer}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_torch_nnx_linen_agree(cls, kind, causal):
    t, n, ln = _modules(cls, performer_kind=kind, causal=causal)
    x_np = np.random.default_rng(3).standard_normal((B, L, E))
    x = jnp.asarray(x_np)
    variables = _transfer(t, n, ln, x)
    keep = np.ones((B, 1, 1, L), bool)
    keep[1, ..., 5:] = False
    for mask in (None, keep):
        tm = None if mask is None else torch.as_tensor(mask)
        jm = None if mask is None else jnp.asarray(mask)
        with torch.no_grad():
            ref = t(torch.as_tensor(x_np), mask=tm).numpy()
        if cls == "mha":
            got_nnx, got_linen = n(x, mask=jm), ln.apply(variables, x, mask=jm)
        else:
            got_nnx, got_linen = n(x, jm), ln.apply(variables, x, jm)
        assert scaled_error(got_nnx, ref) < RTOL
        assert scaled_error(got_linen, ref) < RTOL
        assert scaled_error(got_linen, got_nnx) < RTOL
