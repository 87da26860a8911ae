"""Synthetic chest X-ray generator: determinism, label/report consistency, frequencies, laterality."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from radflow_jax.data.synthetic import cxr, generate_case
from radflow_jax.data.synthetic.cxr_report import FINDINGS_FAMILIES, IMPRESSION_STYLES
from radflow_jax.schema import CHEXPERT_OBSERVATIONS, get_schema

NUM_CASES = 300
HEDGES = ("possibl", "questionable", "cannot be excluded", "not excluded", "may", "borderline", "could")


@pytest.fixture(scope="module")
def cases():
    return [generate_case("cxr", 11, i, 32) for i in range(NUM_CASES)]


def _aggregate(mentions, observation):
    values = [m.observations[observation] for m in mentions if observation in m.observations]
    for value in (1, -1, 0):
        if value in values:
            return value
    return 0


def test_same_seed_and_index_give_identical_case():
    a, b = generate_case("cxr", 3, 5, 128), generate_case("cxr", 3, 5, 128)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert (a.report, a.labels, a.mentions, a.details) == (b.report, b.labels, b.mentions, b.details)
    other = generate_case("cxr", 3, 6, 128)
    assert other.images[0].tobytes() != a.images[0].tobytes()
    assert other.report != a.report


def test_report_does_not_depend_on_image_size():
    small, large = generate_case("cxr", 2, 9, 32), generate_case("cxr", 2, 9, 96)
    assert (small.report, small.labels, small.details) == (large.report, large.labels, large.details)


@pytest.mark.parametrize("size", [32, 128, 512])
def test_image_shape_and_dtype(size):
    case = generate_case("cxr", 0, 1, size)
    (image,) = case.images
    assert image.shape == (size, size) and image.dtype == np.uint8
    assert image.std() > 20  # not blank: air, soft tissue, lungs and bone all show
    assert image[: size // 20, : size // 20].mean() < image[size // 2, :].mean()  # dark air corner


def test_rejects_bad_image_size():
    with pytest.raises(ValueError, match="image_size"):
        generate_case("cxr", 0, 0, 16)


def test_every_observation_occurs_positive_and_negative(cases):
    for obs in CHEXPERT_OBSERVATIONS:
        values = [c.labels[obs] for c in cases]
        assert 1 in values, f"{obs} never positive"
        assert 0 in values, f"{obs} never negative"
    assert any(-1 in c.labels.values() for c in cases)


def test_frequencies_roughly_clinical(cases):
    present = collections.Counter(obs for c in cases for obs, v in c.labels.items() if v != 0)
    expected = {  # observation: (low, high) fraction of studies, around the design targets
        "No Finding": (0.2, 0.45), "Support Devices": (0.12, 0.32), "Pleural Effusion": (0.12, 0.32),
        "Cardiomegaly": (0.08, 0.25), "Atelectasis": (0.08, 0.25), "Lung Opacity": (0.05, 0.18),
        "Edema": (0.03, 0.14), "Consolidation": (0.04, 0.15), "Pneumonia": (0.02, 0.1),
        "Pneumothorax": (0.05, 0.18), "Lung Lesion": (0.02, 0.12), "Pleural Other": (0.01, 0.09),
        "Fracture": (0.02, 0.1), "Enlarged Cardiomediastinum": (0.02, 0.12),
    }
    for obs, (low, high) in expected.items():
        assert low <= present[obs] / NUM_CASES <= high, (obs, present[obs] / NUM_CASES)
    tension = [c.details["pneumothorax"]["tension"] for c in cases if "pneumothorax" in c.details]
    assert 0.1 <= np.mean(tension) <= 0.55  # about a quarter; only ~30 pneumothoraces here


def test_mentions_aggregate_to_labels(cases):
    schema = get_schema("cxr")
    for c in cases:
        assert set(c.labels) == set(CHEXPERT_OBSERVATIONS)
        for m in c.mentions:
            assert m.section in ("findings", "impression")
            assert set(m.observations) <= set(CHEXPERT_OBSERVATIONS), m
            assert set(m.observations.values()) <= {1, 0, -1}
        for obs in CHEXPERT_OBSERVATIONS:
            assert _aggregate(c.mentions, obs) == c.labels[obs], (obs, c.report)
        others_present = any(v != 0 for k, v in c.labels.items() if k not in ("No Finding", "Support Devices"))
        assert c.labels["No Finding"] == (0 if others_present else 1)
        assert c.critical == schema.is_critical(c.labels)
        json.dumps(c.details)


def test_report_text_is_the_mentions(cases):
    for c in cases:
        sections = {s: [m.sentence for m in c.mentions if m.section == s] for s in ("findings", "impression")}
        assert sections["findings"] and sections["impression"]
        expected = f"FINDINGS: {' '.join(sections['findings'])}\n\nIMPRESSION: {' '.join(sections['impression'])}"
        assert c.report == expected
        assert [m.section for m in c.mentions] == sorted(m.section for m in c.mentions)  # findings first
        assert all("\n" not in m.sentence and m.sentence.endswith(".") for m in c.mentions)


def test_hedged_sentences_carry_uncertain_labels(cases):
    uncertain = [(m, c) for c in cases for m in c.mentions if -1 in m.observations.values()]
    assert len(uncertain) > 10
    for m, _ in uncertain:
        assert any(h in m.sentence.lower() for h in HEDGES), m.sentence
    for c in cases:
        for key, finding in c.details.items():
            if isinstance(finding, dict) and finding.get("subtle"):
                assert -1 in c.labels.values(), (key, c.report)


def test_all_templates_and_views_appear(cases):
    families = {c.template.split("/")[0] for c in cases}
    styles = {c.template.split("/")[1] for c in cases}
    assert families == set(FINDINGS_FAMILIES) and styles == set(IMPRESSION_STYLES)
    assert {c.views for c in cases} == {("PA",), ("AP",)}
    for c in cases:
        if c.template.endswith("/normal"):
            assert c.labels["No Finding"] == 1
    devices = [c for c in cases if "ett" in c.details.get("support_devices", {})]
    assert np.mean([c.views == ("AP",) for c in devices]) > 0.6  # bedside studies are portable AP


def test_critical_cases_state_pneumothorax_first(cases):
    critical = [c for c in cases if c.critical]
    assert len(critical) >= 5
    for c in critical:
        first = next(m for m in c.mentions if m.section == "impression")
        assert first.observations.get("Pneumothorax") == 1 and "pneumothorax" in first.sentence.lower()
        if c.details["pneumothorax"]["tension"]:
            assert "tension" in first.sentence.lower()
        side = c.details["pneumothorax"]["side"]
        assert side in first.sentence.lower()


def _region(image, x0, x1, y0, y1):
    n = image.shape[0]
    return image[int(y0 * n):int(y1 * n), int(x0 * n):int(x1 * n)].astype(np.float64)


def _block_std(region, k=3):
    """Spread of 3x3 block means: lung texture, with most of the pixel noise averaged away."""
    h, w = region.shape[0] // k * k, region.shape[1] // k * k
    return region[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)).std()


BASE = {"projection": "PA", "cardiothoracic_ratio": 0.45}
IMAGE_LEFT_MID, IMAGE_RIGHT_MID = (0.22, 0.29, 0.35, 0.52), (0.71, 0.78, 0.35, 0.52)


def test_right_pneumothorax_darkens_the_image_left_lung():
    """Patient's right is the image's left: the lucent, featureless rim shows there."""
    ptx = {"pneumothorax": {"side": "right", "size": "large", "tension": False, "subtle": False}}
    darker, std_ptx, std_other, std_base = [], [], [], []
    for seed in range(12):
        base = cxr.render(BASE, np.random.default_rng(seed), 128)
        image = cxr.render({**BASE, **ptx}, np.random.default_rng(seed), 128)
        left, right = _region(image, *IMAGE_LEFT_MID), _region(image, *IMAGE_RIGHT_MID)
        darker.append(left.mean() < min(right.mean(), _region(base, *IMAGE_LEFT_MID).mean()) - 5)
        assert abs(right.mean() - _region(base, *IMAGE_RIGHT_MID).mean()) < 2  # other side untouched
        std_ptx.append(_block_std(left))
        std_other.append(_block_std(right))
        std_base.append(_block_std(_region(base, *IMAGE_LEFT_MID)))
    assert all(darker)
    assert np.median(std_ptx) < np.median(std_other) - 1 and np.median(std_ptx) < np.median(std_base) - 1


def test_left_effusion_brightens_the_image_right_base():
    effusion = {"pleural_effusion": {"side": "left", "size": "large", "subtle": False}}
    right_base, left_base = (0.68, 0.78, 0.52, 0.62), (0.22, 0.32, 0.52, 0.62)
    for seed in range(6):
        base = cxr.render(BASE, np.random.default_rng(seed), 128)
        image = cxr.render({**BASE, **effusion}, np.random.default_rng(seed), 128)
        gain_right = _region(image, *right_base).mean() - _region(base, *right_base).mean()
        gain_left = _region(image, *left_base).mean() - _region(base, *left_base).mean()
        assert gain_right > 30 and abs(gain_left) < 2, (seed, gain_right, gain_left)
        assert _region(image, *right_base).mean() > _region(image, *left_base).mean() + 30


def test_rendering_is_fast_enough():
    import time

    rng = np.random.default_rng(0)
    findings = [cxr.sample_findings(rng) for _ in range(20)]
    start = time.perf_counter()
    for f in findings:
        cxr.render(f, rng, 128)
    assert (time.perf_counter() - start) / len(findings) < 0.06  # target 20 ms; slack for a busy CI box
