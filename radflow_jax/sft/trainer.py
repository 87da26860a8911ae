"""The SFT stage: a pure jitted step ``(state, batch) -> (state, metrics)`` and the loop around it.

The state is ``nnx.state((policy, optimizer))``; its shardings come from the logical axis names on
the parameters and ``config.mesh`` (DESIGN §5), so the same step runs on one CPU or a pod slice.
Gradient accumulation happens inside the step (a ``scan`` over micro-batches) and the loss is the
exact token mean over the whole batch, so accumulation changes memory, not the result.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from radflow_jax import checkpoint as ckpt_lib
from radflow_jax.data import prepare
from radflow_jax.models.policy import Policy, policy_config, teacher_forced
from radflow_jax.parallel import mesh as mesh_lib
from radflow_jax.run_log import RunLog

MODEL_KEYS = ("image", "view_mask", "prompt_tokens", "prompt_mask", "target_tokens", "target_mask")


def make_policy_config(config: ml_collections.ConfigDict, vocab_size: int):
    d = config.data
    return policy_config(
        config.model.size,
        vocab_size,
        d.image_size,
        d.max_views,
        text_len=d.max_prompt_len + d.max_target_len,
        dtype=config.model.dtype,
        remat=config.model.remat,
    )


def trim_targets(batch: Mapping[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
    """Cuts the target padding down to the longest target rounded up to a multiple of ``bucket``.

    Reports vary from ~40 to ~200 tokens; padding every batch to the maximum wastes most of the
    decoder's work. Buckets bound the number of compiled shapes (one per multiple of ``bucket``).
    Dropping columns that are padding in every row changes no loss term.
    """
    if bucket <= 0:
        return dict(batch)
    longest = int(batch["target_mask"].sum(axis=1).max(initial=1))
    length = min(-(-longest // bucket) * bucket, batch["target_tokens"].shape[1])
    return {
        k: v[:, :length] if k in ("target_tokens", "target_mask") else v for k, v in batch.items()
    }


def _top_level(key) -> str | None:
    """A path entry's name: NNX paths hold strings, optax/pytree paths ``DictKey``/``GetAttrKey``."""
    return key if isinstance(key, str) else getattr(key, "key", getattr(key, "name", None))


def frozen_filter(frozen: tuple[str, ...]) -> nnx.filterlib.Filter:
    """The NNX filter of variables under the named top-level modules of the policy."""
    return lambda path, _: bool(path) and _top_level(path[0]) in frozen


def value_and_grad_trainable(
    fn: Callable[[nnx.Module], tuple[jax.Array, Any]], model: nnx.Module, frozen: tuple[str, ...]
) -> tuple[tuple[jax.Array, Any], nnx.State]:
    """``((value, aux), grads)`` of ``fn(model)`` for every ``nnx.Param``; parameters under the
    ``frozen`` modules get exact zero gradients and are never differentiated (XLA drops their
    backward pass). Zeros keep the gradient tree — and so the optimizer state — the same shape
    whether or not anything is frozen, so checkpoints restore either way.
    """
    model_def, train_p, frozen_p, rest = nnx.split(
        model, nnx.All(nnx.Param, nnx.Not(frozen_filter(frozen))), nnx.Param, ...
    )
    out, grads = jax.value_and_grad(lambda p: fn(nnx.merge(model_def, p, frozen_p, rest)), has_aux=True)(train_p)
    return out, nnx.merge_state(grads, jax.tree.map(jnp.zeros_like, frozen_p))


def update_trainable(optimizer: nnx.Optimizer, model: nnx.Module, grads: nnx.State, frozen: tuple[str, ...]) -> None:
    """``optimizer.update`` that leaves the ``frozen`` parameters bit-identical.

    Zero gradients alone are not enough: Adam moments left over from before a module was frozen
    (a resumed run) would keep moving it. So the frozen values are put back after the update.
    """
    # nnx.state holds the live Variables, which the update rebinds: keep copies of their values
    kept = jax.tree.map(lambda x: x, nnx.state(model, nnx.All(nnx.Param, frozen_filter(frozen))))
    optimizer.update(model, grads)
    nnx.update(model, kept)


def make_optimizer(
    sft: ml_collections.ConfigDict, frozen: tuple[str, ...] = ()
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up and cosine decay, after global-norm clipping.

    Weight decay skips vectors (norm scales, biases): decaying them only hurts small models. It
    also skips the ``frozen`` modules (``update_trainable`` keeps them fixed in any case).
    """
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=sft.learning_rate,
        warmup_steps=sft.warmup_steps,
        decay_steps=max(sft.num_steps, sft.warmup_steps + 1),
        end_value=sft.learning_rate * sft.min_lr_ratio,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(sft.grad_clip),
        optax.adamw(
            schedule,
            b1=0.9,
            b2=0.95,
            weight_decay=sft.weight_decay,
            mask=lambda params: jax.tree_util.tree_map_with_path(
                lambda path, p: p.ndim >= 2 and _top_level(path[0]) not in frozen, params
            ),
        ),
    )
    return tx, schedule


def token_nll(model: Policy, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
    """Summed negative log-likelihood of the target tokens, with counts for exact averaging."""
    logp, logits = teacher_forced(model, batch)
    mask = batch["target_mask"]
    correct = (jnp.argmax(logits, -1) == batch["target_tokens"]) & mask
    return -logp.sum(), {"tokens": mask.sum(), "correct": correct.sum()}


def train_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: Mapping[str, jax.Array],
    *,
    grad_accum: int,
    frozen: tuple[str, ...] = (),
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One optimizer update over ``batch`` (split into ``grad_accum`` micro-batches)."""
    model, optimizer = nnx.merge(graphdef, state)

    def grad_fn(micro):
        return value_and_grad_trainable(lambda m: token_nll(m, micro), model, frozen)

    if grad_accum == 1:
        (total, aux), grads = grad_fn(batch)
    else:
        micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

        def body(carry, mb):
            (loss, aux), g = grad_fn(mb)
            return jax.tree.map(jnp.add, carry, (loss, aux, g)), None

        counts = {"tokens": jnp.zeros((), jnp.int32), "correct": jnp.zeros((), jnp.int32)}
        zeros = (jnp.zeros(()), counts, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
        (total, aux, grads), _ = jax.lax.scan(body, zeros, micro)
    count = jnp.maximum(aux["tokens"], 1)
    grads = jax.tree.map(lambda g: g / count, grads)
    update_trainable(optimizer, model, grads, frozen)
    metrics = {
        "loss": total / count,
        "token_accuracy": aux["correct"] / count,
        "grad_norm": optax.tree.norm(grads),
    }
    return nnx.state((model, optimizer)), metrics


class SFTRun:
    """Builds the sharded model, optimizer and jitted step for a config; used by train and tests."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        vocab_size: int,
        optimizer_config: ml_collections.ConfigDict | None = None,
        frozen: tuple[str, ...] = (),
    ):
        """``optimizer_config`` (default ``config.sft``) holds the AdamW/schedule fields;
        ``frozen`` names top-level policy modules kept fixed (``vision.frozen_modules``)."""
        self.config = config
        self.frozen = tuple(frozen)
        self.mesh = mesh_lib.make_mesh(dict(config.mesh.shape))
        self.rules = tuple(config.mesh.rules)
        self.model_config = make_policy_config(config, vocab_size)
        self.tx, self.schedule = make_optimizer(optimizer_config or config.sft, self.frozen)

        def create():
            model = Policy(self.model_config, rngs=nnx.Rngs(config.seed))
            return model, nnx.Optimizer(model, self.tx, wrt=nnx.Param)

        abstract_model, abstract_optimizer = nnx.eval_shape(create)
        self.graphdef, abstract = nnx.split((abstract_model, abstract_optimizer))
        self.policy_def = nnx.graphdef(abstract_model)
        self.shardings = mesh_lib.state_shardings(abstract, self.mesh, self.rules)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.shardings
        )
        self._create = create
        self.step_fn = jax.jit(
            functools.partial(train_step, self.graphdef, grad_accum=config.sft.grad_accum, frozen=self.frozen),
            in_shardings=(self.shardings, None),
            out_shardings=(self.shardings, None),
            donate_argnums=0,
        )

    def init_state(self) -> nnx.State:
        """Parameters created already sharded (jitted init with out_shardings; STYLE §6)."""
        init = jax.jit(lambda: nnx.split(self._create())[1], out_shardings=self.shardings)
        with jax.set_mesh(self.mesh):
            return init()

    def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Model inputs as global arrays, targets trimmed to the batch's length bucket."""
        batch = trim_targets({k: batch[k] for k in MODEL_KEYS}, self.config.sft.length_bucket)
        return mesh_lib.shard_batch(batch, self.mesh, self.rules)

    def policy(self, state: nnx.State) -> Policy:
        model, _ = nnx.merge(self.graphdef, state)
        return model

    def policy_state(self, state: nnx.State) -> nnx.State:
        """The policy's own variables (no optimizer), e.g. for sampling or a KL reference."""
        return nnx.split(self.policy(state))[1]

    def init_from_policy(self, policy_state: nnx.State) -> nnx.State:
        """A train state with these policy variables and a fresh optimizer, laid out sharded."""

        def build(p):
            model = nnx.merge(self.policy_def, p)
            return nnx.split((model, nnx.Optimizer(model, self.tx, wrt=nnx.Param)))[1]

        with jax.set_mesh(self.mesh):
            return jax.jit(build, out_shardings=self.shardings)(policy_state)


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
        state, step = checkpointer.restore(run.abstract_state, iterator=iterator)
        print(f"[sft] resumed from step {step}")
    elif config.init.from_hf:
        from radflow_jax.hf.load import init_from_hf  # transformers-free, but only needed here

        state = init_from_hf(run, config.init.from_hf)
        print(f"[sft] initialised from {config.init.from_hf}")
    else:
        state = run.init_state()
        if warm_vision is not None:
            from radflow_jax.sft.vision import copy_into  # vision.py builds on this module

            policy = run.policy(state)
            copy_into(policy, warm_vision)
            state = run.init_from_policy(nnx.split(policy)[1])
    if frozen:
        print(f"[sft] frozen: {', '.join(frozen)}")
    with checkpointer, RunLog(workdir, "sft", total_steps=sft.num_steps, initial_step=step) as log, \
            ckpt_lib.PreemptionGuard() as guard:
        start = time.perf_counter()
        while step < sft.num_steps:
            batch = run.device_batch(next(iterator))
            state, metrics = run.step_fn(state, batch)
            step += 1
            log.advance(step)
            if step % sft.log_every == 0 or step == sft.num_steps:
                metrics = jax.device_get(metrics)
                metrics["learning_rate"] = run.schedule(step - 1)
                log.write(step, metrics, examples=sft.batch_size)
            ckpt_lib.save_or_stop(checkpointer, guard, step, num_steps=sft.num_steps, state=state,
                                  iterator=iterator, config=config.to_dict(), stage="sft")
        print(f"[sft] {sft.num_steps} steps done ({time.perf_counter() - start:.0f}s this run)")
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    return run, state
