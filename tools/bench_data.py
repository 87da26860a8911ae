"""Input-pipeline throughput: ``python tools/bench_data.py [--num=256] [--batch_size=32]``.

Writes a small synthetic chest X-ray set to a temporary folder, then times the training pipeline
(decode, resize, augment, tokenize, batch) for image_size 128/256 with 0 and 2 worker processes,
after a warm-up, and prints one table with the speed-up over the (128, 0 workers) row.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

from absl import app, flags

from radflow_jax.data.formats import load_r2gen
from radflow_jax.data.pipeline import make_dataset
from radflow_jax.data.synthetic.writer import write_dataset
from radflow_jax.data.tokenizer import train_tokenizer

_NUM = flags.DEFINE_integer("num", 256, "Training cases to generate.", lower_bound=8)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch size.", lower_bound=1)
_SOURCE_SIZE = flags.DEFINE_integer("source_size", 256, "Side of the stored PNGs.")
_BATCHES = flags.DEFINE_integer("batches", 16, "Timed batches per configuration.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first (workers start, caches).")
_SIZES = (128, 256)
_WORKERS = (0, 2)
_PROMPT = "Describe the chest radiograph."


def _write_dataset(root: str, num: int, size: int) -> str:
    folder = os.path.join(root, "synthetic")
    write_dataset(folder, "cxr", num_train=num, num_val=0, num_test=0, image_size=size, workers=2)
    return folder


def _throughput(records, tokenizer, image_size: int, num_workers: int) -> tuple[float, float]:
    """(studies/s, views/s) of the training pipeline after the warm-up batches."""
    ds = make_dataset(
        records, tokenizer, batch_size=_BATCH.value, image_size=image_size, max_views=2,
        max_prompt_len=16, max_target_len=128, prompt=_PROMPT, train=True, seed=0,
        num_workers=num_workers, process_index=0, process_count=1,
    )
    it = iter(ds)
    with contextlib.closing(it):
        for _ in range(_WARMUP.value):
            next(it)
        start, views = time.perf_counter(), 0
        for _ in range(_BATCHES.value):
            views += int(next(it)["view_mask"].sum())
        elapsed = time.perf_counter() - start
    return _BATCHES.value * _BATCH.value / elapsed, views / elapsed


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = _write_dataset(tmp, _NUM.value, _SOURCE_SIZE.value)
        print(f"dataset: {_NUM.value} synthetic cxr cases, {_SOURCE_SIZE.value}px PNGs "
              f"({time.perf_counter() - start:.1f} s to write)")
        records = load_r2gen(
            os.path.join(root, "annotation.json"), splits=("train",),
            labels_path=os.path.join(root, "labels.jsonl"),
        )[0]["train"]
        tokenizer = train_tokenizer([r.report for r in records] + [_PROMPT], kind="word",
                                    vocab_size=2000, min_frequency=1)
        print(f"train mode with augmentation, batch {_BATCH.value}, {_BATCHES.value} timed "
              f"batches after {_WARMUP.value} warm-up, {os.cpu_count()} CPUs")
        print(f"{'image_size':>10} {'workers':>7} {'studies/s':>10} {'views/s':>9} {'ratio':>6}")
        base = None
        for size in _SIZES:
            for workers in _WORKERS:
                studies, views = _throughput(records, tokenizer, size, workers)
                base = base or studies
                print(f"{size:>10} {workers:>7} {studies:>10.1f} {views:>9.1f} "
                      f"{studies / base:>6.2f}")


if __name__ == "__main__":  # guard: Grain's worker processes are spawned and re-import this file
    app.run(main)
