"""Writes synthetic cases in the on-disk format of the real datasets (R2Gen ``annotation.json``).

Layout of ``out``::

    annotation.json   {"train": [...], "val": [...], "test": [...]}, records
                      {"id", "report", "image_path": [relative paths], "split"}
    images/<id>/<k>.png
    labels.jsonl      one line per case: id, split, labels, details, critical, template, mentions
    meta.json         modality, seed, sizes, generator version

Everything is written deterministically (sorted keys, fixed PNG settings), so the same seed gives
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterator
from concurrent import futures

from PIL import Image

from radflow_jax.data.synthetic import generate_case
from radflow_jax.data.synthetic.case import Case

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _render(args: tuple[str, int, int, int]) -> tuple[Case, list[bytes]]:
    modality, seed, index, image_size = args
    case = generate_case(modality, seed, index, image_size)
    return case, [_png_bytes(img) for img in case.images]


def _split_of(index: int, num_train: int, num_val: int) -> str:
    if index < num_train:
        return "train"
    return "val" if index < num_train + num_val else "test"


def _iter_cases(modality, seed, total, image_size, workers) -> Iterator[tuple[Case, list[bytes]]]:
    jobs = [(modality, seed, i, image_size) for i in range(total)]
    if workers <= 1:
        yield from map(_render, jobs)
        return
    with futures.ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_render, jobs, chunksize=16)


def write_dataset(
    out: str,
    modality: str,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int = 0,
    image_size: int = 128,
    workers: int = 0,
) -> dict[str, int]:
    """Generates and writes a dataset; returns the number of cases per split."""
    if not 32 <= image_size <= 512:
        raise ValueError(f"image_size must be in [32, 512], got {image_size}")
    if min(num_train, num_val, num_test) < 0:
        raise ValueError("split sizes must be non-negative")
    total = num_train + num_val + num_test
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    annotation: dict[str, list[dict]] = {s: [] for s in SPLITS}
    with open(os.path.join(out, "labels.jsonl"), "w", encoding="utf-8") as labels_file:
        for index, (case, pngs) in enumerate(
            _iter_cases(modality, seed, total, image_size, workers)
        ):
            case_id = f"{modality}-{seed}-{index:06d}"
            split = _split_of(index, num_train, num_val)
            case_dir = os.path.join(out, "images", case_id)
            os.makedirs(case_dir, exist_ok=True)
            paths = []
            for k, png in enumerate(pngs):
                rel = f"images/{case_id}/{k}.png"
                with open(os.path.join(out, rel), "wb") as f:
                    f.write(png)
                paths.append(rel)
            annotation[split].append(
                {"id": case_id, "report": case.report, "image_path": paths, "split": split}
            )
            row = {
                "id": case_id,
                "split": split,
                "views": list(case.views),
                "labels": case.labels,
                "details": case.details,
                "critical": case.critical,
                "template": case.template,
                "mentions": [dataclasses.asdict(m) for m in case.mentions],
            }
            labels_file.write(json.dumps(row, sort_keys=True) + "\n")
    with open(os.path.join(out, "annotation.json"), "w", encoding="utf-8") as f:
        json.dump(annotation, f, indent=1, sort_keys=True)
    meta = {
        "modality": modality,
        "seed": seed,
        "image_size": image_size,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "generator_version": GENERATOR_VERSION,
    }
    with open(os.path.join(out, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return {s: len(annotation[s]) for s in SPLITS}
