"""Evaluation metrics: R2Gen normalisation, pycocoevalcap NLG scores, CE and critical scores."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
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
def test_r2gen_normalize_examples(raw, expected):
    assert metrics.r2gen_normalize(raw) == expected


def test_r2gen_normalize_is_idempotent():
    rng = np.random.default_rng(0)
    alphabet = list("aBz09 1.2.,;:!?\n\t-%'\"()<>=/") + ["  ", ". ", "1. ", "2) ", "é"]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(2000)]
    texts += [generate_case(m, 1, i, 32).report for m in ("cxr", "carotid") for i in range(10)]
    for text in texts:
        once = metrics.r2gen_normalize(text)
        assert metrics.r2gen_normalize(once) == once, text
        assert re.fullmatch(r"([a-z0-9.]+( [a-z0-9.]+)*)?", once), once
        assert once == "" or once.endswith(" .")


def test_length_stats_counts_words_not_points():
    assert metrics.length_stats(["a b c .", "one two"]) == {"mean_length": 2.5}
    with pytest.raises(ValueError):
        metrics.length_stats([])


# --------------------------------------------------------------------------- NLG


def test_nlg_scores_equal_pycocoevalcap_on_normalised_text(capsys):
    scores = metrics.nlg_scores(PREDICTIONS, REFERENCES, meteor=False)
    assert list(scores) == NLG_KEYS
    assert capsys.readouterr().out == ""  # Bleu's print is swallowed

    res = {k: [metrics.r2gen_normalize(v)] for k, v in PREDICTIONS.items()}
    gts = {k: [metrics.r2gen_normalize(v)] for k, v in REFERENCES.items()}
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
