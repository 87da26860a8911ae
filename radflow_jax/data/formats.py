"""Reads R2Gen-style datasets (``annotation.json`` + images + optional ``labels.jsonl``) into records.

The same reader serves IU X-Ray, MIMIC-CXR (R2Gen releases) and the synthetic generator's output.
Real annotation files are messy, so every problem is reported as a ``RecordError`` that names the
file, the record and the field — never a deep traceback from PIL or json. With
``on_bad_record="skip"`` a bad record is left out instead, and counted in a ``SkipReport`` that is
returned and logged (skips are never silent). Problems with a whole file (missing, not JSON, no
splits) are always errors: skipping them would silently train on nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from absl import logging
from PIL import Image

from radflow_jax.data.sections import SectionError, parse_sections
from radflow_jax.schema import LABEL_BLANK, Schema, get_schema

ON_BAD_RECORD = ("error", "skip")
_LABEL_VALUES = (1, 0, -1, None)


class RecordError(ValueError):
    """A bad input record; the message names file, record id (and location) and field.

    ``reason`` is a short category for skip counts ("missing image", "duplicate id", ...); it
    defaults to the field name without indices.
    """

    def __init__(
        self,
        file: str,
        record_id: str | None,
        field: str,
        message: str,
        *,
        location: str | None = None,
        reason: str = "",
    ):
        self.file, self.record_id, self.field = file, record_id, field
        self.message, self.location = message, location
        self.reason = reason or re.sub(r"\[.*?\]", "", field) or "file"
        parts = []
        if record_id is not None:
            parts.append(f"record {record_id!r}" + (f" ({location})" if location else ""))
        elif location:
            parts.append(location)
        if field:
            parts.append(f"field {field}")
        head = f"{file}: " + (", ".join(parts) + ": " if parts else "")
        super().__init__(head + message)

    def __reduce__(self):  # picklable across Grain worker processes despite the custom __init__
        return (
            _rebuild_record_error,
            (self.file, self.record_id, self.field, self.message, self.location, self.reason),
        )

    @classmethod
    def at(cls, record: Record, field: str, message: str, reason: str = "") -> RecordError:
        """An error about ``field`` of an already loaded record (used at decode time)."""
        file, _, location = record.where.rpartition(":")
        return cls(file, record.id, field, message, location=location, reason=reason)


def _rebuild_record_error(file, record_id, field, message, location, reason) -> RecordError:
    return RecordError(file, record_id, field, message, location=location, reason=reason)


@dataclasses.dataclass(frozen=True)
class Record:
    """One study: its images, report and the report's two sections.

    Images are absolute paths inside the image root or, for records read back from TFDS
    ArrayRecord files, the encoded PNG/JPEG bytes themselves.
    """

    id: str
    split: str
    image_paths: tuple[str | bytes, ...]
    report: str
    findings: str
    impression: str
    labels: tuple[int, ...] | None  # schema order, LABEL_BLANK for "not mentioned"
    critical: bool | None
    where: str  # "annotation.json:train[12]", for messages
    indication: str = ""  # clinical indication where the source has one (MIMIC, Open-I)
    tags: tuple[str, ...] = ()  # weak labels kept as text (Open-I MeSH terms)


@dataclasses.dataclass
class SkipReport:
    """Records left out with ``on_bad_record="skip"``, with the reason for each."""

    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def __len__(self) -> int:
        return len(self.skipped)

    def add(self, error: RecordError) -> None:
        self.skipped.append((error.record_id or error.location or error.file, str(error)))
        self.reasons[error.reason] += 1

    def summary(self, max_listed: int = 5) -> str:
        if not self.skipped:
            return "no records skipped"
        lines = [f"skipped {len(self.skipped)} bad record(s):"]
        lines += [f"  {reason}" for _, reason in self.skipped[:max_listed]]
        if len(self.skipped) > max_listed:
            lines.append(f"  ... and {len(self.skipped) - max_listed} more")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------- helpers


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _show(text: str) -> str:
    """Text decoded with surrogateescape, with the undecodable bytes shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_json_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise RecordError(path, None, "", "file not found")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8-sig", errors="surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(
            path, None, "", f"not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _check_image(path: str, verify: bool) -> tuple[str, str] | None:
    """(reason, message) saying why the image at ``path`` is unusable, or None."""
    if not os.path.isfile(path):
        return "missing image", f"file not found: {path}"
    if verify:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises many types for corrupt files
            return "corrupt image", f"corrupt or undecodable image {path}: {type(e).__name__}: {e}"
    return None


def resolve_image(root: str, rel: str, verify: bool) -> tuple[str, tuple[str, str] | None]:
    """``(path, problem)``: ``rel`` resolved under ``root`` (symlinks followed) and, when it is
    unusable — outside the root, missing, or corrupt — the ``(reason, message)`` to report."""
    path = os.path.realpath(os.path.join(root, rel))
    if not _inside(path, root):
        return path, ("image outside root", f"{rel!r} resolves to {path}, outside the image root {root}")
    return path, _check_image(path, verify)


def bad_record_handler(on_bad_record: str, report: SkipReport):
    """The ``on_error(RecordError)`` callback of a loader: raise, or count the skip in ``report``."""
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")

    def on_error(e: RecordError) -> None:
        if on_bad_record == "error":
            raise e
        report.add(e)

    return on_error


SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train/val/test, R2Gen's split of IU X-Ray


def assign_split(record_id: str, seed: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """A stable train/val/test split for datasets that have none (Open-I, one's own studies).

    A hash of (seed, id), so a record's split never depends on which other records exist or were
    skipped, and no global random state is touched.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1: {fractions}")
    digest = hashlib.sha256(f"{seed}/{record_id}".encode("utf-8", "surrogateescape")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


class _Loader:
    """Holds the settings of one ``load_r2gen`` call; one method per kind of check."""

    def __init__(self, annotation_path, image_root, section_fallback, verify_images):
        self.file = annotation_path
        self.root = os.path.realpath(image_root)
        self.section_fallback = section_fallback
        self.verify_images = verify_images

    def error(self, record_id, field, message, location, reason="") -> RecordError:
        return RecordError(self.file, record_id, field, message, location=location, reason=reason)

    def record_id(self, raw: Any, location: str) -> str:
        if not isinstance(raw, dict):
            raise self.error(None, "", f"record is a {type(raw).__name__}, not an object", location)
        rid = raw.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str) or not rid.strip():
            raise self.error(None, "id", f"missing or not a non-empty string: {rid!r}", location)
        if _has_surrogates(rid):
            raise self.error(_show(rid), "id", "not valid UTF-8", location, "not UTF-8")
        return rid

    def record(self, raw: dict, rid: str, split: str, location: str) -> Record:
        def fail(field: str, message: str, reason: str = "") -> RecordError:
            return self.error(rid, field, message, location, reason)

        if "split" in raw and raw["split"] != split:
            raise fail("split", f"{raw['split']!r} does not match the list it is in ({split!r})")
        report = raw.get("report")
        if not isinstance(report, str):
            raise fail("report", f"missing or not a string: {type(report).__name__}")
        if _has_surrogates(report):
            raise fail("report", f"not valid UTF-8: {_show(report)[:80]!r}", "not UTF-8")
        if not report.strip():
            raise fail("report", "empty report", "empty report")
        try:
            sections = parse_sections(report, fallback=self.section_fallback)
        except SectionError as e:
            raise fail("report", f"{e} (section_fallback={self.section_fallback!r})") from None
        paths = raw.get("image_path")
        if not isinstance(paths, list) or not paths:
            raise fail("image_path", f"missing or not a non-empty list: {paths!r}")
        image_paths = tuple(self.image_path(p, f"image_path[{k}]", fail) for k, p in enumerate(paths))
        return Record(
            id=rid,
            split=split,
            image_paths=image_paths,
            report=report,
            findings=sections.findings,
            impression=sections.impression,
            labels=None,
            critical=None,
            where=f"{self.file}:{location}",
        )

    def image_path(self, rel: Any, field: str, fail) -> str:
        if not isinstance(rel, str) or not rel:
            raise fail(field, f"not a non-empty string: {rel!r}")
        if _has_surrogates(rel):
            raise fail(field, f"not valid UTF-8: {_show(rel)!r}", "not UTF-8")
        path, problem = resolve_image(self.root, rel, self.verify_images)
        if problem:
            raise fail(field, problem[1], problem[0])
        return path


def _schema_for(labels_path: str, schema: Schema | None) -> Schema:
    if schema is not None:
        return schema
    meta = os.path.join(os.path.dirname(os.path.abspath(labels_path)), "meta.json")
    modality = _read_json_file(meta).get("modality") if os.path.isfile(meta) else None
    if modality is None:
        raise ValueError(
            f"cannot tell the label schema of {labels_path}: pass schema=get_schema(modality) "
            f"(no meta.json with a 'modality' beside it)"
        )
    return get_schema(modality)


def _parse_label_row(row: Any, path: str, line: int, schema: Schema):
    """(id, labels tuple, critical) of one labels.jsonl row; RecordError naming the line."""
    where = f"line {line}"
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        raise RecordError(path, None, "id", "row has no string 'id'", location=where)
    rid, labels = row["id"], row.get("labels")
    if not isinstance(labels, dict):
        raise RecordError(path, rid, "labels", "missing or not an object", location=where)
    values = [LABEL_BLANK] * len(schema.observations)
    for obs, value in labels.items():
        if obs not in schema.observations:
            raise RecordError(
                path, rid, f"labels[{obs!r}]",
                f"unknown observation for the {schema.modality} schema; known: "
                f"{list(schema.observations)}", location=where,
            )
        if isinstance(value, bool) or value not in _LABEL_VALUES:
            raise RecordError(
                path, rid, f"labels[{obs!r}]", f"value {value!r} is not one of 1, 0, -1, null",
                location=where,
            )
        values[schema.index(obs)] = LABEL_BLANK if value is None else value
    critical = row.get("critical")
    if critical is None:
        critical = schema.is_critical(labels)
    elif not isinstance(critical, bool):
        raise RecordError(path, rid, "critical", f"not a boolean: {critical!r}", location=where)
    return rid, tuple(values), critical


def _read_labels(path: str, schema: Schema, on_error) -> tuple[dict, dict[str, str]]:
    """Labels by id, and the ids whose rows are bad (to leave their records out)."""
    if not os.path.isfile(path):
        raise RecordError(path, None, "", "file not found")
    by_id: dict[str, tuple[tuple[int, ...], bool]] = {}
    bad: dict[str, str] = {}
    with open(path, "rb") as f:
        for line_no, raw_line in enumerate(f, start=1):
            text = raw_line.decode("utf-8", errors="surrogateescape").strip()
            if not text:
                continue
            try:
                if _has_surrogates(text):
                    raise RecordError(path, None, "", "not valid UTF-8", location=f"line {line_no}")
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise RecordError(
                        path, None, "", f"malformed JSON at column {e.colno}: {e.msg}",
                        location=f"line {line_no}",
                    ) from None
                rid, labels, critical = _parse_label_row(row, path, line_no, schema)
                if rid in by_id:
                    raise RecordError(
                        path, rid, "id", "duplicate id", location=f"line {line_no}",
                        reason="duplicate id",
                    )
                by_id[rid] = (labels, critical)
            except RecordError as e:
                on_error(e)
                if e.record_id is not None:
                    bad[e.record_id] = str(e)
    return by_id, bad


# ----------------------------------------------------------------------------------- public


def read_labels_jsonl(path: str, schema: Schema) -> dict[str, tuple[int, ...]]:
    """Ground-truth labels by id from a labels.jsonl file (schema order, LABEL_BLANK for null).

    The first bad line raises a ``RecordError`` naming the line.
    """

    def fail(error: RecordError) -> None:
        raise error

    by_id, _ = _read_labels(path, schema, fail)
    return {rid: labels for rid, (labels, _) in by_id.items()}


def load_r2gen(
    annotation_path: str,
    *,
    image_root: str | None = None,
    splits: Sequence[str] = ("train", "val", "test"),
    labels_path: str | None = None,
    schema: Schema | None = None,
    section_fallback: str = "error",
    on_bad_record: str = "error",
    verify_images: bool = True,
) -> tuple[dict[str, list[Record]], SkipReport]:
    """Loads the requested splits of an R2Gen ``annotation.json``; returns records and skips.

    Records are ``{"id", "report", "image_path": [paths relative to image_root], "split"}`` (MIMIC's
    extra ``study_id``/``subject_id`` are accepted). ``image_root`` defaults to the annotation's
    folder; every image path must resolve (symlinks included) inside it. ``labels_path`` points to
    a ``labels.jsonl`` (the synthetic writer's format) read in ``schema`` order (default: the
    modality in ``meta.json`` beside it); records it does not mention get all-``LABEL_BLANK``
    labels. ``on_bad_record`` is ``"error"`` (raise ``RecordError``) or ``"skip"``.
    ``verify_images`` runs PIL's cheap ``verify()`` (header and, for PNG, checksums; JPEG data is
    only checked when the pipeline decodes it, which raises the same kind of ``RecordError``).
    """
    report = SkipReport()
    on_error = bad_record_handler(on_bad_record, report)
    data = _read_json_file(annotation_path)
    if not isinstance(data, dict):
        raise RecordError(annotation_path, None, "", f"top level is a {type(data).__name__}, "
                          "expected an object of splits {'train': [...], ...}")
    missing = [s for s in splits if s not in data]
    if missing:
        raise RecordError(annotation_path, None, "", f"split(s) {missing} not found; the file "
                          f"has {sorted(map(_show, data))}")
    labels, bad_labels, blank = {}, {}, ()
    if labels_path is not None:
        schema = _schema_for(labels_path, schema)
        labels, bad_labels = _read_labels(labels_path, schema, on_error)
        blank = (LABEL_BLANK,) * len(schema.observations)
    loader = _Loader(
        annotation_path, image_root or os.path.dirname(os.path.abspath(annotation_path)),
        section_fallback, verify_images,
    )
    out: dict[str, list[Record]] = {}
    seen: dict[str, str] = {}
    for split in splits:
        if not isinstance(data[split], list):
            raise RecordError(annotation_path, None, split, f"not a list of records: "
                              f"{type(data[split]).__name__}")
        out[split] = []
        for i, raw in enumerate(data[split]):
            location = f"{split}[{i}]"
            try:
                rid = loader.record_id(raw, location)
                if rid in seen:
                    raise loader.error(
                        rid, "id", f"duplicate id (first at {seen[rid]})", location, "duplicate id"
                    )
                seen[rid] = location
                if rid in bad_labels:
                    continue  # already counted when its labels row was read
                rec = loader.record(raw, rid, split, location)
            except RecordError as e:
                on_error(e)
                continue
            if labels_path is not None:
                row_labels, critical = labels.get(rid, (blank, None))
                rec = dataclasses.replace(rec, labels=row_labels, critical=critical)
            out[split].append(rec)
    if report:
        logging.warning("load_r2gen(%s): %s", annotation_path, report.summary())
    return out, report
