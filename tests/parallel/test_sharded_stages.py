"""The real SFT and GRPO steps and the sampler, sharded over ``data=2, fsdp=2, tensor=2``, equal
the same computation on one device: losses and gradients to 1e-5, greedy tokens exactly.

Each layout runs in its own subprocess (the device count is fixed at JAX start-up) on the same
dataset, tokenizer and seed, and writes its numbers to an ``.npz`` the test compares.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESHES = {"single": ({"data": 1, "fsdp": 1, "tensor": 1}, 1), "sharded": ({"data": 2, "fsdp": 2, "tensor": 2}, 8)}


def _run_layout(workdir: str, layout: str, out: str) -> None:
    """Subprocess body: SFT grads, GRPO grads and greedy tokens under one mesh → ``out``."""
    import jax
    import jax.numpy as jnp
    from absl import flags
    from flax import nnx

    from radflow_jax import config as config_lib
    from radflow_jax import runtime
    from radflow_jax.data import prepare
    from radflow_jax.rl import trainer as rl_trainer
    from radflow_jax.rl.sampling import sample
    from radflow_jax.sft import trainer as sft_trainer

    flags.FLAGS(["test"])
    shape, devices = MESHES[layout]
    assert jax.device_count() == devices, jax.devices()
    config = config_lib.load_config_file("configs/cxr.py:quick")
    config.data.num_train, config.data.num_val, config.data.num_test = 16, 4, 4
    config.mesh.shape = shape
    config.sft.length_bucket = 0
    config = config_lib.validate(config)
    data = prepare.prepare_data(config, workdir)
    it = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=8))
    batch = next(it)
    it.close()

    sft = sft_trainer.SFTRun(config, data.tokenizer.vocab_size)
    state = sft.train.init_state()
    device = sft.device_batch(batch)
    tf_in = {k: device[k] for k in runtime.MODEL_KEYS}

    def grads_of(loss_fn):
        def fn(state, *inputs):
            model = sft.train.policy(state)
            (loss, _), grads = runtime.value_and_grad_trainable(lambda m: loss_fn(m, *inputs), model, ())
            return loss, grads
        return jax.jit(fn)

    sft_loss, sft_grads = grads_of(lambda m, b: sft_trainer.token_nll(m, b))(state, tf_in)
    results = {"sft_loss": np.asarray(sft_loss)}
    results.update({f"sft_grad/{jax.tree_util.keystr(p)}": np.asarray(g)
                    for p, g in jax.tree_util.tree_leaves_with_path(sft_grads)})

    rl = rl_trainer.RLRun(config, data.tokenizer.vocab_size)
    g = config.rl.group_size
    tokens = jnp.repeat(device["target_tokens"], g, axis=0)
    mask = jnp.repeat(device["target_mask"], g, axis=0)
    ref = rl.ref_logp_fn(sft.train.policy_state(state), device, tokens, mask)
    n = tokens.shape[0]
    rollout = {
        "tokens": tokens, "mask": mask, "old_logp": ref, "ref_logp": ref - 0.01,
        "advantages": jnp.linspace(-1.0, 1.0, n), "eps_low": jnp.full((n,), 0.2),
        "eps_high": jnp.full((n,), 0.2), "beta": jnp.full((n,), 0.04),
        "token_weights": jnp.ones(tokens.shape), "truncated": jnp.zeros((n,), bool),
    }

    def grpo_loss(m, b, r):
        tf = rl_trainer.rollout_batch(b, r["tokens"], r["mask"], g)
        logp = rl_trainer.token_scores(m, tf).logp
        loss, aux = rl_trainer.grpo.grpo_loss(
            logp, r["old_logp"], r["ref_logp"], r["advantages"], r["mask"], epsilon_low=r["eps_low"],
            epsilon_high=r["eps_high"], beta=r["beta"], token_weights=r["token_weights"],
            loss_type=config.rl.loss_type, max_completion_length=tokens.shape[1], truncated=r["truncated"],
            mask_truncated_completions=False,
        )
        return loss, aux

    rl_loss, rl_grads = grads_of(grpo_loss)(rl.train.init_from_policy(sft.train.policy_state(state)), device, rollout)
    results["rl_loss"] = np.asarray(rl_loss)
    results.update({f"rl_grad/{jax.tree_util.keystr(p)}": np.asarray(x)
                    for p, x in jax.tree_util.tree_leaves_with_path(rl_grads)})
    results["ref_logp"] = np.asarray(ref)

    out_tokens = sample(sft.train.policy_def, sft.train.policy_state(state), device, rng=jax.random.key(0),
                        max_new_tokens=24, greedy=True, eos_id=data.tokenizer.eos_id, pad_id=data.tokenizer.pad_id)
    results["greedy_tokens"] = np.asarray(out_tokens.tokens)
    if layout == "sharded":  # the layout really is split: a kernel over fsdp and tensor
        specs = {str(x.sharding.spec) for x in jax.tree.leaves(nnx.state(sft.train.policy(state), nnx.Param))}
        results["split_specs"] = np.asarray(len([s for s in specs if "fsdp" in s and "tensor" in s]))
    np.savez(out, **results)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("sharded_stages"))
    results = {}
    for layout, (_, devices) in MESHES.items():
        out = os.path.join(workdir, f"{layout}.npz")
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, __file__, workdir, layout, out], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[layout] = dict(np.load(out))
    return results


def test_sft_loss_and_gradients_match_one_device(layouts):
    single, sharded = layouts["single"], layouts["sharded"]
    assert sharded["split_specs"] > 0
    np.testing.assert_allclose(sharded["sft_loss"], single["sft_loss"], rtol=1e-5)
    keys = [k for k in single if k.startswith("sft_grad/")]
    assert len(keys) > 10 and set(keys) == {k for k in sharded if k.startswith("sft_grad/")}
    for key in keys:
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_grpo_loss_and_gradients_match_one_device(layouts):
    single, sharded = layouts["single"], layouts["sharded"]
    np.testing.assert_allclose(sharded["ref_logp"], single["ref_logp"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sharded["rl_loss"], single["rl_loss"], rtol=1e-5, atol=1e-7)
    for key in (k for k in single if k.startswith("rl_grad/")):
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_sharded_greedy_sampling_equals_one_device(layouts):
    np.testing.assert_array_equal(layouts["sharded"]["greedy_tokens"], layouts["single"]["greedy_tokens"])


if __name__ == "__main__":
    _run_layout(*sys.argv[1:4])
