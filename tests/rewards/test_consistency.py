"""Findings ↔ Impression consistency: hand-computed scores, clinical cases with the real labeler,
planted edits, and the consistency rate of real (synthetic) reports against shuffled ones."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from radflow_jax.data.sections import parse_sections
from radflow_jax.data.synthetic import generate_case
from radflow_jax.rewards.consistency import (
    consistency_breakdown,
    consistency_rate,
    consistency_rules,
    consistency_score,
)
from radflow_jax.rewards.labeler import label_array
from radflow_jax.schema import LABEL_BLANK, get_schema

CXR = get_schema("cxr")
RULES = consistency_rules(CXR)
B = LABEL_BLANK


def _row(**values: int) -> np.ndarray:
    """One CXR label row, blank except the given observations (underscores for spaces)."""
    row = np.full(len(CXR.observations), B, np.int8)
    for name, value in values.items():
        row[CXR.index(name.replace("_", " "))] = value
    return row


def _pair(findings: str, impression: str, schema=CXR) -> tuple[np.ndarray, np.ndarray]:
    return label_array([findings], schema), label_array([impression], schema)


def _check(findings: str, impression: str, schema=CXR, **expected) -> dict:
    rules = consistency_rules(schema)
    out = {k: np.asarray(v)[0] for k, v in consistency_breakdown(*_pair(findings, impression, schema), rules).items()}
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), (key, out, findings, impression)
    return out


# ------------------------------------------------------------------------------- hand-made arrays

HAND_CASES = [
    # (findings, impression, contradictions, unsupported, omitted_critical, uncertain, score)
    (_row(Cardiomegaly=1, Pleural_Effusion=0), _row(Cardiomegaly=1), 0, 0, 0, 0, 1.0),
    (_row(Pleural_Effusion=0), _row(Pleural_Effusion=1), 1, 0, 0, 0, 1 / 2),  # contradiction
    (_row(Pleural_Effusion=1), _row(Pleural_Effusion=0), 1, 0, 0, 0, 1 / 2),  # the reverse
    (_row(Cardiomegaly=0), _row(Edema=1), 0, 1, 0, 0, 1 / 2),  # unsupported
    (_row(Pneumothorax=1), _row(Cardiomegaly=1), 0, 1, 1, 0, 1 / (1 + 1 + 2)),  # omitted critical
    (_row(Pneumothorax=0), _row(Pneumothorax=1), 1, 0, 0, 0, 1 / 3),  # critical contradiction: x2
    (_row(Edema=1), _row(Edema=-1), 0, 0, 0, 1, 1 / 1.5),  # hedging a definite finding: soft
    (_row(Edema=-1), _row(Edema=1), 0, 0, 0, 1, 1 / 1.5),  # asserting a hedged finding: soft
    (_row(Edema=-1), _row(Edema=0), 0, 0, 0, 1, 1 / 1.5),
    (_row(Pneumothorax=-1), _row(No_Finding=1), 0, 0, 0, 1, 1 / 2),  # uncertain critical left out
    (_row(Consolidation=1), _row(Pneumonia=1, Lung_Opacity=1), 0, 0, 0, 0, 1.0),  # supported
    (_row(Support_Devices=1, Cardiomegaly=0), _row(No_Finding=1), 0, 0, 0, 0, 1.0),
    (_row(Cardiomegaly=0), _row(Support_Devices=1), 0, 0, 0, 0, 1.0),  # devices exempt
    (_row(Support_Devices=1), _row(Support_Devices=0), 1, 0, 0, 0, 1 / 2),  # but not contradicted
    (_row(Lung_Lesion=1), _row(No_Finding=1), 0, 0, 0, 1, 1 / 1.5),  # normal over a positive: soft
    (_row(), _row(), 0, 0, 0, 0, 1.0),
]


def test_hand_made_cases_give_exact_counts_and_scores():
    f = np.stack([c[0] for c in HAND_CASES])
    i = np.stack([c[1] for c in HAND_CASES])
    out = {k: np.asarray(v) for k, v in consistency_breakdown(f, i, RULES).items()}
    for n, (*_, con, uns, omi, unc, score) in enumerate(HAND_CASES):
        got = (out["contradictions"][n], out["unsupported"][n], out["omitted_critical"][n],
               out["uncertain_mismatch"][n])
        assert got == (con, uns, omi, unc), (n, got)
        assert out["score"][n] == pytest.approx(score, abs=1e-6), n
        assert out["consistent"][n] == (con + uns + omi == 0), n
    assert np.all((out["score"] > 0) & (out["score"] <= 1))


def test_jit_batch_shapes_and_errors():
    f = np.stack([c[0] for c in HAND_CASES])
    i = np.stack([c[1] for c in HAND_CASES])
    eager = consistency_score(f, i, RULES)
    jitted = jax.jit(consistency_score, static_argnums=2)(f, i, RULES)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
    grouped = consistency_score(f.reshape(2, 8, -1), i.reshape(2, 8, -1), RULES)
    np.testing.assert_allclose(np.asarray(grouped).reshape(-1), np.asarray(eager), rtol=1e-6)
    assert consistency_rate(f, i, RULES) == pytest.approx(np.mean([c[2] + c[3] + c[4] == 0 for c in HAND_CASES]))
    with pytest.raises(ValueError, match="labels must be"):
        consistency_score(f[:, :5], i[:, :5], RULES)
    with pytest.raises(ValueError, match="at least one"):
        consistency_rate(f[:0], i[:0], RULES)
    with pytest.raises(ValueError, match="uncertain_penalty"):
        consistency_rules(CXR, uncertain_penalty=2.0)


# ------------------------------------------------------------------------------ real report text


def test_clinical_reality_with_the_real_labeler():
    normal_findings = ("The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax. "
                       "No focal consolidation.")
    _check(normal_findings, "No acute cardiopulmonary process.", score=1.0, consistent=True)
    # Support devices need not be repeated; non-critical positives may be left out (a summary).
    _check("Endotracheal tube terminates 4 cm above the carina. Mild cardiomegaly. Small calcified "
           "granuloma in the right upper lobe. No pneumothorax.", "Mild cardiomegaly.", score=1.0)
    # The Impression interprets: consolidation in the Findings supports pneumonia.
    _check("Focal consolidation in the right lower lobe. No pleural effusion.",
           "Right lower lobe pneumonia.", score=1.0)
    # Carotid: a stenosis band of a side supports that side's plaque in the Impression.
    carotid = get_schema("carotid")
    _check("Left ICA velocities meet SRU criteria for 50-69 % stenosis. Right ICA without plaque or stenosis.",
           "Left ICA plaque with 50-69 % stenosis.", schema=carotid, score=1.0)


def test_planted_edits_lower_consistency():
    findings = ("There is a moderate right pneumothorax. Small left pleural effusion. "
                "The heart size is normal.")
    good = _check(findings, "Moderate right pneumothorax. Small left pleural effusion.", score=1.0)
    dropped = _check(findings, "Small left pleural effusion.", omitted_critical=1, consistent=False)
    contradicted = _check(findings, "Moderate right pneumothorax. No pleural effusion.", contradictions=1)
    unsupported = _check(findings, "Moderate right pneumothorax. Pulmonary edema.", unsupported=1)
    hedged = _check(findings, "Moderate right pneumothorax. Possible small left pleural effusion.",
                    uncertain_mismatch=1, consistent=True)
    assert dropped["score"] == pytest.approx(1 / 3)  # a critical omission weighs critical_weight=2
    assert contradicted["score"] == pytest.approx(1 / 2)
    assert unsupported["score"] == pytest.approx(1 / 2)
    # uncertain vs positive is softer than a contradiction, which is softer than a critical omission
    assert good["score"] > hedged["score"] > contradicted["score"] > dropped["score"]


@pytest.mark.parametrize("modality", ["cxr", "carotid"])
def test_written_reports_are_consistent_and_shuffled_ones_are_not(modality):
    schema = get_schema(modality)
    sections = [parse_sections(generate_case(modality, 5, i, 32).report) for i in range(120)]
    findings = label_array([s.findings for s in sections], schema)
    impression = label_array([s.impression for s in sections], schema)
    rules = consistency_rules(schema)
    assert consistency_rate(findings, impression, rules) == 1.0
    shuffled = impression[np.random.default_rng(0).permutation(len(sections))]
    assert consistency_rate(findings, shuffled, rules) < 0.6
