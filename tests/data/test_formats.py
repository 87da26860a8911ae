"""R2Gen reader: valid files load exactly, and every kind of bad input names file, record and field."""

from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from radflow_jax.data.formats import RecordError, load_r2gen
from radflow_jax.schema import LABEL_BLANK, get_schema

SCHEMA = get_schema("cxr")


def _png(path: str, seed: int, size: int = 24) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def _case(i: int, split: str, views: int = 1) -> dict:
    cid = f"case-{i:03d}"
    return {
        "id": cid,
        "report": f"FINDINGS: Lungs are clear {i}. IMPRESSION: No acute disease {i}.",
        "image_path": [f"images/{cid}/{k}.png" for k in range(views)],
        "split": split,
    }


def write_r2gen(root: str, n_train: int = 3, n_val: int = 1, n_test: int = 1) -> dict:
    """A tiny valid dataset written by hand; returns the annotation dict for mutation."""
    splits = {"train": n_train, "val": n_val, "test": n_test}
    annotation, i = {}, 0
    with open(os.path.join(root, "labels.jsonl"), "w") as labels:
        for split, n in splits.items():
            annotation[split] = []
            for _ in range(n):
                rec = _case(i, split, views=1 + i % 2)
                for k, rel in enumerate(rec["image_path"]):
                    _png(os.path.join(root, rel), seed=i * 10 + k)
                annotation[split].append(rec)
                row = {"id": rec["id"], "labels": {"Cardiomegaly": 1, "Pneumothorax": i % 2,
                                                   "Edema": None, "No Finding": 0}}
                labels.write(json.dumps(row) + "\n")
                i += 1
    save_annotation(root, annotation)
    with open(os.path.join(root, "meta.json"), "w") as f:
        json.dump({"modality": "cxr"}, f)
    return annotation


def save_annotation(root: str, annotation: dict) -> str:
    path = os.path.join(root, "annotation.json")
    with open(path, "w") as f:
        json.dump(annotation, f)
    return path


def _load(root: str, **kw):
    kw.setdefault("labels_path", os.path.join(root, "labels.jsonl"))
    return load_r2gen(os.path.join(root, "annotation.json"), **kw)


def test_loads_valid_dataset_with_labels(tmp_path):
    root = str(tmp_path)
    ann = write_r2gen(root)
    ann["train"][0].update(study_id=50414267, subject_id=10000032)  # MIMIC extras are accepted
    save_annotation(root, ann)
    data, skips = _load(root)
    assert len(skips) == 0 and skips.summary() == "no records skipped"
    assert {s: len(v) for s, v in data.items()} == {"train": 3, "val": 1, "test": 1}
    rec = data["train"][1]
    assert rec.id == "case-001" and rec.split == "train"
    assert rec.image_paths == tuple(
        os.path.realpath(os.path.join(root, f"images/case-001/{k}.png")) for k in range(2)
    )
    assert rec.findings == "Lungs are clear 1." and rec.impression == "No acute disease 1."
    expected = [LABEL_BLANK] * len(SCHEMA.observations)
    expected[SCHEMA.index("Cardiomegaly")] = 1
    expected[SCHEMA.index("Pneumothorax")] = 1
    expected[SCHEMA.index("No Finding")] = 0
    assert rec.labels == tuple(expected)
    assert rec.critical is True and data["train"][0].critical is False  # from the schema
    assert rec.where.endswith("annotation.json:train[1]")
    no_labels, _ = _load(root, labels_path=None, splits=("test",))
    assert list(no_labels) == ["test"] and no_labels["test"][0].labels is None


def _outside_png(root: str) -> str:
    path = os.path.join(os.path.dirname(root), "outside.png")
    _png(path, seed=99)
    return path


def _symlink_out(root: str, rec: dict) -> None:
    os.symlink(_outside_png(root), os.path.join(root, "images", "link.png"))
    rec["image_path"] = ["images/link.png"]


def _corrupt(root: str, rec: dict) -> None:
    path = os.path.join(root, rec["image_path"][0])
    with open(path, "r+b") as f:
        f.seek(30)
        f.write(b"\x00" * 40)  # inside the IHDR/IDAT: fails PIL's verify()


# name → (mutation of train[1] "case-001", field named in the error, expected message fragment)
BAD_RECORDS = {
    "missing_image": (lambda root, r: r.update(image_path=["images/nope.png"]),
                      "image_path[0]", "file not found"),
    "corrupt_image": (_corrupt, "image_path[0]", "corrupt or undecodable image"),
    "dotdot_escape": (lambda root, r: (_outside_png(root), r.update(image_path=["../outside.png"])),
                      "image_path[0]", "outside the image root"),
    "absolute_escape": (lambda root, r: r.update(image_path=[_outside_png(root)]),
                        "image_path[0]", "outside the image root"),
    "symlink_escape": (_symlink_out, "image_path[0]", "outside the image root"),
    "no_sections": (lambda root, r: r.update(report="Heart size normal. No effusion."),
                    "report", "section_fallback='error'"),
    "empty_report": (lambda root, r: r.update(report="   "), "report", "empty report"),
    "missing_report": (lambda root, r: r.pop("report"), "report", "missing or not a string"),
    "image_path_not_list": (lambda root, r: r.update(image_path="images/case-001/0.png"),
                            "image_path", "not a non-empty list"),
    "image_path_not_str": (lambda root, r: r.update(image_path=[3]), "image_path[0]",
                           "not a non-empty string"),
    "split_mismatch": (lambda root, r: r.update(split="test"), "split", "does not match"),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_bad_record_errors_or_is_counted(tmp_path, name, caplog):
    mutate, field, fragment = BAD_RECORDS[name]
    root = str(tmp_path / "data")
    os.makedirs(root)
    ann = write_r2gen(root)
    mutate(root, ann["train"][1])
    save_annotation(root, ann)
    with pytest.raises(RecordError) as err:
        _load(root)
    message = str(err.value)
    assert message.startswith(os.path.join(root, "annotation.json") + ": record 'case-001' ")
    assert f"(train[1]), field {field}: " in message and fragment in message
    with caplog.at_level(logging.WARNING):
        data, skips = _load(root, on_bad_record="skip")
    assert [r.id for r in data["train"]] == ["case-000", "case-002"]
    assert skips.skipped == [("case-001", message)]
    assert "skipped 1 bad record(s)" in caplog.text and message in caplog.text


def test_unverified_corrupt_image_loads(tmp_path):
    root = str(tmp_path)
    ann = write_r2gen(root)
    _corrupt(root, ann["train"][1])
    data, _ = _load(root, verify_images=False)
    assert len(data["train"]) == 3  # caught at decode time by the pipeline instead


@pytest.mark.parametrize("fallback, sections", [
    ("findings", ("Heart size normal. No effusion.", "")),
    ("last_sentence", ("Heart size normal.", "No effusion.")),
])
def test_section_fallback(tmp_path, fallback, sections):
    root = str(tmp_path)
    ann = write_r2gen(root)
    ann["train"][1]["report"] = "Heart size normal. No effusion."
    save_annotation(root, ann)
    rec = _load(root, section_fallback=fallback)[0]["train"][1]
    assert (rec.findings, rec.impression) == sections


def test_non_utf8_names_record_and_field(tmp_path):
    root = str(tmp_path)
    write_r2gen(root)
    path = os.path.join(root, "annotation.json")
    raw = open(path, "rb").read()
    assert b"Lungs are clear 2." in raw
    open(path, "wb").write(raw.replace(b"Lungs are clear 2.", b"Lungs are cl\xe9ar 2."))
    with pytest.raises(RecordError, match=r"record 'case-002' \(train\[2\]\), field report: "
                                          r"not valid UTF-8: .*cl\\\\xe9ar"):
        _load(root)
    open(path, "wb").write(raw.replace(b'"case-002"', b'"case-\xff02"'))
    with pytest.raises(RecordError, match=r"record 'case-\\\\xff02' \(train\[2\]\), field id"):
        _load(root)


def test_duplicate_ids(tmp_path):
    root = str(tmp_path)
    ann = write_r2gen(root)
    ann["test"][0]["id"] = "case-000"
    save_annotation(root, ann)
    with pytest.raises(RecordError, match=r"'case-000' \(test\[0\]\), field id: duplicate id "
                                          r"\(first at train\[0\]\)"):
        _load(root)
    data, skips = _load(root, on_bad_record="skip")
    assert len(data["test"]) == 0 and len(data["train"]) == 3 and len(skips) == 1


@pytest.mark.parametrize("content, fragment", [
    (b"", "not valid JSON: line 1, column 1"),
    (b'{"train": [\n  {"id": "a",}\n]}', "not valid JSON: line 2, column 14"),
    (b"[1, 2]", "top level is a list"),
    (b'{"train": []}', "split(s) ['val', 'test'] not found"),
    (b'{"train": {}, "val": [], "test": []}', "field train: not a list of records"),
])
def test_whole_file_problems_are_always_errors(tmp_path, content, fragment):
    path = tmp_path / "annotation.json"
    path.write_bytes(content)
    with pytest.raises(RecordError) as err:
        load_r2gen(str(path), on_bad_record="skip")
    assert str(err.value).startswith(str(path)) and fragment in str(err.value)
    with pytest.raises(RecordError, match="nothere.json: file not found"):
        load_r2gen(str(tmp_path / "nothere.json"), on_bad_record="skip")


@pytest.mark.parametrize("line, fragment, skipped_id", [
    ('{"id": "case-001", "labels": {"Cardiomegaly": 1}', "line 2: malformed JSON", None),
    ('{"id": "case-001", "labels": {"Cardio": 1}}', "record 'case-001' (line 2), field "
                                                    "labels['Cardio']: unknown observation", "case-001"),
    ('{"id": "case-001", "labels": {"Edema": 2}}', "value 2 is not one of", "case-001"),
    ('{"id": "case-000", "labels": {}}', "record 'case-000' (line 2), field id: duplicate id",
     "case-000"),
])
def test_bad_labels_lines(tmp_path, line, fragment, skipped_id):
    root = str(tmp_path)
    write_r2gen(root)
    labels_path = os.path.join(root, "labels.jsonl")
    lines = open(labels_path).read().splitlines()
    lines[1] = line
    open(labels_path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as err:
        _load(root)
    assert str(err.value).startswith(labels_path + ": ") and fragment in str(err.value)
    data, skips = _load(root, on_bad_record="skip")
    assert len(skips) == 1 and fragment in skips.summary()
    ids = [r.id for r in data["train"]]
    if skipped_id is None:  # the line names no record: its record stays, with blank labels
        assert ids == ["case-000", "case-001", "case-002"]
        assert set(data["train"][1].labels) == {LABEL_BLANK}
    else:
        assert skipped_id not in ids and len(ids) == 2


def test_labels_need_a_schema(tmp_path):
    root = str(tmp_path)
    write_r2gen(root)
    os.remove(os.path.join(root, "meta.json"))
    with pytest.raises(ValueError, match="pass schema=get_schema"):
        _load(root)
    assert _load(root, schema=SCHEMA)[0]["val"][0].labels is not None


def test_record_error_pickles_with_its_message():
    err = RecordError("a.json", "x", "image_path[0]", "boom", location="train[3]")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RecordError and str(again) == str(err)
    assert str(err) == "a.json: record 'x' (train[3]), field image_path[0]: boom"
    assert again.field == "image_path[0]" and again.record_id == "x"
