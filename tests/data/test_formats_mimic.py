"""MIMIC-CXR: the official section parser's behaviour, the JPG layout loader, and its bad records."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
from PIL import Image

from radflow_jax.data.formats import RecordError
from radflow_jax.data.formats_mimic import (
    load_mimic_cxr_jpg,
    mimic_sections,
    normalize_section_name,
    section_text,
)
from radflow_jax.schema import LABEL_BLANK, get_schema

SCHEMA = get_schema("cxr")
HEAD = "                                 FINAL REPORT\n"


def _report(*blocks: str) -> str:
    """A report in MIMIC's layout: every line starts with a space, blank lines are ' '."""
    lines = "\n \n".join(blocks).split("\n")
    return HEAD + "\n".join(line if line.startswith(" ") else " " + line for line in lines) + "\n"


NORMAL = _report(
    "EXAMINATION:  CHEST (PA AND LAT)",
    "INDICATION:  ___F with cough  // eval for pneumonia",
    "COMPARISON:  None.",
    "FINDINGS: ",
    "There is no focal consolidation.  The heart size is\nnormal.",
    "IMPRESSION: ",
    "No acute cardiopulmonary process.",
)


# ------------------------------------------------------------------------------ section parser


def test_standard_report_sections_and_indication():
    sections = mimic_sections(NORMAL)
    assert sections.findings == "There is no focal consolidation. The heart size is normal."
    assert sections.impression == "No acute cardiopulmonary process."
    names = [n for n, _ in section_text(NORMAL)]
    assert names == ["preamble", "examination", "indication", "comparison", "findings", "impression"]


@pytest.mark.parametrize("header, kind", [
    ("FINDNGS", "findings"), ("FINIDNGS", "findings"), ("FINDING", "findings"),
    ("IMPRESSON", "impression"), ("IMPESSION", "impression"), ("CONCLUSION", "impression"),
    ("FINDINGS AND IMPRESSION", "impression"), ("FINDINGS/IMPRESSION", "impression"),
    ("PA AND LATERAL CHEST RADIOGRAPH", "findings"),  # a view description counts as findings
    ("CHEST, TWO VIEWS", "findings"),
])  # fmt: skip
def test_header_names_are_normalised_like_the_mimic_parser(header, kind):
    assert normalize_section_name(header) == kind
    report = _report(f"{header}:  Lungs are clear.")
    assert getattr(mimic_sections(report), kind) == "Lungs are clear."


def test_unknown_and_main_section_names():
    assert normalize_section_name("Reason for exam") == "indication"
    assert normalize_section_name("ADDENDUM TO FINDINGS") == "findings"  # first main name found
    assert normalize_section_name("OPERATORS") == "operators"  # kept as is


def test_missing_impression_leaves_it_empty():
    sections = mimic_sections(_report("INDICATION:  cough", "FINDINGS:  Heart normal.\nLungs clear."))
    assert sections == type(sections)("Heart normal. Lungs clear.", "")


def test_last_paragraph_fallback_when_no_findings_or_impression():
    report = _report("HISTORY:  cough.", "Heart size normal. Lungs clear.", "No acute process.")
    names = [n for n, _ in section_text(report)]
    assert names == ["preamble", "history", "last_paragraph"]
    # As in the official parser: every paragraph after the first one of the last section.
    assert mimic_sections(report).impression == "Heart size normal. Lungs clear. No acute process."
    assert mimic_sections(report).findings == ""


def test_no_header_at_all_uses_paragraphs_after_the_first():
    report = "Chest radiograph.\n \n Lungs are clear.\n"
    assert section_text(report)[0][0] == "full report"
    assert mimic_sections(report).impression == "Lungs are clear."


def test_empty_sections_are_dropped_and_last_occurrence_wins():
    report = _report("FINDINGS:  Old text.", "IMPRESSION:  ", "FINDINGS:  New text.")
    assert [n for n, _ in section_text(report)] == ["preamble", "findings", "findings"]
    assert mimic_sections(report) == type(mimic_sections(report))("New text.", "")


def test_lower_case_or_unindented_headers_are_not_headers():
    # The official regex wants "\n " then capitals: these stay inside the findings text.
    report = HEAD + " FINDINGS:  Stable. Impression: none.\nIMPRESSION: not a header here.\n"
    assert mimic_sections(report).impression == ""
    assert "Impression: none." in mimic_sections(report).findings


# ------------------------------------------------------------------------------------ layout


def _jpg(path: str, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 28), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path, format="JPEG")


def _csv(path: str, header: list[str], rows: list[list[str]], gz: bool) -> None:
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    if gz:
        with gzip.open(path + ".gz", "wt") as f:
            f.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)


# (subject, study, split, [(dicom, view)], report, chexpert row or None)
STUDIES = [
    ("10000032", "50414267", "train", [("aa-01", "LATERAL"), ("aa-02", "PA")], NORMAL,
     {"Pneumothorax": "1.0", "Edema": "-1.0", "No Finding": ""}),
    ("10000032", "53189527", "train", [("bb-01", "AP")],
     _report("FINDNGS:  Small left effusion.", "IMPRESSON:  Effusion."), {"Pleural Effusion": "1.0"}),
    ("10000764", "57375967", "validate", [("cc-01", "PA")],
     _report("HISTORY:  fever.", "Clear lungs.", "No pneumonia."), None),
    ("10000898", "50771383", "test", [("dd-01", "PA")],
     _report("FINDINGS AND IMPRESSION:  No acute process."), {"No Finding": "1.0"}),
]  # fmt: skip


def write_mimic(root: str, studies=STUDIES, gz: bool = True) -> None:
    split_rows, meta_rows, label_rows = [], [], []
    for subject, study, split, dicoms, report, labels in studies:
        folder = os.path.join(root, "files", f"p{subject[:2]}", f"p{subject}")
        for k, (dicom, view) in enumerate(dicoms):
            _jpg(os.path.join(folder, f"s{study}", f"{dicom}.jpg"), seed=int(study) % 97 + k)
            split_rows.append([dicom, study, subject, split])
            meta_rows.append([dicom, subject, study, view])
        with open(os.path.join(folder, f"s{study}.txt"), "w") as f:
            f.write(report)
        if labels is not None:
            label_rows.append([subject, study, *(labels.get(o, "") for o in SCHEMA.observations)])
    _csv(os.path.join(root, "mimic-cxr-2.0.0-split.csv"),
         ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz)
    _csv(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv"),
         ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta_rows, gz)
    _csv(os.path.join(root, "mimic-cxr-2.0.0-chexpert.csv"),
         ["subject_id", "study_id", *SCHEMA.observations], label_rows, gz)


@pytest.mark.parametrize("gz", [True, False])
def test_loads_layout_with_views_labels_and_splits(tmp_path, gz):
    root = str(tmp_path)
    write_mimic(root, gz=gz)
    data, skips = load_mimic_cxr_jpg(root, schema=SCHEMA)
    assert len(skips) == 0
    assert {s: [r.id for r in v] for s, v in data.items()} == {
        "train": ["s50414267", "s53189527"], "val": ["s57375967"], "test": ["s50771383"]}
    first = data["train"][0]
    assert [os.path.basename(p) for p in first.image_paths] == ["aa-02.jpg", "aa-01.jpg"]  # PA first
    assert first.indication == "___F with cough // eval for pneumonia"
    assert first.labels[SCHEMA.index("Pneumothorax")] == 1
    assert first.labels[SCHEMA.index("Edema")] == -1
    assert first.labels[SCHEMA.index("No Finding")] == LABEL_BLANK
    assert first.critical is True and data["train"][1].critical is False
    second = data["train"][1]
    assert (second.findings, second.impression) == ("Small left effusion.", "Effusion.")
    val = data["val"][0]  # not in the labels file: blank labels, critical unknown
    assert val.labels == (LABEL_BLANK,) * len(SCHEMA.observations) and val.critical is None
    assert val.impression == "Clear lungs. No pneumonia."  # last-paragraph fallback
    assert data["test"][0].impression == "No acute process." and data["test"][0].findings == ""


def test_without_labels_file_records_have_no_labels(tmp_path):
    write_mimic(str(tmp_path))
    data, _ = load_mimic_cxr_jpg(str(tmp_path), labels_csv=None)
    assert all(r.labels is None for v in data.values() for r in v)


def test_not_a_mimic_folder_is_a_file_error(tmp_path):
    with pytest.raises(RecordError, match="mimic-cxr-2.0.0-split.csv: file not found"):
        load_mimic_cxr_jpg(str(tmp_path))


def _study_path(root: str, subject: str, study: str) -> str:
    return os.path.join(root, "files", f"p{subject[:2]}", f"p{subject}", f"s{study}")


def _break(root: str, case: str) -> None:
    subject, study = "10000032", "53189527"
    base = _study_path(root, subject, study)
    if case == "missing image":
        os.remove(os.path.join(base, "bb-01.jpg"))
    elif case == "corrupt image":
        with open(os.path.join(base, "bb-01.jpg"), "wb") as f:
            f.write(b"not a jpeg at all")
    elif case == "missing report":
        os.remove(base + ".txt")
    elif case == "not UTF-8":
        with open(base + ".txt", "wb") as f:
            f.write(HEAD.encode() + b" FINDINGS:  Caf\xe9 lungs clear.\n")
    elif case == "empty report":
        with open(base + ".txt", "w") as f:
            f.write(HEAD + " FINDINGS: \n IMPRESSION: \n")


@pytest.mark.parametrize("case, field, fragment", [
    ("missing image", "image_path[0]", "file not found"),
    ("corrupt image", "image_path[0]", "corrupt or undecodable image"),
    ("missing report", "report", "report file not found"),
    ("not UTF-8", "report", "not valid UTF-8 at byte"),
    ("empty report", "report", "empty findings and impression"),
])  # fmt: skip
def test_bad_study_is_named_or_skipped(tmp_path, case, field, fragment):
    root = str(tmp_path)
    write_mimic(root)
    _break(root, case)
    with pytest.raises(RecordError) as info:
        load_mimic_cxr_jpg(root)
    e = info.value
    assert (e.record_id, e.field, e.reason) == ("s53189527", field, case)
    assert "s53189527.txt" in e.file and fragment in str(e)
    data, skips = load_mimic_cxr_jpg(root, on_bad_record="skip")
    assert [r.id for r in data["train"]] == ["s50414267"] and len(data["test"]) == 1
    assert dict(skips.reasons) == {case: 1} and skips.skipped[0][0] == "s53189527"


def test_study_in_two_splits_is_a_duplicate(tmp_path):
    studies = [*STUDIES, ("10000032", "50414267", "test", [("aa-03", "PA")], NORMAL, None)]
    root = str(tmp_path)
    write_mimic(root, studies)
    with pytest.raises(RecordError, match="in split 'test' .* but in 'train'") as info:
        load_mimic_cxr_jpg(root)
    assert info.value.record_id == "s50414267" and info.value.location == "line 7"
    data, skips = load_mimic_cxr_jpg(root, on_bad_record="skip")
    assert "s50414267" not in [r.id for v in data.values() for r in v]
    assert dict(skips.reasons) == {"duplicate id": 1}


def test_dicom_id_that_would_escape_the_root_is_rejected(tmp_path):
    studies = [*STUDIES[1:], ("10000999", "59999999", "train", [("../../../../etc/x", "PA")],
                              NORMAL, None)]
    root = str(tmp_path)
    write_mimic(root, studies[:-1])
    # Append the hostile row to the split CSV by hand (no file is written for it).
    with gzip.open(os.path.join(root, "mimic-cxr-2.0.0-split.csv.gz"), "at") as f:
        f.write("../../../../etc/x,59999999,10000999,train\n")
    with pytest.raises(RecordError, match="not a DICOM id") as info:
        load_mimic_cxr_jpg(root)
    assert (info.value.record_id, info.value.field) == ("s59999999", "dicom_id")


def test_bad_label_value_names_the_csv_line(tmp_path):
    root = str(tmp_path)
    studies = [list(s) for s in STUDIES]
    studies[1][5] = {"Pleural Effusion": "yes"}
    write_mimic(root, studies)
    with pytest.raises(RecordError, match="'yes' is not one of") as info:
        load_mimic_cxr_jpg(root)
    assert (info.value.record_id, info.value.field, info.value.location) == (
        "s53189527", "Pleural Effusion", "line 3")
    data, skips = load_mimic_cxr_jpg(root, on_bad_record="skip")
    assert [r.id for r in data["train"]] == ["s50414267"] and len(skips) == 1
