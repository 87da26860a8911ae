"""One's own studies in JSONL: the documented format loads exactly; every bad line is named or skipped."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from radflow_jax.data.formats import RecordError, assign_split
from radflow_jax.data.formats_jsonl import load_jsonl_studies
from radflow_jax.schema import LABEL_BLANK, get_schema

SCHEMA = get_schema("carotid")


def _png(path: str, seed: int, mode: str = "L") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (20, 30) if mode == "L" else (20, 30, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def study(i: int, **changes) -> dict:
    row = {
        "id": f"us-{i:03d}",
        "images": [f"us-{i:03d}/right.png", f"us-{i:03d}/left.png"],
        "findings": f"Right ICA: moderate plaque, PSV {100 + i} cm/s.",
        "impression": "50-69% right ICA stenosis.",
        "modality": "carotid",
        "labels": {"Right Stenosis 50-69%": 1, "Left Plaque": 0, "Right Plaque": None},
        "split": ("train", "train", "val", "test")[i % 4],
    }
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def write_studies(root: str, rows: list[dict], lines: list[bytes] = ()) -> str:
    for row in rows:
        for k, rel in enumerate(row.get("images", [])):
            if isinstance(rel, str) and ".." not in rel and "nope" not in rel:  # "nope": missing
                _png(os.path.join(root, rel), seed=k, mode="RGB" if k else "L")
    path = os.path.join(root, "studies.jsonl")
    with open(path, "wb") as f:
        for row in rows:
            f.write(json.dumps(row).encode() + b"\n")
        for line in lines:
            f.write(line + b"\n")
    return path


def test_loads_documented_format(tmp_path):
    root = str(tmp_path)
    rows = [study(i) for i in range(4)]
    rows[3] = study(3, labels=..., split=..., critical=True, indication="TIA")  # no labels, no split
    rows[2] = study(2, labels={"Right Stenosis >=70%": 1})
    path = write_studies(root, rows, lines=[b"", b"   "])  # blank lines are ignored
    data, skips = load_jsonl_studies(path, schema=SCHEMA)
    assert len(skips) == 0
    drawn = assign_split("us-003", 0)
    expected = {"train": ["us-000", "us-001"], "val": ["us-002"], "test": []}
    expected[drawn].append("us-003")
    assert {s: [r.id for r in v] for s, v in data.items()} == expected
    first = data["train"][0]
    assert first.image_paths == tuple(os.path.realpath(os.path.join(root, "us-000", f"{s}.png"))
                                      for s in ("right", "left"))
    assert first.findings == "Right ICA: moderate plaque, PSV 100 cm/s."
    assert first.labels[SCHEMA.index("Right Stenosis 50-69%")] == 1
    assert first.labels[SCHEMA.index("Left Plaque")] == 0
    assert first.labels[SCHEMA.index("Right Plaque")] == LABEL_BLANK
    assert first.critical is False
    assert data["val"][0].critical is True  # >=70% stenosis is critical by the schema
    last = data[drawn][-1]
    assert last.labels == (LABEL_BLANK,) * len(SCHEMA.observations)  # filled: others have labels
    assert last.critical is True and last.indication == "TIA"
    assert first.where == f"{path}:line 1"


def test_no_labels_anywhere_means_none(tmp_path):
    path = write_studies(str(tmp_path), [study(i, labels=...) for i in range(2)])
    data, _ = load_jsonl_studies(path, schema=SCHEMA)
    assert all(r.labels is None and r.critical is None for r in data["train"])


def _corrupt(root: str) -> None:
    with open(os.path.join(root, "us-001", "right.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)


# case: (changes to study 1 or a raw line, field, reason, message fragment)
BAD_CASES = {
    "missing image": ({"images": ["us-001/right.png", "us-001/nope.png"]}, "images[1]",
                      "missing image", "file not found"),
    "escaping path": ({"images": ["../../etc/passwd"]}, "images[0]", "image outside root",
                      "outside the image root"),
    "no images": ({"images": []}, "images", "no images", "not a non-empty list"),
    "empty sections": ({"findings": "  ", "impression": ""}, "findings", "empty report",
                       "empty findings and impression"),
    "missing key": ({"impression": ...}, "impression", "missing field", "missing key(s)"),
    "unknown key": ({"impresion": "x"}, "impresion", "unknown field", "unknown key(s) ['impresion']"),
    "wrong modality": ({"modality": "cxr"}, "modality", "wrong modality", "'cxr' but this dataset"),
    "bad label": ({"labels": {"Right Plaque": 2}}, "labels['Right Plaque']", "labels",
                  "not one of 1, 0, -1, null"),
    "unknown label": ({"labels": {"Pneumothorax": 1}}, "labels['Pneumothorax']", "labels",
                      "unknown observation"),
    "bad split": ({"split": "validation"}, "split", "bad field", "not train, val or test"),
    "duplicate id": ({"id": "us-000"}, "id", "duplicate id", "duplicate id (first at line 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_study_is_named_or_skipped(tmp_path, case):
    root = str(tmp_path)
    changes, field, reason, fragment = BAD_CASES[case]
    rows = [study(0), study(1, **changes), study(2)]
    path = write_studies(root, rows)
    with pytest.raises(RecordError) as info:
        load_jsonl_studies(path, schema=SCHEMA)
    e = info.value
    assert (e.file, e.location, e.field, e.reason) == (path, "line 2", field, reason)
    assert e.record_id == rows[1]["id"] and fragment in str(e)
    data, skips = load_jsonl_studies(path, schema=SCHEMA, on_bad_record="skip")
    assert [r.id for v in data.values() for r in v] == ["us-000", "us-002"]
    assert dict(skips.reasons) == {reason: 1}


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = str(tmp_path)
    path = write_studies(root, [study(0), study(1)])
    _corrupt(root)
    with pytest.raises(RecordError, match="corrupt or undecodable image") as info:
        load_jsonl_studies(path, schema=SCHEMA)
    assert (info.value.record_id, info.value.field) == ("us-001", "images[0]")
    data, skips = load_jsonl_studies(path, schema=SCHEMA, on_bad_record="skip")
    assert dict(skips.reasons) == {"corrupt image": 1} and len(data["train"]) == 1


@pytest.mark.parametrize("line, reason, fragment", [
    (b'{"id": "us-009", "findings": "caf\xe9"}', "not UTF-8", "not valid UTF-8"),
    (b'{"id": "us-009", ', "malformed JSON", "malformed JSON at column"),
    (b'["not", "an", "object"]', "malformed JSON", "not an object"),
])  # fmt: skip
def test_unreadable_lines(tmp_path, line, reason, fragment):
    path = write_studies(str(tmp_path), [study(0)], lines=[line])
    with pytest.raises(RecordError, match=fragment) as info:
        load_jsonl_studies(path, schema=SCHEMA)
    assert info.value.location == "line 2" and info.value.reason == reason
    data, skips = load_jsonl_studies(path, schema=SCHEMA, on_bad_record="skip")
    assert len(data["train"]) == 1 and dict(skips.reasons) == {reason: 1}


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        load_jsonl_studies(str(tmp_path / "studies.jsonl"), schema=SCHEMA)
