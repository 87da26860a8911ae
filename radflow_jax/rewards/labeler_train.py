"""The ``labeler`` stage: distil the rule labeler into ``LabelerNet`` and serve it batched.

Why: the rule labeler runs on the host, one regex pass per text; the net runs jitted on the
accelerator for a whole rollout at once (CheXbert did this for the CheXpert labeler, DESIGN §3.2).

- **Corpus**: every training record gives three texts — its Findings, its Impression and the whole
  report — so the net also labels the single sections the reward feeds it (``hierarchy.host_labels``
  labels sections). Open-I report text (``NLMCXR_reports.tgz``) is added for chest X-ray when the
  archive is on disk (never downloaded here), minus a held-out share. Targets are the rule
  labeler's labels of the untruncated text.
- **Tokenizer**: the labeler's own word-level tokenizer, fit on its training text (real text has
  words the synthetic policy vocabulary lacks) and kept in ``<workdir>/labeler/tokenizer``.
- **Training**: the house pattern (``sft/trainer.py``): pure jitted step over
  ``nnx.state((model, optimizer))``, shardings from logical axis names, orbax checkpoints, exact
  resume. Batches are a pure function of ``(seed, step)``, so resume needs no iterator state.
- **Serving**: ``NetLabeler.label_array(texts, schema)`` is a drop-in for
  ``labeler.label_array``: texts sorted by length, cut into fixed-size batches, each padded to a
  power-of-two length bucket (a handful of compiled shapes), results put back in input order.
- **Report**: agreement with the rule labeler on held-out text (per-observation and overall
  accuracy, macro-F1 of the 4 classes) and speed on up to 1,024 reports, in
  ``<workdir>/labeler/eval.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from radflow_jax import checkpoint as ckpt_lib
from radflow_jax import optim
from radflow_jax.data import formats, prepare
from radflow_jax.data.tokenizer import ReportTokenizer, train_tokenizer
from radflow_jax.models.labeler_net import (
    CLASS_NAMES,
    SIZES,
    LabelerNet,
    labeler_config,
    labels_to_classes,
    predict_labels,
)
from radflow_jax.parallel import mesh as mesh_lib
from radflow_jax.rewards import labeler as rule_labeler
from radflow_jax.schema import Schema
from radflow_jax.run_log import RunLog

BACKENDS = ("rule", "net")
MIN_BUCKET = 16


def check_labeler_config(c: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the first bad ``labeler.*`` field (config.validate wraps it)."""
    checks = (
        (c.backend in BACKENDS, "backend", f"must be one of {BACKENDS}"),
        (c.size in SIZES, "size", f"must be one of {tuple(SIZES)}"),
        (c.dtype in ("float32", "bfloat16"), "dtype", "must be 'float32' or 'bfloat16'"),
        (c.max_len >= MIN_BUCKET, "max_len", f"must be >= {MIN_BUCKET}"),
        (0.0 <= c.openi_holdout < 1.0, "openi_holdout", "must be in [0, 1)"),
        (c.num_steps >= 0 and c.batch_size >= 1, "num_steps", ">= 0 (and batch_size >= 1)"),
        (min(c.log_every, c.checkpoint_every, c.keep_checkpoints) >= 1, "log_every",
         "checkpoint_every and keep_checkpoints must be >= 1"),
        (c.eval_batch_size >= 1, "eval_batch_size", "must be >= 1"),
    )
    for ok, field, message in checks:
        if not ok:
            raise ValueError(f"labeler.{field}: {message}")


# ------------------------------------------------------------------------------------- corpus


def record_texts(records: Iterable[formats.Record]) -> list[str]:
    """Findings, Impression and whole report of each record, non-empty, first occurrence kept."""
    texts = (t for r in records for t in (r.findings, r.impression, r.report))
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def openi_texts(archive: str) -> list[tuple[str, list[str]]]:
    """``(uid, [findings, impression, both])`` per usable report of an Open-I ``.tgz``, by uid."""
    out = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml"):
                continue
            root = ET.parse(io.BytesIO(tar.extractfile(member).read())).getroot()
            uid = root.find("uId")
            sections = {a.get("Label", "").upper(): " ".join("".join(a.itertext()).split())
                        for a in root.iter("AbstractText")}
            f, i = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
            texts = [t for t in (f, i, f"{f} {i}".strip()) if t]
            if uid is not None and texts:
                out.append((uid.get("id", member.name), list(dict.fromkeys(texts))))
    return sorted(out)


def split_openi(reports: Sequence[tuple[str, list[str]]], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts), split by report so no report's sections straddle the split."""
    order = np.random.default_rng([seed, 17]).permutation(len(reports))
    n_held = int(round(holdout * len(reports)))
    held, train = order[:n_held], order[n_held:]
    return ([t for k in train for t in reports[k][1]], [t for k in held for t in reports[k][1]])


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Tokenized texts with their rule labels; ``tokens`` rows are left-aligned, 0-padded."""

    texts: tuple[str, ...]
    tokens: np.ndarray  # int32 [N, max_len]
    lengths: np.ndarray  # int32 [N]
    labels: np.ndarray  # int8 [N, K], rule labeler values
    truncated: int  # texts longer than max_len

    def __len__(self) -> int:
        return len(self.texts)


def encode(texts: Sequence[str], tokenizer: ReportTokenizer, max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(tokens int32 [N, max_len], lengths, number truncated)``; texts are cut at ``max_len``."""
    tokens = np.zeros((len(texts), max_len), np.int32)
    lengths = np.zeros(len(texts), np.int32)
    truncated = 0
    for n, text in enumerate(texts):
        ids = tokenizer.encode(text)
        truncated += len(ids) > max_len
        ids = ids[:max_len]
        tokens[n, : len(ids)], lengths[n] = ids, len(ids)
    return tokens, lengths, truncated


def build_corpus(texts: Sequence[str], tokenizer: ReportTokenizer, schema: Schema, max_len: int) -> Corpus:
    tokens, lengths, truncated = encode(texts, tokenizer, max_len)
    labels = rule_labeler.label_array(texts, schema)
    return Corpus(tuple(texts), tokens, lengths, labels, truncated)


def labeler_tokenizer(texts: Sequence[str], c: ml_collections.ConfigDict, directory: str) -> ReportTokenizer:
    """Reloads the stage's tokenizer when fit on these very texts and settings, else fits one."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    settings = {"vocab_size": c.vocab_size, "min_frequency": c.min_frequency, "texts": digest}
    path = os.path.join(directory, "training.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f) == settings:
                return ReportTokenizer.load(directory)
    tok = train_tokenizer(texts, kind="word", vocab_size=c.vocab_size, min_frequency=c.min_frequency)
    if jax.process_index() == 0:
        tok.save(directory)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(settings, f)
    return tok


# ----------------------------------------------------------------------------------- training


def buckets(max_len: int) -> tuple[int, ...]:
    """Padded lengths: powers of two from ``MIN_BUCKET`` up to ``max_len`` (always included).

    One compiled shape per bucket, for training and serving alike; padding stays under 2x.
    """
    out, n = [], MIN_BUCKET
    while n < max_len:
        out.append(n)
        n *= 2
    return (*out, max_len)


def bucket_length(longest: int, max_len: int) -> int:
    return next(b for b in buckets(max_len) if b >= max(longest, 1))


class Batches:
    """Training batches as a pure function of ``(seed, step)``: resume needs no iterator state.

    Each epoch (``len // batch_size`` batches; the reshuffle spreads the dropped remainder) is a
    seeded permutation cut into windows of ``window`` batches; inside a window texts are sorted by
    length before they are cut into batches, and the batch order is shuffled again. Batches then
    hold texts of similar length, so padding to the bucket wastes little compute.
    """

    def __init__(self, corpus: Corpus, batch_size: int, seed: int, window: int = 16):
        if len(corpus) < batch_size:
            raise ValueError(f"the labeler corpus has {len(corpus)} texts, fewer than batch_size {batch_size}")
        self.corpus, self.batch_size, self.seed, self.window = corpus, batch_size, seed, window
        self.per_epoch = len(corpus) // batch_size
        self._epoch: tuple[int, np.ndarray] | None = None

    def plan(self, epoch: int) -> np.ndarray:
        """int ``[per_epoch, batch_size]`` rows of each batch of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        rows = rng.permutation(len(self.corpus))[: self.per_epoch * self.batch_size]
        span = self.window * self.batch_size
        chunks = [c[np.argsort(self.corpus.lengths[c], kind="stable")] for c in np.split(rows, range(span, len(rows), span))]
        batches = np.concatenate(chunks).reshape(self.per_epoch, self.batch_size)
        return batches[rng.permutation(self.per_epoch)]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the global batch of ``step``, padded to their length bucket."""
        epoch = step // self.per_epoch
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.plan(epoch))
        rows = self._epoch[1][step % self.per_epoch]
        per_process = self.batch_size // jax.process_count()
        rows = rows[jax.process_index() * per_process : (jax.process_index() + 1) * per_process]
        length = bucket_length(int(self.corpus.lengths[rows].max()), self.corpus.tokens.shape[1])
        tokens = self.corpus.tokens[rows, :length]
        return {"tokens": tokens, "mask": tokens != 0, "labels": self.corpus.labels[rows]}


def labeler_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over every (text, observation) pair, with accuracy as an aux metric."""
    classes = labels_to_classes(labels)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), classes)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == classes)
    return nll.mean(), {"accuracy": accuracy}


def train_step(
    graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, jax.Array]
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One AdamW update on a batch of tokenized texts and their rule labels."""
    model, optimizer = nnx.merge(graphdef, state)
    model_def, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p):
        logits = nnx.merge(model_def, p, rest)(batch["tokens"], batch["mask"])
        return labeler_loss(logits, batch["labels"])

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads)}


class LabelerRun:
    """Sharded model + optimizer state and the jitted step for a labeler config (cf. ``SFTRun``)."""

    def __init__(self, config: ml_collections.ConfigDict, vocab_size: int, num_observations: int):
        c = config.labeler
        self.config = config
        self.mesh = mesh_lib.make_mesh(dict(config.mesh.shape))
        self.rules = tuple(config.mesh.rules)
        self.model_config = labeler_config(c.size, vocab_size, num_observations, c.dtype)
        self.tx, self.schedule = optim.make_optimizer(c)

        def create():
            model = LabelerNet(self.model_config, rngs=nnx.Rngs(config.seed))
            return model, nnx.Optimizer(model, self.tx, wrt=nnx.Param)

        self.graphdef, self.shardings, self.abstract_state = mesh_lib.abstract_sharded(create, self.mesh, self.rules)
        self._create = create
        self.step_fn = jax.jit(
            functools.partial(train_step, self.graphdef),
            in_shardings=(self.shardings, None),
            out_shardings=(self.shardings, None),
            donate_argnums=0,
        )

    def init_state(self) -> nnx.State:
        init = jax.jit(lambda: nnx.split(self._create())[1], out_shardings=self.shardings)
        with jax.set_mesh(self.mesh):
            return init()

    def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return mesh_lib.shard_batch(batch, self.mesh, self.rules)

    def model_split(self, state: nnx.State) -> tuple[nnx.GraphDef, nnx.State]:
        """``(graphdef, variables)`` of the model alone (no optimizer)."""
        model, _ = nnx.merge(self.graphdef, state)
        return nnx.split(model)


# ------------------------------------------------------------------------------------ serving


@functools.partial(jax.jit, static_argnums=0)
def _predict(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    return predict_labels(nnx.merge(graphdef, params), tokens, mask)


class NetLabeler:
    """The trained net behind the rule labeler's interface: ``label_array(texts, schema)``."""

    def __init__(self, graphdef: nnx.GraphDef, params: nnx.State, tokenizer: ReportTokenizer,
                 schema: Schema, *, max_len: int, batch_size: int):
        if graphdef is None or params is None:
            raise ValueError("NetLabeler needs a trained labeler (graphdef and params)")
        self.graphdef, self.params, self.tokenizer, self.schema = graphdef, params, tokenizer, schema
        self.max_len, self.batch_size = max_len, batch_size

    def label_array(self, texts: Sequence[str], schema: Schema | None = None) -> np.ndarray:
        """int8 ``[N, K]`` labels in schema order (``LABEL_BLANK`` = not mentioned), like the rule labeler."""
        if schema is not None and schema.observations != self.schema.observations:
            raise ValueError(f"this labeler was trained for the {self.schema.modality} schema, "
                             f"not {schema.modality}")
        k = len(self.schema.observations)
        if not texts:
            return np.zeros((0, k), np.int8)
        tokens, lengths, truncated = encode(texts, self.tokenizer, self.max_len)
        if truncated:
            logging.warning("NetLabeler: %d of %d texts cut at %d tokens", truncated, len(texts), self.max_len)
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), k), np.int8)
        pending = []
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            length = bucket_length(int(lengths[rows].max()), self.max_len)
            chunk = np.zeros((self.batch_size, length), np.int32)
            chunk[: len(rows)] = tokens[rows, :length]
            pending.append((rows, _predict(self.graphdef, self.params, chunk, chunk != 0)))
        for rows, labels in pending:  # all batches dispatched before the first transfer back
            out[rows] = np.asarray(labels)[: len(rows)]
        return out


# --------------------------------------------------------------------------------- evaluation


def agreement(pred: np.ndarray, ref: np.ndarray, schema: Schema) -> dict:
    """How well ``pred`` reproduces ``ref`` (int8 ``[N, K]``): accuracy per observation and overall,
    F1 per class over all (text, observation) pairs, and their macro mean over the classes present."""
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} differ in shape")
    p, r = labels_to_classes(pred), labels_to_classes(ref)
    f1 = {}
    for c, name in enumerate(CLASS_NAMES):
        tp, n_pred, n_ref = int(((p == c) & (r == c)).sum()), int((p == c).sum()), int((r == c).sum())
        if n_pred + n_ref:
            f1[name] = 2 * tp / (n_pred + n_ref)
    return {
        "texts": int(len(ref)),
        "accuracy": float((p == r).mean()) if r.size else 0.0,
        "macro_f1": float(np.mean(list(f1.values()))) if f1 else 0.0,
        "class_f1": f1,
        "per_observation_accuracy": {o: float((p[:, j] == r[:, j]).mean()) if len(r) else 0.0
                                     for j, o in enumerate(schema.observations)},
    }


def speed(net: NetLabeler, texts: Sequence[str], schema: Schema) -> dict:
    """Seconds to label ``texts`` with each labeler (the net after one warm-up call to compile)."""
    net.label_array(texts, schema)
    start = time.perf_counter()
    net.label_array(texts, schema)
    t_net = time.perf_counter() - start
    start = time.perf_counter()
    rule_labeler.label_array(texts, schema)
    t_rule = time.perf_counter() - start
    return {"texts": len(texts), "net_s": t_net, "rule_s": t_rule, "speedup": t_rule / max(t_net, 1e-9),
            "device": jax.devices()[0].device_kind}


def evaluate_labeler(net: NetLabeler, held_out: Mapping[str, Sequence[str]], schema: Schema,
                     speed_texts: Sequence[str]) -> dict:
    """Agreement with the rule labeler on each held-out set, and speed on ``speed_texts``."""
    report = {name: agreement(net.label_array(texts, schema), rule_labeler.label_array(texts, schema), schema)
              for name, texts in held_out.items() if texts}
    if speed_texts:
        report["speed"] = speed(net, speed_texts, schema)
    return report


# -------------------------------------------------------------------------------------- stage


def _texts(config: ml_collections.ConfigDict, data: prepare.PreparedData) -> tuple[list[str], dict[str, list[str]]]:
    """(training texts, held-out texts by name): the data's train split (+ Open-I when on disk)."""
    c = config.labeler
    train = record_texts(data.splits["train"])
    held = {"val": record_texts(data.splits.get("val", ()))}
    archive = os.path.expanduser(c.openi) if c.openi else ""
    if data.schema.modality == "cxr" and archive and os.path.isfile(archive):
        openi_train, held["openi"] = split_openi(openi_texts(archive), c.openi_holdout, config.seed)
        train = list(dict.fromkeys(train + openi_train))
        print(f"[labeler] Open-I: {len(openi_train)} training and {len(held['openi'])} held-out texts")
    return train, held


def run_labeler(
    config: ml_collections.ConfigDict, workdir: str, data: prepare.PreparedData
) -> tuple[nnx.GraphDef, nnx.State]:
    """Trains (or resumes, or restores a finished run) the labeler; returns ``(graphdef, params)``.

    After training it writes ``<workdir>/labeler/eval.json``: agreement with the rule labeler on
    the held-out texts and speed against it on up to 1,024 of them.
    """
    c = config.labeler
    stage_dir = os.path.join(workdir, "labeler")
    train_texts, held = _texts(config, data)
    tokenizer = labeler_tokenizer(train_texts, c, os.path.join(stage_dir, "tokenizer"))
    run = LabelerRun(config, tokenizer.vocab_size, len(data.schema.observations))
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "labeler"),
                                         save_every=c.checkpoint_every, keep=c.keep_checkpoints)
    step = checkpointer.latest_step() or 0
    if step:
        state, step = checkpointer.restore(run.abstract_state)
        print(f"[labeler] restored step {step}")
    else:
        state = run.init_state()
    with checkpointer:
        if step < c.num_steps:
            state = _train(run, state, step, checkpointer, train_texts, tokenizer, data.schema, workdir)
            graphdef, params = run.model_split(state)
            net = NetLabeler(graphdef, params, tokenizer, data.schema,
                             max_len=c.max_len, batch_size=c.eval_batch_size)
            speed_texts = [r.report for s in ("val", "test", "train") for r in data.splits.get(s, ())][:1024]
            report = evaluate_labeler(net, held, data.schema, speed_texts)
            _write_report(stage_dir, report, step=c.num_steps)
    return run.model_split(state)


def _train(run: LabelerRun, state, step: int, checkpointer, texts, tokenizer, schema, workdir) -> nnx.State:
    c, config = run.config.labeler, run.config
    start = time.perf_counter()
    corpus = build_corpus(texts, tokenizer, schema, c.max_len)
    print(f"[labeler] {len(corpus)} texts rule-labeled in {time.perf_counter() - start:.1f}s "
          f"({corpus.truncated} cut at {c.max_len} tokens); vocab {tokenizer.vocab_size}")
    batches = Batches(corpus, c.batch_size, config.seed)
    with RunLog(workdir, "labeler", total_steps=c.num_steps, initial_step=step) as log, \
            ckpt_lib.PreemptionGuard() as guard:
        while step < c.num_steps:
            batch = batches(step)
            state, metrics = run.step_fn(state, run.device_batch(batch))
            step += 1
            log.advance(step)
            if step % c.log_every == 0 or step == c.num_steps:
                metrics = jax.device_get(metrics)
                metrics["learning_rate"] = run.schedule(step - 1)
                log.write(step, metrics, examples=c.batch_size)
            stop = guard.should_stop(step)
            if checkpointer.should_save(step) or step == c.num_steps or stop:
                checkpointer.save(step, state, config=config.to_dict(), force=stop)
            if stop:
                checkpointer.wait()
                raise SystemExit(f"[labeler] stopped by SIGTERM at step {step}; checkpoint saved")
    return state


def _write_report(stage_dir: str, report: dict, *, step: int) -> None:
    if jax.process_index() == 0:
        os.makedirs(stage_dir, exist_ok=True)
        with open(os.path.join(stage_dir, "eval.json"), "w", encoding="utf-8") as f:
            json.dump({"step": step, **report}, f, indent=1)
    for name, r in report.items():
        if name == "speed":
            print(f"[labeler] speed on {r['texts']} reports: net {r['net_s']:.3f}s, rule {r['rule_s']:.3f}s "
                  f"({r['speedup']:.2f}x, {r['device']})")
        else:
            print(f"[labeler] agreement on {name} ({r['texts']} texts): accuracy {r['accuracy']:.4f}, "
                  f"macro-F1 {r['macro_f1']:.4f}")


def load_net_labeler(workdir: str) -> tuple[NetLabeler, ml_collections.ConfigDict, int]:
    """``(labeler, run config, step)`` of a workdir whose labeler stage has run, without its data:
    the saved config, the labeler's tokenizer and its newest checkpoint."""
    from radflow_jax import config as config_lib  # pylint: disable=import-outside-toplevel
    from radflow_jax.schema import get_schema  # pylint: disable=import-outside-toplevel

    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = config_lib.from_saved(json.load(f))
    tokenizer = ReportTokenizer.load(os.path.join(workdir, "labeler", "tokenizer"))
    schema = get_schema(config.modality)
    run = LabelerRun(config, tokenizer.vocab_size, len(schema.observations))
    directory = os.path.join(workdir, "checkpoints", "labeler")
    with ckpt_lib.Checkpointer(directory, save_every=1, keep=1) as checkpointer:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"no labeler checkpoint under {directory}")
        state, step = checkpointer.restore(run.abstract_state)
    graphdef, params = run.model_split(state)
    c = config.labeler
    net = NetLabeler(graphdef, params, tokenizer, schema, max_len=c.max_len, batch_size=c.eval_batch_size)
    return net, config, step


def net_labeler(config: ml_collections.ConfigDict, workdir: str, data: prepare.PreparedData) -> NetLabeler:
    """The trained ``NetLabeler`` of ``workdir`` (training it first if the stage has not finished)."""
    graphdef, params = run_labeler(config, workdir, data)
    tokenizer = ReportTokenizer.load(os.path.join(workdir, "labeler", "tokenizer"))
    c = config.labeler
    return NetLabeler(graphdef, params, tokenizer, data.schema, max_len=c.max_len, batch_size=c.eval_batch_size)
