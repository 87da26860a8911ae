"""Reads the MIMIC-CXR-JPG layout with the raw MIMIC-CXR reports into records.

Layout under ``root`` (as PhysioNet ships it; ``.csv`` or ``.csv.gz``)::

    mimic-cxr-2.0.0-split.csv       dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-metadata.csv    optional: ViewPosition per dicom_id, to order the views
    mimic-cxr-2.0.0-chexpert.csv    optional: CheXpert labels per study (1.0/0.0/-1.0/blank)
    files/p10/p10000032/s50414267/<dicom_id>.jpg
    files/p10/p10000032/s50414267.txt      the report (from mimic-cxr-reports.zip; may live
                                           under another ``reports_root``)

One record per study (id ``s<study_id>``), its images ordered by ``view_order`` (frontal first by
default, so ``max_views=1`` feeds the PA/AP view). Sections follow the MIMIC-CXR project's
``section_parser.py`` (github.com/MIT-LCP/mimic-cxr, ``txt/``), not ``sections.parse_sections``,
so numbers compare with work that used the official sectioning: headers are ``\\n NAME:`` with
an upper-case name, names are normalised (misspellings, "findings and impression" →
impression), empty findings/impression sections are dropped, a report with neither gets a
"last paragraph" section, and the last occurrence of a section wins. The project's hand-made
per-study overrides (``custom_mimic_cxr_rules``) are not reproduced.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
import re
from collections.abc import Iterator, Sequence

from radflow_jax.data.formats import (
    Record,
    RecordError,
    SkipReport,
    resolve_image,
    bad_record_handler,
)
from radflow_jax.data.sections import Sections
from radflow_jax.schema import LABEL_BLANK, Schema, get_schema

SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
VIEW_ORDER = ("PA", "AP", "LATERAL", "LL")
_SPLITS = {"train": "train", "validate": "val", "test": "test"}
_DICOM_ID = re.compile(r"[0-9a-fA-F-]+")
_LABEL_VALUES = {"": None, "1.0": 1, "0.0": 0, "-1.0": -1, "1": 1, "0": 0, "-1": -1}

# ------------------------------------------------------------------ the MIMIC-CXR section parser

_SECTION_RE = re.compile(r"\n ([A-Z ()/,-]+):\s", re.DOTALL)
_FREQUENT_SECTIONS = {
    "preamble": "preamble", "impression": "impression", "comparison": "comparison",
    "indication": "indication", "findings": "findings", "examination": "examination",
    "technique": "technique", "history": "history", "comparisons": "comparison",
    "clinical history": "history", "reason for examination": "indication",
    "notification": "notification", "reason for exam": "indication",
    "clinical information": "history", "exam": "examination", "clinical indication": "indication",
    "conclusion": "impression", "chest, two views": "findings",
    "recommendation(s)": "recommendations", "type of examination": "examination",
    "reference exam": "comparison", "patient history": "history", "addendum": "addendum",
    "comparison exam": "comparison", "date": "date", "comment": "comment",
    "findings and impression": "impression", "wet read": "wet read",
    "comparison film": "comparison", "recommendations": "recommendations",
    "findings/impression": "impression", "pfi": "history", "recommendation": "recommendations",
    "wetread": "wet read", "ndication": "impression", "impresson": "impression",
    "imprression": "impression", "imoression": "impression", "impressoin": "impression",
    "imprssion": "impression", "impresion": "impression", "imperssion": "impression",
    "mpression": "impression", "impession": "impression", "findings/ impression": "impression",
    "finding": "findings", "findins": "findings", "findindgs": "findings",
    "findgings": "findings", "findngs": "findings", "findnings": "findings",
    "finidngs": "findings", "idication": "indication", "reference findings": "findings",
    "comparision": "comparison", "comparsion": "comparison", "comparrison": "comparison",
    "comparisions": "comparison",
}  # fmt: skip
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
_FINDINGS_HINT = re.compile(
    "(chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|"
    "two views|frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|"
    "frontal semi-upright|ribs|pa and lat)"
)


def normalize_section_name(name: str) -> str:
    """A header name as the MIMIC-CXR parser normalises it (unknown names are kept)."""
    name = name.lower().strip()
    if name in _FREQUENT_SECTIONS:
        return _FREQUENT_SECTIONS[name]
    for main in _MAIN_SECTIONS:
        if main in name:
            return main
    return "findings" if _FINDINGS_HINT.search(name) else name


def section_text(text: str) -> list[tuple[str, str]]:
    """(normalised name, text) of every section, in order, as ``section_parser.section_text``.

    Text before the first header is the ``preamble``; a report without headers is one
    ``full report`` section. When neither findings nor impression is left, the paragraphs after
    the first one of the last section (split at ``"\\n \\n"``) become ``last_paragraph``.
    """
    found = _SECTION_RE.search(text)
    if found is None:
        sections = [("full report", text)]
    else:
        sections = [("preamble", text[: found.start(1)])]
        while found:
            name, start = found.group(1), found.end()
            skip = text[start:].find("\n")
            found = _SECTION_RE.search(text, start + max(skip, 0))
            sections.append((name, text[start : found.start() if found else len(text)]))
    sections = [(normalize_section_name(n), t) for n, t in sections]
    sections = [
        (n, t) for n, t in sections if n not in ("impression", "findings") or t.strip()
    ]
    names = [n for n, _ in sections]
    if "impression" not in names and "findings" not in names and "\n \n" in sections[-1][1]:
        name, last = sections[-1]
        first, *rest = last.split("\n \n")
        sections[-1] = (name, first)
        sections.append(("last_paragraph", "\n \n".join(rest)))
    return sections


def _last(sections: list[tuple[str, str]], name: str) -> str:
    texts = [t for n, t in sections if n == name]
    return " ".join(texts[-1].split()) if texts else ""


def mimic_sections(text: str) -> Sections:
    """Findings and Impression of a raw MIMIC-CXR report (the last paragraph as Impression when
    the report has neither section). Either may be empty; the loader rejects both empty."""
    sections = section_text(text)
    findings, impression = _last(sections, "findings"), _last(sections, "impression")
    if not findings and not impression:
        impression = _last(sections, "last_paragraph")
    return Sections(findings=findings, impression=impression)


# ----------------------------------------------------------------------------------- the loader


def find_csv(root: str, name: str) -> str | None:
    """``root/name`` or ``root/name.gz``, whichever exists, else None."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_csv(path: str, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a ``.csv``/``.csv.gz``; a file-level RecordError if columns lack."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RecordError(path, None, "", f"not valid UTF-8 at byte {e.start}",
                          reason="not UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise RecordError(path, None, "", f"missing column(s) {missing}; has {reader.fieldnames}")
    for row in reader:
        yield reader.line_num, row


class _Study:
    """What the split CSV says about one study, gathered over its dicom rows."""

    def __init__(self, subject: str, split: str, line: int):
        self.subject, self.split, self.line = subject, split, line
        self.dicoms: list[str] = []


class _MimicLoader:
    def __init__(self, root, reports_root, schema, view_order, verify_images, on_error):
        self.root = os.path.realpath(root)
        self.reports_root = os.path.realpath(reports_root or root)
        self.schema, self.view_order = schema, tuple(view_order)
        self.verify_images, self.on_error = verify_images, on_error
        split_csv = find_csv(root, SPLIT_CSV)
        if split_csv is None:
            raise RecordError(os.path.join(root, SPLIT_CSV), None, "", "file not found (nor .gz): "
                              "not a MIMIC-CXR-JPG folder")
        self.split_csv = split_csv

    def studies(self) -> dict[str, _Study]:
        """Studies by id from the split CSV; rows with bad ids or a second split are reported."""
        studies: dict[str, _Study] = {}
        bad: set[str] = set()
        for line, row in _read_csv(self.split_csv, ("dicom_id", "study_id", "subject_id", "split")):
            study, subject, dicom = row["study_id"], row["subject_id"], row["dicom_id"]
            where = f"line {line}"
            try:
                for field, value in (("study_id", study), ("subject_id", subject)):
                    if not value.isdigit():
                        raise RecordError(self.split_csv, f"s{study}", field,
                                          f"not a number: {value!r}", location=where)
                if not _DICOM_ID.fullmatch(dicom):
                    raise RecordError(self.split_csv, f"s{study}", "dicom_id",
                                      f"not a DICOM id (hex digits and dashes): {dicom!r}",
                                      location=where)
                split = _SPLITS.get(row["split"])
                if split is None:
                    raise RecordError(self.split_csv, f"s{study}", "split", f"{row['split']!r} "
                                      f"is not one of {sorted(_SPLITS)}", location=where)
                known = studies.setdefault(study, _Study(subject, split, line))
                if (known.split, known.subject) != (split, subject):
                    raise RecordError(
                        self.split_csv, f"s{study}", "split",
                        f"study is in split {split!r} for subject {subject} here but in "
                        f"{known.split!r} for subject {known.subject} at line {known.line}",
                        location=where, reason="duplicate id",
                    )
                known.dicoms.append(dicom)
            except RecordError as e:
                self.on_error(e)
                bad.add(study)
        return {s: v for s, v in studies.items() if s not in bad}

    def views(self) -> dict[str, str]:
        path = find_csv(self.root, METADATA_CSV)
        if path is None:
            return {}
        return {row["dicom_id"]: row["ViewPosition"]
                for _, row in _read_csv(path, ("dicom_id", "ViewPosition"))}

    def labels(self, path: str) -> dict[str, tuple[tuple[int, ...], bool]]:
        """Labels and critical flag by study id from a CheXpert-style CSV."""
        observations = self.schema.observations
        out = {}
        for line, row in _read_csv(path, ("study_id", *observations)):
            study = f"s{row['study_id']}"
            try:
                values = {}
                for obs in observations:
                    if row[obs] not in _LABEL_VALUES:
                        raise RecordError(path, study, obs, f"value {row[obs]!r} is not one of "
                                          "1.0, 0.0, -1.0 or blank", location=f"line {line}",
                                          reason="bad label")
                    values[obs] = _LABEL_VALUES[row[obs]]
            except RecordError as e:
                self.on_error(e)
                out[study] = None  # its record is left out: the skip is already counted
                continue
            labels = tuple(LABEL_BLANK if values[o] is None else values[o] for o in observations)
            out[study] = (labels, self.schema.is_critical(values))
        return out

    def report_path(self, study: str, subject: str) -> str:
        return os.path.join(self.reports_root, "files", f"p{subject[:2]}", f"p{subject}",
                            f"s{study}.txt")

    def record(self, study: str, info: _Study, views: dict[str, str]) -> Record:
        rid, report_path = f"s{study}", self.report_path(study, info.subject)

        def fail(field: str, message: str, reason: str = "") -> RecordError:
            return RecordError(report_path, rid, field, message, location=f"study {rid}",
                               reason=reason)

        if not os.path.isfile(report_path):
            raise fail("report", "report file not found", "missing report")
        with open(report_path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            context = raw[max(e.start - 20, 0) : e.end + 20]
            message = f"not valid UTF-8 at byte {e.start}: {context!r}"
            raise fail("report", message, "not UTF-8") from None
        sections = mimic_sections(text)
        if not sections.findings and not sections.impression:
            raise fail("report", "empty findings and impression (no section, no last paragraph)",
                       "empty report")
        rank = {v: k for k, v in enumerate(self.view_order)}
        dicoms = sorted(info.dicoms, key=lambda d: (rank.get(views.get(d, ""), len(rank)), d))
        study_dir = os.path.join(self.root, "files", f"p{info.subject[:2]}", f"p{info.subject}",
                                 f"s{study}")
        paths = []
        for k, dicom in enumerate(dicoms):
            path, problem = resolve_image(self.root, os.path.join(study_dir, f"{dicom}.jpg"),
                                          self.verify_images)
            if problem:
                raise fail(f"image_path[{k}]", problem[1], problem[0])
            paths.append(path)
        return Record(
            id=rid, split=info.split, image_paths=tuple(paths), report=text,
            findings=sections.findings, impression=sections.impression, labels=None,
            critical=None, where=f"{report_path}:study {rid}",
            indication=_last(section_text(text), "indication"),
        )


def load_mimic_cxr_jpg(
    root: str,
    *,
    reports_root: str | None = None,
    splits: Sequence[str] = ("train", "val", "test"),
    labels_csv: str | None = CHEXPERT_CSV,
    schema: Schema | None = None,
    view_order: Sequence[str] = VIEW_ORDER,
    on_bad_record: str = "error",
    verify_images: bool = True,
) -> tuple[dict[str, list[Record]], SkipReport]:
    """Loads the requested splits of a MIMIC-CXR-JPG folder (layout in the module docstring).

    ``labels_csv`` (relative to ``root``, ``.gz`` accepted) gives CheXpert labels when the file
    exists; ``None`` reads none. Studies the labels file omits get all-``LABEL_BLANK``.
    ``on_bad_record`` is ``"error"`` (raise ``RecordError``) or ``"skip"`` (count it).
    """
    schema = schema or get_schema("cxr")
    report = SkipReport()
    loader = _MimicLoader(root, reports_root, schema, view_order, verify_images,
                          bad_record_handler(on_bad_record, report))
    studies = loader.studies()
    views = loader.views()
    labels_path = find_csv(root, labels_csv) if labels_csv else None
    labels = loader.labels(labels_path) if labels_path else {}
    blank = ((LABEL_BLANK,) * len(schema.observations), None)
    out: dict[str, list[Record]] = {s: [] for s in splits}
    for study in sorted(studies, key=int):
        info = studies[study]
        if info.split not in out or labels.get(f"s{study}", blank) is None:
            continue
        try:
            rec = loader.record(study, info, views)
        except RecordError as e:
            loader.on_error(e)
            continue
        if labels_path:
            rec_labels, critical = labels.get(rec.id, blank)
            rec = dataclasses.replace(rec, labels=rec_labels, critical=critical)
        out[info.split].append(rec)
    return out, report
