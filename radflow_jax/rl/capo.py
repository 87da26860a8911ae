"""Critical-aware policy optimization (DESIGN §1.3): per-sample trust regions and token weights.

A case is *critical* when its reference is positive for a critical observation (pneumothorax;
≥70 % stenosis, near-occlusion, occlusion). Errors there cost most, so its G completions are
updated cautiously: a tighter clip range ``kappa*epsilon`` and a KL held closer to the SFT
reference, ``beta*(1 + gamma*d)``, where ``d`` is the fraction of the group whose critical labels
disagree with the reference (the less reliable the policy is on the case, the stronger the pull).
These arrays feed ``grpo_loss``'s per-sample ``epsilon_low`` / ``epsilon_high`` / ``beta``.

*Local sensitivity* weights the policy-gradient term per token: tokens of sentences that state a
labeled observation get ``1 + alpha`` (``1 + alpha_crit`` for critical observations), others 1,
renormalised to mean 1 over each sequence's real tokens, so credit and blame land on the key
statements rather than on boilerplate while the sequence's total weight is unchanged. Spans come
from the rule labeler on the decoded text and are mapped back to tokens exactly on the host
(``token_char_offsets``); the trainer runs this overlapped with device work.

The label arrays follow ``schema``: int [.., K] in schema order, 1 positive, 0 negative,
-1 uncertain, ``LABEL_BLANK`` not mentioned. "Critical label" means *positive or not*: an
uncertain or missing critical finding disagrees with a positive reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from radflow_jax.data.tokenizer import ReportTokenizer
from radflow_jax.rewards.labeler import label_text
from radflow_jax.schema import POSITIVE, Schema


def critical_index(schema: Schema) -> tuple[int, ...]:
    """Column indices of the schema's critical observations, for the label arrays."""
    return tuple(schema.index(obs) for obs in schema.critical)


def _critical_positive(labels: jax.Array, critical_index: tuple[int, ...]) -> jax.Array:
    """bool [.., C]: which critical observations are positive."""
    return jnp.asarray(labels)[..., list(critical_index)] == POSITIVE


def critical_cases(ref_labels: jax.Array, critical_index: tuple[int, ...]) -> jax.Array:
    """bool [B]: the reference is positive for at least one critical observation."""
    return _critical_positive(ref_labels, critical_index).any(axis=-1)


def group_disagreement(
    gen_labels: jax.Array, ref_labels: jax.Array, critical_index: tuple[int, ...], group_size: int
) -> jax.Array:
    """float32 [B]: fraction of each group whose critical labels differ from the reference.

    A completion disagrees when, for any critical observation, "positive" in its labels differs
    from "positive" in the reference's (a missed or an invented critical finding both count).
    """
    gen_labels, ref_labels = jnp.asarray(gen_labels), jnp.asarray(ref_labels)
    b = ref_labels.shape[0]
    if gen_labels.shape != (b * group_size, ref_labels.shape[1]):
        raise ValueError(
            f"gen_labels must be [{b}*{group_size}, {ref_labels.shape[1]}] for ref_labels "
            f"{ref_labels.shape} and group_size {group_size}, got {gen_labels.shape}"
        )
    gen = _critical_positive(gen_labels, critical_index).reshape(b, group_size, -1)
    ref = _critical_positive(ref_labels, critical_index)[:, None, :]
    return (gen != ref).any(axis=-1).mean(axis=1).astype(jnp.float32)


def per_sample_trust_region(
    critical: jax.Array,
    d: jax.Array,
    *,
    epsilon_low: float,
    epsilon_high: float,
    beta: float,
    kappa: float,
    gamma: float,
    group_size: int,
    enabled: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-completion (eps_low, eps_high, beta), float32 [B*G] each, for ``grpo_loss``.

    Critical cases: both epsilons times ``kappa``, ``beta * (1 + gamma*d)``; others (and all when
    ``enabled`` is False) keep the configured values. With ``beta == 0`` there is no KL to
    strengthen, so only the clip range changes.
    """
    if not 0.0 < kappa <= 1.0:
        raise ValueError(f"kappa must be in (0, 1] (a tighter clip range), got {kappa}")
    if gamma < 0.0:
        raise ValueError(f"gamma must be >= 0 (a stronger KL), got {gamma}")
    critical = jnp.asarray(critical, bool)
    if not enabled:
        critical = jnp.zeros_like(critical)
    d = jnp.asarray(d, jnp.float32)
    eps_low = jnp.where(critical, kappa * epsilon_low, epsilon_low)
    eps_high = jnp.where(critical, kappa * epsilon_high, epsilon_high)
    beta_out = jnp.where(critical, beta * (1.0 + gamma * d), beta)
    return tuple(jnp.repeat(x.astype(jnp.float32), group_size) for x in (eps_low, eps_high, beta_out))


def capo_metrics(
    critical: jax.Array,
    d: jax.Array,
    eps_low: jax.Array,
    eps_high: jax.Array,
    beta: jax.Array,
    group_size: int,
) -> dict[str, jax.Array]:
    """Logged per step: critical cases in the batch and their mean disagreement, clip range, beta.

    Means are over critical cases (0 when the batch has none); settings are taken from each
    group's first completion (all G completions of a case share them).
    """
    critical = jnp.asarray(critical, bool)
    count = critical.sum()
    first = slice(None, None, group_size)

    def critical_mean(x: jax.Array) -> jax.Array:
        return jnp.where(critical, x, 0.0).sum() / jnp.maximum(count, 1)

    return {
        "capo/critical_cases": count,
        "capo/critical_fraction": critical.mean(),
        "capo/critical_disagreement": critical_mean(jnp.asarray(d, jnp.float32)),
        "capo/critical_epsilon_low": critical_mean(jnp.asarray(eps_low)[first]),
        "capo/critical_epsilon_high": critical_mean(jnp.asarray(eps_high)[first]),
        "capo/critical_beta": critical_mean(jnp.asarray(beta)[first]),
    }


# ---------------------------------------------------------------------------- local sensitivity


def token_char_offsets(ids: Sequence[int], tokenizer: ReportTokenizer) -> list[tuple[int, int]]:
    """Character span of each token in ``tokenizer.decode(ids)``; dropped tokens get empty spans.

    Rebuilds the Metaspace decoder per token ("▁" is a space, except that the first emitted token
    loses it) and skips what ``decode`` skips (pad, bos; eos and everything after it). The pieces
    are checked to concatenate to ``decode(ids)``, so a tokenizer this does not model raises
    instead of mis-placing weights.
    """
    offsets, pieces, pos, done = [], [], 0, False
    for i in ids:
        i = int(i)
        done = done or i == tokenizer.eos_id
        if done or i in (tokenizer.pad_id, tokenizer.bos_id):
            offsets.append((pos, pos))
            continue
        token = tokenizer.id_to_token(i)
        if token is None:
            raise ValueError(f"token id {i} is outside the tokenizer's vocabulary")
        piece = token.replace("\u2581", " ")
        if not pieces and piece.startswith(" "):
            piece = piece[1:]
        pieces.append(piece)
        offsets.append((pos, pos + len(piece)))
        pos += len(piece)
    text, decoded = "".join(pieces), tokenizer.decode(ids)
    if text != decoded:
        raise ValueError(f"per-token pieces do not rebuild the decoded text: {text!r} != {decoded!r}")
    return offsets


def _statement_levels(
    ids: Sequence[int], tokenizer: ReportTokenizer, schema: Schema
) -> np.ndarray:
    """int [T]: 2 for tokens of sentences stating a critical observation, 1 for others, else 0.

    Each stretch between section tags is labeled on its own, since a tag glued to a period
    (``normal.<impression> small``) would otherwise merge two sentences.
    """
    offsets = token_char_offsets(ids, tokenizer)
    text = tokenizer.decode(ids)
    tags = (tokenizer.findings_id, tokenizer.impression_id)
    cuts = [offsets[k] for k, i in enumerate(ids) if int(i) in tags]
    starts = [0] + [end for _, end in cuts]
    stops = [start for start, _ in cuts] + [len(text)]
    level = np.zeros(len(text), np.int8)
    critical = set(schema.critical)
    for lo, hi in zip(starts, stops):
        for m in label_text(text[lo:hi], schema).mentions:
            a, b = lo + m.sentence_start, lo + m.sentence_end
            level[a:b] = np.maximum(level[a:b], 2 if m.observation in critical else 1)
    return np.array([level[a:b].max(initial=0) for a, b in offsets], np.int8)


def sentence_token_weights(
    ids_batch: np.ndarray,
    mask: np.ndarray,
    tokenizer: ReportTokenizer,
    schema: Schema,
    *,
    alpha: float,
    alpha_crit: float,
    enabled: bool,
) -> np.ndarray:
    """float32 [N, T] policy-gradient weights for generated token ids [N, T] (host-side).

    Tokens of a sentence with a labeler mention (any value: "no pneumothorax" is a key statement
    too) get ``1 + alpha``, ``1 + alpha_crit`` if any of its mentions is critical, others 1; each
    row is then scaled to mean 1 over its ``mask`` tokens. Entries outside the mask stay 1 (the
    loss masks them). ``enabled=False`` gives all ones.
    """
    ids_batch, mask = np.asarray(ids_batch), np.asarray(mask, bool)
    if ids_batch.ndim != 2 or mask.shape != ids_batch.shape:
        raise ValueError(f"ids_batch and mask must both be [N, T], got {ids_batch.shape} and {mask.shape}")
    if alpha < 0 or alpha_crit < 0:
        raise ValueError(f"alpha and alpha_crit must be >= 0, got {alpha} and {alpha_crit}")
    weights = np.ones(ids_batch.shape, np.float32)
    if not enabled:
        return weights
    per_level = np.array([1.0, 1.0 + alpha, 1.0 + alpha_crit], np.float32)
    for row, (ids, real) in enumerate(zip(ids_batch, mask)):
        if not real.any():
            continue
        raw = per_level[_statement_levels(ids.tolist(), tokenizer, schema)]
        weights[row, real] = raw[real] * (real.sum() / raw[real].sum())
    return weights
