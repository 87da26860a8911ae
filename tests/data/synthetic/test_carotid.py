"""Synthetic carotid duplex generator: determinism, SRU-consistent findings, report ground truth, pixels."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest

from radflow_jax.data.synthetic import carotid, carotid_report, generate_case
from radflow_jax import schema

NUM_CASES = 300
HEDGES = ("possible", "possibly", "likely", "probable", "questionable", "borderline", "suggest",
          "cannot be excluded")
SRU_BANDS = {  # grade: (psv range, edv range, ratio range), open bounds as in Grant et al. 2003
    "normal": ((0, 125), (0, 40), (0, 2)),
    "<50%": ((0, 125), (0, 40), (0, 2)),
    "50-69%": ((125, 230), (40, 100), (2, 4)),
    ">=70%": ((230, 1000), (100, 1000), (4, 100)),
}
CRITICAL = set(schema.get_schema("carotid").critical)


@pytest.fixture(scope="module")
def cases():
    return [generate_case("carotid", 11, i, 32) for i in range(NUM_CASES)]


def _sides(case):
    return [(name, name.capitalize(), case.details[name]) for name in carotid.SIDES]


def _aggregate(mentions) -> dict[str, int]:
    """CheXpert-style aggregation: positive > uncertain > negative; unmentioned counts as 0."""
    values = collections.defaultdict(set)
    for m in mentions:
        for obs, v in m.observations.items():
            values[obs].add(v)
    return {obs: 1 if 1 in values[obs] else -1 if -1 in values[obs] else 0
            for obs in schema.CAROTID_OBSERVATIONS}


def test_deterministic_per_seed_and_index():
    a, b = generate_case("carotid", 3, 7, 64), generate_case("carotid", 3, 7, 64)
    assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]
    assert (a.report, a.labels, a.details, a.template, a.mentions) == (
        b.report, b.labels, b.details, b.template, b.mentions)
    c = generate_case("carotid", 3, 8, 64)
    assert a.images[0].tobytes() != c.images[0].tobytes()
    assert a.report != c.report


@pytest.mark.parametrize("size", [32, 77, 128, 512])
def test_shapes_and_types(size):
    case = generate_case("carotid", 0, 5, size)
    assert case.views == ("right duplex", "left duplex")
    assert len(case.images) == 2
    for image in case.images:
        assert image.shape == (size, size) and image.dtype == np.uint8
        assert image.std() > 10  # a rendered screen, not a blank
    assert set(case.labels) == set(schema.CAROTID_OBSERVATIONS)
    assert json.loads(json.dumps(case.details)) == case.details


def test_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="grade"):
        carotid.sample_side(rng, "moderate", 0.0)
    with pytest.raises(ValueError, match="image_size"):
        carotid.render_view(rng, carotid.sample_side(rng, "normal", 0.0), 16)


def test_every_observation_occurs(cases):
    positive = collections.Counter(o for c in cases for o, v in c.labels.items() if v == 1)
    hedged = collections.Counter(o for c in cases for o, v in c.labels.items() if v == -1)
    assert set(positive) == set(schema.CAROTID_OBSERVATIONS)
    assert sum(hedged.values()) >= 15 and any("Stenosis" in o for o in hedged)


def test_grade_frequencies_and_side_correlation(cases):
    grades = np.array([[schema.STENOSIS_GRADES.index(d["grade"]) for _, _, d in _sides(c)]
                       for c in cases])
    freq = np.bincount(grades.ravel(), minlength=6) / grades.size
    low = [0.25, 0.2, 0.08, 0.06, 0.005, 0.015]
    high = [0.45, 0.4, 0.22, 0.18, 0.07, 0.1]
    assert np.all(freq >= low) and np.all(freq <= high), freq
    assert np.corrcoef(grades[:, 0], grades[:, 1])[0, 1] > 0.3  # atherosclerosis is systemic
    critical = np.mean([c.critical for c in cases])
    assert 0.15 <= critical <= 0.38, critical


def test_velocities_follow_sru_bands(cases):
    for case in cases:
        for _, _, d in _sides(case):
            assert 50 <= d["cca_psv"] <= 110
            if d["grade"] == "occlusion":
                assert d["psv"] == d["edv"] == 0 and d["waveform"] == "absent"
            elif d["grade"] == "near-occlusion":
                assert d["lumen_reduction"] > 0.9
                bounds = {"string": (0, 50), "low": (0, 125), "high": (230, 1000)}[d["waveform"]]
                assert bounds[0] < d["psv"] < bounds[1]
            else:
                (p0, p1), (e0, e1), (r0, r1) = SRU_BANDS[d["grade"]]
                assert p0 < d["psv"] < p1 and e0 < d["edv"] < e1 and r0 < d["ica_cca_ratio"] < r1, d
                assert abs(d["ica_cca_ratio"] - d["psv"] / d["cca_psv"]) <= 0.051
            if d["plaque"] is None:
                assert d["grade"] in ("normal", "occlusion")  # occlusion without plaque: thrombus
            if d["grade"] == "normal":
                assert d["plaque"] is None and d["lumen_reduction"] == 0


def test_report_numbers_match_details(cases):
    for case in cases:
        allowed = {"50", "69", "70"} | {str(k) for k in range(1, 7)}
        for _, _, d in _sides(case):
            allowed |= {str(d["psv"]), str(d["edv"]), str(d["cca_psv"]),
                        f"{d['ica_cca_ratio']:.1f}", f"{d['imt_mm']:.1f}"}
            if d["plaque"]:
                allowed |= {str(d["plaque"]["length_mm"]), f"{d['plaque']['thickness_mm']:.1f}"}
            assert f"{d['imt_mm']:.1f} mm" in case.report
            assert f"{d['cca_psv']} cm/s" in case.report
            if d["grade"] != "occlusion":
                assert f"{d['psv']}" in case.report and f"{d['edv']} cm/s" in case.report
                assert re.search(rf"ratio (of )?{d['ica_cca_ratio']:.1f}\b", case.report)
        printed = set(re.findall(r"\d+(?:\.\d+)?", case.report))
        assert printed <= allowed, (printed - allowed, case.report)


def test_text_is_exactly_the_mentions(cases):
    for case in cases:
        sections = [" ".join(m.sentence for m in case.mentions if m.section == s)
                    for s in ("findings", "impression")]
        assert case.report == f"FINDINGS: {sections[0]}\n\nIMPRESSION: {sections[1]}"
        assert all(sections) and all(m.section in ("findings", "impression") for m in case.mentions)


def test_mentions_aggregate_to_labels(cases):
    for case in cases:
        for m in case.mentions:
            assert set(m.observations) <= set(schema.CAROTID_OBSERVATIONS), m
            assert set(m.observations.values()) <= {1, 0, -1}
        assert _aggregate(case.mentions) == case.labels, case.report
        others = [v for o, v in case.labels.items() if o != "No Finding"]
        assert case.labels["No Finding"] == int(all(v == 0 for v in others))
        assert case.labels == carotid.labels_from_findings(case.details)
        assert case.critical == schema.get_schema("carotid").is_critical(case.labels)


def test_one_stenosis_band_per_side_and_stated_in_impression(cases):
    for case in cases:
        for _, cap, d in _sides(case):
            bands = [schema.carotid_stenosis_observation(cap, g) for g in schema.STENOSIS_GRADES[1:]]
            nonzero = [b for b in bands if case.labels[b] != 0]
            if d["grade"] == "normal":
                assert nonzero == []
                continue
            assert nonzero == [schema.carotid_stenosis_observation(cap, d["grade"])]
            stated = [m.observations.get(nonzero[0]) for m in case.mentions if m.section == "impression"]
            assert case.labels[nonzero[0]] in stated


def test_hedges_only_on_uncertain_statements(cases):
    for case in cases:
        for m in case.mentions:
            hedged = any(h in m.sentence.lower() for h in HEDGES)
            values = set(m.observations.values())
            assert hedged == (-1 in values), m.sentence


def test_all_families_and_styles_appear(cases):
    templates = collections.Counter(c.template for c in cases)
    families = {t.split("/")[0] for t in templates}
    styles = {t.split("/")[1] for t in templates}
    assert families == set(carotid_report.FINDINGS_FAMILIES)
    assert styles == set(carotid_report.IMPRESSION_STYLES)
    assert all(c.template.count("/") == 1 for c in cases)
    assert any(m.sentence.startswith("RIGHT: ") for c in cases for m in c.mentions)
    assert any("1. " in c.report.split("IMPRESSION:")[1] for c in cases)


def test_critical_findings_come_first_in_impression(cases):
    seen_critical = 0
    for case in cases:
        kinds = []
        for m in case.mentions:
            if m.section != "impression":
                continue
            stated = {o for o, v in m.observations.items() if v != 0}
            if stated:
                kinds.append(bool(stated & CRITICAL))
        if any(kinds):
            seen_critical += 1
            assert kinds[0], case.report
            assert kinds == sorted(kinds, reverse=True), case.report
    assert seen_critical >= 30


def _side(grade: str, **overrides):
    side = carotid.sample_side(np.random.default_rng(1), grade, 1.0)
    side.update(subtle=False, poor_window=False, **overrides)
    if side["plaque"] is not None:
        side["plaque"] = dict(side["plaque"], echogenicity="hyperechoic", location="bulb")
    return side


def test_doppler_strip_of_occlusion_is_nearly_empty():
    size = 128
    bh, baseline = carotid.layout(size)
    margin = max(3, size // 14)
    signal = {}
    for grade in ("occlusion", ">=70%", "normal"):
        image = carotid.render_view(np.random.default_rng(4), _side(grade), size)
        signal[grade] = image[bh + 2:baseline - 2, : size - margin].astype(float).mean()
    assert signal[">=70%"] > 3 * signal["occlusion"], signal
    assert signal[">=70%"] > signal["normal"], signal  # filled-in spectral window


def _min_lumen_width(image: np.ndarray, bh: int) -> int:
    """Narrowest point of the vessels: the fewest dark (lumen) pixels in a column, after a 3x3 blur."""
    w = image.shape[1]
    panel = np.pad(image[:bh].astype(float), 1, mode="edge")
    blurred = sum(panel[i:i + bh, j:j + w] for i in range(3) for j in range(3)) / 9
    return int((blurred < 30).sum(axis=0)[w // 8: w * 3 // 4].min())


def test_lumen_narrows_with_grade():
    size = 256
    bh, _ = carotid.layout(size)
    width = {
        grade: np.mean([_min_lumen_width(carotid.render_view(np.random.default_rng(s), _side(grade), size), bh)
                        for s in range(3)])
        for grade in ("normal", "50-69%", ">=70%", "near-occlusion", "occlusion")
    }
    assert width["normal"] > width["50-69%"] > width[">=70%"], width
    assert max(width["near-occlusion"], width["occlusion"]) < width["normal"] / 2, width
    assert width["occlusion"] < width["near-occlusion"], width
