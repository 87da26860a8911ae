"""Checkpoints with real orbax, a real Grain iterator and real optax AdamW on a toy NNX model.

The 8-device restore and the SIGTERM loop run this file as a script in a subprocess, so the rest
of the suite keeps one CPU device and its own signal handlers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from radflow_jax.checkpoint import Checkpointer, CheckpointError, PreemptionGuard
from radflow_jax.parallel import mesh as pm

RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"))


class Toy(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(
            4, 8, rngs=rngs,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",)),
        )
        down = jax.random.normal(rngs.params(), (8, 4))
        self.down = nnx.Param(down, out_sharding=("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.up(x)) @ self.down[...]


def _trained(seed: int, steps: int) -> tuple[Toy, nnx.Optimizer]:
    """A toy model and AdamW optimizer after ``steps`` real updates (non-zero moments)."""
    with nnx.use_eager_sharding(False):
        model = Toy(nnx.Rngs(seed))
        optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    for _ in range(steps):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
        optimizer.update(model, grads)
    return model, optimizer


def _train_state(seed: int, steps: int) -> dict:
    model, optimizer = _trained(seed, steps)
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}


def _dataset() -> grain.IterDataset:
    dataset = grain.MapDataset.range(64).shuffle(seed=3).map(lambda i: i * 10)
    return dataset.batch(4).to_iter_dataset()


def _assert_trees_identical(a, b) -> None:
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def test_round_trip_is_bit_identical(tmp_path):
    saved = _train_state(seed=0, steps=3)
    with Checkpointer(str(tmp_path), save_every=1, keep=3, async_save=False) as ckpt:
        assert ckpt.save(3, saved)
    fresh = _train_state(seed=1, steps=0)  # other values, same structure: the restore target
    with Checkpointer(str(tmp_path), save_every=1, keep=3) as ckpt:
        restored, step = ckpt.restore(fresh)
    assert step == 3
    _assert_trees_identical(restored, saved)
    assert int(restored["optimizer"]["step"][...]) == 3
    mu = restored["optimizer"]["opt_state"][0]["mu"]["down"][...]
    assert np.abs(np.asarray(mu)).max() > 0  # real moments, not the zeros of the fresh target
    # the restored state drives a model and optimizer that continue exactly like the original
    model, optimizer = _trained(seed=1, steps=0)
    nnx.update(model, restored["model"])
    nnx.update(optimizer, restored["optimizer"])
    original_model, _ = _trained(seed=0, steps=3)
    x = jnp.ones((2, 4))
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(original_model(x)))


def test_plain_pytree_with_optax_state_and_int_step(tmp_path):
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((3,), jnp.bfloat16)}
    tx = optax.adamw(1e-3)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, tx.init(params), params)
    saved = {"params": params, "opt_state": opt_state, "step": 7}
    with Checkpointer(str(tmp_path), save_every=7, keep=1) as ckpt:
        ckpt.save(7, saved)
        ckpt.wait()
        target = jax.tree.map(jnp.zeros_like, {"params": params, "opt_state": opt_state})
        restored, _ = ckpt.restore({**target, "step": 0})
    assert restored["step"] == 7
    _assert_trees_identical(restored["params"], params)
    _assert_trees_identical(restored["opt_state"], opt_state)


def test_save_interval_keep_and_latest_step(tmp_path):
    state = {"x": jnp.zeros((2,))}
    with Checkpointer(str(tmp_path), save_every=2, keep=2) as ckpt:
        assert ckpt.latest_step() is None
        assert [s for s in range(1, 9) if ckpt.should_save(s)] == [2, 4, 6, 8]
        for step in range(1, 9):
            saved = ckpt.save(step, {"x": jnp.full((2,), float(step))})
            assert saved == (step % 2 == 0)
        assert ckpt.latest_step() == 8
        assert not ckpt.should_save(8) and not ckpt.should_save(7)
        assert ckpt.save(9, state, force=True)  # off-interval final save
        assert not ckpt.save(9, state, force=True)  # already there: no-op
        ckpt.wait()
        assert ckpt.all_steps() == [8, 9]
        restored, step = ckpt.restore(state, step=8)
    assert step == 8 and float(restored["x"][0]) == 8.0
    assert sorted(p for p in os.listdir(tmp_path) if p.isdigit()) == ["8", "9"]


def test_async_save_then_restore_after_wait(tmp_path):
    expected = np.arange(2_000_000, dtype=np.float32).reshape(1000, 2000)
    big = {"w": jnp.arange(2_000_000, dtype=jnp.float32).reshape(1000, 2000)}
    with Checkpointer(str(tmp_path), save_every=1, keep=1, async_save=True) as ckpt:
        assert ckpt.save(1, big)
        # the caller may donate its arrays to the next step right away: the save has its own
        # host copy (on CPU, XLA may decline the donation; on accelerators the buffer is reused)
        jax.jit(lambda w: w.at[0, 0].set(-1.0), donate_argnums=0)(big["w"])
        ckpt.wait()
        assert ckpt.latest_step() == 1
        restored, _ = ckpt.restore({"w": jnp.zeros((1000, 2000))})
    np.testing.assert_array_equal(np.asarray(restored["w"]), expected)


def test_iterator_resumes_with_the_next_elements(tmp_path):
    iterator = iter(_dataset())
    for _ in range(5):
        next(iterator)
    with Checkpointer(str(tmp_path), save_every=5, keep=1) as ckpt:
        ckpt.save(5, {"x": jnp.zeros(())}, iterator=iterator)
        expected = [next(iterator) for _ in range(4)]  # consumed after save: must not leak in
        ckpt.wait()
    resumed = iter(_dataset())
    with Checkpointer(str(tmp_path), save_every=5, keep=1) as ckpt:
        ckpt.restore({"x": jnp.zeros(())}, iterator=resumed)
    got = [next(resumed) for _ in range(4)]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got[0], next(iter(_dataset())))  # not simply restarted


def test_config_json_saved_beside_the_model(tmp_path):
    config = ml_collections.ConfigDict({"seed": 3, "stages": ("data", "sft"), "sft": {"lr": 1e-3}})
    with Checkpointer(str(tmp_path), save_every=1, keep=2) as ckpt:
        ckpt.save(1, {"x": jnp.zeros(())}, config=config)
        ckpt.save(2, {"x": jnp.zeros(())}, config={"seed": 4})
        ckpt.wait()
        expected = {"seed": 3, "stages": ["data", "sft"], "sft": {"lr": 1e-3}}
        assert ckpt.restore_config(step=1) == expected
        assert ckpt.restore_config() == {"seed": 4}
        with pytest.raises(TypeError, match="JSON-serialisable"):
            ckpt.save(3, {"x": jnp.zeros(())}, config={"f": object()})


def test_missing_and_corrupt_checkpoints_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    with Checkpointer(str(empty), save_every=1, keep=1) as ckpt:
        with pytest.raises(CheckpointError, match=f"no checkpoint found in {empty}"):
            ckpt.restore({"x": jnp.zeros((3,))})
    run = tmp_path / "run"
    with Checkpointer(str(run), save_every=1, keep=1) as ckpt:
        ckpt.save(1, {"x": jnp.arange(3.0)})
        ckpt.wait()
        with pytest.raises(CheckpointError, match=r"no checkpoint for step 4 .* steps: \[1\]"):
            ckpt.restore({"x": jnp.zeros((3,))}, step=4)
    for root, _, files in os.walk(run / "1" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")
    with Checkpointer(str(run), save_every=1, keep=1) as ckpt:
        with pytest.raises(CheckpointError, match=f"checkpoint {run / '1'}"):
            ckpt.restore({"x": jnp.zeros((3,))})
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(CheckpointError, match=f"{not_a_dir} is not a directory"):
        Checkpointer(str(not_a_dir), save_every=1, keep=1)


def test_guard_restores_the_previous_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGTERM) != previous
        assert not guard.stop_requested and not guard.should_stop(0)
    assert signal.getsignal(signal.SIGTERM) == previous


# ---------------------------------------------------------------- subprocesses


def _script_env(**extra: str) -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _restore_on_eight_devices(directory: str, expected_npz: str) -> None:
    """Subprocess body: restore a 1-device checkpoint onto a data=2, fsdp=2, tensor=2 mesh."""
    assert jax.device_count() == 8
    mesh = pm.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: _train_state(seed=1, steps=0))
    shardings = pm.state_shardings(abstract, mesh, RULES)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    with Checkpointer(directory, save_every=1, keep=1) as ckpt:
        restored, _ = ckpt.restore(target)
    kernel = restored["model"]["up"]["kernel"][...]
    assert kernel.sharding.spec == jax.P("fsdp", "tensor"), kernel.sharding
    assert kernel.addressable_shards[0].data.shape == (2, 4)
    nu = restored["optimizer"]["opt_state"][0]["nu"]["down"][...]
    assert nu.sharding.spec == jax.P("tensor", "fsdp"), nu.sharding
    expected = np.load(expected_npz)
    leaves = jax.tree.leaves(restored)
    assert len(leaves) == len(expected.files)
    for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(np.asarray(leaf), expected[f"leaf{i}"])
    print("RESTORED OK")


def test_restore_onto_eight_device_mesh(tmp_path):
    saved = _train_state(seed=0, steps=2)
    with Checkpointer(str(tmp_path / "ckpt"), save_every=1, keep=1) as ckpt:
        ckpt.save(2, saved)
    leaves = {f"leaf{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(saved))}
    np.savez(tmp_path / "expected.npz", **leaves)
    proc = subprocess.run(
        [sys.executable, __file__, "restore8",
         str(tmp_path / "ckpt"), str(tmp_path / "expected.npz")],
        env=_script_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and "RESTORED OK" in proc.stdout, proc.stderr[-4000:]


def _toy_loop(directory: str) -> None:
    """Subprocess body: a training loop that saves only on preemption (interval never reached)."""
    state = {"counter": jnp.zeros((), jnp.int32)}
    step_fn = jax.jit(lambda s: {"counter": s["counter"] + 1})
    with Checkpointer(directory, save_every=10_000, keep=2) as ckpt, PreemptionGuard() as guard:
        for step in range(1, 100_000):
            state = step_fn(state)
            print(f"STEP {step}", flush=True)
            if guard.should_stop(step):
                ckpt.save(step, state, force=True)
                print(f"SAVED {step}", flush=True)
                break
            time.sleep(0.02)
    sys.exit(0)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    directory = str(tmp_path / "ckpt")
    proc = subprocess.Popen(
        [sys.executable, __file__, "loop", directory], env=_script_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in proc.stdout:
            if line.strip() == "STEP 5":
                proc.send_signal(signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    saved_step = int(next(ln for ln in out.splitlines() if ln.startswith("SAVED "))[6:])
    assert saved_step >= 5
    with Checkpointer(directory, save_every=10_000, keep=2) as ckpt:
        assert ckpt.all_steps() == [saved_step]
        restored, step = ckpt.restore({"counter": jnp.zeros((), jnp.int32)})
    assert step == saved_step and int(restored["counter"]) == saved_step


if __name__ == "__main__":
    if sys.argv[1] == "restore8":
        _restore_on_eight_devices(sys.argv[2], sys.argv[3])
    else:
        _toy_loop(sys.argv[2])
