"""Prepares a real dataset as TFDS ArrayRecord files and writes its summary.

    python -m radflow_jax.data.tfds --dataset=iu_xray --manual_dir=~/data/iu_xray \\
        --data_dir=~/tensorflow_datasets [--on_bad_record=skip]
    python -m radflow_jax.data.tfds --dataset=jsonl_studies/carotid --manual_dir=... --data_dir=...

Prints the dataset summary (counts per split, section coverage, label prevalence, target
lengths, skipped records by reason with the first messages) and merges it into
``<data_dir>/summary.json`` under the dataset name.
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags

from radflow_jax.data import dataset_summary
from radflow_jax.data.formats import RecordError
from radflow_jax.data.sections import Sections, format_target
from radflow_jax.data.tokenizer import train_tokenizer

_DATASET = flags.DEFINE_string("dataset", None, "iu_xray | mimic_cxr | jsonl_studies/<modality>")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "folder with the downloaded raw dataset")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir the ArrayRecord files go to")
_ON_BAD = flags.DEFINE_enum("on_bad_record", "error", ["error", "skip"],
                            "stop at the first bad record, or skip, count and report it")
_MAX_SIDE = flags.DEFINE_integer("max_image_side", 512, "images are downscaled to fit this side")
_FALLBACK = flags.DEFINE_enum("section_fallback", "findings", ["error", "findings", "last_sentence"],
                              "R2Gen annotation.json reports without section headers")
_SPLIT_SEED = flags.DEFINE_integer("split_seed", 0, "seed of the drawn splits (Open-I, JSONL)")
_MAX_TARGET = flags.DEFINE_integer("max_target_len", 192, "token budget to count truncation against")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "delete this dataset version and prepare again")


def _builder(dataset: str, data_dir: str, options: dict):
    from radflow_jax.data.tfds.builders import BUILDERS  # imports tensorflow_datasets

    name, _, config = dataset.partition("/")
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[name](data_dir=data_dir, config=config or None, **options)


def prepare(
    dataset: str,
    manual_dir: str,
    data_dir: str,
    *,
    max_target_len: int = 192,
    overwrite: bool = False,
    **options,
) -> dict:
    """Builds ``dataset`` from ``manual_dir`` into ``data_dir``; returns and saves its summary.

    ``options`` go to the builder (``on_bad_record``, ``max_image_side``, ...). Target lengths
    are counted with a word tokenizer fit on the train split (the config default), so the
    truncation count matches a default training run.
    """
    import tensorflow_datasets as tfds

    builder = _builder(dataset, os.path.abspath(os.path.expanduser(data_dir)), options)
    if overwrite and os.path.isdir(builder.data_dir):
        shutil.rmtree(builder.data_dir)
    if builder.is_prepared():
        raise FileExistsError(f"{builder.data_dir} is already prepared; pass --overwrite to "
                              "prepare it again")
    manual = os.path.abspath(os.path.expanduser(manual_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    train = builder.written.get("train", [])
    tok = train_tokenizer(format_target(Sections(r.findings, r.impression)) for r in train)
    summary = dataset_summary.summarize(
        builder.written, builder.skips, schema=builder.schema(),
        count_tokens=lambda text: len(tok.encode(text)), max_target_len=max_target_len,
    )
    summary["source_format"] = builder.source_format
    summary["path"] = os.fspath(builder.data_dir)
    summary["options"] = builder.options
    dataset_summary.write_summary(os.path.abspath(os.path.expanduser(data_dir)), dataset, summary)
    return summary


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        summary = prepare(
            _DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value,
            max_target_len=_MAX_TARGET.value, overwrite=_OVERWRITE.value,
            on_bad_record=_ON_BAD.value, max_image_side=_MAX_SIDE.value,
            section_fallback=_FALLBACK.value, split_seed=_SPLIT_SEED.value,
        )
    except (RecordError, OSError, ValueError) as e:  # bad data or layout: the message says it all
        sys.exit(f"error: {e}")
    print(dataset_summary.format_summary(_DATASET.value, summary))
    print(f"prepared {summary['path']}; summary in {os.path.join(_DATA_DIR.value, 'summary.json')}")


def run() -> None:
    flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])
    app.run(main)
