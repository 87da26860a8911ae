"""Meshes and logical-axis sharding: rule resolution here, the device checks in subprocesses.

The rest of the suite must keep seeing one CPU device, so the 8-device checks run this file as a
script under ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (one process for all of them,
each check reported by name), and the multi-process check starts two processes with 2 devices each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from radflow_jax.parallel import mesh as pm

RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("length", None),
)


class Toy(nnx.Module):
    """Embedding → residual tanh MLP → LM head; names attached both ways flax offers."""

    def __init__(self, rngs: nnx.Rngs, vocab: int = 16, embed: int = 8, mlp: int = 12):
        normal = nnx.initializers.normal(0.5)
        self.embed = nnx.Param(
            normal(rngs.params(), (vocab, embed)),
            out_sharding=("vocab", "embed"),
        )
        self.up = nnx.Linear(
            embed, mlp, rngs=rngs,
            kernel_init=nnx.with_partitioning(normal, ("embed", "mlp")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",)),
        )
        self.down = nnx.Param(normal(rngs.params(), (mlp, embed)), out_sharding=("mlp", "embed"))
        self.odd = nnx.Param(jnp.linspace(0.5, 1.5, 5), out_sharding=("mlp",))  # 5 ∤ tensor=2
        self.head = nnx.Param(
            normal(rngs.params(), (embed, vocab)), out_sharding=("embed", "vocab")
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        h = self.embed[...][tokens]
        h = h + jnp.tanh(self.up(h)) @ self.down[...] * self.odd[...].mean()
        return h @ self.head[...]


def loss_fn(model: Toy, batch: dict[str, jax.Array]) -> jax.Array:
    logits = model(batch["tokens"][:, :-1])
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
    return nll.mean()


# ---------------------------------------------------------------- in process (1 device)


def test_rule_resolution():
    assert pm.logical_to_mesh_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
    batch_spec = pm.logical_to_mesh_spec(("batch", "length", None), RULES)
    assert batch_spec == P(("data", "fsdp"), None, None)
    assert pm.logical_to_mesh_spec(P("head_dim"), RULES) == P(None)
    # a mesh axis used twice: the later dim is replicated
    assert pm.logical_to_mesh_spec(("heads", "mlp"), RULES) == P("tensor", None)
    assert pm.logical_to_mesh_spec(("batch", "embed"), RULES) == P(("data", "fsdp"), None)
    # a later rule for the same name is the fallback when the first one's axes are taken
    rules = (("embed", "fsdp"), ("mlp", "fsdp"), ("mlp", "tensor"))
    assert pm.logical_to_mesh_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")


def test_unknown_logical_name_is_named():
    with pytest.raises(ValueError, match="'vit_mlp' has no sharding rule"):
        pm.logical_to_mesh_spec(("embed", "vit_mlp"), RULES)


def test_rules_naming_missing_mesh_axes_are_rejected():
    mesh = pm.make_mesh({"data": -1})
    with pytest.raises(ValueError, match="'mlp' maps to mesh axes \\['model'\\]"):
        pm.batch_sharding(mesh, (("batch", "data"), ("mlp", "model")), 2)


def test_make_mesh_errors_are_clear():
    one = jax.devices()[:1]
    with pytest.raises(ValueError, match="unknown axes \\['model'\\]"):
        pm.make_mesh({"data": -1, "model": 1}, one)
    with pytest.raises(ValueError, match="needs 2 devices but 1 are available"):
        pm.make_mesh({"data": 2}, one)
    with pytest.raises(ValueError, match="at most one -1"):
        pm.make_mesh({"data": -1, "fsdp": -1}, one)
    with pytest.raises(ValueError, match="does not divide"):
        pm.make_mesh({"data": -1, "fsdp": 2}, one)


# ---------------------------------------------------------------- 8 CPU devices (subprocess)

PARAM_SPECS = {  # path → (spec, local shard shape) on a data=2, fsdp=2, tensor=2 mesh
    "embed": (P("tensor", "fsdp"), (8, 4)),
    "up.kernel": (P("fsdp", "tensor"), (4, 6)),
    "up.bias": (P("tensor"), (6,)),
    "down": (P("tensor", "fsdp"), (6, 4)),
    "odd": (P(None), (5,)),  # divisibility fallback
    "head": (P("fsdp", "tensor"), (4, 8)),
}


def _param(model: Toy, path: str) -> jax.Array:
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj[...]


def check_mesh_shapes() -> None:
    shape = lambda s: dict(pm.make_mesh(s).shape)  # noqa: E731
    assert shape({"data": -1, "fsdp": 1, "tensor": 1}) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert shape({"data": -1, "fsdp": 2, "tensor": 2}) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert shape({"fsdp": -1, "tensor": 4}) == {"data": 1, "fsdp": 2, "tensor": 4}
    assert shape({"data": 2, "fsdp": 2, "tensor": 2}) == {"data": 2, "fsdp": 2, "tensor": 2}
    mesh = pm.make_mesh({"tensor": -1})
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
    for bad in ({"data": -1, "fsdp": 3}, {"data": 3, "fsdp": 1, "tensor": 1}):
        try:
            pm.make_mesh(bad)
        except ValueError as e:
            assert "8 devices" in str(e) or "8 are available" in str(e), e
        else:
            raise AssertionError(f"{bad} was accepted on 8 devices")


def check_params_laid_out() -> None:
    mesh = pm.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = pm.init_sharded(lambda: Toy(nnx.Rngs(0)), mesh, RULES)
    with nnx.use_eager_sharding(False):  # logical names are not mesh axes: resolve them ourselves
        reference = Toy(nnx.Rngs(0))  # unsharded, same seed
    for path, (spec, local_shape) in PARAM_SPECS.items():
        value = _param(model, path)
        assert value.sharding.spec == spec, (path, value.sharding.spec, spec)
        assert value.addressable_shards[0].data.shape == local_shape, path
        np.testing.assert_array_equal(np.asarray(value), np.asarray(_param(reference, path)))


def _train_step(graphdef, state, batch):
    """Loss + gradient + SGD update of a toy model: the shape of every stage's step."""
    model = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    new_state = jax.tree.map(lambda p, g: p - 0.1 * g, state, nnx.state(grads))
    return new_state, loss, nnx.state(grads)


def _run_step(mesh_shape: dict, devices, tokens: np.ndarray):
    mesh = pm.make_mesh(mesh_shape, devices)
    graphdef, state = nnx.split(pm.init_sharded(lambda: Toy(nnx.Rngs(0)), mesh, RULES))
    shardings = pm.state_shardings(state, mesh, RULES)
    batch = pm.shard_batch({"tokens": tokens}, mesh, RULES)
    step = jax.jit(
        lambda s, b: _train_step(graphdef, s, b),
        in_shardings=(shardings, {"tokens": pm.batch_sharding(mesh, RULES, 2)}),
        out_shardings=(shardings, None, shardings),
        donate_argnums=0,
    )
    old_leaf = jax.tree.leaves(state)[0]
    new_state, loss, grads = step(state, batch)
    assert old_leaf.is_deleted(), "state was not donated"
    return new_state, loss, grads


def check_sharded_step_matches_single_device() -> None:
    tokens = np.random.default_rng(0).integers(0, 16, size=(8, 6)).astype(np.int32)
    one = _run_step({"data": 1}, jax.devices()[:1], tokens)
    eight = _run_step({"data": 2, "fsdp": 2, "tensor": 2}, None, tokens)
    np.testing.assert_allclose(float(eight[1]), float(one[1]), rtol=1e-6)
    for g8, g1 in zip(jax.tree.leaves(eight[2]), jax.tree.leaves(one[2])):
        np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-6)
    assert eight[0]["head"].get_value().sharding.spec == P("fsdp", "tensor")  # layout kept
    for p8, p1 in zip(jax.tree.leaves(eight[0]), jax.tree.leaves(one[0])):
        np.testing.assert_allclose(np.asarray(p8), np.asarray(p1), rtol=1e-5, atol=1e-6)


def check_batch_sharding() -> None:
    mesh = pm.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    batch = pm.shard_batch({"x": x}, mesh, RULES)
    assert batch["x"].sharding.spec == P(("data", "fsdp"), None)
    assert batch["x"].addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(batch["x"]), x)
    try:
        pm.shard_batch({"x": x[:6]}, mesh, RULES)
    except ValueError as e:
        assert "'x' has 6 global rows" in str(e), e
    else:
        raise AssertionError("6 rows over 4 batch shards was accepted")


EIGHT_DEVICE_CHECKS = (
    check_mesh_shapes, check_params_laid_out, check_sharded_step_matches_single_device,
    check_batch_sharding,
)


def _run_checks() -> None:
    """Subprocess body: run every 8-device check, print {name: "ok" | traceback} as JSON."""
    assert jax.device_count() == 8, jax.devices()
    results = {}
    for check in EIGHT_DEVICE_CHECKS:
        try:
            check()
            results[check.__name__] = "ok"
        except Exception:
            results[check.__name__] = traceback.format_exc()
    print("RESULTS " + json.dumps(results))


def _script_env(**extra: str) -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def eight_device_results() -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, __file__, "checks"],
        env=_script_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        capture_output=True, text=True, timeout=120,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("check", [c.__name__ for c in EIGHT_DEVICE_CHECKS])
def test_on_eight_devices(eight_device_results, check):
    assert eight_device_results[check] == "ok", eight_device_results[check]


# ---------------------------------------------------------------- 2 processes × 2 devices

GLOBAL_ROWS = 8


def _run_process(process_id: int, port: int) -> None:
    """Subprocess body: this process's half of the batch → one global array; sums must match."""
    from jax.experimental import multihost_utils

    jax.config.update("jax_num_cpu_devices", 2)
    address = f"127.0.0.1:{port}"
    jax.distributed.initialize(
        coordinator_address=address, num_processes=2, process_id=process_id,
        coordinator_bind_address=address, initialization_timeout=60,
    )
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    full = np.arange(GLOBAL_ROWS * 3, dtype=np.float32).reshape(GLOBAL_ROWS, 3)
    half = GLOBAL_ROWS // 2
    local = full[process_id * half:(process_id + 1) * half]
    mesh = pm.make_mesh({"data": -1})
    batch = pm.shard_batch({"x": local}, mesh, RULES)
    assert batch["x"].shape == full.shape
    weights = jnp.arange(GLOBAL_ROWS, dtype=jnp.float32)[:, None]  # order-sensitive
    total = jax.jit(lambda b: (b["x"] * weights).sum(), out_shardings=None)(batch)
    gathered = multihost_utils.process_allgather(batch["x"], tiled=True)
    np.testing.assert_array_equal(gathered, full)
    expected = float((full * np.arange(GLOBAL_ROWS)[:, None]).sum())
    assert float(total) == expected, (float(total), expected)
    print(f"PROCESS {process_id} OK {float(total)}")
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_batch_across_two_processes():
    port = _free_port()
    env = _script_env()
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "process", str(i), str(port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=90))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    full = np.arange(GLOBAL_ROWS * 3, dtype=np.float32).reshape(GLOBAL_ROWS, 3)
    expected = float((full * np.arange(GLOBAL_ROWS)[:, None]).sum())
    for i, (proc, (out, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"process {i}:\n{err[-4000:]}"
        assert f"PROCESS {i} OK {expected}" in out


if __name__ == "__main__":
    if sys.argv[1] == "checks":
        _run_checks()
    else:
        _run_process(int(sys.argv[2]), int(sys.argv[3]))
