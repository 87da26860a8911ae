"""Carotid duplex report text with per-sentence ground truth.

Every sentence is built together with the observations it states (1 / 0 / -1), so the report's
labels are known by construction. Findings come in several families (``by_side`` RIGHT:/LEFT:
paragraphs, ``by_vessel`` CCA/ICA/ECA sentences, ``terse``), impressions in several styles
(``numbered``, ``prose``, ``normal``); impressions state each side's SRU grade and list critical
findings (>= 70 %, near-occlusion, occlusion) first, as a radiologist would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from radflow_jax.data.synthetic.case import Mention
from radflow_jax import schema

FINDINGS_FAMILIES: tuple[str, ...] = ("by_side", "by_vessel", "terse")
IMPRESSION_STYLES: tuple[str, ...] = ("numbered", "prose", "normal")
CRITICAL_GRADES: tuple[str, ...] = (">=70%", "near-occlusion", "occlusion")
# SRU wording of each grade as a noun phrase.
GRADE_PHRASES: dict[str, str] = {
    "<50%": "less than 50 % stenosis",
    "50-69%": "50-69 % stenosis",
    ">=70%": "70 % or greater stenosis",
    "near-occlusion": "near-occlusion",
    "occlusion": "occlusion",
}
_SIGNIFICANT = ("50-69%", ">=70%", "near-occlusion", "occlusion")
_LOCATIONS = {
    "bulb": ("carotid bulb", "bulb"),
    "proximal ICA": ("proximal ICA", "proximal internal carotid artery"),
    "distal CCA": ("distal CCA", "distal common carotid artery"),
}

Sentence = tuple[str, dict[str, int]]


@dataclasses.dataclass(frozen=True)
class Report:
    """A written report: the text, its sentences with labels, and the template that produced it."""

    text: str
    mentions: tuple[Mention, ...]
    template: str


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _obs(name: str, what: str) -> str:
    return f"{name.capitalize()} {what}"


def _band(name: str, grade: str) -> str:
    obs = schema.carotid_stenosis_observation(name.capitalize(), grade)
    if obs is None:
        raise ValueError("a normal side has no stenosis observation")
    return obs


def _bands_negative(name: str, grades: Sequence[str] = schema.STENOSIS_GRADES[1:]) -> dict[str, int]:
    return {_band(name, g): schema.NEGATIVE for g in grades}


def _grade_value(side: dict[str, Any]) -> int:
    return schema.UNCERTAIN if side["subtle"] else schema.POSITIVE


def _plaque_words(plaque: dict[str, Any], rng: np.random.Generator) -> str:
    """Echogenicity and texture, e.g. 'heterogeneous, predominantly hypoechoic plaque'."""
    het = plaque["texture"] == "heterogeneous"
    echo = plaque["echogenicity"]
    if echo == "calcified":
        return _pick(rng, ["heterogeneous, partially calcified plaque with acoustic shadowing",
                           "mixed calcified plaque casting an acoustic shadow"] if het else
                     ["calcified plaque with posterior acoustic shadowing",
                      "densely calcified, shadowing plaque"])
    word = {"hypoechoic": "hypoechoic", "isoechoic": "isoechoic", "hyperechoic": "echogenic"}[echo]
    if het:
        return _pick(rng, [f"heterogeneous, predominantly {word} plaque",
                           f"heterogeneous {word} plaque"])
    return _pick(rng, [f"homogeneous {word} plaque", f"smooth, homogeneous {word} plaque"])


# ----------------------------------------------------------------------------- findings sentences
# ``s`` is the side as written inside a sentence: "right ", or "" under a RIGHT:/LEFT: header.


def _plaque_sentence(side: dict[str, Any], name: str, s: str,
                     rng: np.random.Generator) -> Sentence | None:
    plaque = side["plaque"]
    if plaque is None:
        return None
    loc = _pick(rng, _LOCATIONS[plaque["location"]])
    if side["subtle_plaque"]:
        text = _pick(rng, [f"Possible small plaque in the {s}{loc}.",
                           f"Questionable minimal plaque along the far wall of the {s}{loc}."])
        return text, {_obs(name, "Plaque"): schema.UNCERTAIN}
    size = ""
    if rng.uniform() < 0.5:
        size = f", measuring {plaque['length_mm']} x {plaque['thickness_mm']:.1f} mm"
    return (f"{_cap(_plaque_words(plaque, rng))} in the {s}{loc}{size}.",
            {_obs(name, "Plaque"): schema.POSITIVE})


def _normal_side_sentence(name: str, s: str, rng: np.random.Generator) -> Sentence:
    if s:
        text = _pick(rng, [f"No plaque or stenosis in the {s}carotid system.",
                           f"The {s}carotid system is free of plaque or stenosis.",
                           f"No {s}carotid plaque or stenosis."])
    else:
        text = _pick(rng, ["No plaque or stenosis.", "No plaque or stenosis is seen."])
    return text, {_obs(name, "Plaque"): schema.NEGATIVE, **_bands_negative(name)}


def _imt_sentence(side: dict[str, Any], name: str, s: str, rng: np.random.Generator,
                  terse: bool = False) -> Sentence:
    imt = f"{side['imt_mm']:.1f} mm"
    if side["imt_mm"] <= 1.0:
        value, word = schema.NEGATIVE, "normal"
    else:
        value = schema.UNCERTAIN if side["subtle_imt"] else schema.POSITIVE
        word = "borderline" if side["subtle_imt"] else "thickened"
    key = _obs(name, "Intima-Media Thickening")
    if terse:
        return f"{_cap(s)}IMT {imt}, {word}.", {key: value}
    subject = f"{_cap(s)}CCA intima-media thickness" if s else "Intima-media thickness"
    options = {
        schema.NEGATIVE: [f"{subject} {imt}, within normal limits.",
                          f"Normal {s}intima-media thickness ({imt})."],
        schema.UNCERTAIN: [f"Borderline {s}intima-media thickness of {imt}.",
                           f"{subject} {imt}, possibly mildly thickened."],
        schema.POSITIVE: [f"{subject} {imt}.", f"Thickened {s}intima-media complex, {imt}.",
                          f"{subject} is increased at {imt}."],
    }[value]
    return _pick(rng, options), {key: value}


def _cca_sentence(side: dict[str, Any], s: str, rng: np.random.Generator) -> Sentence:
    cca = side["cca_psv"]
    extra = " with a high-resistance waveform" if side["grade"] == "occlusion" else ""
    return _pick(rng, [f"The {s}CCA is patent, peak systolic velocity {cca} cm/s{extra}.",
                       f"{_cap(s)}CCA peak systolic velocity {cca} cm/s{extra}."]), {}


def _ica_velocity_sentence(side: dict[str, Any], name: str, s: str, rng: np.random.Generator,
                           terse: bool = False) -> Sentence:
    if side["grade"] == "occlusion":
        if side["subtle"]:
            text = f"No definite flow is detected in the {s}ICA, likely occlusion."
        else:
            text = _pick(rng, [f"No flow is detected in the {s}ICA.",
                               f"Absent flow in the {s}internal carotid artery."])
        return text, {_band(name, "occlusion"): _grade_value(side)}
    psv, edv, ratio = side["psv"], side["edv"], f"{side['ica_cca_ratio']:.1f}"
    if terse:
        return f"{_cap(s)}ICA PSV {psv} cm/s, EDV {edv} cm/s, ICA/CCA ratio {ratio}.", {}
    return _pick(rng, [
        f"{_cap(s)}ICA peak systolic velocity {psv} cm/s, end-diastolic velocity {edv} cm/s, "
        f"ICA/CCA ratio {ratio}.",
        f"Peak systolic and end-diastolic velocities in the {s}ICA are {psv} and {edv} cm/s, "
        f"with an ICA/CCA ratio of {ratio}.",
    ]), {}


def _findings_grade_sentence(side: dict[str, Any], name: str, s: str,
                             rng: np.random.Generator) -> Sentence:
    """What the velocities and morphology amount to, in SRU terms (hedged when subtle)."""
    grade, ica = side["grade"], f"{s}ICA"
    limited = " on this technically limited study" if side["poor_window"] else ""
    excluded = "near-occlusion cannot be excluded"
    if grade == "near-occlusion" and side["subtle"]:
        text = _pick(rng, [f"Markedly narrowed {ica} lumen with dampened flow; {excluded}.",
                           f"The residual {ica} lumen is barely visualized{limited}; {excluded}."])
    elif grade == "near-occlusion":
        flow = {"string": "a thin string of trickle flow", "low": "dampened, tardus-parvus flow",
                "high": "very high-velocity, turbulent flow"}[side["waveform"]]
        text = f"Markedly narrowed {ica} residual lumen with {flow}, consistent with near-occlusion."
    elif grade == "occlusion" and side["subtle"]:
        text = (f"The {ica} lumen appears filled with echogenic material, "
                f"suggestive of occlusion{limited}.")
    elif grade == "occlusion":
        text = _pick(rng, [
            f"The {ica} lumen is filled with echogenic material, consistent with occlusion.",
            f"Echogenic material fills the {ica}, in keeping with occlusion."])
    elif side["subtle"]:
        text = _pick(rng, {
            "<50%": [f"Possible minimal {ica} stenosis, less than 50 % if present."],
            "50-69%": [f"Velocities are borderline, likely 50-69 % {ica} stenosis{limited}.",
                       f"Findings suggest 50-69 % stenosis of the {ica}, "
                       "although velocities are near threshold."],
            ">=70%": [f"Probable 70 % or greater {ica} stenosis, "
                      f"velocities just above threshold{limited}.",
                      f"Likely 70 % or greater stenosis of the {ica}{limited}."],
        }[grade])
    else:
        where, phrase = (f" in the {ica}" if s else ""), GRADE_PHRASES[grade]
        text = _pick(rng, [f"Velocities{where} are consistent with {phrase}.",
                           f"Findings{where} meet SRU criteria for {phrase}."])
    return text, {_band(name, grade): _grade_value(side)}


def _side_findings(side: dict[str, Any], name: str, family: str,
                   rng: np.random.Generator) -> list[Sentence]:
    """The findings sentences of one side in the given family's order and register."""
    s = "" if family == "by_side" else f"{name} "
    terse = family == "terse"
    out: list[Sentence] = []
    if family == "by_vessel":
        out.append(_cca_sentence(side, s, rng))
    out.append(_imt_sentence(side, name, s, rng, terse))
    if side["grade"] == "normal":
        out.append(_normal_side_sentence(name, s, rng))
    else:
        plaque = _plaque_sentence(side, name, s, rng)
        if plaque is not None:
            out.append(plaque)
    out.append(_ica_velocity_sentence(side, name, s, rng, terse))
    if family != "by_vessel":
        terse_cca = f"{_cap(s)}CCA PSV {side['cca_psv']} cm/s."
        out.append((terse_cca, {}) if terse else _cca_sentence(side, s, rng))
    if side["grade"] != "normal":
        out.append(_findings_grade_sentence(side, name, s, rng))
    if side["grade"] == "<50%" and not side["subtle"] and rng.uniform() < 0.5:
        where = f" on the {name}" if s else ""
        out.append((f"No hemodynamically significant stenosis{where}.",
                    _bands_negative(name, _SIGNIFICANT)))
    if family == "by_vessel" or rng.uniform() < 0.3:
        out.append((_pick(rng, [f"The {s}ECA is patent.", f"Normal {s}ECA waveform."]), {}))
    if family == "by_side":
        out[0] = (f"{name.upper()}: {out[0][0]}", out[0][1])
    return out


def _findings(sides: dict[str, dict[str, Any]], family: str,
              rng: np.random.Generator) -> list[Sentence]:
    out = [sentence for name, side in sides.items()
           for sentence in _side_findings(side, name, family, rng)]
    vertebral = (["Vertebrals antegrade bilaterally."] if family == "terse" else
                 ["Antegrade flow in both vertebral arteries.",
                  "Both vertebral arteries are patent with antegrade flow.",
                  "Vertebral arteries: antegrade flow bilaterally."])
    out.append((_pick(rng, vertebral), {}))
    return out


# ----------------------------------------------------------------------------- impression


def _side_impression(side: dict[str, Any], name: str, rng: np.random.Generator) -> Sentence:
    """One side's SRU grade as an impression statement."""
    grade = side["grade"]
    if grade == "normal":
        return _pick(rng, [(f"No {name} carotid stenosis.", _bands_negative(name)),
                           (f"No plaque or stenosis on the {name}.",
                            {_obs(name, "Plaque"): schema.NEGATIVE, **_bands_negative(name)})])
    key, value, phrase = _band(name, grade), _grade_value(side), GRADE_PHRASES[grade]
    if side["subtle"]:
        if grade == "<50%":
            loc = _LOCATIONS[side["plaque"]["location"]][0]
            return (f"Possible small plaque in the {name} {loc}, less than 50 % stenosis if any.",
                    {key: value, _obs(name, "Plaque"): schema.UNCERTAIN})
        return _pick(rng, {
            "50-69%": [f"Likely 50-69 % stenosis of the {name} ICA.",
                       f"Borderline velocities in the {name} ICA, likely 50-69 % stenosis."],
            ">=70%": [f"Probable 70 % or greater stenosis of the {name} ICA.",
                      f"{_cap(name)} ICA stenosis, likely 70 % or greater."],
            "near-occlusion": [f"Markedly narrowed {name} ICA; near-occlusion cannot be excluded."],
            "occlusion": [f"Findings suggestive of {name} ICA occlusion.",
                          f"Probable {name} ICA occlusion; CTA or MRA may help confirm."],
        }[grade]), {key: value}
    text = _pick(rng, [f"{_cap(name)} ICA: {phrase}", f"{_cap(phrase)} of the {name} ICA",
                       f"{_cap(phrase)} of the {name} internal carotid artery"])
    obs = {key: value}
    plaque = side["plaque"]
    if plaque is not None and plaque["location"] != "distal CCA" and rng.uniform() < 0.3:
        short = {"hypoechoic": "hypoechoic", "isoechoic": "isoechoic", "hyperechoic": "echogenic",
                 "calcified": "calcified"}[plaque["echogenicity"]]
        text += f" due to {plaque['texture']} {short} plaque"
        obs[_obs(name, "Plaque")] = schema.POSITIVE
    return f"{text}.", obs


def _imt_impression(sides: dict[str, dict[str, Any]]) -> list[Sentence]:
    thick = [n for n, s in sides.items() if s["imt_mm"] > 1.0]
    if len(thick) == 2 and not any(sides[n]["subtle_imt"] for n in thick):
        return [("Bilateral intima-media thickening.",
                 {_obs(n, "Intima-Media Thickening"): schema.POSITIVE for n in thick})]
    out = []
    for n in thick:
        if sides[n]["subtle_imt"]:
            out.append((f"Borderline {n} intima-media thickening.",
                        {_obs(n, "Intima-Media Thickening"): schema.UNCERTAIN}))
        else:
            out.append((f"{_cap(n)} intima-media thickening.",
                        {_obs(n, "Intima-Media Thickening"): schema.POSITIVE}))
    return out


def _no_finding_sentence(rng: np.random.Generator) -> Sentence:
    negatives = {k: v for n in ("right", "left")
                 for k, v in {_obs(n, "Plaque"): schema.NEGATIVE, **_bands_negative(n)}.items()}
    normal = {"No Finding": schema.POSITIVE}
    return _pick(rng, [("Normal bilateral carotid duplex ultrasound.", normal),
                       ("Normal carotid duplex examination.", normal),
                       ("No carotid plaque or stenosis bilaterally.",
                        {"No Finding": schema.POSITIVE, **negatives})])


def _impression(sides: dict[str, dict[str, Any]], style: str, normal_study: bool,
                rng: np.random.Generator) -> list[Sentence]:
    """Impression sentences, critical sides first, then by decreasing severity."""
    severity = {g: i for i, g in enumerate(schema.STENOSIS_GRADES)}
    order = sorted(sides, key=lambda n: (sides[n]["grade"] not in CRITICAL_GRADES,
                                         -severity[sides[n]["grade"]]))
    out: list[Sentence] = []
    if normal_study:
        out.append(_no_finding_sentence(rng))
    if style == "normal":
        out.insert(0, ("No hemodynamically significant carotid stenosis bilaterally.",
                       {k: v for n in sides for k, v in _bands_negative(n, _SIGNIFICANT).items()}))
        out += [_side_impression(sides[n], n, rng) for n in order if sides[n]["grade"] == "<50%"]
    elif not normal_study:
        a, b = (sides[n] for n in order)
        same = a["grade"] == b["grade"] != "normal" and not (a["subtle"] or b["subtle"])
        if style == "prose" and same and rng.uniform() < 0.6:
            phrase = GRADE_PHRASES[a["grade"]]
            out.append((_pick(rng, [f"Bilateral {phrase} of the internal carotid arteries.",
                                    f"{_cap(phrase)} of both internal carotid arteries."]),
                        {_band(n, a["grade"]): schema.POSITIVE for n in order}))
        else:
            out += [_side_impression(sides[n], n, rng) for n in order]
    if not normal_study and rng.uniform() < 0.5:
        out += _imt_impression(sides)
    if style == "numbered":
        out = [(f"{k}. {text}", obs) for k, (text, obs) in enumerate(out, start=1)]
    return out


def write_report(sides: dict[str, dict[str, Any]], rng: np.random.Generator) -> Report:
    """Write the FINDINGS/IMPRESSION report of a study from its per-side findings."""
    family = str(_pick(rng, FINDINGS_FAMILIES))
    significant = any(side["grade"] in _SIGNIFICANT for side in sides.values())
    style = str(_pick(rng, IMPRESSION_STYLES[:2] if significant else IMPRESSION_STYLES))
    normal_study = all(s["grade"] == "normal" and s["imt_mm"] <= 1.0 for s in sides.values())
    mentions = tuple(
        [Mention("findings", t, o) for t, o in _findings(sides, family, rng)]
        + [Mention("impression", t, o) for t, o in _impression(sides, style, normal_study, rng)]
    )
    findings = " ".join(m.sentence for m in mentions if m.section == "findings")
    impression = " ".join(m.sentence for m in mentions if m.section == "impression")
    text = f"FINDINGS: {findings}\n\nIMPRESSION: {impression}"
    return Report(text, mentions, f"{family}/{style}")
