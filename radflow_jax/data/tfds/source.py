"""Reads a prepared TFDS dataset (ArrayRecord) back as records for the Grain pipeline.

``TfdsRecords`` is a lazy, read-only sequence: ``records[i]`` reads one example from the
ArrayRecord files and returns a ``Record`` whose ``image_paths`` are the encoded PNG/JPEG bytes
(decoded and resized by ``pipeline.LoadExample`` like files are), so a dataset larger than
memory trains without being loaded, and Grain's random access, sharding and checkpointed
iterator state work as with a list. Reading goes through ``tfds.builder_from_directory``:
no builder registration, no TensorFlow, no network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from radflow_jax.data.formats import Record

SPLITS = ("train", "val", "test")


class _KeepEncoded(tfds.decode.SkipDecoding):
    """Leaves a sequence of images as encoded bytes (``SkipDecoding`` lacks the NumPy batch path)."""

    def decode_batch_example_np(self, serialized_example):
        return serialized_example


def dataset_dir(name: str, data_dir: str) -> str:
    """``data_dir/name[/config]/<highest version>`` of a prepared dataset; error if there is none."""
    base = os.path.join(data_dir, *name.split("/"))
    versions = []
    if os.path.isdir(base):
        for entry in os.listdir(base):
            parts = entry.split(".")
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                if os.path.isfile(os.path.join(base, entry, "dataset_info.json")):
                    versions.append(tuple(int(p) for p in parts))
    if not versions:
        raise FileNotFoundError(
            f"no prepared TFDS dataset {name!r} in {data_dir} (looked for {base}/<version>/"
            "dataset_info.json); prepare it first: python -m radflow_jax.data.tfds "
            f"--dataset={name} --manual_dir=... --data_dir={data_dir}"
        )
    return os.path.join(base, ".".join(map(str, max(versions))))


class TfdsRecords(Sequence):
    """The records of one split of a prepared dataset, read on demand (module docstring)."""

    def __init__(self, path: str, split: str):
        builder = tfds.builder_from_directory(path)
        if split not in builder.info.splits:
            raise ValueError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}")
        self.path, self.split = path, split
        self._source = builder.as_data_source(split, decoders={"images": _KeepEncoded()})

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Record:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} records")
        ex = self._source[index % n]
        text = {k: ex[k].decode("utf-8") for k in ("id", "report", "findings", "impression",
                                                     "indication", "where")}
        critical = int(ex["critical"])
        return Record(
            id=text["id"],
            split=self.split,
            image_paths=tuple(bytes(b) for b in ex["images"]),
            report=text["report"],
            findings=text["findings"],
            impression=text["impression"],
            labels=tuple(int(v) for v in ex["labels"]) if bool(ex["has_labels"]) else None,
            critical=None if critical < 0 else bool(critical),
            where=text["where"],
            indication=text["indication"],
            tags=tuple(t.decode("utf-8") for t in ex["tags"]),
        )

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))


def load_splits(
    name: str, data_dir: str, splits: Sequence[str] = SPLITS
) -> dict[str, TfdsRecords]:
    """The requested splits that the prepared dataset ``name`` (``jsonl_studies/carotid``) has."""
    path = dataset_dir(name, data_dir)
    available = tfds.builder_from_directory(path).info.splits
    return {s: TfdsRecords(path, s) for s in splits if s in available}
