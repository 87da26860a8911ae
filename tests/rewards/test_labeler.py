"""Rule labeler: hand-labeled sentences (many paraphrased from real Open-I reports), spans, the No
Finding rule, sections, carotid sides and bands, synthetic ground truth, and Open-I MeSH agreement."""

import io
import os
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest

from radflow_jax.data.sections import parse_sections
from radflow_jax.data.synthetic import generate_case
from radflow_jax.rewards.labeler import Labels, label_array, label_report, label_text
from radflow_jax.schema import LABEL_BLANK, get_schema

CXR, CAROTID = get_schema("cxr"), get_schema("carotid")


def _check(text: str, expected: dict, schema=CXR) -> Labels:
    labels = label_text(text, schema)
    got = {k: labels.values[k] for k in expected}
    assert got == expected, f"{text!r}: got {got}, expected {expected}; mentions {labels.mentions}"
    return labels


# ------------------------------------------------------------------------------ chest X-ray cases

@pytest.mark.parametrize("text,expected", [
    ("No effusion; small pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 1}),
    ("There is no evidence of pneumothorax or effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0}),
    ("No pneumothorax, but there is a small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No pleural effusion. Large right pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 1}),
    ("Specifically, no evidence of focal consolidation, pneumothorax, or pleural effusion.",
     {"Consolidation": 0, "Pneumothorax": 0, "Pleural Effusion": 0}),
    ("No definite pneumothorax, possible small effusion.", {"Pneumothorax": 0, "Pleural Effusion": -1}),
    ("The lungs are free of focal airspace disease.", {"Lung Opacity": 0}),
    ("No focal air space opacity to suggest pneumonia.", {"Lung Opacity": 0, "Pneumonia": 0}),
    ("Lungs are clear without evidence of infiltrate.", {"Lung Opacity": 0}),
])
def test_negation_scope(text, expected):
    _check(text, expected)


@pytest.mark.parametrize("text,expected", [
    ("Pneumothorax is not seen.", {"Pneumothorax": 0}),
    ("A pneumothorax is no longer visualized.", {"Pneumothorax": 0}),
    ("The left pleural effusion has resolved.", {"Pleural Effusion": 0}),
    ("Pleural effusions are absent.", {"Pleural Effusion": 0}),
    ("Pneumothorax is ruled out.", {"Pneumothorax": 0}),
    ("The endotracheal tube has been removed.", {"Support Devices": 0}),
    ("Interval removal of the left chest tube.", {"Support Devices": 0}),
])
def test_post_negation(text, expected):
    _check(text, expected)


@pytest.mark.parametrize("text", [
    "Possible left pleural effusion.", "Probable small left effusion.", "Likely small left pleural effusion.",
    "Questionable trace left pleural effusion.", "Basilar haziness may represent a small effusion.",
    "Findings are suggestive of a small left effusion.", "Opacity concerning for a loculated effusion.",
    "A small effusion cannot be excluded.", "Cannot exclude a small right pleural effusion.",
    "A small effusion is not excluded.", "Small effusion versus pleural thickening.",
    "Small left effusion is also possible.", "Blunting of the left costophrenic angle.",
    "Findings suspicious for a left pleural effusion.", "Small left pleural effusion, if present.",
])
def test_each_uncertainty_cue(text):
    _check(text, {"Pleural Effusion": -1})


@pytest.mark.parametrize("text,expected", [
    ("No change in the small left pleural effusion.", {"Pleural Effusion": 1}),
    ("No interval change in the moderate cardiomegaly.", {"Cardiomegaly": 1}),
    ("Consolidation in the right base, not seen previously.", {"Consolidation": 1}),
    ("There is not only an effusion but also a pneumothorax.", {"Pleural Effusion": 1, "Pneumothorax": 1}),
])
def test_pseudo_negation(text, expected):
    _check(text, expected)


@pytest.mark.parametrize("text,expected", [
    ("Small right-sided pleural effusion.", {"Pleural Effusion": 1}),
    ("Left lower lobe consolidation.", {"Consolidation": 1}),
    ("Right apical pneumothorax.", {"Pneumothorax": 1}),
    ("Bilateral pleural effusions, left greater than right.", {"Pleural Effusion": 1}),
    ("No left pneumothorax.", {"Pneumothorax": 0}),
    ("No right or left pleural effusion.", {"Pleural Effusion": 0}),
    ("Right upper lobe atelectasis and left base opacity.", {"Atelectasis": 1, "Lung Opacity": 1}),
])
def test_laterality_words_do_not_break_mentions(text, expected):
    _check(text, expected)


@pytest.mark.parametrize("text,expected", [  # paraphrases of Open-I sentences
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": 0}),
    ("Borderline heart size.", {"Cardiomegaly": -1}),
    ("Stable enlarged cardiac silhouette.", {"Cardiomegaly": 1}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": 1}),
    ("Heart size and mediastinal contours are normal.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    ("The cardiomediastinal silhouette is within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    ("There is no mediastinal widening.", {"Enlarged Cardiomediastinum": 0}),
    ("Left basilar opacity may represent atelectasis or infection.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Atelectasis versus pneumonia in the left base.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("No pleural effusions or pneumothoraces.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    ("Residuals of prior granulomatous infection.", {"Pneumonia": None}),
    ("Calcified granuloma in the right upper lobe.", {"Lung Lesion": None, "Lung Opacity": None}),
    ("Nodular opacity in the left upper lobe.", {"Lung Lesion": 1, "Lung Opacity": None}),
    ("No nodules or masses.", {"Lung Lesion": 0}),
    ("Mild central pulmonary vascular congestion.", {"Edema": 1}),
    ("Mild pulmonary edema with Kerley B lines.", {"Edema": 1, "Support Devices": None}),
    ("No acute bony abnormality.", {"Fracture": 0}),
    ("Visualized osseous structures are intact.", {"Fracture": 0}),
    ("Old healed right rib fractures.", {"Fracture": 1}),
    ("If there is concern for fracture, consider rib series.", {"Fracture": -1}),
    ("Right chest port with tip in the lower SVC.", {"Support Devices": 1}),
    ("Left chest wall pacemaker with leads in the right atrium and ventricle.", {"Support Devices": 1}),
    ("Sternotomy wires are intact.", {"Support Devices": None}),
    ("Right apical pleural thickening.", {"Pleural Other": 1}),
    ("Small medial pleural air collection.", {"Pneumothorax": 1}),
])
def test_real_report_phrasings(text, expected):
    _check(text, expected)


@pytest.mark.parametrize("text,expected", [
    ("No acute cardiopulmonary abnormality.", 1),
    ("Lungs are clear. Endotracheal tube in place.", 1),  # Support Devices do not count
    ("Mild cardiomegaly. No acute cardiopulmonary abnormality.", None),
    ("Possible small left effusion.", None),  # uncertain blocks No Finding too
    ("No pneumothorax.", 1),
    ("Clinical history: cough.", None),  # nothing mentioned at all
    ("", None),
])
def test_no_finding_rule(text, expected):
    assert label_text(text, CXR).values["No Finding"] == expected


def test_mention_spans_cover_the_right_characters():
    text = "Heart size is normal.  Small left pleural effusion; no pneumothorax."
    labels = label_text(text, CXR)
    by_obs = {m.observation: m for m in labels.mentions}
    effusion, ptx, heart = by_obs["Pleural Effusion"], by_obs["Pneumothorax"], by_obs["Cardiomegaly"]
    assert text[effusion.start:effusion.end] == "effusion" and effusion.value == 1
    assert text[effusion.sentence_start:effusion.sentence_end] == "Small left pleural effusion; no pneumothorax."
    assert text[ptx.start:ptx.end] == "pneumothorax" and ptx.value == 0
    assert text[heart.start:heart.end] == "Heart size is normal" and heart.value == 0
    assert text[heart.sentence_start:heart.sentence_end] == "Heart size is normal."
    assert [m.start for m in labels.mentions] == sorted(m.start for m in labels.mentions)


def test_decimals_and_abbreviations_do_not_split_sentences():
    labels = _check("ETT tip 4.5 cm above the carina. Atelectasis vs. pneumonia.",
                    {"Support Devices": 1, "Atelectasis": -1, "Pneumonia": -1})
    sentences = {(m.sentence_start, m.sentence_end) for m in labels.mentions}
    assert len(sentences) == 2


def test_section_level_labels():
    report = ("INDICATION: Rule out pneumonia.\nFINDINGS: Heart size is normal. Small left pleural effusion.\n"
              "IMPRESSION: Small left effusion. Possible early pneumonia.")
    parts = label_report(report, CXR)
    assert set(parts) == {"report", "findings", "impression"}
    f, i, r = parts["findings"].values, parts["impression"].values, parts["report"].values
    assert (f["Cardiomegaly"], f["Pleural Effusion"], f["Pneumonia"]) == (0, 1, None)
    assert (i["Cardiomegaly"], i["Pleural Effusion"], i["Pneumonia"]) == (None, 1, -1)
    assert (r["Cardiomegaly"], r["Pleural Effusion"], r["Pneumonia"]) == (0, 1, -1)  # indication ignored
    assert r["No Finding"] is None
    joined = "Heart size is normal. Small left pleural effusion. Small left effusion. Possible early pneumonia."
    for m in parts["report"].mentions:  # report spans index findings + " " + impression
        assert joined[m.start:m.end] and m.sentence_start <= m.start < m.end <= m.sentence_end
    assert [joined[m.start:m.end] for m in parts["report"].mentions if m.observation == "Pneumonia"] == ["pneumonia"]
    plain = label_report("Small left pleural effusion.", CXR)  # no headers: all Findings
    assert plain["findings"].values["Pleural Effusion"] == 1 and plain["impression"].mentions == ()


def test_label_array_encodes_blank_and_order():
    arr = label_array(["No effusion; small pneumothorax.", "", "Possible pneumonia."], CXR)
    assert arr.dtype == np.int8 and arr.shape == (3, len(CXR.observations))
    row = dict(zip(CXR.observations, arr[0].tolist()))
    assert row["Pleural Effusion"] == 0 and row["Pneumothorax"] == 1 and row["Cardiomegaly"] == LABEL_BLANK
    assert (arr[1] == LABEL_BLANK).all()
    assert arr[2, CXR.index("Pneumonia")] == -1 and arr[2, CXR.index("No Finding")] == LABEL_BLANK


# ------------------------------------------------------------------------------ carotid cases

def test_carotid_side_carries_over_until_the_other_side_is_named():
    text = ("RIGHT: Heterogeneous plaque in the bulb. Intima-media thickness 1.3 mm. Velocities are "
            "consistent with 50-69 % stenosis. LEFT: No plaque or stenosis. IMT 0.7 mm.")
    values = _check(text, {"Right Plaque": 1, "Right Stenosis 50-69%": 1, "Right Intima-Media Thickening": 1,
                           "Right Stenosis >=70%": None, "Left Plaque": 0, "Left Intima-Media Thickening": 0,
                           "Left Stenosis 50-69%": 0, "Left Occlusion": 0}, CAROTID).values
    assert values["No Finding"] is None


@pytest.mark.parametrize("text,expected", [
    (">= 70% stenosis of the left ICA.", {"Left Stenosis >=70%": 1, "Right Stenosis >=70%": None}),
    ("Severe right ICA stenosis.", {"Right Stenosis >=70%": 1}),
    ("70 % or greater stenosis of the right internal carotid artery.", {"Right Stenosis >=70%": 1}),
    ("Moderate left ICA stenosis.", {"Left Stenosis 50-69%": 1}),
    ("Mild right ICA stenosis.", {"Right Stenosis <50%": 1}),
    ("Less than 50 % stenosis of the right ICA.", {"Right Stenosis <50%": 1}),
    ("Left ICA near-occlusion with a string sign.", {"Left Near Occlusion": 1, "Left Occlusion": None}),
    ("The right ICA is occluded.", {"Right Occlusion": 1}),
    ("No flow is detected in the left ICA.", {"Left Occlusion": 1}),
    ("No definite flow in the left ICA, likely occlusion.", {"Left Occlusion": -1}),
    ("Likely 70 % or greater stenosis of the left ICA.", {"Left Stenosis >=70%": -1}),
    ("Markedly narrowed right ICA; near-occlusion cannot be excluded.", {"Right Near Occlusion": -1}),
    ("No flow-limiting stenosis on the right.",
     {"Right Stenosis <50%": None, "Right Stenosis 50-69%": 0, "Right Occlusion": 0, "Right Plaque": None}),
    ("No hemodynamically significant carotid stenosis bilaterally.",
     {"Right Stenosis 50-69%": 0, "Left Stenosis >=70%": 0, "Left Stenosis <50%": None}),
    ("Bilateral 50-69 % stenosis of the internal carotid arteries.",
     {"Right Stenosis 50-69%": 1, "Left Stenosis 50-69%": 1}),
    ("Right IMT 1.2 mm, borderline.", {"Right Intima-Media Thickening": -1}),
    ("Left CCA intima-media thickness 1.1 mm, possibly mildly thickened.", {"Left Intima-Media Thickening": -1}),
    ("Normal right intima-media thickness (0.8 mm).", {"Right Intima-Media Thickening": 0}),
    ("Normal bilateral carotid duplex ultrasound.", {"No Finding": 1}),
    ("Small plaque in the bulb.", {"Right Plaque": None, "Left Plaque": None}),  # side unknown: dropped
    ("80-99 % stenosis of the right ICA.", {"Right Stenosis >=70%": 1}),
    # a decoded out-of-vocabulary word ("approaching") ends in ">" but states no band
    ("Right ICA <unk> 70 % stenosis.", {"Right Stenosis >=70%": None}),
])
def test_carotid_bands_and_sides(text, expected):
    _check(text, expected, CAROTID)


def test_carotid_section_header_resets_the_side():
    values = label_report("FINDINGS: RIGHT: Plaque in the bulb.\nIMPRESSION: Plaque.", CAROTID)["impression"].values
    assert values["Right Plaque"] is None and values["Left Plaque"] is None


# ------------------------------------------------------------------------------ synthetic ground truth

def _aggregate(values):
    rank = {1: 3, -1: 2, 0: 1}
    out = {}
    for obs, v in values:
        if obs not in out or rank[v] > rank[out[obs]]:
            out[obs] = v
    return out


@pytest.mark.parametrize("modality", ["cxr", "carotid"])
def test_reproduces_synthetic_ground_truth(modality):
    schema = get_schema(modality)
    cases = [generate_case(modality, 0, i, 32) for i in range(300)]
    sentence_failures, n_sentences = [], 0
    truth, pred = [], []
    for case in cases:
        parts = label_report(case.report, schema)
        cursor = {"findings": 0, "impression": 0}
        sections = parse_sections(case.report, fallback="findings")
        for m in case.mentions:  # each sentence against what it states, labeled in its report context
            section, source = parts[m.section], getattr(sections, m.section)
            a = source.index(m.sentence, cursor[m.section])
            cursor[m.section] = b = a + len(m.sentence)
            got = _aggregate((x.observation, x.value) for x in section.mentions
                             if a <= x.start < b and x.observation != "No Finding")
            want = {k: v for k, v in m.observations.items() if k != "No Finding"}
            n_sentences += 1
            if got != want:
                sentence_failures.append(f"{m.sentence!r}: got {got}, expected {want}")
        values = parts["report"].values
        pred.append([0 if values[o] is None else values[o] for o in schema.observations])
        truth.append([case.labels[o] for o in schema.observations])
    truth, pred = np.array(truth), np.array(pred)
    print(f"\n{modality}: {len(cases)} cases; sentences agreeing {1 - len(sentence_failures) / n_sentences:.4f}")
    print(f"{'observation':32s} {'n_pos':>5s} {'F1(pos)':>8s} {'acc':>6s}")
    low = []
    for k, obs in enumerate(schema.observations):
        t, p = truth[:, k] == 1, pred[:, k] == 1
        f1 = 2 * (t & p).sum() / max(t.sum() + p.sum(), 1)
        acc = (truth[:, k] == pred[:, k]).mean()
        print(f"{obs:32s} {t.sum():5d} {f1 if t.any() else float('nan'):8.3f} {acc:6.3f}")
        if acc < 0.97 or (t.sum() >= 5 and f1 < 0.97):
            low.append(obs)
    detail = "\n".join(sentence_failures[:20])
    assert not low, f"low agreement for {low}; failing sentences:\n{detail}"
    # The CXR generator also tags "Pneumonia in <zone>." with Consolidation, which is not stated.
    assert len(sentence_failures) / n_sentences <= 0.01, detail


def test_batch_of_1024_reports_is_fast():
    texts = [generate_case("cxr", 1, i, 32).report for i in range(1024)]
    start = time.perf_counter()
    arr = label_array(texts, CXR)
    seconds = time.perf_counter() - start
    print(f"\nlabel_array: 1,024 CXR reports in {seconds:.2f}s")
    assert arr.shape == (1024, 14) and (arr != LABEL_BLANK).any()
    assert seconds < 10.0


# ------------------------------------------------------------------------------ Open-I (real reports)

_OPENI_WHEEL = "torchxrayvision==1.5.7"
_MESH = {  # Open-I MeSH major headings per CheXpert observation (Pleural Other has no clean heading)
    "No Finding": {"normal"},
    "Cardiomegaly": {"Cardiomegaly"},
    "Lung Opacity": {"Opacity", "Airspace Disease", "Infiltrate", "Density"},
    "Lung Lesion": {"Nodule", "Mass", "ROUND"},  # MeSH codes a nodular opacity as Opacity/.../round
    "Edema": {"Pulmonary Edema", "Pulmonary Congestion"},  # the labeler counts congestion as Edema
    "Consolidation": {"Consolidation"},
    "Pneumonia": {"Pneumonia"},
    "Atelectasis": {"Pulmonary Atelectasis"},
    "Pneumothorax": {"Pneumothorax", "Hydropneumothorax"},
    "Pleural Effusion": {"Pleural Effusion", "Hydropneumothorax"},
    "Fracture": {"Fractures, Bone"},
    "Support Devices": {"Catheters, Indwelling", "Implanted Medical Device", "Tube, Inserted", "Stents"},
}
_NOT_SUPPORT = {"aortic valve", "mitral valve", "humerus", "shoulder", "cervical vertebrae", "thoracic vertebrae",
                "abdomen", "pulmonary artery"}  # implants that are no support device
# F1 floors (positive = label 1, uncertain counted as negative, the CE convention of DESIGN §4),
# 3-5 points under what was measured (see the printed table and the labeler's closing note).
_FLOORS = {"No Finding": 0.64, "Cardiomegaly": 0.88, "Lung Opacity": 0.90, "Lung Lesion": 0.87, "Edema": 0.83,
           "Consolidation": 0.85, "Pneumonia": 0.80, "Atelectasis": 0.90, "Pneumothorax": 0.85,
           "Pleural Effusion": 0.89, "Fracture": 0.85, "Support Devices": 0.87}


def _openi_archive() -> str:
    cache = os.path.join(os.path.expanduser("~"), ".cache", "radflow_jax", "openi")
    target = os.path.join(cache, "NLMCXR_reports.tgz")
    if os.path.exists(target):
        return target
    os.makedirs(cache, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "1", "--timeout", "20",
                        _OPENI_WHEEL, "-d", cache],
                       check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"Open-I reports unavailable: `pip download {_OPENI_WHEEL}` failed (offline?): {e}")
    wheel = next(os.path.join(cache, f) for f in os.listdir(cache) if f.endswith(".whl"))
    with zipfile.ZipFile(wheel) as z, open(target + ".part", "wb") as out:
        out.write(z.read("torchxrayvision/data/NLMCXR_reports.tgz"))
    os.replace(target + ".part", target)
    os.remove(wheel)
    return target


def _openi_reports(archive: str):
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml"):
                continue
            root = ET.parse(io.BytesIO(tar.extractfile(member).read())).getroot()
            text = {a.get("Label"): a.text or "" for a in root.iter("AbstractText")}
            tags = set()
            for major in root.iter("major"):
                head, *qualifiers = (major.text or "").split("/")
                if head in ("Opacity", "Density", "Infiltrate") and "round" in qualifiers:
                    head = "ROUND"
                if head in ("Implanted Medical Device", "Stents") and _NOT_SUPPORT & set(qualifiers):
                    continue
                tags.add(head)
            body = f"{text.get('FINDINGS', '')} {text.get('IMPRESSION', '')}".strip()
            if body and tags and "No Indexing" not in tags:
                yield body, tags


def _f1(pairs) -> float:
    tp = sum(t and p for t, p in pairs)
    return 2 * tp / max(sum(t for t, _ in pairs) + sum(p for _, p in pairs), 1)


def test_open_i_mesh_agreement():
    reports = list(_openi_reports(_openi_archive()))
    assert len(reports) > 3500
    pairs = {obs: [] for obs in _MESH}  # (MeSH heading present, labeler value)
    for text, tags in reports:
        values = label_text(text, CXR).values
        for obs, headings in _MESH.items():
            pairs[obs].append((bool(tags & headings), values[obs]))
    print(f"\nOpen-I: {len(reports)} indexed reports (MeSH major headings)")
    print(f"{'observation':20s} {'MeSH+':>6s} {'lab=1':>6s} {'lab=-1':>6s} {'P(=1)':>6s} {'R(=1)':>6s} "
          f"{'F1(=1)':>6s} {'F1(1|-1)':>8s} {'acc(=1)':>7s}")
    low = []
    for obs, rows in pairs.items():
        strict = [(t, v == 1) for t, v in rows]
        tp = sum(t and p for t, p in strict)
        f1 = _f1(strict)
        print(f"{obs:20s} {sum(t for t, _ in rows):6d} {sum(v == 1 for _, v in rows):6d} "
              f"{sum(v == -1 for _, v in rows):6d} {tp / max(sum(p for _, p in strict), 1):6.3f} "
              f"{tp / max(sum(t for t, _ in strict), 1):6.3f} {f1:6.3f} "
              f"{_f1([(t, v in (1, -1)) for t, v in rows]):8.3f} {np.mean([t == p for t, p in strict]):7.3f}")
        if f1 < _FLOORS[obs]:
            low.append(f"{obs}: F1 {f1:.3f} < {_FLOORS[obs]}")
    assert not low, low
