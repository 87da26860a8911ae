"""The one optimizer recipe every stage trains with: AdamW, warm-up and cosine decay, clipping.

Each stage's config section (``vision``, ``sft``, ``rl``, ``labeler``) carries the same fields —
``learning_rate``, ``warmup_steps``, ``min_lr_ratio``, ``weight_decay``, ``grad_clip`` and its
``num_steps`` — checked by ``config.check_optimizer``, so a setting means the same thing wherever
it appears. The RL defaults (``min_lr_ratio=1``, ``weight_decay=0``) make it a constant rate after
warm-up, as GRPO recipes use.
"""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_optimizer(section: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)`` of a stage section: global-norm clipping, then AdamW with linear warm-up
    to ``learning_rate`` and cosine decay to ``learning_rate * min_lr_ratio`` at ``num_steps``.

    Weight decay skips vectors (norm scales, biases): decaying them only hurts small models. Apply
    ``tx`` to the trainable parameters only (``nnx.Optimizer(..., wrt=trainable)``): frozen ones
    then get no moments at all.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=section.learning_rate,
        warmup_steps=section.warmup_steps,
        decay_steps=max(section.num_steps, section.warmup_steps + 1),
        end_value=section.learning_rate * section.min_lr_ratio,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(section.grad_clip),
        optax.adamw(
            schedule, b1=0.9, b2=0.95, weight_decay=section.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
        ),
    )
    return tx, schedule
