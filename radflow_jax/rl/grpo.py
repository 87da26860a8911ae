"""GRPO advantages and loss as pure functions (DESIGN §1.2), numerically matching TRL's GRPOTrainer.

The trainer samples G completions per case (rows ``b*G .. b*G+G-1`` form case b's group, the
sampler's order), scores them, turns rewards into advantages with ``group_advantages`` and takes
``num_iterations`` optimizer steps on ``grpo_loss`` over that one rollout batch. ``old_logp`` are
always the rollout's log-probs (``SampleOutput.logprobs``), fixed across the inner passes. With
``num_iterations == 1`` the ratio is 1 in value but still carries the gradient ``A * d logp``
(TRL passes ``per_token_logps.detach()`` there; passing ``jax.lax.stop_gradient(logp)`` as
``old_logp`` is the same).

Definitions follow TRL's ``GRPOTrainer`` (``_generate_and_score_completions`` and
``_compute_loss`` in huggingface/trl ``trl/trainer/grpo_trainer.py``):

- advantage ``A = R - mean_group(R)``, divided by ``std + 1e-4`` with the unbiased std of the group
  (``scale="group"``) or of the whole batch (``"batch"``), or not divided (``"none"``). We also
  force exactly 0 for groups whose rewards are all equal, so float rounding in the mean cannot
  leave a spurious ±1e-5 advantage (TRL leaves that residue);
- per-token loss ``-min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) + beta*k3`` with
  ``r = exp(logp - old_logp)`` and ``k3 = exp(ref - logp) - (ref - logp) - 1``;
- aggregation ``grpo``: mean over sequences of each sequence's token mean (sequences with no
  tokens count as 0); ``dr_grpo``: token sum / (N * max_completion_length); ``dapo``: token sum /
  all tokens of the batch (TRL normalises by the tokens of the whole generation batch across
  gradient-accumulation steps; here the batch passed in is that batch);
- ``mask_truncated_completions``: truncated rows get an all-zero mask (still counted in N).

Config names (``config.rl.*``) and their TRL ``GRPOConfig`` counterparts:

| here | TRL ``GRPOConfig`` | meaning |
| --- | --- | --- |
| ``group_size`` | ``num_generations`` | completions per case (G) |
| ``epsilon_low`` | ``epsilon`` | lower clip: ratio >= 1 - epsilon_low |
| ``epsilon_high`` | ``epsilon_high`` | upper clip: ratio <= 1 + epsilon_high (TRL: defaults to epsilon) |
| ``beta`` | ``beta`` | KL coefficient (k3 estimator, frozen SFT reference) |
| ``num_iterations`` | ``num_iterations`` | optimizer passes per rollout batch (μ in the GRPO paper) |
| ``loss_type`` | ``loss_type`` | ``grpo`` / ``dr_grpo`` / ``dapo`` (TRL's ``bnpo`` equals our ``dapo`` on one batch) |
| ``scale_rewards`` | ``scale_rewards`` | ``group`` / ``batch`` / ``none`` |
| ``max_completion_length`` | ``max_completion_length`` | sampler's ``max_new_tokens``; the dr_grpo constant |
| ``mask_truncated_completions`` | ``mask_truncated_completions`` | drop completions without EOS from the loss |

``epsilon_low``, ``epsilon_high`` and ``beta`` may be per-sequence vectors [N] here, so CAPO
(``rl/capo.py``) can hold critical cases to a tighter trust region and a stronger KL.
Entropy needs the full logits, so the trainer computes it; this module sees only log-probs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ADVANTAGE_SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")

ArrayOrScalar = jax.Array | float


def group_advantages(
    rewards: jax.Array, group_size: int, *, scale: str = "group", eps: float = 1e-4
) -> jax.Array:
    """Group-relative advantages float32 [B*G] from rewards [B*G] (groups are consecutive rows).

    Zero-variance groups (every completion scored the same) get exactly 0, never NaN: they carry
    no signal about which completion is better.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} rows, got {rewards.shape}"
        )
    grouped = rewards.reshape(-1, group_size)
    centered = grouped - grouped.mean(axis=1, keepdims=True)
    constant = jnp.max(grouped, axis=1, keepdims=True) == jnp.min(grouped, axis=1, keepdims=True)
    if scale == "group":
        std = jnp.std(grouped, axis=1, ddof=1, keepdims=True) if group_size > 1 else 0.0
        centered = centered / (std + eps)
    elif scale == "batch":
        std = jnp.std(rewards, ddof=1) if rewards.shape[0] > 1 else 0.0
        centered = centered / (std + eps)
    return jnp.where(constant, 0.0, centered).reshape(-1)


def _per_row(value: ArrayOrScalar, n: int, name: str) -> jax.Array:
    """A scalar or [N] setting as float32 [N, 1], to broadcast over tokens."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim == 0:
        return jnp.full((n, 1), value)
    if value.shape != (n,):
        raise ValueError(f"{name} must be a scalar or shape ({n},), got {value.shape}")
    return value[:, None]


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def grpo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    epsilon_low: ArrayOrScalar,
    epsilon_high: ArrayOrScalar,
    beta: ArrayOrScalar,
    token_weights: jax.Array | None = None,
    loss_type: str = "grpo",
    max_completion_length: int,
    truncated: jax.Array | None = None,
    mask_truncated_completions: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped-surrogate GRPO loss with k3 KL -> (scalar loss, aux metrics).

    Shapes: log-probs and ``mask`` [N, T] (mask True on completion tokens, EOS included),
    ``advantages`` [N]; ``epsilon_low`` / ``epsilon_high`` / ``beta`` scalars or [N];
    ``token_weights`` [N, T] scale the policy-gradient term only, never the KL; ``truncated`` [N].

    The clipped branch is written as a ``where`` on TRL's clip condition (``r > 1+eps_high`` with
    A > 0, ``r < 1-eps_low`` with A < 0), which has the same value as ``-min(r*A, clip(r)*A)``
    and the same gradient as PyTorch's: exactly zero where clipped, ``-A*r`` elsewhere,
    including at ``r == 1±eps`` (``jnp.minimum``/``jnp.clip`` would halve it there).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if logp.ndim != 2:
        raise ValueError(f"logp must be [N, T], got shape {logp.shape}")
    n, t = logp.shape
    for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask)):
        if x.shape != (n, t):
            raise ValueError(f"{name} must have logp's shape {(n, t)}, got {x.shape}")
    if advantages.shape != (n,):
        raise ValueError(f"advantages must be shape ({n},), got {advantages.shape}")
    if token_weights is not None and token_weights.shape != (n, t):
        raise ValueError(f"token_weights must be shape {(n, t)}, got {token_weights.shape}")
    if loss_type == "dr_grpo" and max_completion_length < t:
        raise ValueError(
            f"max_completion_length ({max_completion_length}) is shorter than the completions ({t})"
        )
    mask = mask.astype(jnp.float32)
    if mask_truncated_completions:
        if truncated is None:
            raise ValueError("mask_truncated_completions=True needs the `truncated` [N] flags")
        mask = mask * (~truncated.astype(bool))[:, None]
    eps_low = _per_row(epsilon_low, n, "epsilon_low")
    eps_high = _per_row(epsilon_high, n, "epsilon_high")
    beta = _per_row(beta, n, "beta")
    adv = advantages.astype(jnp.float32)[:, None]

    ratio = jnp.exp(logp - old_logp)
    clipped_low = (ratio < 1.0 - eps_low) & (adv < 0)
    clipped_high = (ratio > 1.0 + eps_high) & (adv > 0)
    bound = jnp.where(adv > 0, 1.0 + eps_high, 1.0 - eps_low)
    surrogate = jnp.where(clipped_low | clipped_high, bound * adv, ratio * adv)
    policy_term = -surrogate if token_weights is None else -surrogate * token_weights
    log_ref_ratio = ref_logp - logp
    kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0
    per_token = (policy_term + beta * kl) * mask

    if loss_type == "grpo":
        loss = (per_token.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)).mean()
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (n * max_completion_length)
    else:
        loss = per_token.sum() / jnp.maximum(mask.sum(), 1.0)

    aux = {
        "kl": _masked_mean(kl, mask),
        "ratio_mean": _masked_mean(ratio, mask),
        "clip_ratio/low_mean": _masked_mean(clipped_low, mask),
        "clip_ratio/high_mean": _masked_mean(clipped_high, mask),
        "clip_ratio/region_mean": _masked_mean(clipped_low | clipped_high, mask),
        "policy_loss": _masked_mean(policy_term, mask),
        "num_tokens": mask.sum(),
    }
    return loss, jax.tree.map(jax.lax.stop_gradient, aux)
