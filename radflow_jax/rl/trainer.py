"""The RL stage: rollout → hierarchical reward → GRPO/CAPO update, starting from the SFT policy.

Per step: sample ``group_size`` reports per training image with the KV-cache sampler (one prefill
per image); score them — the regex labeler runs on the host while the device computes the
reference policy's log-probs, everything after the labels is jitted (``rewards.hierarchy``);
group-relative advantages; ``num_iterations`` jitted updates of the clipped GRPO loss with the
per-sample trust region and KL of CAPO and the local-sensitivity token weights. The SFT policy is
the frozen KL reference. Checkpoints and resume work as in SFT.

Log-probs follow TRL's GRPO: the current, old and reference log-probs are all teacher-forced at
the sampling temperature (logits / T), never taken from the sampler (in bf16 its incremental
decode differs from teacher forcing by up to ~2 %, which would fire CAPO's tight clip on
unchanged weights). The old log-probs are the first update's own current log-probs, detached, so
the ratio is exactly 1 on the first pass in every dtype; later passes reuse them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from radflow_jax import checkpoint as ckpt_lib
from radflow_jax import optim
from radflow_jax.data import prepare
from radflow_jax.models.policy import token_scores
from radflow_jax.parallel import distributed
from radflow_jax.rewards import hierarchy, labeler, words
from radflow_jax.rl import capo, grpo
from radflow_jax.rl.sampling import sample
from radflow_jax.runtime import (
    MODEL_KEYS, PolicyTrainState, Runtime, bucket_length, make_policy_config, value_and_grad_trainable,
)
from radflow_jax.train_loop import run_loop

def max_new_tokens(config: ml_collections.ConfigDict) -> int:
    return config.rl.max_new_tokens or config.data.max_target_len


def _repeat(x: jax.Array, g: int) -> jax.Array:
    return jnp.repeat(x, g, axis=0)


def rollout_batch(batch: Mapping[str, jax.Array], tokens, mask, group_size: int) -> dict:
    """The teacher-forcing batch of the sampled completions: the prompt repeated to the group, the
    images not (the policy encodes each case's images once and shares the features, ``Policy._embed``)."""
    out = {k: batch[k] for k in ("image", "view_mask")}
    out.update({k: _repeat(batch[k], group_size) for k in ("prompt_tokens", "prompt_mask")})
    out["target_tokens"], out["target_mask"] = tokens, mask
    return out


def sequence_logprobs(graphdef, params, batch, tokens, mask, group_size: int, temperature: float = 1.0,
                      chunk_size: int = 0) -> jax.Array:
    """log π(token) at ``temperature`` of each sampled token under ``params`` (the frozen reference)."""
    tf_batch = rollout_batch(batch, tokens, mask, group_size)
    return token_scores(nnx.merge(graphdef, params), tf_batch, temperature=temperature,
                        chunk_size=chunk_size).logp


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
    temperature: float = 1.0,
    frozen: tuple[str, ...] = (),
    chunk_size: int = 0,
) -> tuple[nnx.State, dict[str, jax.Array], jax.Array]:
    """One optimizer update of the GRPO loss on a scored rollout (pure; jitted with donation)
    → (state, metrics, old log-probs).

    On the first pass (``rollout["first_pass"]``) the old log-probs are this pass's current ones,
    detached: ratio 1 exactly, the on-policy gradient. They are returned so that later passes
    (``num_iterations > 1``) measure the ratio against the policy that sampled; the flag is traced,
    so every pass runs one compiled program.
    """
    model, optimizer = nnx.merge(graphdef, state)
    tf_batch = rollout_batch(batch, rollout["tokens"], rollout["mask"], group_size)

    def loss_fn(m):
        scores = token_scores(m, tf_batch, temperature=temperature, chunk_size=chunk_size)
        old_logp = jnp.where(rollout["first_pass"], jax.lax.stop_gradient(scores.logp), rollout["old_logp"])
        loss, aux = grpo.grpo_loss(
            scores.logp,
            old_logp,
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
        mask = rollout["mask"]
        aux = dict(aux, entropy=scores.entropy.sum() / jnp.maximum(mask.sum(), 1))
        return loss, (aux, old_logp)

    (loss, (aux, old_logp)), grads = value_and_grad_trainable(loss_fn, model, frozen)
    optimizer.update(model, grads)
    metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))
    return nnx.state((model, optimizer)), metrics, old_logp


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    """The static part of ``score_rollout``: group size, advantage scaling and CAPO's knobs."""

    group_size: int
    scale_rewards: str
    critical_index: tuple[int, ...]
    epsilon_low: float
    epsilon_high: float
    beta: float
    kappa: float
    gamma: float
    capo: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, schema) -> ScoreSettings:
        rl = config.rl
        return cls(group_size=rl.group_size, scale_rewards=rl.scale_rewards,
                   critical_index=capo.critical_index(schema), epsilon_low=rl.epsilon,
                   epsilon_high=rl.epsilon_high, beta=rl.beta, kappa=config.capo.kappa,
                   gamma=config.capo.gamma, capo=config.capo.enabled)


class RLRun:
    """The RL stage on devices: the runtime and policy state SFT uses too (so an SFT checkpoint
    and an RL one restore alike), the RL optimizer, and the jitted rollout-scoring and update."""

    def __init__(self, config: ml_collections.ConfigDict, vocab_size: int, frozen: Sequence[str] = ()):
        rl = config.rl
        self.config = config
        self.runtime = Runtime(config)
        self.tx, self.schedule = optim.make_optimizer(rl)
        self.train = PolicyTrainState(self.runtime, make_policy_config(config, vocab_size), self.tx,
                                      frozen=frozen, seed=config.seed)
        self.update_fn = self.runtime.jit_step(
            functools.partial(
                update_step,
                self.train.graphdef,
                group_size=rl.group_size,
                loss_type=rl.loss_type,
                max_completion_length=max_new_tokens(config),
                mask_truncated_completions=rl.mask_truncated_completions,
                temperature=rl.temperature,
                frozen=self.train.frozen,
                chunk_size=config.model.logits_chunk,
            ),
            self.train.layout,
            num_inputs=2,
            num_outputs=2,
        )
        self.ref_logp_fn = self.runtime.in_rules(jax.jit(
            functools.partial(sequence_logprobs, self.train.policy_def, group_size=rl.group_size,
                              temperature=rl.temperature, chunk_size=config.model.logits_chunk)
        ))  # (reference policy variables, batch, tokens, mask) -> log-probs; activations laid out by
        # the rules (without them XLA replicated the attention rows: 3.5x the temp memory at 7b)

    def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Model inputs as global arrays. The reference targets keep the data's full length: RL
        only scores them, and a fixed length means the reward compiles once per completion
        bucket (not once per pair of buckets) and no cross-process max is needed for it."""
        return self.runtime.device_batch(batch, MODEL_KEYS)


@functools.partial(jax.jit, static_argnames="length")
def trim_completions(tokens: jax.Array, mask: jax.Array, lengths: jax.Array, truncated: jax.Array,
                     length: int) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
    """The rollout cut to its padded completion length → (tokens, mask, zero log-probs, metrics).

    One program per length bucket, so the reference pass, reward and update compile once per
    bucket, not once per longest completion."""
    stats = dict(response_length=jnp.mean(lengths.astype(jnp.float32)),
                 truncated_fraction=jnp.mean(truncated.astype(jnp.float32)))
    return tokens[:, :length], mask[:, :length], jnp.zeros((tokens.shape[0], length), jnp.float32), stats


@functools.partial(jax.jit, static_argnames=("reward_cfg", "settings"))
def score_rollout(
    gen_tokens: jax.Array,
    gen_mask: jax.Array,
    gen_labels: jax.Array,
    batch: Mapping[str, jax.Array],
    ref_labels: jax.Array,
    word_table: words.WordTable | None,
    *,
    reward_cfg: hierarchy.RewardConfig,
    settings: ScoreSettings,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Labels → reward, group advantages and CAPO's per-sample trust region, in one program.

    ``gen_*`` hold one row per completion, ``batch`` (its ``target_*``) and ``ref_labels`` one per
    case. Returns (what the update reads: ``advantages``, ``eps_low``, ``eps_high``, ``beta``;
    the step's reward and CAPO metrics).
    """
    g = settings.group_size
    inputs = hierarchy.RewardInputs(
        gen_tokens=gen_tokens, gen_mask=gen_mask, gen_labels=gen_labels,
        ref_tokens=_repeat(batch["target_tokens"], g), ref_mask=_repeat(batch["target_mask"], g),
        ref_labels=_repeat(ref_labels, g),
    )
    rewards, terms = hierarchy.hierarchical_reward(inputs, reward_cfg, None, word_table)
    ref_labels = ref_labels[:, 0]
    critical = capo.critical_cases(ref_labels, settings.critical_index)
    d = capo.group_disagreement(inputs.gen_labels[:, 0], ref_labels, settings.critical_index, g)
    eps_low, eps_high, beta = capo.per_sample_trust_region(
        critical, d, epsilon_low=settings.epsilon_low, epsilon_high=settings.epsilon_high,
        beta=settings.beta, kappa=settings.kappa, gamma=settings.gamma, group_size=g,
        enabled=settings.capo,
    )
    update = dict(advantages=grpo.group_advantages(rewards, g, scale=settings.scale_rewards),
                  eps_low=eps_low, eps_high=eps_high, beta=beta)
    metrics = {f"reward/{k}": jnp.mean(v) for k, v in terms.items()}
    metrics["reward"] = jnp.mean(rewards)
    metrics.update(capo.capo_metrics(critical, d, eps_low, eps_high, beta, g))
    return update, metrics


def rl_step(run: RLRun, state, ref_params, batch, reward_cfg, data, rng, label_fn=labeler.label_array,
            word_table: words.WordTable | None = None):
    """One RL step: rollout, reward, advantages, CAPO, ``num_iterations`` updates → (state, metrics).

    Every host↔device copy is explicit (``device_put``/``to_host``), so the step runs under
    ``jax.transfer_guard("disallow")``. ``time/*`` metrics split the step's wall time: the
    rollout (until its tokens are on the host), labeling (host: decode, labeler, CAPO token
    weights — the reference pass runs on the devices meanwhile), scoring (reward, advantages,
    CAPO, and waiting for whatever of the reference pass is still running: the devices run
    programs in order) and the updates.
    """
    config, rl = run.config, run.config.rl
    g = rl.group_size
    clock = time.perf_counter()
    device = run.device_batch(batch)
    out = sample(
        run.train.policy_def, run.train.policy_state(state), device, rng=rng,
        max_new_tokens=max_new_tokens(config), group_size=g,
        temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
        eos_id=data.tokenizer.eos_id, pad_id=data.tokenizer.pad_id,
        mesh=run.runtime.mesh, rules=run.runtime.rules,
    )
    # The host needs the token ids for the labeler: every process gathers the whole rollout and
    # labels all of it, so the reward, advantages and CAPO see every group. Reference log-probs
    # are dispatched before the host work starts, so the devices compute them meanwhile.
    tokens_np, mask_np = distributed.to_host(out.tokens), distributed.to_host(out.mask)
    timing = {"time/rollout": time.perf_counter() - clock}
    clock = time.perf_counter()
    length = bucket_length(int(mask_np.sum(axis=1).max(initial=1)), config.sft.length_bucket, tokens_np.shape[1])
    tokens, mask, zeros, stats = trim_completions(out.tokens, out.mask, out.lengths, out.truncated, length=length)
    # no KL term at all (beta == 0, ref_params is None): no reference pass
    ref_logp = run.ref_logp_fn(ref_params, device, tokens, mask) if rl.beta > 0 else zeros
    tokens_np, mask_np = tokens_np[:, :length], mask_np[:, :length]
    texts = [data.tokenizer.decode(t) for t in tokens_np]
    ref_texts = [data.tokenizer.decode(t) for t in distributed.to_host(device["target_tokens"])]
    gen_labels = hierarchy.host_labels(texts, data.schema, label_fn)
    ref_labels = hierarchy.host_labels(ref_texts, data.schema, label_fn)
    weights = capo.sentence_token_weights(
        tokens_np, mask_np, data.tokenizer, data.schema,
        alpha=config.capo.alpha, alpha_crit=config.capo.alpha_crit, enabled=config.capo.sensitivity,
    )
    put = run.runtime.replicated
    gen_labels, ref_labels = put(gen_labels), put(ref_labels)
    timing["time/labeling"] = time.perf_counter() - clock
    clock = time.perf_counter()
    update, metrics = score_rollout(tokens, mask, gen_labels, device, ref_labels, word_table, reward_cfg=reward_cfg,
                                    settings=ScoreSettings.from_config(config, data.schema))
    jax.block_until_ready(update)
    timing["time/scoring"] = time.perf_counter() - clock
    clock = time.perf_counter()
    rollout = dict(update, tokens=tokens, mask=mask, ref_logp=ref_logp, old_logp=zeros,
                   first_pass=put(np.asarray(True)), token_weights=put(weights), truncated=out.truncated)
    for _ in range(rl.num_iterations):
        state, update_metrics, rollout["old_logp"] = run.update_fn(state, device, rollout)
        rollout["first_pass"] = put(np.asarray(False))
    jax.block_until_ready(update_metrics)
    timing["time/update"] = time.perf_counter() - clock
    metrics.update(update_metrics, **stats)
    metrics["completion_length_padded"] = length  # the bucket the reference, reward and update ran at
    return state, dict(metrics, **timing)


def reference_params(policy: nnx.State, dtype: jnp.dtype, beta: float) -> nnx.State | None:
    """The frozen KL reference: none at all when ``beta == 0``; floating variables kept in the
    compute dtype (bf16 at scale: half the memory of a float32 copy, and the reference pass
    computes in that dtype anyway)."""
    if beta == 0:
        return None
    if dtype == jnp.float32:
        return policy
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, policy)


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
    # The NLG terms score the words the evaluation's normaliser reads (``none`` has no on-device
    # counterpart: the project's own normaliser stands in).
    normalize = config.eval.normalize if config.eval.normalize in words.NORMALIZERS else "radflow"
    word_table = words.word_table(data.tokenizer, normalize=normalize)
    iterator = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=rl.batch_size,
                                               augment=rl.augment))
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints", "rl"), save_every=rl.checkpoint_every, keep=rl.keep_checkpoints
    )
    step = checkpointer.latest_step() or 0
    if step:
        state, step = checkpointer.restore(run.train.abstract_state, iterator=iterator)
        print(f"[rl] resumed from step {step}")
    else:
        state = run.train.init_from_policy(sft_policy)
    key = jax.random.key(config.seed + 1)
    reference = reference_params(sft_policy, run.train.model_config.compute_dtype, rl.beta)

    def one_step(state, step):
        return rl_step(run, state, reference, next(iterator), reward_cfg, data,
                       jax.random.fold_in(key, step), label_fn, word_table)

    state = run_loop("rl", workdir, state=state, step=step, num_steps=rl.num_steps, one_step=one_step,
                     checkpointer=checkpointer, iterator=iterator, config=config.to_dict(),
                     log_every=rl.log_every, examples_per_step=rl.batch_size * rl.group_size)
    return run, state
