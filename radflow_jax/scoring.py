"""Scoring reports: greedy reports for a split, scored against the references and the ground truth.

``evaluate_policy`` is the ``eval`` stage of ``radflow_jax.train``: it decodes the split with the
same greedy settings for every stage (so ``eval/sft.json`` and ``eval/rl.json`` compare like with
like) and writes ``DIR/eval/<stage>.json`` with per-case predictions and the metrics of DESIGN §4.
``score_files`` scores any system's R2Gen-format output. The CLI is ``radflow_jax.evaluate``.
Every result names the NLG normaliser (``"normalize"``, see ``metrics.NORMALIZERS``) and the labeling
conventions (``"labeler"``, ``docs/labeling.md``) that made it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from radflow_jax import metrics as metrics_lib
from radflow_jax import runtime as runtime_lib
from radflow_jax.data import prepare
from radflow_jax.data.sections import Sections, parse_target
from radflow_jax.parallel import distributed
from radflow_jax.rewards import consistency, labeler
from radflow_jax.schema import Schema
from radflow_jax.rl.sampling import sample

COMMON5 = metrics_lib.CHEXPERT_COMMON5


def report_text(sections: Sections) -> str:
    """Sections as a headed report, the form the labeler and readers expect."""
    return f"FINDINGS: {sections.findings}\n\nIMPRESSION: {sections.impression}"


def generate_split(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    data: prepare.PreparedData,
    config: ml_collections.ConfigDict,
    runtime: runtime_lib.Runtime,
) -> dict[str, str]:
    """Greedy report per case of ``config.eval.split``: {case id: generated target text}.

    Every process decodes its rows of each global batch; the tokens are gathered, so every
    process returns the whole split.
    """
    e = config.eval
    records = data.splits[e.split]
    if e.num_cases:
        records = records[: e.num_cases]
    subset = prepare.PreparedData(
        data.data_dir, {e.split: records}, data.tokenizer, data.schema, data.skips, data.summary
    )
    dataset = prepare.make_split_dataset(subset, config, e.split, train=False, batch_size=e.batch_size)
    max_new = e.max_new_tokens or config.data.max_target_len
    out: dict[str, str] = {}
    for i, batch in enumerate(dataset):
        result = sample(
            graphdef,
            params,
            runtime.device_batch(batch, runtime_lib.MODEL_KEYS, length_bucket=config.sft.length_bucket),
            rng=jax.random.key(0),
            max_new_tokens=max_new,
            greedy=True,
            eos_id=data.tokenizer.eos_id,
            pad_id=data.tokenizer.pad_id,
            mesh=runtime.mesh,
            rules=runtime.rules,
        )
        tokens = distributed.to_host(result.tokens)
        for row, index in enumerate(distributed.gather_rows(batch["index"])):
            if index >= 0:
                out[records[index].id] = data.tokenizer.decode(tokens[row])
        distributed.progress(f"eval batch {i + 1}")
    distributed.idle()
    return out


def score(
    predictions: Mapping[str, Sections],
    references: Mapping[str, Sections],
    schema: Schema,
    *,
    ground_truth: Mapping[str, Sequence[int]] | None = None,
    meteor: bool = True,
    normalize: str = metrics_lib.DEFAULT_NORMALIZE,
    nlg_texts: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
) -> dict:
    """All metrics of DESIGN §4 for sectioned reports keyed by case id.

    NLG metrics read the two sections joined (no headers), or ``nlg_texts`` (predictions,
    references) where given, through the ``normalize`` normaliser; labels come from the rule
    labeler on the whole report; the consistency rate compares the generated Findings with the
    generated Impression; ``gt_`` metrics compare the generated labels with ground truth where it
    exists. ``result["normalize"]`` and ``result["labeler"]`` record the normaliser and the
    labeling conventions that produced the numbers.
    """
    ids = sorted(references)
    missing = [i for i in ids if i not in predictions]
    if missing:
        raise KeyError(f"{len(missing)} references have no prediction, e.g. {missing[:3]}")
    preds = [predictions[i] for i in ids]
    refs = [references[i] for i in ids]
    joined = {i: f"{p.findings} {p.impression}".strip() for i, p in zip(ids, preds)}
    ref_joined = {i: f"{r.findings} {r.impression}".strip() for i, r in zip(ids, refs)}
    nlg_pred, nlg_ref = nlg_texts or (joined, ref_joined)
    pred_labels = labeler.label_array([report_text(p) for p in preds], schema)
    ref_labels = labeler.label_array([report_text(r) for r in refs], schema)
    common5 = COMMON5 if schema.modality == "cxr" else None
    critical = [schema.index(c) for c in schema.critical]
    result: dict = {"normalize": normalize, "labeler": labeler.CONVENTIONS}
    result.update(metrics_lib.nlg_scores({i: nlg_pred[i] for i in ids}, {i: nlg_ref[i] for i in ids},
                                         meteor=meteor, normalize=normalize))
    result.update(metrics_lib.ce_scores(pred_labels, ref_labels, schema.observations, common5=common5))
    result.update(metrics_lib.critical_scores(pred_labels, ref_labels, critical))
    result["consistency_rate"] = consistency.consistency_rate(
        labeler.label_array([p.findings for p in preds], schema),
        labeler.label_array([p.impression for p in preds], schema),
        consistency.consistency_rules(schema),
    )
    result.update(metrics_lib.length_stats(list(joined.values())))
    if ground_truth is not None:
        gt = np.array([ground_truth[i] for i in ids])
        gt_ce = metrics_lib.ce_scores(pred_labels, gt, schema.observations, common5=common5, prefix="gt_")
        result.update({k: gt_ce[k] for k in ("gt_ce14_micro_f1", "gt_ce14_macro_f1", "gt_per_observation")})
        result.update(metrics_lib.critical_scores(pred_labels, gt, critical, prefix="gt_"))
    return result


def evaluate_policy(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    data: prepare.PreparedData,
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stage: str,
    step: int,
    runtime: runtime_lib.Runtime,
    normalize: str | None = None,
) -> dict:
    """Decodes and scores the eval split; writes ``DIR/eval/<stage>.json``; returns the metrics.

    Multi-host: every process decodes, process 0 alone scores and writes (the others return {}).

    ``normalize`` (``metrics.NORMALIZERS``): the NLG normaliser; ``None`` means the run's default,
    ``metrics.DEFAULT_NORMALIZE`` until the config carries one.
    """
    start = time.perf_counter()
    generated = generate_split(graphdef, params, data, config, runtime)
    if not distributed.is_writer():
        return {}
    records = {r.id: r for r in data.splits[config.eval.split] if r.id in generated}
    predictions = {i: parse_target(t) for i, t in generated.items()}
    references = {i: Sections(r.findings, r.impression) for i, r in records.items()}
    has_gt = all(r.labels is not None for r in records.values())
    ground_truth = {i: r.labels for i, r in records.items()} if has_gt else None
    meteor = config.eval.meteor and shutil.which("java") is not None
    if config.eval.meteor and not meteor:
        logging.warning("METEOR skipped: pycocoevalcap's METEOR needs Java, which is not installed")
    normalize = config.eval.normalize if normalize is None else normalize
    result = score(predictions, references, data.schema, ground_truth=ground_truth, meteor=meteor,
                   normalize=normalize)
    cases = [
        {"id": i, "prediction": report_text(predictions[i]), "reference": report_text(references[i])}
        for i in sorted(records)
    ]
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "eval", f"{stage}.json"), "w", encoding="utf-8") as f:
        json.dump({"stage": stage, "step": step, "split": config.eval.split,
                   "metrics": result, "cases": cases}, f, indent=1)
    print(f"[eval] {stage} step {step}: {len(cases)} cases in {time.perf_counter() - start:.0f}s")
    return result


def read_r2gen_results(path: str) -> dict[str, str]:
    """R2Gen result format ``{id: [text]}`` (a bare string is accepted too), with clear errors."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{id: [text]}}, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise ValueError(f"{path}: record {key!r}: expected [text] or text, got {value!r:.80}")
        out[key] = value
    return out


def score_files(
    predictions_path: str,
    references_path: str,
    schema: Schema,
    *,
    labels_path: str | None = None,
    meteor: bool = True,
    normalize: str = metrics_lib.DEFAULT_NORMALIZE,
) -> dict:
    """Scores any system's predictions against references (both R2Gen result files).

    Texts with FINDINGS/IMPRESSION headers are split; plain strings count as Findings (R2Gen).
    NLG metrics score a plain string exactly as the file gives it (so ``normalize="none"`` equals
    pycocoevalcap called on the file's strings) and a headed one as its two sections joined.
    ``labels_path`` (labels.jsonl with ground truth) adds the ``gt_`` metrics.
    """
    from radflow_jax.data.formats import read_labels_jsonl
    from radflow_jax.data.sections import SectionError, parse_sections

    def sections(texts: Mapping[str, str]) -> dict[str, Sections]:
        out = {}
        for key, text in texts.items():
            try:
                out[key] = parse_sections(text, fallback="findings")
            except SectionError:  # an empty prediction is a (bad) prediction, not an input error
                out[key] = Sections("", "")
        return out

    def nlg_text(texts: Mapping[str, str], parsed: Mapping[str, Sections]) -> dict[str, str]:
        plain = {k for k, s in parsed.items() if not s.impression and s.findings == " ".join(texts[k].split())}
        return {k: texts[k] if k in plain else f"{s.findings} {s.impression}".strip()
                for k, s in parsed.items()}

    pred_texts, ref_texts = read_r2gen_results(predictions_path), read_r2gen_results(references_path)
    preds, refs = sections(pred_texts), sections(ref_texts)
    extra = sorted(set(preds) - set(refs))
    if extra:
        raise ValueError(f"{predictions_path}: {len(extra)} ids not in the references, e.g. {extra[:3]}")
    ground_truth = None
    if labels_path:
        labels = read_labels_jsonl(labels_path, schema)
        missing = [i for i in refs if i not in labels]
        if missing:
            raise ValueError(f"{labels_path}: no labels for {len(missing)} references, e.g. {missing[:3]}")
        ground_truth = {i: labels[i] for i in refs}
    return score(preds, refs, schema, ground_truth=ground_truth, meteor=meteor, normalize=normalize,
                 nlg_texts=(nlg_text(pred_texts, preds), nlg_text(ref_texts, refs)))
