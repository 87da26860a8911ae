"""The data stage: make sure the dataset exists, load and check it, fit (or reload) the tokenizer.

Every later stage starts from ``prepare_data``; it is cheap when the dataset and tokenizer are
already in the workdir, so stages can be run separately and resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence

import grain
import ml_collections
import numpy as np
from absl import logging

from radflow_jax.data import formats, pipeline, sources
from radflow_jax.data.sections import Sections, format_target
from radflow_jax.data.synthetic import writer
from radflow_jax.data.tokenizer import ReportTokenizer, train_tokenizer
from radflow_jax import schema as schema_lib


@dataclasses.dataclass(frozen=True)
class PreparedData:
    data_dir: str
    splits: dict[str, Sequence[formats.Record]]
    tokenizer: ReportTokenizer
    schema: schema_lib.Schema
    skips: formats.SkipReport
    summary: dict


def dataset_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    if config.data.dir:
        return os.path.abspath(config.data.dir)
    return os.path.join(workdir, "data")


def _synthetic_meta(config: ml_collections.ConfigDict) -> dict:
    d = config.data
    return {
        "modality": config.modality,
        "seed": config.seed,
        "image_size": d.render_size,
        "num_train": d.num_train,
        "num_val": d.num_val,
        "num_test": d.num_test,
        "generator_version": writer.GENERATOR_VERSION,
    }


def ensure_synthetic(config: ml_collections.ConfigDict, data_dir: str) -> bool:
    """Generates the synthetic dataset unless ``data_dir`` already holds exactly this one.

    Written to a temporary folder and renamed, so an interrupted run never leaves half a dataset
    that a later run would mistake for a complete one. Returns whether it generated.
    """
    meta_path = os.path.join(data_dir, "meta.json")
    wanted = _synthetic_meta(config)
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            if json.load(f) == wanted:
                return False
        logging.info("synthetic data in %s has other settings; regenerating", data_dir)
    tmp = data_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    writer.write_dataset(
        tmp,
        config.modality,
        num_train=wanted["num_train"],
        num_val=wanted["num_val"],
        num_test=wanted["num_test"],
        seed=config.seed,
        image_size=wanted["image_size"],
        workers=config.data.generate_workers,
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    os.replace(tmp, data_dir)
    return True


def target_text(record: formats.Record) -> str:
    return format_target(Sections(record.findings, record.impression))


def _tokenizer(config: ml_collections.ConfigDict, train: Sequence[formats.Record], out: str):
    """Reloads the workdir's tokenizer if it was fit with the same settings, else fits a new one.

    With ``config.init.from_hf`` the pretrained folder's tokenizer is copied: its ids must match
    the pretrained embedding table.
    """
    if config.init.from_hf:
        tok = ReportTokenizer.load(config.init.from_hf)
        tok.save(out)
        return tok
    settings = {**config.tokenizer.to_dict(), "train_ids": [r.id for r in train]}
    settings_path = os.path.join(out, "training.json")
    if os.path.exists(settings_path):
        with open(settings_path, encoding="utf-8") as f:
            if json.load(f) == settings:
                return ReportTokenizer.load(out)
    t = config.tokenizer
    tok = train_tokenizer(
        (target_text(r) for r in train),
        kind=t.kind,
        vocab_size=t.vocab_size,
        min_frequency=t.min_frequency,
    )
    tok.save(out)
    with open(settings_path, "w", encoding="utf-8") as f:
        json.dump(settings, f)
    return tok


def _summary(splits, tok: ReportTokenizer, schema, config, skips) -> dict:
    train = splits.get("train", [])
    lengths = np.array([len(tok.encode(target_text(r))) + 1 for r in train] or [0])
    summary = {
        "cases": {s: len(v) for s, v in splits.items()},
        "skipped": len(skips),
        "vocab_size": tok.vocab_size,
        "target_tokens": {
            "p50": int(np.percentile(lengths, 50)),
            "p95": int(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "truncated": int((lengths > config.data.max_target_len).sum()),
        },
    }
    labeled = [r.labels for r in train if r.labels is not None]
    if labeled:
        arr = np.array(labeled)
        summary["train_positive"] = {
            obs: int((arr[:, k] == schema_lib.POSITIVE).sum())
            for k, obs in enumerate(schema.observations)
        }
        summary["train_uncertain"] = int((arr == schema_lib.UNCERTAIN).sum())
        summary["train_critical"] = sum(bool(r.critical) for r in train)
    return summary


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> PreparedData:
    """Dataset on disk, records loaded and checked, tokenizer ready; writes data_summary.json."""
    data_dir = dataset_dir(config, workdir)
    if config.data.source == "synthetic" and ensure_synthetic(config, data_dir):
        logging.info("generated synthetic %s data in %s", config.modality, data_dir)
    d = config.data
    schema = schema_lib.get_schema(config.modality, tuple(config.extra_critical))
    splits, skips = sources.load_records(config, data_dir, schema)
    if not splits.get("train"):
        raise ValueError(f"{data_dir}: no usable train records (data.source={d.source!r})")
    tok = _tokenizer(config, splits["train"], os.path.join(workdir, "tokenizer"))
    summary = _summary(splits, tok, schema, config, skips)
    truncated = summary["target_tokens"]["truncated"]
    if truncated:
        logging.warning(
            "%d training reports exceed data.max_target_len=%d tokens and will be truncated",
            truncated,
            d.max_target_len,
        )
    with open(os.path.join(workdir, "data_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return PreparedData(data_dir, splits, tok, schema, skips, summary)


def make_split_dataset(
    prepared: PreparedData,
    config: ml_collections.ConfigDict,
    split: str,
    *,
    train: bool,
    batch_size: int,
    augment: bool | None = None,
) -> grain.IterDataset:
    """The Grain dataset of one split with the config's input settings (global ``batch_size``).

    ``augment`` overrides ``data.augment`` for training splits (the RL stage's ``rl.augment``).
    """
    d = config.data
    return pipeline.make_dataset(
        prepared.splits[split],
        prepared.tokenizer,
        batch_size=batch_size,
        image_size=d.image_size,
        max_views=d.max_views,
        max_prompt_len=d.max_prompt_len,
        max_target_len=d.max_target_len,
        prompt=d.prompt,
        train=train,
        seed=config.seed,
        augment=(d.augment if augment is None else augment) and train,
        num_workers=d.num_workers,
    )


if __name__ == "__main__":  # python -m radflow_jax.data.prepare --dataset=iu_xray --manual_dir=... --data_dir=...
    from radflow_jax.data.tfds import cli

    cli.run()
