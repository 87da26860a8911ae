"""Grain input pipeline: records → shuffled, sharded, decoded, augmented, tokenized numpy batches.

One pipeline serves training and evaluation, so the two see exactly the same decoding and
tokenization. Everything random is seeded through Grain (``shuffle`` and ``random_map`` fold in
the element position and epoch), so an iterator restored from a checkpoint continues with the
very batches an uninterrupted run would have produced. Batching happens on the ``MapDataset``,
before worker processes slice it, so the batches do not depend on ``num_workers`` either.

Batch layout (numpy; B = batch_size // process_count, V = max_views):
  image          float32 [B, V, H, W, 1]  in [-1, 1]; missing views are zero
  view_mask      bool    [B, V]
  prompt_tokens  int32   [B, P]  ``[bos] + encode(prompt)``, left-padded
  prompt_mask    bool    [B, P]
  target_tokens  int32   [B, T]  ``encode("<findings> … <impression> …") + [eos]``, right-padded
  target_mask    bool    [B, T]
  labels         int8    [B, K]  schema order, LABEL_BLANK where unknown
  critical       bool    [B]
  index          int32   [B]     position in ``records``; -1 for padding
  valid          bool    [B]     False only for the padding rows of the last eval batch
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import MutableSequence, Sequence

import grain
import numpy as np
from PIL import Image

from radflow_jax.data.formats import Record, RecordError
from radflow_jax.data.sections import Sections, format_target
from radflow_jax.data.tokenizer import ReportTokenizer
from radflow_jax.schema import LABEL_BLANK

_PREFETCH_BATCHES = 4  # per process; a batch of 32 two-view 256² images is ~16 MB


def _decode_gray(source: str | bytes, image_size: int) -> np.ndarray:
    """PNG/JPEG file or encoded bytes → float32 [image_size, image_size] in [-1, 1] (bilinear)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.draft("L", (image_size, image_size))  # JPEG: decode at reduced scale, much faster
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNGs (DICOM exports)
            im = Image.fromarray(np.asarray(im, np.float32) / 65535.0, mode="F")
            scale = 1.0
        else:
            im = im.convert("L")
            scale = 1.0 / 255.0
        im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(im, np.float32) * scale
    return pixels * 2.0 - 1.0


def prompt_tokens(tokenizer: ReportTokenizer, prompt: str, max_prompt_len: int) -> np.ndarray:
    """``[bos] + encode(prompt)`` left-padded to ``max_prompt_len`` (error if it does not fit)."""
    ids = [tokenizer.bos_id] + list(tokenizer.encode(prompt))
    if len(ids) > max_prompt_len:
        raise ValueError(
            f"prompt {prompt!r} is {len(ids)} tokens with bos; max_prompt_len={max_prompt_len}"
        )
    return np.asarray([tokenizer.pad_id] * (max_prompt_len - len(ids)) + ids, np.int32)


def target_tokens(tokenizer: ReportTokenizer, sections: Sections, max_target_len: int) -> np.ndarray:
    """``encode(format_target(sections)) + [eos]``, truncated keeping eos last, right-padded."""
    ids = list(tokenizer.encode(format_target(sections)))[: max_target_len - 1] + [tokenizer.eos_id]
    return np.asarray(ids + [tokenizer.pad_id] * (max_target_len - len(ids)), np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadExample(grain.transforms.Map):
    """Record position → one example: decoded views, labels and tokens (position -1 → padding).

    Records with more than ``max_views`` images keep their first ``max_views``. An image is a
    file path or, for records read from TFDS/ArrayRecord, the encoded PNG/JPEG bytes.
    """

    records: Sequence[Record]  # a tuple, or a lazy read-only sequence (tfds/source.py)
    tokenizer: ReportTokenizer
    image_size: int
    max_views: int
    num_labels: int
    prompt: np.ndarray  # from prompt_tokens()
    max_target_len: int

    def map(self, index) -> dict[str, np.ndarray]:
        index = int(index)
        s, v = self.image_size, self.max_views
        image = np.zeros((v, s, s, 1), np.float32)
        view_mask = np.zeros((v,), bool)
        labels = np.full((self.num_labels,), LABEL_BLANK, np.int8)
        target = np.full((self.max_target_len,), self.tokenizer.pad_id, np.int32)
        critical = False
        if index >= 0:
            record = self.records[index]
            for k, path in enumerate(record.image_paths[:v]):
                try:
                    image[k, :, :, 0] = _decode_gray(path, s)
                except Exception as e:  # PIL/OS errors of many types; name the record instead
                    what = path if isinstance(path, str) else f"({len(path)} encoded bytes)"
                    raise RecordError.at(
                        record, f"image_path[{k}]",
                        f"cannot decode image {what}: {type(e).__name__}: {e}", "corrupt image",
                    ) from None
                view_mask[k] = True
            if record.labels is not None:
                labels[:] = record.labels
            critical = bool(record.critical)
            target = target_tokens(
                self.tokenizer, Sections(record.findings, record.impression), self.max_target_len
            )
        return {
            "image": image,
            "view_mask": view_mask,
            "prompt_tokens": self.prompt,
            "prompt_mask": self.prompt != self.tokenizer.pad_id,
            "target_tokens": target,
            "target_mask": target != self.tokenizer.pad_id,
            "labels": labels,
            "critical": np.asarray(critical),
            "index": np.asarray(index, np.int32),
            "valid": np.asarray(index >= 0),
        }


def _affine(view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation ±5°, scale 0.95–1.05 and shift ±4 % about the centre (bilinear)."""
    size = view.shape[0]
    angle = np.deg2rad(rng.uniform(-5.0, 5.0))
    scale = rng.uniform(0.95, 1.05)
    tx, ty = rng.uniform(-0.04, 0.04, size=2) * size
    # PIL maps each output pixel to an input pixel: in = R(-angle)/scale · (out - c - t) + c.
    cos, sin, c = np.cos(angle) / scale, np.sin(angle) / scale, size / 2.0
    a, b, d, e = cos, sin, -sin, cos
    coeffs = (a, b, c - a * (c + tx) - b * (c + ty), d, e, c - d * (c + tx) - e * (c + ty))
    im = Image.fromarray(view, mode="F").transform(
        (size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=-1.0
    )
    return np.asarray(im, np.float32)


def _intensity(view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma 0.8–1.25, contrast 0.9–1.1 and brightness ±0.05 (on the [0, 1] scale)."""
    gamma = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
    x = np.clip((view + 1.0) * 0.5, 0.0, 1.0) ** gamma
    x = np.clip((x - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)
    return x * 2.0 - 1.0


class AugmentImages(grain.transforms.RandomMap):
    """Small geometric and intensity jitter of each present view.

    No horizontal flip, on purpose: laterality is part of the label (a left pneumothorax, a
    right carotid stenosis), so a mirrored image would contradict its report.
    """

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image = element["image"].copy()
        for k in np.flatnonzero(element["view_mask"]):
            image[k, :, :, 0] = _intensity(_affine(image[k, :, :, 0], rng), rng)
        return {**element, "image": image}


def _num_labels(records: Sequence[Record]) -> int:
    sizes = {len(r.labels) for r in records if r.labels is not None}
    if len(sizes) > 1:
        raise ValueError(f"records have labels of different lengths {sorted(sizes)}")
    return sizes.pop() if sizes else 0


def make_dataset(
    records: Sequence[Record],
    tokenizer: ReportTokenizer,
    *,
    batch_size: int,
    image_size: int,
    max_views: int,
    max_prompt_len: int,
    max_target_len: int,
    prompt: str,
    train: bool,
    seed: int,
    augment: bool = True,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """The Grain dataset of batches of ``records`` for this process (layout: module docstring).

    ``batch_size`` is global; each process yields its ``batch_size // process_count`` rows of every
    global batch, and the global batches do not depend on the number of processes. Training repeats forever, reshuffled (and re-augmented) each
    epoch; augmentation never flips (laterality is part of the label). Evaluation is one pass in
    order, the last batch padded with ``valid=False`` rows (which still carry the prompt), and
    every process yields the same number of batches so multi-host steps stay in lockstep.
    ``labels`` has K = the records' label count (0 when no record has labels).
    """
    if process_index is None or process_count is None:
        import jax  # only here: workers unpickling our transforms need not import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of process_count={process_count}"
        )
    if not len(records):
        raise ValueError("no records to make a dataset of")
    if min(image_size, max_views, max_target_len) < 1:
        raise ValueError("image_size, max_views and max_target_len must be positive")
    local_batch = batch_size // process_count
    load = LoadExample(
        # Copy a list so later edits cannot change the batches; keep lazy sequences lazy.
        records=tuple(records) if isinstance(records, MutableSequence) else records,
        tokenizer=tokenizer,
        image_size=image_size,
        max_views=max_views,
        num_labels=_num_labels(records),
        prompt=prompt_tokens(tokenizer, prompt, max_prompt_len),
        max_target_len=max_target_len,
    )
    # One global order for every process layout: the sequence is shuffled (and augmented) by
    # global position, cut into chunks of ``local_batch``, and process p takes chunks p, p + P, ...
    # — exactly rows [p·B_local, (p+1)·B_local) of each global batch, the order ``shard_batch``
    # assembles. So N processes see the batches one process would, row for row.
    positions = np.arange(len(records))
    if train:
        shuffle_seed, augment_seed = np.random.SeedSequence([seed, 0]).generate_state(2)
        ds = grain.MapDataset.source(positions).shuffle(seed=int(shuffle_seed)).repeat().map(load)
        if augment:
            ds = ds.random_map(AugmentImages(), seed=int(augment_seed))
    else:
        padded = math.ceil(len(records) / batch_size) * batch_size
        positions = np.concatenate([positions, np.full(padded - len(records), -1)])
        ds = grain.MapDataset.source(positions).map(load)
    ds = ds.batch(local_batch, drop_remainder=True)[process_index::process_count]
    threads = 2 if num_workers == 0 else 1
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=_PREFETCH_BATCHES)
    )
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it_ds
