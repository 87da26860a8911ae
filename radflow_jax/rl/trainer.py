"""The RL stage: rollout → hierarchical reward → GRPO/CAPO update, starting from the SFT policy.

Per step: sample ``group_size`` reports per training image with the KV-cache sampler (one prefill
per image); score them — the regex labeler runs on the host while the device computes the
reference policy's log-probs, everything after the labels is jitted (``rewards.hierarchy``);
group-relative advantages; ``num_iterations`` jitted updates of the clipped GRPO loss with the
per-sample trust region and KL of CAPO and the local-sensitivity token weights. The SFT policy is
the frozen KL reference. Checkpoints and resume work as in SFT.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from radflow_jax import checkpoint as ckpt_lib
from radflow_jax.data import prepare
from radflow_jax.models.policy import teacher_forced
from radflow_jax.rewards import hierarchy, labeler
from radflow_jax.rl import capo, grpo
from radflow_jax.rl.sampling import sample
from radflow_jax.run_log import RunLog
from radflow_jax.sft.trainer import SFTRun, update_trainable, value_and_grad_trainable

def max_new_tokens(config: ml_collections.ConfigDict) -> int:
    return config.rl.max_new_tokens or config.data.max_target_len


def _repeat(x: jax.Array, g: int) -> jax.Array:
    return jnp.repeat(x, g, axis=0)


def rollout_batch(batch: Mapping[str, jax.Array], tokens, mask, group_size: int) -> dict:
    """The teacher-forcing batch of the sampled completions (prefix repeated to the group)."""
    out = {k: _repeat(batch[k], group_size) for k in ("image", "view_mask", "prompt_tokens", "prompt_mask")}
    out["target_tokens"], out["target_mask"] = tokens, mask
    return out


def sequence_logprobs(graphdef, params, batch, tokens, mask, group_size: int) -> jax.Array:
    """log π(token) of each sampled token under ``params`` (the frozen reference here)."""
    logp, _ = teacher_forced(nnx.merge(graphdef, params), rollout_batch(batch, tokens, mask, group_size))
    return logp


def update_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: Mapping[str, jax.Array],
    rollout: Mapping[str, jax.Array],
    *,
    group_size: int,
    loss_type: str,
    max_completion_length: int,
    mask_truncated_completions: bool,
    frozen: tuple[str, ...] = (),
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One optimizer update of the GRPO loss on a scored rollout (pure; jitted with donation)."""
    model, optimizer = nnx.merge(graphdef, state)
    tf_batch = rollout_batch(batch, rollout["tokens"], rollout["mask"], group_size)

    def loss_fn(m):
        logp, logits = teacher_forced(m, tf_batch)
        loss, aux = grpo.grpo_loss(
            logp,
            rollout["old_logp"],
            rollout["ref_logp"],
            rollout["advantages"],
            rollout["mask"],
            epsilon_low=rollout["eps_low"],
            epsilon_high=rollout["eps_high"],
            beta=rollout["beta"],
            token_weights=rollout["token_weights"],
            loss_type=loss_type,
            max_completion_length=max_completion_length,
            truncated=rollout["truncated"],
            mask_truncated_completions=mask_truncated_completions,
        )
        probs = jax.nn.softmax(logits, axis=-1)
        entropy = -(probs * jax.nn.log_softmax(logits, axis=-1)).sum(-1)
        mask = rollout["mask"]
        aux = dict(aux, entropy=(entropy * mask).sum() / jnp.maximum(mask.sum(), 1))
        return loss, aux

    (loss, aux), grads = value_and_grad_trainable(loss_fn, model, frozen)
    update_trainable(optimizer, model, grads, frozen)
    return nnx.state((model, optimizer)), dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))


class RLRun(SFTRun):
    """SFTRun's model and shardings with the RL optimizer and jitted rollout/update functions."""

    def __init__(self, config: ml_collections.ConfigDict, vocab_size: int, frozen: tuple[str, ...] = ()):
        rl = config.rl
        rl_as_sft = ml_collections.ConfigDict(
            dict(
                learning_rate=rl.learning_rate, warmup_steps=rl.warmup_steps, num_steps=rl.num_steps,
                min_lr_ratio=1.0, weight_decay=0.0, grad_clip=rl.grad_clip, grad_accum=1,
                length_bucket=config.sft.length_bucket,
            )
        )
        super().__init__(config, vocab_size, optimizer_config=rl_as_sft, frozen=frozen)
        self.reward_fn = jax.jit(hierarchy.hierarchical_reward, static_argnums=1)
        self.update_fn = jax.jit(
            functools.partial(
                update_step,
                self.graphdef,
                group_size=rl.group_size,
                loss_type=rl.loss_type,
                max_completion_length=max_new_tokens(config),
                mask_truncated_completions=rl.mask_truncated_completions,
                frozen=self.frozen,
            ),
            in_shardings=(self.shardings, None, None),
            out_shardings=(self.shardings, None),
            donate_argnums=0,
        )
        self.ref_logp_fn = jax.jit(
            functools.partial(sequence_logprobs, self.policy_def, group_size=rl.group_size)
        )  # (reference policy variables, batch, tokens, mask) -> log-probs


def _trim(tokens: np.ndarray, mask: np.ndarray, bucket: int) -> int:
    longest = int(mask.sum(axis=1).max(initial=1))
    return min(-(-longest // bucket) * bucket, tokens.shape[1]) if bucket else tokens.shape[1]


def rl_step(run: RLRun, state, ref_params, batch, reward_cfg, data, rng, label_fn=labeler.label_array):
    """One RL step: rollout, reward, advantages, CAPO, ``num_iterations`` updates → (state, metrics)."""
    config, rl = run.config, run.config.rl
    g = rl.group_size
    device = run.device_batch(batch)
    out = sample(
        run.policy_def, run.policy_state(state), device, rng=rng,
        max_new_tokens=max_new_tokens(config), group_size=g,
        temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
        eos_id=data.tokenizer.eos_id, pad_id=data.tokenizer.pad_id,
    )
    # The host needs the token ids for the labeler. Reference log-probs are dispatched before the
    # host work starts, so the device computes them while the host decodes and labels.
    tokens_np, mask_np = jax.device_get((out.tokens, out.mask))
    length = _trim(tokens_np, mask_np, config.sft.length_bucket)
    tokens, mask = out.tokens[:, :length], out.mask[:, :length]
    ref_logp = run.ref_logp_fn(ref_params, device, tokens, mask)
    tokens_np, mask_np = tokens_np[:, :length], mask_np[:, :length]
    texts = [data.tokenizer.decode(t) for t in tokens_np]
    ref_texts = [data.tokenizer.decode(t) for t in batch["target_tokens"]]
    gen_labels = hierarchy.host_labels(texts, data.schema, label_fn)
    ref_labels = hierarchy.host_labels(ref_texts, data.schema, label_fn)
    weights = capo.sentence_token_weights(
        tokens_np, mask_np, data.tokenizer, data.schema,
        alpha=config.capo.alpha, alpha_crit=config.capo.alpha_crit, enabled=config.capo.sensitivity,
    )
    inputs = hierarchy.RewardInputs(
        gen_tokens=tokens, gen_mask=mask,
        ref_tokens=jnp.repeat(device["target_tokens"], g, axis=0),
        ref_mask=jnp.repeat(device["target_mask"], g, axis=0),
        gen_labels=jnp.asarray(gen_labels), ref_labels=jnp.repeat(jnp.asarray(ref_labels), g, axis=0),
    )
    rewards, terms = run.reward_fn(inputs, reward_cfg)
    advantages = grpo.group_advantages(rewards, g, scale=rl.scale_rewards)
    critical_index = capo.critical_index(data.schema)
    critical = capo.critical_cases(ref_labels[:, 0], critical_index)
    d = capo.group_disagreement(gen_labels[:, 0], ref_labels[:, 0], critical_index, g)
    eps_low, eps_high, beta = capo.per_sample_trust_region(
        critical, d, epsilon_low=rl.epsilon, epsilon_high=rl.epsilon_high, beta=rl.beta,
        kappa=config.capo.kappa, gamma=config.capo.gamma, group_size=g, enabled=config.capo.enabled,
    )
    rollout = {
        "tokens": tokens, "mask": mask, "old_logp": out.logprobs[:, :length], "ref_logp": ref_logp,
        "advantages": advantages, "eps_low": jnp.asarray(eps_low), "eps_high": jnp.asarray(eps_high),
        "beta": jnp.asarray(beta), "token_weights": jnp.asarray(weights), "truncated": out.truncated,
    }
    for _ in range(rl.num_iterations):
        state, update_metrics = run.update_fn(state, device, rollout)
    metrics = {f"reward/{k}": jnp.mean(v) for k, v in terms.items()}
    metrics["reward"] = jnp.mean(rewards)
    metrics.update(update_metrics)
    metrics["response_length"] = jnp.mean(out.lengths.astype(jnp.float32))
    metrics["truncated_fraction"] = jnp.mean(out.truncated.astype(jnp.float32))
    metrics.update(capo.capo_metrics(critical, d, eps_low, eps_high, beta, g))
    return state, metrics


def run_rl(
    config: ml_collections.ConfigDict, workdir: str, data: prepare.PreparedData,
    sft_policy: nnx.State,
    label_fn=labeler.label_array,
    frozen: tuple[str, ...] = (),
) -> tuple[RLRun, nnx.State]:
    """Trains (or resumes) the RL stage from the SFT policy variables; returns the final state.

    ``sft_policy`` is both the starting point and the frozen KL reference; ``label_fn`` labels
    texts for the reward (the rule labeler, or the Flax labeler's ``label_array``).
    """
    rl = config.rl
    run = RLRun(config, data.tokenizer.vocab_size, frozen=frozen)
    reward_cfg = hierarchy.reward_config_from(config.reward, data.schema)
    iterator = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=rl.batch_size,
                                               augment=rl.augment))
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints", "rl"), save_every=rl.checkpoint_every, keep=rl.keep_checkpoints
    )
    step = checkpointer.latest_step() or 0
    if step:
        state, step = checkpointer.restore(run.abstract_state, iterator=iterator)
        print(f"[rl] resumed from step {step}")
    else:
        state = run.init_from_policy(sft_policy)
    key = jax.random.key(config.seed + 1)
    with checkpointer, RunLog(workdir, "rl", total_steps=rl.num_steps, initial_step=step) as log, \
            ckpt_lib.PreemptionGuard() as guard:
        start = time.perf_counter()
        while step < rl.num_steps:
            batch = next(iterator)
            state, metrics = rl_step(run, state, sft_policy, batch, reward_cfg, data,
                                     jax.random.fold_in(key, step), label_fn)
            step += 1
            log.advance(step)
            if step % rl.log_every == 0 or step == rl.num_steps:
                log.write(step, jax.device_get(metrics), examples=rl.batch_size * rl.group_size)
            ckpt_lib.save_or_stop(checkpointer, guard, step, num_steps=rl.num_steps, state=state,
                                  iterator=iterator, config=config.to_dict(), stage="rl")
        print(f"[rl] {rl.num_steps} steps done ({time.perf_counter() - start:.0f}s this run)")
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    return run, state
