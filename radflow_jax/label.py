"""Label radiology reports: ``python -m radflow_jax.label --modality=cxr --input=reports.jsonl``.

Like the CheXpert labeler's command line, so users can label their own reports (and check what
the rewards see). Input: JSON Lines with one ``{"id": ..., "text": ...}`` object per line (blank
lines are ignored), or a ``.csv`` file with ``id`` and ``text`` columns. Output (``--output`` or
stdout): one line per report, in input order::

    {"id": ..., "labels": {"<observation>": 1 | 0 | -1 | null, ...}, "conventions": "..."}

with every observation of the modality's schema present (1 positive, 0 negative, -1 uncertain,
null not mentioned). ``labels`` are those of the whole text as given. With ``--sections`` the text
is split into Findings and Impression (``radflow_jax.data.sections``; plain text counts as
Findings), ``labels`` are those of the two sections together (text under other headers such as
INDICATION is ignored) and ``findings`` / ``impression`` hold each section's own labels.
``conventions`` names the labeling conventions (``docs/labeling.md`` for chest X-rays) the labels
follow, so a stored label file says what produced it.

Malformed input is never dropped silently: every problem is reported with file and line number
(not JSON, not an object, missing ``id``/``text``, text not a string, bad id, duplicate id,
non-UTF-8 bytes), nothing is written, and the exit status is 1. A summary line goes to stderr.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from absl import app, flags

from radflow_jax.data.sections import SectionError
from radflow_jax.rewards.labeler import CONVENTIONS, Labels, label_report, label_text
from radflow_jax.schema import MODALITIES, Schema, get_schema

_MODALITY = flags.DEFINE_enum("modality", None, list(MODALITIES), "Observation schema to label for.")
_INPUT = flags.DEFINE_string("input", None, "Reports: .jsonl ({'id', 'text'} per line) or .csv (id,text).")
_OUTPUT = flags.DEFINE_string("output", None, "Labels .jsonl (default: stdout).")
_SECTIONS = flags.DEFINE_bool("sections", False, "Also label the Findings and Impression sections.")

_MAX_LISTED = 20


class InputError(ValueError):
    """Malformed input; the message lists every problem with its file and line."""


Record = tuple[Any, str, int]  # (id, text, line number)


def _decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None


def _check(rid: Any, text: Any, where: str, seen: dict[Any, str]) -> list[str]:
    problems = []
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        problems.append(f"{where}: id must be a non-empty string or an integer, got {rid!r}")
    elif rid in seen:
        problems.append(f"{where}: duplicate id {rid!r} (first at {seen[rid]})")
    else:
        seen[rid] = where
    if not isinstance(text, str):
        problems.append(f"{where}: text must be a string, got {type(text).__name__}")
    return problems


def _read_jsonl(content: str, path: str) -> tuple[list[Record], list[str]]:
    records, problems, seen = [], [], {}
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: expected an object with 'id' and 'text', got {type(obj).__name__}")
            continue
        missing = [k for k in ("id", "text") if k not in obj]
        if missing:
            problems.append(f"{where}: missing {' and '.join(repr(k) for k in missing)}")
            continue
        found = _check(obj["id"], obj["text"], where, seen)
        problems += found
        if not found:
            records.append((obj["id"], obj["text"], number))
    return records, problems


def _read_csv(content: str, path: str) -> tuple[list[Record], list[str]]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    header = reader.fieldnames or []
    missing = [k for k in ("id", "text") if k not in header]
    if missing:
        raise InputError(f"{path}:1: header must name 'id' and 'text' columns; missing "
                         f"{' and '.join(repr(k) for k in missing)} (header: {header})")
    records, problems, seen = [], [], {}
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if row.get("id") is None or row.get("text") is None:
            problems.append(f"{where}: row has fewer columns than the header")
            continue
        if None in row:
            problems.append(f"{where}: row has more columns than the header (quote text containing commas)")
            continue
        found = _check(row["id"], row["text"], where, seen)
        problems += found
        if not found:
            records.append((row["id"], row["text"], reader.line_num))
    return records, problems


def read_reports(path: str) -> list[Record]:
    """``(id, text, line)`` of every report in ``path``; raises ``InputError`` listing all problems."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as f:
        content = _decode(f.read(), path)
    reader = _read_csv if path.lower().endswith(".csv") else _read_jsonl
    records, problems = reader(content, path)
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise InputError(f"{len(problems)} malformed record(s) in {path}:\n  {listed}{more}")
    return records


def _values(labels: Labels, schema: Schema) -> dict[str, int | None]:
    return {obs: labels.values[obs] for obs in schema.observations}


def label_records(records: list[Record], schema: Schema, sections: bool, path: str = "input") -> Iterator[dict]:
    """Output objects for ``records``, in order (see the module docstring for their shape)."""
    for rid, text, line in records:
        if not sections:
            yield {"id": rid, "labels": _values(label_text(text, schema), schema), "conventions": CONVENTIONS}
            continue
        try:
            parts = label_report(text, schema)
        except SectionError as e:
            raise InputError(f"{path}:{line}: id {rid!r}: cannot split into sections: {e}") from None
        yield {"id": rid, "labels": _values(parts["report"], schema),
               "findings": _values(parts["findings"], schema),
               "impression": _values(parts["impression"], schema), "conventions": CONVENTIONS}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MODALITY.value is None or _INPUT.value is None:
        raise app.UsageError("--modality and --input are required")
    start = time.perf_counter()
    schema = get_schema(_MODALITY.value)
    try:
        records = read_reports(_INPUT.value)
        lines = [json.dumps(obj) for obj in label_records(records, schema, _SECTIONS.value, _INPUT.value)]
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    body = "".join(line + "\n" for line in lines)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w", encoding="utf-8") as f:
            f.write(body)
    else:
        sys.stdout.write(body)
    where = _OUTPUT.value or "stdout"
    print(f"labeled {len(records)} report(s) from {_INPUT.value} for {schema.modality} "
          f"in {time.perf_counter() - start:.2f}s -> {where}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
