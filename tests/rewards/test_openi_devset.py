"""The hand-labeled Open-I dev set: the fixture, the scores, and the labeler on the real text."""

from __future__ import annotations

import json
import os

import pytest

from radflow_jax.rewards import labeler, openi_devset
from radflow_jax.schema import LABEL_BLANK, get_schema

FIXTURE = os.path.join(os.path.dirname(__file__), "openi_devset.json")
HELDOUT = os.path.join(os.path.dirname(__file__), "openi_heldout.json")  # never used to write rules
SCHEMA = get_schema("cxr")
B = LABEL_BLANK


def test_fixture_is_valid_and_covers_every_finding():
    labels = openi_devset.load_devset(FIXTURE, SCHEMA)
    assert len(labels) >= 150
    values = [(o, v) for row in labels.values() for o, v in row.items()]
    for obs in SCHEMA.observations[1:]:
        assert sum(1 for o, v in values if o == obs and v == 1) >= 3, obs
    assert sum(v == -1 for _, v in values) >= 50 and sum(v == 0 for _, v in values) >= 500
    with open(FIXTURE, encoding="utf-8") as f:
        assert set(json.load(f)) == {"about", "labels"}  # ids and labels only, never report text


def test_gold_array_derives_no_finding():
    labels = {"CXR1": {"Support Devices": 1, "Cardiomegaly": 0}, "CXR2": {"Atelectasis": -1}, "CXR3": {}}
    gold = openi_devset.gold_array(labels, ["CXR1", "CXR2", "CXR3"], SCHEMA)
    nf, sd, cm, at = (SCHEMA.index(o) for o in ("No Finding", "Support Devices", "Cardiomegaly", "Atelectasis"))
    assert gold[:, nf].tolist() == [1, B, 1]
    assert gold[0, sd] == 1 and gold[0, cm] == 0 and gold[1, at] == -1 and gold[2, cm] == B


def test_devset_scores_hand_computed():
    ids = ["CXR1", "CXR2", "CXR3"]
    gold = openi_devset.gold_array({"CXR1": {"Cardiomegaly": 1, "Edema": 0},
                                    "CXR2": {"Cardiomegaly": 0, "Edema": -1},
                                    "CXR3": {"Pneumothorax": 1}}, ids, SCHEMA)
    pred = openi_devset.gold_array({"CXR1": {"Cardiomegaly": 1, "Edema": 1},  # a false positive
                                    "CXR2": {"Cardiomegaly": 0, "Edema": -1},
                                    "CXR3": {}}, ids, SCHEMA)  # a miss
    s = openi_devset.devset_scores(gold, pred, SCHEMA)
    # Positives: tp 1 (CXR1 cardiomegaly), fp 1 (CXR1 edema), fn 1 (CXR3 pneumothorax).
    assert s["micro_precision"] == 0.5 and s["micro_recall"] == 0.5 and s["micro_f1"] == 0.5
    assert s["per_observation"]["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                                    "positive": 1, "negative": 1, "uncertain": 0}
    assert s["negation_accuracy"] == 0.5 and s["negation_count"] == 2  # CXR2 cm kept, CXR1 edema lost
    assert s["uncertain_accuracy"] == 1.0 and s["uncertain_count"] == 1
    assert s["no_finding_accuracy"] == pytest.approx(2 / 3)  # CXR3: gold blank, labeler 1
    with pytest.raises(ValueError, match="differ in shape"):
        openi_devset.devset_scores(gold, pred[:2], SCHEMA)


@pytest.mark.parametrize("labels, message", [
    ({"CXR1": {"Gout": 1}}, "record 'CXR1': field 'Gout' is not one of"),
    ({"CXR1": {"No Finding": 1}}, "No Finding follows from the others"),
    ({"CXR1": {"Edema": 2}}, "record 'CXR1': field 'Edema': 2 is not 1, 0 or -1"),
    ({"CXR1": {"Edema": True}}, "field 'Edema': True is not"),
    ({"report 1": {}}, "record 'report 1': expected an Open-I uId"),
])
def test_load_devset_rejects_bad_records(tmp_path, labels, message):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"labels": labels}))
    with pytest.raises(ValueError, match=message) as err:
        openi_devset.load_devset(str(path), SCHEMA)
    assert str(path) in str(err.value)


CAROTID = get_schema("carotid")
CAROTID_SET = os.path.join(os.path.dirname(__file__), "carotid_handlabeled.json")
BANDS = [o for o in CAROTID.observations if "Stenosis" in o or "Occlusion" in o]


@pytest.mark.parametrize("held_out", [False, True])
def test_carotid_labeler_on_hand_written_reports(held_out):
    reports = openi_devset.load_handwritten(CAROTID_SET, CAROTID)
    ids = [k for k, (_, _, h) in reports.items() if h == held_out]
    assert len(ids) >= (20 if held_out else 60)
    gold = openi_devset.gold_array({k: reports[k][1] for k in ids}, ids, CAROTID)
    predicted = labeler.label_array([reports[k][0] for k in ids], CAROTID)
    scores = openi_devset.devset_scores(gold, predicted, CAROTID, columns=BANDS)
    # Issue 15's goal, micro-F1 >= 0.90 over the per-side bands (measured: set 1.000, held-out 0.966).
    assert scores["micro_f1"] >= 0.90, scores["per_observation"]


def test_load_handwritten_rejects_bad_records(tmp_path):
    path = tmp_path / "car.json"
    path.write_text(json.dumps({"reports": {"c1": {"text": "x", "labels": {"Right Gout": 1}}}}))
    with pytest.raises(ValueError, match="record 'c1': field 'Right Gout' is not an observation of carotid"):
        openi_devset.load_handwritten(str(path), CAROTID)
    path.write_text(json.dumps({"reports": {"c1": {"labels": {}}}}))
    with pytest.raises(ValueError, match="record 'c1': expected"):
        openi_devset.load_handwritten(str(path), CAROTID)


def test_mesh_terms_need_their_qualifier():
    assert openi_devset.mesh_present(("Cicatrix/lung/base/left",), "Lung Opacity")
    assert not openi_devset.mesh_present(("Cicatrix/pleura/apex",), "Lung Opacity")
    assert openi_devset.mesh_present(("Cicatrix/pleura/apex",), "Pleural Other")
    assert openi_devset.mesh_present(("Calcified Granuloma/lung/upper lobe/right",), "Lung Lesion")
    assert not openi_devset.mesh_present(("Cardiac Shadow/normal",), "Cardiomegaly")


def test_read_reports_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        openi_devset.read_reports(str(tmp_path / "missing.tgz"))
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not an Open-I report archive"):
        openi_devset.read_reports(str(bad))


@pytest.fixture(scope="module")
def real_text():
    path = openi_devset.find_reports()
    if path is None or not os.path.isfile(path):
        pytest.skip(f"Open-I reports not found: set ${openi_devset.REPORTS_ENV} to NLMCXR_reports.tgz or the "
                    f"torchxrayvision 1.5.7 wheel, or put the .tgz at {openi_devset.REPORTS_PATH} "
                    "(pip download --no-deps torchxrayvision==1.5.7; unzip)")
    return openi_devset.read_reports(path)


@pytest.mark.parametrize("fixture", [FIXTURE, HELDOUT])
def test_labeler_on_the_real_dev_set(real_text, fixture):
    labels = openi_devset.load_devset(fixture, SCHEMA)
    assert set(labels) <= set(real_text)
    ids = sorted(labels)
    gold = openi_devset.gold_array(labels, ids, SCHEMA)
    predicted = labeler.label_array([real_text[i].report for i in ids], SCHEMA)
    scores = openi_devset.devset_scores(gold, predicted, SCHEMA)
    assert scores["reports"] == len(ids)
    # The goals of issue 15. Measured: dev set micro-F1 0.987, negation 0.992, uncertain 0.949;
    # held-out 0.970, 0.996, 0.909 (only 11 uncertain labels there).
    assert scores["micro_f1"] >= 0.90, scores["per_observation"]
    assert scores["negation_accuracy"] >= 0.95 and scores["uncertain_accuracy"] >= 0.75, scores


# Floors ~3 points under what was measured (tools/labeler_devset.py): a regression guard on all
# indexed reports. MeSH tags what is present and never what is absent, so precision is low where
# radiologists hedge (Pneumonia) or mention findings the indexers skip (No Finding vs "normal").
_MESH_F1_FLOORS = {"Cardiomegaly": 0.95, "Lung Lesion": 0.86, "Lung Opacity": 0.89, "Edema": 0.80,
                   "Consolidation": 0.85, "Atelectasis": 0.88, "Pneumothorax": 0.87, "Pleural Effusion": 0.81,
                   "Pleural Other": 0.75, "Fracture": 0.78, "Support Devices": 0.82}


def test_mesh_agreement_on_all_reports(real_text):
    indexed = [r for r in real_text.values() if not any(t.startswith("No Indexing") for t in r.mesh)]
    assert len(indexed) > 3500
    predicted = labeler.label_array([r.report for r in indexed], SCHEMA)
    agreement = openi_devset.mesh_agreement(indexed, predicted, SCHEMA)
    low = {o: round(agreement[o]["f1"], 3) for o, floor in _MESH_F1_FLOORS.items() if agreement[o]["f1"] < floor}
    assert not low, low
