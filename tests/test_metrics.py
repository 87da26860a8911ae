"""Evaluation metrics: normalisers (R2Gen's cleaners, ours, none), pycocoevalcap NLG scores, CE and critical scores."""

from __future__ import annotations

import contextlib
import io
import re
import shutil

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from radflow_jax import metrics
from radflow_jax.data.synthetic import generate_case
from radflow_jax.schema import get_schema

PREDICTIONS = {
    "a": "The heart is normal in size. No pleural effusion.",
    "b": "Small left pleural effusion.\nNo pneumothorax.",
    "c": "Mild cardiomegaly. Lungs are clear.",
    "d": "",
}
REFERENCES = {
    "a": "The heart is normal in size. There is no pleural effusion or pneumothorax.",
    "b": "Small left pleural effusion. No pneumothorax is seen.",
    "c": "The cardiac silhouette is enlarged. The lungs are clear.",
    "d": "No acute cardiopulmonary abnormality.",
}
NLG_KEYS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            "The heart is normal.\nNo effusion!  1.5 cm nodule.",
            "the heart is normal . no effusion . 1.5 cm nodule .",
        ),
        (
            "1. No pneumothorax. 2. Stable 50-69% stenosis; patient's ICA.",
            "no pneumothorax . stable 50 69 stenosis patients ica .",
        ),
        ("Heart size normal..  Lungs clear", "heart size normal . lungs clear ."),
        ("  .\t. \n", ""),
    ],
)
def test_radflow_normalize_examples(raw, expected):
    assert metrics.radflow_normalize(raw) == expected


def test_radflow_normalize_is_idempotent():
    rng = np.random.default_rng(0)
    alphabet = list("aBz09 1.2.,;:!?\n\t-%'\"()<>=/") + ["  ", ". ", "1. ", "2) ", "é"]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(2000)]
    texts += [generate_case(m, 1, i, 32).report for m in ("cxr", "carotid") for i in range(10)]
    for text in texts:
        once = metrics.radflow_normalize(text)
        assert metrics.radflow_normalize(once) == once, text
        assert re.fullmatch(r"([a-z0-9.]+( [a-z0-9.]+)*)?", once), once
        assert once == "" or once.endswith(" .")


# Expected outputs of R2Gen's own ``clean_report_iu_xray`` / ``clean_report_mimic_cxr``
# (cuhksz-nlp/R2Gen, modules/tokenizers.py, Chen et al., EMNLP 2020), obtained by running the
# original functions on these strings; the same check passed on 200k random strings and on all
# 15,820 FINDINGS/IMPRESSION texts of the Open-I reports. Strings: (text, IU output, MIMIC output).
R2GEN_CASES = [
    ("The heart is normal in size. B-lines are not seen. No pneumothorax..",
     "the heart is normal in size . b-lines are not seen . no pneumothorax .",
     "the heart is normal in size . b-lines are not seen . no pneumothorax ."),
    ("1. No acute cardiopulmonary process. 2. Stable 50-69% stenosis. 3. XXXX XXXX opacity.",
     "no acute cardiopulmonary process . stable 50-69 stenosis . xxxx xxxx opacity .",
     "no acute cardiopulmonary process . stable 50-69 stenosis . xxxx xxxx opacity ."),
    ("Heart size normal..  Lungs clear. 11. Item eleven, 1.5 cm nodule; (T-spine) degenerative changes!",
     "heart size normal . lungs clear . 1item eleven 15 cm nodule t-spine degenerative changes .",
     "heart size normal . lungs clear . 1item eleven 15 cm nodule t-spine degenerative changes ."),
    ("Calcified granuloma in the right upper lobe XXXX. There is a 1.2 cm XXXX-XXXX density? "
     "Pt's \"old\" film.",
     "calcified granuloma in the right upper lobe xxxx . there is a 12 cm xxxx-xxxx density pts old film .",
     "calcified granuloma in the right upper lobe xxxx . there is a 12 cm xxxx-xxxx density pts old film ."),
    ("FINDINGS:\nLungs are clear.  No effusion.\n\nIMPRESSION: Normal__ chest___ x-ray. ... ",
     "findings\nlungs are clear . no effusion\n\nimpression normal chest x-ray .  .",
     "findings lungs are clear . no effusion . impression normal chest x-ray .  ."),
    ("", " .", " ."),
    ("a. . b", "a .  . b .", "a .  . b ."),
    ("Post-sternotomy wires <unk> 4. intact [sic] {x} @ >= 70% & ^ * + _",
     "post-sternotomy wires unk . intact sic x   70      .",
     "post-sternotomy wires unk . intact sic x   70      ."),
]


@pytest.mark.parametrize("text, iu, mimic", R2GEN_CASES)
def test_r2gen_cleaners_equal_the_original(text, iu, mimic):
    assert metrics.clean_report_iu_xray(text) == iu
    assert metrics.clean_report_mimic_cxr(text) == mimic
    # What pycocoevalcap is handed: R2Gen's tokenizer splits on whitespace, its decoder joins.
    assert metrics.normalize_text(text, "r2gen_iu") == " ".join(iu.split())
    assert metrics.normalize_text(text, "r2gen_mimic") == " ".join(mimic.split())


def test_normalize_text_choices():
    text = "B-lines, 1.5 cm.  Clear"
    assert metrics.normalize_text(text, "none") == text
    assert metrics.normalize_text(text, "radflow") == "b lines 1.5 cm . clear ."
    assert metrics.normalize_text(text, "r2gen_iu") == "b-lines 15 cm . clear ."
    assert set(metrics.NORMALIZERS) == {"none", "r2gen_iu", "r2gen_mimic", "radflow"}
    with pytest.raises(ValueError, match="unknown normaliser 'ptb'"):
        metrics.normalize_text(text, "ptb")


def test_length_stats_counts_words_not_points():
    assert metrics.length_stats(["a b c .", "one two"]) == {"mean_length": 2.5}
    with pytest.raises(ValueError):
        metrics.length_stats([])


# --------------------------------------------------------------------------- NLG


def test_nlg_scores_equal_pycocoevalcap_on_normalised_text(capsys):
    scores = metrics.nlg_scores(PREDICTIONS, REFERENCES, meteor=False)
    assert list(scores) == NLG_KEYS
    assert capsys.readouterr().out == ""  # Bleu's print is swallowed

    res = {k: [metrics.radflow_normalize(v)] for k, v in PREDICTIONS.items()}
    gts = {k: [metrics.radflow_normalize(v)] for k, v in REFERENCES.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    expected = {f"Bleu_{i + 1}": b for i, b in enumerate(bleu)}
    expected["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    assert scores == pytest.approx(expected, abs=1e-12)
    assert 0 < scores["Bleu_4"] < scores["Bleu_1"] < 1

    # Formatting alone changes nothing: a reference scored against itself, re-punctuated.
    same = metrics.nlg_scores(
        {1: "THE LUNGS ARE CLEAR.\n\nNo effusion"},
        {1: "the lungs are clear . no effusion ."},
        meteor=False,
    )
    assert same["Bleu_4"] == pytest.approx(1.0) and same["ROUGE_L"] == pytest.approx(1.0)


def test_nlg_scores_with_meteor():
    """One JVM start (~10 s). The value was obtained from pycocoevalcap's Meteor on this input."""
    scores = metrics.nlg_scores(PREDICTIONS, REFERENCES, meteor=True)
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
    assert scores["METEOR"] == pytest.approx(0.3312578650933151, abs=1e-6)
    without = metrics.nlg_scores(PREDICTIONS, REFERENCES, meteor=False)
    assert {k: scores[k] for k in without} == without


# Already-cleaned strings with the spacing quirks a result file may have (double spaces, a
# leading space): "none" must hand them to pycocoevalcap untouched.
CLEANED_PRED = {"a": "the heart is normal . b-lines are not seen .", "b": " lungs  clear .",
                "c": "mild cardiomegaly . 1.5 cm nodule .", "d": "."}
CLEANED_REF = {"a": "the heart is normal in size . no b-lines .", "b": "the lungs are clear .",
               "c": "the cardiac silhouette is enlarged . 15 cm nodule .", "d": "no acute disease ."}


def _pycocoevalcap(res: dict, gts: dict, meteor: bool) -> dict:
    res, gts = {k: [v] for k, v in res.items()}, {k: [v] for k, v in gts.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    out = {f"Bleu_{i + 1}": b for i, b in enumerate(bleu)}
    if meteor:
        out["METEOR"] = Meteor().compute_score(gts, res)[0]
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


def test_normalize_none_equals_pycocoevalcap_directly():
    scores = metrics.nlg_scores(CLEANED_PRED, CLEANED_REF, meteor=False, normalize="none")
    assert scores == pytest.approx(_pycocoevalcap(CLEANED_PRED, CLEANED_REF, False), abs=1e-12, rel=0)
    # The other normalisers really change these strings' scores (so the equality above means something).
    radflow = metrics.nlg_scores(CLEANED_PRED, CLEANED_REF, meteor=False)
    assert radflow["ROUGE_L"] != pytest.approx(scores["ROUGE_L"], abs=1e-6)


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's METEOR needs Java")
def test_normalize_none_equals_pycocoevalcap_meteor():
    """Two JVM starts (~20 s)."""
    scores = metrics.nlg_scores(CLEANED_PRED, CLEANED_REF, meteor=True, normalize="none")
    assert scores["METEOR"] == pytest.approx(
        _pycocoevalcap(CLEANED_PRED, CLEANED_REF, True)["METEOR"], abs=1e-12, rel=0)


def test_normalize_none_refuses_line_breaks_for_meteor():
    with pytest.raises(ValueError, match="prediction 'x' contains a line break"):
        metrics.nlg_scores({"x": "a\nb"}, {"x": "a b"}, meteor=True, normalize="none")
    with pytest.raises(ValueError, match="unknown normaliser"):
        metrics.nlg_scores({"x": "a"}, {"x": "a"}, meteor=False, normalize="R2Gen")


def test_nlg_scores_reject_mismatched_ids():
    with pytest.raises(ValueError, match="same ids"):
        metrics.nlg_scores({"a": "x"}, {"b": "x"}, meteor=False)
    with pytest.raises(TypeError, match="must be a str"):
        metrics.nlg_scores({"a": ["x"]}, {"a": "x"}, meteor=False)


# --------------------------------------------------------------------------- clinical efficacy

OBS = ["A", "B", "C"]
# Positives: ref rows {A,C}, {A,B}, {}, {} (the -1 is uncertain, so negative);
#            pred rows {A,B}, {B,C}, {}, {A}.
REF = np.array([[1, 0, 1], [1, 1, -1], [0, -2, 0], [-1, 0, 0]])
PRED = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, -1, -2]])


def test_ce_scores_hand_computed():
    # A: tp 1 fp 1 fn 1 -> P .5 R .5 F1 .5;  B: tp 1 fp 1 fn 0 -> F1 2/3;  C: tp 0 fp 1 fn 1 -> 0.
    out = metrics.ce_scores(PRED, REF, OBS, common5=["A", "B"])
    assert out["ce14_micro_precision"] == pytest.approx(2 / 5)
    assert out["ce14_micro_recall"] == pytest.approx(2 / 4)
    assert out["ce14_micro_f1"] == pytest.approx(4 / 9)
    assert out["ce14_macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert out["ce5_micro_f1"] == pytest.approx(4 / 7)  # A+B: tp 2 fp 2 fn 1
    assert out["ce5_macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    # Per report: 2·1/4, 2·1/4, empty vs empty = 1, {A} vs {} = 0.
    assert out["ce_example_f1"] == pytest.approx(0.5)
    assert out["per_observation"]["B"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    assert out["per_observation"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_ce_scores_no_positives_anywhere():
    zeros = np.zeros((3, 3), int)
    out = metrics.ce_scores(zeros, np.full((3, 3), -1), OBS, common5=None, prefix="gt_")
    assert set(out) == {
        "gt_ce14_micro_precision",
        "gt_ce14_micro_recall",
        "gt_ce14_micro_f1",
        "gt_ce14_macro_f1",
        "gt_ce_example_f1",
        "gt_per_observation",
    }
    assert out["gt_ce14_micro_f1"] == 0.0 and out["gt_ce14_macro_f1"] == 0.0
    assert out["gt_ce_example_f1"] == 1.0  # nothing positive on either side: agreement


def test_ce_scores_on_schemas():
    rng = np.random.default_rng(0)
    cxr = get_schema("cxr").observations
    labels = rng.choice([1, 0, -1, -2], (20, len(cxr)))
    perfect = metrics.ce_scores(labels, labels, cxr, common5=metrics.CHEXPERT_COMMON5)
    assert perfect["ce14_micro_f1"] == 1.0 and perfect["ce5_macro_f1"] == 1.0
    carotid = get_schema("carotid").observations
    pred, ref = rng.choice([1, 0], (2, 8, len(carotid)))
    out = metrics.ce_scores(pred, ref, carotid, common5=None)
    assert "ce5_micro_f1" not in out and len(out["per_observation"]) == len(carotid)
    with pytest.raises(ValueError, match="columns"):
        metrics.ce_scores(labels[:, :3], labels[:, :3], cxr, common5=None)
    with pytest.raises(ValueError, match="not in"):
        metrics.ce_scores(labels, labels, cxr, common5=["Cardiomegaly", "Gout"])


def test_critical_scores_hand_computed():
    # Critical = C: ref-critical row 0 (missed), others rows 1-3 (row 1 falsely critical).
    assert metrics.critical_scores(PRED, REF, [2]) == pytest.approx(
        {"critical_sensitivity": 0.0, "critical_specificity": 2 / 3}
    )
    # Critical = B or C: ref-critical rows 0, 1 (both caught); rows 2, 3 correctly not.
    assert metrics.critical_scores(PRED, REF, [1, 2], prefix="gt_") == {
        "gt_critical_sensitivity": 1.0,
        "gt_critical_specificity": 1.0,
    }


def test_critical_scores_undefined_is_none():
    none_critical = metrics.critical_scores(PRED, np.zeros_like(REF), [2])  # only row 1 flagged
    assert none_critical == {"critical_sensitivity": None, "critical_specificity": 0.75}
    all_critical = metrics.critical_scores(PRED, np.ones_like(REF), [0])  # rows 0 and 3 caught
    assert all_critical == {"critical_sensitivity": 0.5, "critical_specificity": None}
    with pytest.raises(ValueError, match="out of range"):
        metrics.critical_scores(PRED, REF, [3])
