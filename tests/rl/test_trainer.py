"""The RL update's log-prob semantics (TRL's): teacher-forced at the sampling temperature, the old
log-probs the first pass's own (ratio exactly 1 in fp32 and bf16), later passes against them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radflow_jax import config as config_lib
from radflow_jax.rl import trainer
from radflow_jax.rl.sampling import sample

VOCAB, B, G, PROMPT, NEW, TEMPERATURE = 48, 2, 4, 4, 8, 0.3


def _run(dtype: str) -> trainer.RLRun:
    config = config_lib.load_config_file("configs/cxr.py:quick")
    config.model.size, config.model.dtype = "toy", dtype
    config.data.image_size, config.data.max_prompt_len, config.data.max_target_len = 32, PROMPT, NEW
    config.rl.group_size, config.rl.batch_size, config.rl.temperature = G, B, TEMPERATURE
    config.rl.num_iterations, config.rl.learning_rate, config.rl.warmup_steps = 2, 1e-2, 0
    return trainer.RLRun(config_lib.validate(config), VOCAB)


def _prefix() -> dict:
    rng = np.random.default_rng(0)
    prompt = np.concatenate([np.ones((B, 1), np.int32), rng.integers(7, VOCAB, (B, PROMPT - 1))], 1)
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (B, 1, 32, 32, 1)), jnp.float32),
        "view_mask": jnp.ones((B, 1), bool),
        "prompt_tokens": jnp.asarray(prompt), "prompt_mask": jnp.ones((B, PROMPT), bool),
        "target_tokens": jnp.ones((B, NEW), jnp.int32), "target_mask": jnp.ones((B, NEW), bool),
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_first_pass_ratio_is_exactly_one_and_later_passes_use_its_log_probs(dtype):
    run = _run(dtype)
    state, batch = run.train.init_state(), _prefix()
    out = sample(run.train.policy_def, run.train.policy_state(state), batch, rng=jax.random.key(0),
                 max_new_tokens=NEW, group_size=G, temperature=TEMPERATURE, eos_id=2, pad_id=0)
    n = B * G
    at_temperature = run.ref_logp_fn(run.train.policy_state(state), batch, out.tokens, out.mask)
    rollout = {
        "tokens": out.tokens, "mask": out.mask, "ref_logp": at_temperature,
        "old_logp": jnp.zeros_like(at_temperature), "first_pass": jnp.asarray(True),
        "advantages": jnp.linspace(-1.0, 1.0, n), "eps_low": jnp.full((n,), 0.01),
        "eps_high": jnp.full((n,), 0.01), "beta": jnp.full((n,), 0.04),
        "token_weights": jnp.ones(out.tokens.shape), "truncated": out.truncated,
    }
    at_one = jax.jit(functools.partial(trainer.sequence_logprobs, run.train.policy_def, group_size=G))
    cold = at_one(run.train.policy_state(state), batch, out.tokens, out.mask)  # temperature 1
    state, first, old = run.update_fn(state, batch, rollout)
    assert float(first["ratio_mean"]) == 1.0  # exactly, though CAPO-tight eps = 0.01
    assert float(first["clip_ratio/region_mean"]) == 0.0
    assert float(first["kl"]) < 1e-6  # current == reference policy before the update
    # The old log-probs are the teacher-forced ones at the sampling temperature (not temperature 1).
    err = float(jnp.max(jnp.abs(old - at_temperature)))  # two compiled programs: rounding only
    assert err <= (1e-5 if dtype == "float32" else 3e-2), err
    assert float(jnp.max(jnp.abs(cold - old))) > 10 * max(err, 1e-5)

    state, second, passed = run.update_fn(state, batch, dict(rollout, old_logp=old, first_pass=jnp.asarray(False)))
    np.testing.assert_array_equal(np.asarray(passed), np.asarray(old))  # carried, not recomputed
    assert float(second["ratio_mean"]) != 1.0  # the first update moved the policy
    assert float(second["clip_ratio/region_mean"]) > 0.0  # ... past the tight trust region
