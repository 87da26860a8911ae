"""The SFT stage: a pure jitted step ``(state, batch) -> (state, metrics)`` and the loop around it.

The state is ``nnx.state((policy, optimizer))``; its shardings come from the logical axis names on
the parameters and ``config.mesh`` (DESIGN §5), so the same step runs on one CPU or a pod slice.
Gradient accumulation happens inside the step (a ``scan`` over micro-batches) and the loss is the
exact token mean over the whole batch, so accumulation changes memory, not the result.
"""

from __future__ import annotations

import functools
import os
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
from radflow_jax.models.policy import Policy, token_scores
from radflow_jax.runtime import (
    MODEL_KEYS, PolicyTrainState, Runtime, make_policy_config, trainable_filter, value_and_grad_trainable,
)
from radflow_jax.sft.vision import copy_into
from radflow_jax.train_loop import run_loop

def token_nll(model: Policy, batch: Mapping[str, jax.Array], chunk_size: int = 0) -> tuple[jax.Array, dict]:
    """Summed negative log-likelihood of the target tokens, with counts for exact averaging
    (log-probs ``chunk_size`` positions at a time: no full ``[B, T, vocab]`` softmax)."""
    scores = token_scores(model, batch, chunk_size=chunk_size)
    return -scores.logp.sum(), {"tokens": batch["target_mask"].sum(), "correct": scores.correct.sum()}


def train_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: Mapping[str, jax.Array],
    *,
    grad_accum: int,
    frozen: tuple[str, ...] = (),
    chunk_size: int = 0,
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One optimizer update over ``batch`` (split into ``grad_accum`` micro-batches)."""
    model, optimizer = nnx.merge(graphdef, state)

    def grad_fn(micro):
        return value_and_grad_trainable(lambda m: token_nll(m, micro, chunk_size), model, frozen)

    if grad_accum == 1:
        (total, aux), grads = grad_fn(batch)
    else:
        micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

        def body(carry, mb):
            (loss, aux), g = grad_fn(mb)
            return jax.tree.map(jnp.add, carry, (loss, aux, g)), None

        counts = {"tokens": jnp.zeros((), jnp.int32), "correct": jnp.zeros((), jnp.int32)}
        zeros = (jnp.zeros(()), counts, jax.tree.map(jnp.zeros_like, nnx.state(model, trainable_filter(frozen))))
        (total, aux, grads), _ = jax.lax.scan(body, zeros, micro)
    count = jnp.maximum(aux["tokens"], 1)
    grads = jax.tree.map(lambda g: g / count, grads)
    optimizer.update(model, grads)
    metrics = {
        "loss": total / count,
        "token_accuracy": aux["correct"] / count,
        "grad_norm": optax.tree.norm(grads),
    }
    return nnx.state((model, optimizer)), metrics


class SFTRun:
    """The SFT stage on devices: the shared runtime and policy state, and the jitted step."""

    def __init__(self, config: ml_collections.ConfigDict, vocab_size: int, frozen: Sequence[str] = ()):
        """``frozen`` names top-level policy modules kept fixed (``vision.frozen_modules``)."""
        self.config = config
        self.runtime = Runtime(config)
        self.tx, self.schedule = optim.make_optimizer(config.sft)
        self.train = PolicyTrainState(self.runtime, make_policy_config(config, vocab_size), self.tx,
                                 frozen=frozen, seed=config.seed)
        self.step_fn = self.runtime.jit_step(
            functools.partial(train_step, self.train.graphdef, grad_accum=config.sft.grad_accum,
                              frozen=self.train.frozen, chunk_size=config.model.logits_chunk),
            self.train.layout,
        )

    def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Model inputs as global arrays, targets trimmed to the global batch's length bucket."""
        return self.runtime.device_batch(batch, MODEL_KEYS, length_bucket=self.config.sft.length_bucket)


def run_sft(
    config: ml_collections.ConfigDict,
    workdir: str,
    data: prepare.PreparedData,
    *,
    warm_vision: nnx.Module | None = None,
    frozen: tuple[str, ...] = (),
) -> tuple[SFTRun, nnx.State]:
    """Trains (or resumes, or just restores a finished run) and returns the final state.

    A fresh run starts its tower and projector from ``warm_vision`` (the vision warm-up's
    classifier) when given; ``frozen`` modules stay fixed (``SFTRun``).
    """
    sft = config.sft
    run = SFTRun(config, data.tokenizer.vocab_size, frozen=frozen)
    iterator = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=sft.batch_size))
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints", "sft"),
        save_every=sft.checkpoint_every,
        keep=sft.keep_checkpoints,
    )
    step = checkpointer.latest_step() or 0
    if step:
        state, step = checkpointer.restore(run.train.abstract_state, iterator=iterator)
        print(f"[sft] resumed from step {step}")
    elif config.init.from_hf:
        from radflow_jax.hf.load import init_from_hf  # transformers-free, but only needed here

        state = init_from_hf(run.train, config.init.from_hf)
        print(f"[sft] initialised from {config.init.from_hf}")
    else:
        state = run.train.init_state()
        if warm_vision is not None:
            policy = run.train.policy(state)
            copy_into(policy, warm_vision)
            state = run.train.init_from_policy(nnx.split(policy)[1])
    if frozen:
        print(f"[sft] frozen: {', '.join(frozen)}")

    def one_step(state, _):
        return run.step_fn(state, run.device_batch(next(iterator)))

    def on_log(step, _, row):
        return dict(row, learning_rate=run.schedule(step - 1))

    state = run_loop("sft", workdir, state=state, step=step, num_steps=sft.num_steps, one_step=one_step,
                     checkpointer=checkpointer, iterator=iterator, config=config.to_dict(),
                     log_every=sft.log_every, examples_per_step=sft.batch_size, on_log=on_log)
    return run, state
