"""Worker of tests/scaling/test_jax_sharding.py: JAX on 4 virtual CPU devices.

Run as ``python -m tests.scaling._jax_worker OUT_DIR`` (the test does, in a subprocess, so
that the rest of the suite keeps one device). It records, per section, the outputs of the
sharded and the single-device computations on the same inputs; the test compares them.
"""

from __future__ import annotations

import functools

import jax

# before anything initialises JAX's backends: 4 CPU devices in this process only
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from nmn_array.frameworks.nnx import MultiHeadYatAttention, YatConv2D, YatNMN  # noqa: E402

import nmn_array  # noqa: E402
from nmn_array.parallel import yat_feature_sharded  # noqa: E402
from tests.scaling._worker import Recorder, main_dir, sharding_facts  # noqa: E402

DEVICES = 4
BATCH = 8  # two examples per device
LEARNING_RATE = 0.1


# ---- data parallel: a training step of a small yat network -------------------------------
class YatNet(nnx.Module):
    """YatConv2D -> tokens -> MultiHeadYatAttention -> mean over tokens -> YatNMN logits."""

    def __init__(self, dtype: type, rngs: nnx.Rngs) -> None:
        kw = {"dtype": dtype, "param_dtype": dtype, "rngs": rngs}
        self.conv = YatConv2D(3, 4, (3, 3), **kw)
        self.attn = MultiHeadYatAttention(2, 4, decode=False, **kw)
        self.head = YatNMN(4, 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv(x)  # (B, 6, 6, 4)
        h = self.attn(h.reshape(h.shape[0], -1, h.shape[-1]))  # 36 tokens of 4 features
        return self.head(h.mean(axis=1))


def data_parallel(rec: Recorder, mesh: jax.sharding.Mesh, dtype: type) -> None:
    name = f"dp_{np.dtype(dtype).name}"
    with rec.section(name) as facts:
        model = YatNet(dtype, nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = optax.sgd(LEARNING_RATE, momentum=0.9)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(BATCH, 6, 6, 3)).astype(dtype)
        labels = rng.integers(0, 3, size=(BATCH,))
        seen: list[str] = []

        @jax.jit
        def step(params, opt_state, x, labels):
            # the compiler's sharding of the batch inside the step (called once per compile)
            jax.debug.inspect_array_sharding(x, callback=lambda s: seen.append(str(s)))

            def loss_fn(params):
                logits = nnx.merge(graphdef, params, rest)(x)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                return loss, logits

            (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return loss, logits, grads, optax.apply_updates(params, updates)

        opt_state = tx.init(params)
        single = jax.device_put((params, opt_state, x, labels), jax.devices()[0])
        replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        sharded = (
            jax.device_put(params, replicated),
            jax.device_put(opt_state, replicated),
            jax.device_put(x, batch),
            jax.device_put(labels, batch),
        )
        for run, args in (("single", single), ("sharded", sharded)):
            loss, logits, grads, new_params = jax.block_until_ready(step(*args))
            rec.save(name, f"{run}/loss", loss)
            rec.save(name, f"{run}/logits", logits)
            for kind, tree in (("grads", grads), ("params", new_params)):
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                    rec.save(name, f"{run}/{kind}/{jax.tree_util.keystr(path)}", leaf)
            facts[run] = {
                "input": sharding_facts(args[2]),
                "logits": sharding_facts(logits),
                "grads": [sharding_facts(g) for g in jax.tree.leaves(grads)],
                "params": [sharding_facts(p) for p in jax.tree.leaves(new_params)],
            }
        facts["inside_step"] = seen  # [single compile, sharded compile]
        facts["learning_rate"] = LEARNING_RATE
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            rec.save(name, f"initial/{jax.tree_util.keystr(path)}", leaf)


def eager_sharded(rec: Recorder, mesh: jax.sharding.Mesh) -> None:
    """Eager (not jitted) calls on a batch-sharded array: the functions build constants and
    index arrays next to their inputs, which must not take the batch's sharding."""
    with rec.section("eager") as facts:
        rng = np.random.default_rng(2)
        x = rng.normal(size=(BATCH, 6, 6, 4))
        w_dense, w_conv = rng.normal(size=(5, 4)), rng.normal(size=(3, 4, 3, 3))
        cases = {
            "yat": lambda a, xp: nmn_array.yat(a, xp.asarray(w_dense)),
            "yat_conv": lambda a, xp: nmn_array.yat_conv(
                a, xp.asarray(w_conv), padding="same", data_format="channels_last"
            ),
            # (8, 6) heads of 6 tokens of 4 features
            "yat_attention": lambda a, xp: nmn_array.yat_attention(a, a, a, causal=True),
            "rotary_embedding": lambda a, xp: nmn_array.rotary_embedding(a),
        }
        sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
        for key, fn in cases.items():
            sharded = fn(sharded_x, jnp)
            # the same call on NumPy arrays (eager single-device JAX would compile every op)
            rec.save("eager", f"{key}/numpy", fn(x, np))
            rec.save("eager", f"{key}/sharded", sharded)
            facts[key] = sharding_facts(sharded)


# ---- tensor parallel: yat with the neurons or the features split -------------------------
def tensor_parallel(rec: Recorder, mesh: jax.sharding.Mesh, dtype: type) -> None:
    name = f"tp_{np.dtype(dtype).name}"
    with rec.section(name) as facts:
        rng = np.random.default_rng(1)
        x = rng.normal(size=(BATCH, 32)).astype(dtype)
        w = rng.normal(size=(16, 32)).astype(dtype)
        b = rng.normal(size=(16,)).astype(dtype)
        for key, a in (("x", x), ("w", w), ("b", b)):
            rec.save(name, f"input/{key}", a)
        rec.save(name, "unsharded", jax.jit(nmn_array.yat)(x, w, b))

        # neurons (rows of w) split: plain jit of the unchanged function on a sharded w
        rows = NamedSharding(mesh, P("model", None))
        y = jax.jit(nmn_array.yat)(
            x, jax.device_put(w, rows), jax.device_put(b, NamedSharding(mesh, P("model")))
        )
        rec.save(name, "rows_jit", y)
        facts["rows_jit"] = sharding_facts(y)
        # ... and shard_map: each device computes yat of its own rows
        per_rows = jax.shard_map(
            nmn_array.yat,
            mesh=mesh,
            in_specs=(P(), P("model", None), P("model")),
            out_specs=P(None, "model"),
        )
        y = jax.jit(per_rows)(x, w, b)
        rec.save(name, "rows_shard_map", y)
        facts["rows_shard_map"] = sharding_facts(y)

        # a Flax NNX YatNMN whose kernel (in, out) and bias are split over their neurons
        layer = YatNMN(32, 16, param_dtype=dtype, dtype=dtype, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(layer)

        def by_neuron(path, leaf):
            key = jax.tree_util.keystr(path)
            spec = P(None, "model") if "kernel" in key else P("model") if "bias" in key else P()
            return jax.device_put(leaf, NamedSharding(mesh, spec))

        sharded_state = jax.tree_util.tree_map_with_path(by_neuron, state)
        call = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        rec.save(name, "layer_single", call(jax.device_put(state, jax.devices()[0]), x))
        y = call(sharded_state, x)
        rec.save(name, "layer_rows", y)
        facts["layer_rows"] = sharding_facts(y)
        facts["layer_params"] = {
            jax.tree_util.keystr(p): sharding_facts(v)
            for p, v in jax.tree_util.tree_leaves_with_path(sharded_state)
        }

        # features split: the helper sums dot and norms across the shards, then the ratio
        feature_specs = (P(None, "model"), P(None, "model"), P())

        def by_features(fn):
            return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=feature_specs, out_specs=P()))

        helper = by_features(functools.partial(yat_feature_sharded, axis_name="model"))
        y = helper(x, w, b)
        rec.save(name, "features", y)
        facts["features"] = sharding_facts(y)
        psum = functools.partial(jax.lax.psum, axis_name="model")
        calls: list[int] = []

        def all_sum(parts):
            calls.append(len(parts))  # traced once: how many all-reduces, of how many arrays
            return psum(parts)

        y = by_features(functools.partial(yat_feature_sharded, all_sum=all_sum))(x, w, b)
        rec.save(name, "features_all_sum", y)
        facts["all_sum_calls"] = calls
        # the naive version: yat of each feature shard, summed (the bias split evenly so that
        # its sum is the bias): not the yat product of the whole vectors
        naive = by_features(
            lambda xs, ws, bs: jax.lax.psum(nmn_array.yat(xs, ws, bs / DEVICES), "model")
        )
        rec.save(name, "naive", naive(x, w, b))

        # gradients through the sharded version equal the unsharded ones
        def loss(f):
            return lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b)))

        grad = functools.partial(jax.grad, argnums=(0, 1, 2))
        for run, f in (("unsharded", nmn_array.yat), ("features", helper)):
            for key, g in zip("xwb", jax.jit(grad(loss(f)))(x, w, b), strict=True):
                rec.save(name, f"grad_{run}/{key}", g)


def near_collision(rec: Recorder, mesh: jax.sharding.Mesh) -> None:
    """float32 inputs within 1e-3 of a neuron: where the expanded distance loses all its
    digits and the core's refinement recomputes the nearest one directly."""
    with rec.section("collision") as facts:
        rng = np.random.default_rng(3)
        w = rng.normal(size=(16, 64)).astype(np.float32)
        x = w[rng.integers(0, 16, size=BATCH)] + 1e-3 * rng.normal(size=(BATCH, 64))
        x = x.astype(np.float32)
        rec.save("collision", "input/x", x)
        rec.save("collision", "input/w", w)
        for distance in ("refined", "expanded"):
            f = functools.partial(yat_feature_sharded, axis_name="model", distance=distance)
            specs = (P(None, "model"), P(None, "model"))
            sharded = jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=P())
            rec.save("collision", f"{distance}/features", jax.jit(sharded)(x, w))
            unsharded = functools.partial(nmn_array.yat, distance=distance)
            rec.save("collision", f"{distance}/unsharded", jax.jit(unsharded)(x, w))
        facts["epsilon"] = 1e-5


def main() -> None:
    rec = Recorder(main_dir())
    with rec.section("devices") as facts:
        facts["count"] = len(jax.devices())
        facts["platforms"] = sorted({d.platform for d in jax.devices()})
    data_mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,))
    model_mesh = jax.make_mesh((DEVICES,), ("model",), axis_types=(AxisType.Auto,))
    rec.facts["devices"]["axis_types"] = [str(t) for t in data_mesh.axis_types]
    for dtype in (np.float32, np.float64):
        data_parallel(rec, data_mesh, dtype)
    eager_sharded(rec, data_mesh)
    for dtype in (np.float32, np.float64):
        tensor_parallel(rec, model_mesh, dtype)
    near_collision(rec, model_mesh)
    rec.dump()


if __name__ == "__main__":
    main()
