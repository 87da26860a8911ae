"""The vision warm-up stage: train the image tower on labels read from the training reports.

Why: a vision tower trained from scratch inside SFT gets almost no gradient, because the few
report tokens that depend on the image (the findings) are a sliver of the caption loss. The decoder
then learns the commonest report and never looks at the image (measured on the synthetic chest
X-rays: the SFT loss with shuffled images differed by <0.001 nats). Radiology encoders are usually
pre-trained on report-derived labels (CheXpert-style), so this stage does the same: the policy's
own ``vision_tower`` + ``multi_modal_projector`` with a throwaway linear head on the mean-pooled
image tokens, trained with a masked binary cross-entropy against the labeler's reading of each
training report (``vision.labels="reports"``, what a real dataset has) or against the dataset's
label file (``"dataset"``). SFT then starts from these weights (``copy_into``) and, with
``vision.freeze``, SFT and RL keep the tower fixed (``frozen_modules``).

Labels: positive = 1; negative and "not mentioned" = 0 (U-zeros); uncertain mentions are left out
of the loss (U-ignore). The stage reports the per-observation ROC AUC on the validation split,
so how much the images can tell is measured before any text is generated (uncertain labels are
left out of the AUC as they are out of the loss).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from radflow_jax import checkpoint as ckpt_lib
from radflow_jax.data import prepare
from radflow_jax.data.formats import Record
from radflow_jax.data.prepare import target_text
from radflow_jax.models.layers import Dense
from radflow_jax.models.policy import PolicyConfig, Projector
from radflow_jax.models.vit import VisionTransformer
from radflow_jax import optim
from radflow_jax.parallel import distributed
from radflow_jax.rewards import hierarchy, labeler
from radflow_jax.schema import LABEL_BLANK, Schema
from radflow_jax.runtime import Runtime, make_policy_config
from radflow_jax.train_loop import run_loop

VISION_MODULES = ("vision_tower", "multi_modal_projector")


class VisionClassifier(nnx.Module):
    """The policy's tower and projector (same classes, same names) plus a linear label head."""

    def __init__(self, cfg: PolicyConfig, num_labels: int, *, rngs: nnx.Rngs):
        dtype = cfg.compute_dtype
        self.vision_tower = VisionTransformer(cfg.vision, dtype=dtype, remat=cfg.remat,
                                              unroll=not cfg.scan_layers, rngs=rngs)
        self.multi_modal_projector = Projector(cfg.vision.hidden, cfg.text.hidden, dtype=dtype, rngs=rngs)
        self.head = Dense((cfg.text.hidden,), (num_labels,), ("embed", None), use_bias=True,
                          dtype=dtype, rngs=rngs)

    def __call__(self, image: jax.Array, view_mask: jax.Array) -> jax.Array:
        """image [B, V, H, W, C], view_mask [B, V] -> label logits [B, K] (float32).

        Image tokens of all present views are mean-pooled, as a study-level label needs.
        """
        b, v = image.shape[:2]
        tokens = self.multi_modal_projector(self.vision_tower(image.reshape(b * v, *image.shape[2:])))
        tokens = tokens.reshape(b, v * tokens.shape[1], -1)
        weight = jnp.repeat(view_mask, tokens.shape[1] // v, axis=1).astype(jnp.float32)[..., None]
        pooled = (tokens.astype(jnp.float32) * weight).sum(1) / jnp.maximum(weight.sum(1), 1.0)
        return self.head(pooled.astype(tokens.dtype)).astype(jnp.float32)


def label_targets(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """int labels [B, K] -> (targets, weights): positive 1; negative/blank 0; uncertain weight 0."""
    return (labels == 1).astype(jnp.float32), (labels != -1).astype(jnp.float32)


def bce_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean masked binary cross-entropy over the labels that count."""
    y, w = label_targets(labels)
    return (optax.sigmoid_binary_cross_entropy(logits, y) * w).sum() / jnp.maximum(w.sum(), 1.0)


def train_step(
    graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, jax.Array]
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One AdamW update of the classifier (pure; jitted with donation)."""
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(lambda m: bce_loss(m(batch["image"], batch["view_mask"]), batch["labels"]))(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is absent."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    # average ranks over ties
    _, first, counts = np.unique(values, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def report_labels(records: Sequence[Record], schema: Schema, source: str) -> list[Record]:
    """Records whose ``labels`` are the training signal: the labeler's reading of each report
    (``"reports"``) or the dataset's own labels (``"dataset"``, every record must have them;
    loaders store studies missing from a label file as all-blank rows, which count as missing)."""
    if source == "dataset":
        missing = [r.where for r in records if r.labels is None or all(v == LABEL_BLANK for v in r.labels)]
        if missing:
            raise ValueError(f"vision.labels='dataset' but {len(missing)} records have no labels, "
                             f"e.g. {missing[0]}; use vision.labels='reports'")
        return list(records)
    report = hierarchy.SECTIONS.index("report")
    rows = hierarchy.host_labels([target_text(r) for r in records], schema, labeler.label_array)[:, report]
    return [dataclasses.replace(r, labels=tuple(int(x) for x in row)) for r, row in zip(records, rows)]


class VisionRun:
    """The warm-up on devices: the shared runtime, the classifier's layout and the jitted step."""

    KEYS = ("image", "view_mask", "labels")

    def __init__(self, config: ml_collections.ConfigDict, vocab_size: int, num_labels: int):
        self.config = config
        self.runtime = Runtime(config)
        self.tx, self.schedule = optim.make_optimizer(config.vision)
        policy_cfg = make_policy_config(config, vocab_size)

        def create():
            model = VisionClassifier(policy_cfg, num_labels, rngs=nnx.Rngs(config.seed))
            return model, nnx.Optimizer(model, self.tx, wrt=nnx.Param)

        self._create = create
        self.layout = self.runtime.layout(create)
        self.step_fn = self.runtime.jit_step(functools.partial(train_step, self.layout.graphdef), self.layout)
        self.logits_fn = jax.jit(
            lambda state, image, view_mask: nnx.merge(self.layout.graphdef, state)[0](image, view_mask)
        )

    def init_state(self) -> nnx.State:
        return self.runtime.init(self.layout, self._create)

    def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return self.runtime.device_batch(batch, self.KEYS)


def _with_labels(data: prepare.PreparedData, splits: dict) -> prepare.PreparedData:
    return dataclasses.replace(data, splits={**data.splits, **splits})


def classifier_scores(
    logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
    data: prepare.PreparedData,
    config: ml_collections.ConfigDict,
    split: str,
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [N, K], labels [N, K])`` of a classifier ``logits_fn(image, view_mask)`` on every
    record of ``split``, in record order on every process (inputs are global arrays sharded over
    the batch; no jitter; padding rows dropped by the batch's ``valid`` mask)."""
    if not data.splits.get(split):
        raise ValueError(f"split {split!r} has no records")
    if any(r.labels is None for r in data.splits[split]):
        raise ValueError(f"split {split!r} has records without labels (set data.labels to a labels file)")
    runtime = Runtime(config)
    it = prepare.make_split_dataset(data, config, split, train=False, batch_size=config.vision.batch_size)
    scores, labels = [], []
    for i, batch in enumerate(it):
        device = runtime.device_batch(batch, ("image", "view_mask"))
        logits = distributed.to_host(logits_fn(device["image"], device["view_mask"]))
        valid = distributed.gather_rows(np.asarray(batch["valid"], bool))
        scores.append(logits[valid])
        labels.append(distributed.gather_rows(np.asarray(batch["labels"]))[valid])
        distributed.progress(f"{split} scoring batch {i + 1}")
    distributed.idle()
    return np.concatenate(scores), np.concatenate(labels)


def validation_auc(run: VisionRun, state: nnx.State, data: prepare.PreparedData, split: str) -> dict[str, float]:
    """Per-observation ROC AUC of the classifier on ``split`` (uncertain labels left out, as in
    training)."""
    s, y = classifier_scores(functools.partial(run.logits_fn, state), data, run.config, split)
    aucs = {}
    for k, obs in enumerate(data.schema.observations):
        keep = y[:, k] != -1
        aucs[obs] = roc_auc(s[keep, k], y[keep, k] == 1)
    return aucs


def tune_thresholds(
    probs: np.ndarray, labels: np.ndarray, grid: Sequence[float] = tuple(np.linspace(0.05, 0.95, 19)),
    rounds: int = 3,
) -> np.ndarray:
    """Per-observation thresholds ``[K]`` maximising micro-F1 of ``probs > t`` against
    ``labels == 1`` (coordinate ascent over ``grid``, starting from 0.5; ties keep the lower
    threshold). Why: micro-F1 ignores true negatives, so its best threshold is usually far below
    0.5 for rare findings — the gap between a probe at 0.5 and at tuned thresholds is what
    calibration alone could gain."""
    positive = labels == 1
    thresholds = np.full(probs.shape[1], 0.5)

    def micro_f1(t: np.ndarray) -> float:
        pred = probs > t
        tp = (pred & positive).sum()
        return 2 * tp / max(2 * tp + (pred & ~positive).sum() + (~pred & positive).sum(), 1)

    for _ in range(rounds):
        for k in range(probs.shape[1]):
            values = sorted({*map(float, grid), float(thresholds[k])})  # never worse than now
            candidates = [np.where(np.arange(len(thresholds)) == k, t, thresholds) for t in values]
            thresholds = max(candidates, key=micro_f1)
    return thresholds


def run_vision(config: ml_collections.ConfigDict, workdir: str, data: prepare.PreparedData) -> nnx.State:
    """Trains (or resumes) the warm-up; returns the classifier state; writes the validation AUCs."""
    v = config.vision
    splits = {s: report_labels(data.splits[s], data.schema, v.labels) for s in ("train", "val") if data.splits.get(s)}
    data = _with_labels(data, splits)
    run = VisionRun(config, data.tokenizer.vocab_size, len(data.schema.observations))
    iterator = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=v.batch_size))
    checkpointer = ckpt_lib.Checkpointer(_directory(workdir), save_every=v.checkpoint_every,
                                         keep=v.keep_checkpoints)
    step = checkpointer.latest_step() or 0
    if step:
        state, step = checkpointer.restore(run.layout.abstract_state, iterator=iterator)
        print(f"[vision] resumed from step {step}")
    else:
        state = run.init_state()

    def one_step(state, _):
        return run.step_fn(state, run.device_batch(next(iterator)))

    def on_log(step, state, row):
        row["learning_rate"] = run.schedule(step - 1)
        if step == v.num_steps and data.splits.get("val"):
            auc = validation_auc(run, state, data, "val")
            row["val_mean_auc"] = float(np.nanmean(list(auc.values())))
            row.update({f"val_auc/{k}": a for k, a in auc.items()})
        return row

    return run_loop("vision", workdir, state=state, step=step, num_steps=v.num_steps, one_step=one_step,
                    checkpointer=checkpointer, iterator=iterator, config=config.to_dict(),
                    log_every=v.log_every, examples_per_step=v.batch_size, on_log=on_log)


def _directory(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints", "vision")


def load_classifier(
    config: ml_collections.ConfigDict, workdir: str, data: prepare.PreparedData
) -> VisionClassifier | None:
    """The latest warm-up classifier in ``workdir`` (a ``VisionClassifier``), or None if none."""
    directory = _directory(workdir)
    if not _has_checkpoint(workdir):
        return None
    run = VisionRun(config, data.tokenizer.vocab_size, len(data.schema.observations))
    with ckpt_lib.Checkpointer(directory, save_every=1, keep=1) as checkpointer:
        if checkpointer.latest_step() is None:
            return None
        state, step = checkpointer.restore(run.layout.abstract_state)
    model, _ = nnx.merge(run.layout.graphdef, state)
    print(f"[vision] warm tower from {directory} step {step}")
    return model


def copy_into(policy: nnx.Module, classifier: VisionClassifier) -> None:
    """Sets the policy's tower and projector to the warm-up's (same classes, same shapes)."""
    for name in VISION_MODULES:
        nnx.update(getattr(policy, name), nnx.state(getattr(classifier, name)))


def _has_checkpoint(workdir: str) -> bool:
    """A finished save (orbax names step folders by number; in-flight saves are temporary names)."""
    directory = _directory(workdir)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def frozen_modules(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, ...]:
    """``("vision_tower",)`` when ``vision.freeze`` and the tower is trained already (a warm-up
    checkpoint in ``workdir`` or ``init.from_hf``); a random tower is always trained."""
    warm = _has_checkpoint(workdir) or bool(config.init.from_hf)
    return ("vision_tower",) if config.vision.freeze and warm else ()
