"""Reads one's own studies (e.g. a hospital's carotid ultrasound) from a documented JSONL file.

One study per line, UTF-8::

    {"id": "us-0001",                                  # unique, non-empty
     "images": ["us-0001/right.png", "us-0001/left.png"],   # 1..n views, relative to image_root
     "findings": "Right ICA: moderate plaque ...",     # either may be "", not both
     "impression": "50-69% right ICA stenosis.",
     "modality": "carotid",                            # must be the loader's modality
     "labels": {"Right Stenosis 50-69%": 1, "Left Plaque": 0},   # optional: 1, 0, -1 or null
     "critical": false,                                # optional; default: from the labels
     "split": "train",                                 # optional: train/val/test, else drawn
     "indication": "TIA"}                              # optional

Label names are the modality schema's observations (``schema.py``). Unknown keys are
errors, so a misspelt ``"impresion"`` cannot silently drop a section. Studies without a ``split``
get a stable 70/10/20 one from their id (``formats.assign_split``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from radflow_jax.data.formats import (
    Record,
    RecordError,
    SPLIT_FRACTIONS,
    SkipReport,
    _has_surrogates,
    resolve_image,
    _parse_label_row,
    _show,
    assign_split,
    bad_record_handler,
)
from radflow_jax.schema import LABEL_BLANK, Schema

REQUIRED_KEYS = ("id", "images", "findings", "impression", "modality")
OPTIONAL_KEYS = ("labels", "critical", "split", "indication")


class _StudyReader:
    def __init__(self, path: str, image_root: str, schema: Schema, seed, fractions, verify):
        self.path, self.root, self.schema = path, os.path.realpath(image_root), schema
        self.seed, self.fractions, self.verify = seed, fractions, verify

    def study(self, row: Any, line: int) -> Record:
        where = f"line {line}"
        if not isinstance(row, dict):
            raise RecordError(self.path, None, "", f"line is a JSON {type(row).__name__}, not an "
                              "object", location=where, reason="malformed JSON")
        rid = row.get("id")
        if not isinstance(rid, str) or not rid.strip():
            raise RecordError(self.path, None, "id", f"missing or not a non-empty string: {rid!r}",
                              location=where, reason="missing field")

        def fail(field: str, message: str, reason: str = "") -> RecordError:
            return RecordError(self.path, rid, field, message, location=where, reason=reason)

        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise fail(missing[0], f"missing key(s) {missing}", "missing field")
        unknown = sorted(set(row) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
        if unknown:
            raise fail(unknown[0], f"unknown key(s) {unknown}; allowed: "
                       f"{list(REQUIRED_KEYS + OPTIONAL_KEYS)}", "unknown field")
        if row["modality"] != self.schema.modality:
            raise fail("modality", f"{row['modality']!r} but this dataset is "
                       f"{self.schema.modality!r}", "wrong modality")
        texts = {}
        for key in ("findings", "impression", "indication"):
            value = row.get(key, "")
            if not isinstance(value, str):
                raise fail(key, f"not a string: {type(value).__name__}", "bad field")
            texts[key] = " ".join(value.split())
        if not texts["findings"] and not texts["impression"]:
            raise fail("findings", "empty findings and impression", "empty report")
        split = row.get("split")
        if split is None:
            split = assign_split(rid, self.seed, self.fractions)
        elif split not in ("train", "val", "test"):
            raise fail("split", f"{split!r} is not train, val or test", "bad field")
        labels, critical = None, row.get("critical")
        if "labels" in row:
            _, labels, critical = _parse_label_row(row, self.path, line, self.schema)
        elif critical is not None and not isinstance(critical, bool):
            raise fail("critical", f"not a boolean: {critical!r}", "bad field")
        return Record(
            id=rid, split=split, image_paths=self.images(row["images"], fail),
            report=f"FINDINGS: {texts['findings']}\nIMPRESSION: {texts['impression']}",
            findings=texts["findings"], impression=texts["impression"], labels=labels,
            critical=critical, where=f"{self.path}:{where}", indication=texts["indication"],
        )

    def images(self, paths: Any, fail) -> tuple[str, ...]:
        if not isinstance(paths, list) or not paths:
            raise fail("images", f"not a non-empty list: {paths!r}", "no images")
        out = []
        for k, rel in enumerate(paths):
            field = f"images[{k}]"
            if not isinstance(rel, str) or not rel:
                raise fail(field, f"not a non-empty string: {rel!r}", "bad field")
            path, problem = resolve_image(self.root, rel, self.verify)
            if problem:
                raise fail(field, problem[1], problem[0])
            out.append(path)
        return tuple(out)


def load_jsonl_studies(
    path: str,
    *,
    schema: Schema,
    image_root: str | None = None,
    splits: Sequence[str] = ("train", "val", "test"),
    split_seed: int = 0,
    split_fractions: Sequence[float] = SPLIT_FRACTIONS,
    on_bad_record: str = "error",
    verify_images: bool = True,
) -> tuple[dict[str, list[Record]], SkipReport]:
    """Loads a studies JSONL (format in the module docstring); returns records by split and skips.

    ``image_root`` defaults to the file's folder; image paths may not leave it. When any study
    has ``labels``, studies without get all-``LABEL_BLANK`` labels (so every record has K labels).
    """
    if not os.path.isfile(path):
        raise RecordError(path, None, "", "file not found")
    reader = _StudyReader(path, image_root or os.path.dirname(os.path.abspath(path)), schema,
                          split_seed, split_fractions, verify_images)
    report = SkipReport()
    on_error = bad_record_handler(on_bad_record, report)
    out: dict[str, list[Record]] = {s: [] for s in splits}
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="surrogateescape").strip()
            if not text:
                continue
            try:
                if _has_surrogates(text):
                    raise RecordError(path, None, "", f"not valid UTF-8: {_show(text)[:80]!r}",
                                      location=f"line {line}", reason="not UTF-8")
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise RecordError(path, None, "", f"malformed JSON at column {e.colno}: {e.msg}",
                                      location=f"line {line}", reason="malformed JSON") from None
                rid = row.get("id") if isinstance(row, dict) else None
                if isinstance(rid, str):
                    if rid in seen:
                        raise RecordError(path, rid, "id", f"duplicate id (first at line "
                                          f"{seen[rid]})", location=f"line {line}",
                                          reason="duplicate id")
                    seen[rid] = line
                rec = reader.study(row, line)
            except RecordError as e:
                on_error(e)
                continue
            if rec.split in out:
                out[rec.split].append(rec)
    if any(r.labels is not None for recs in out.values() for r in recs):
        blank = (LABEL_BLANK,) * len(schema.observations)
        out = {s: [r if r.labels is not None else dataclasses.replace(r, labels=blank)
                   for r in recs] for s, recs in out.items()}
    return out, report
