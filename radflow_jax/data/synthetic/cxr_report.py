"""Chest X-ray report text written from sampled findings, sentence by sentence with its labels.

Every sentence is built together with the observations it states (1 / 0 / -1), so the report is
its own ground truth: aggregating the mentions (positive > uncertain > negative) gives the case
labels. Phrasing varies on purpose (synonyms, sentence order, template families, hedges), so a
model has to learn the findings rather than one fixed template.

``findings`` is the structured dict from ``cxr.sample_findings``; a finding that is ``subtle`` is
stated with a hedge and labeled uncertain (-1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from radflow_jax.data.synthetic.case import Mention
from radflow_jax.schema import CHEXPERT_OBSERVATIONS, NEGATIVE, POSITIVE, UNCERTAIN

FINDINGS_FAMILIES: tuple[str, ...] = ("structured", "narrative", "terse", "comparison")
IMPRESSION_STYLES: tuple[str, ...] = ("numbered", "prose", "terse", "normal")

# Observation each finding key of ``findings`` produces.
FINDING_OBSERVATION: dict[str, str] = {
    "enlarged_cardiomediastinum": "Enlarged Cardiomediastinum",
    "cardiomegaly": "Cardiomegaly",
    "lung_lesion": "Lung Lesion",
    "lung_opacity": "Lung Opacity",
    "edema": "Edema",
    "consolidation": "Consolidation",
    "atelectasis": "Atelectasis",
    "pneumothorax": "Pneumothorax",
    "pleural_effusion": "Pleural Effusion",
    "pleural_other": "Pleural Other",
    "fracture": "Fracture",
    "support_devices": "Support Devices",
}

Sentence = tuple[str, dict[str, int]]


@dataclasses.dataclass(frozen=True)
class Report:
    text: str
    mentions: tuple[Mention, ...]
    template: str


def finding_labels(findings: dict) -> dict[str, int]:
    """CheXpert labels of ``findings``: 1 stated, -1 hedged (subtle), 0 absent."""
    labels = {obs: NEGATIVE for obs in CHEXPERT_OBSERVATIONS}
    for key, obs in FINDING_OBSERVATION.items():
        if key in findings:
            labels[obs] = UNCERTAIN if findings[key].get("subtle") else POSITIVE
    cons = findings.get("consolidation")
    if cons and cons["pneumonia"] != "none":
        certain = cons["pneumonia"] == "stated" and not cons["subtle"]
        labels["Pneumonia"] = POSITIVE if certain else UNCERTAIN
    abnormal = any(v != NEGATIVE for k, v in labels.items() if k != "Support Devices")
    labels["No Finding"] = NEGATIVE if abnormal else POSITIVE
    return labels


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


_ZONE_WORDS = {
    ("right", "upper"): ("right upper lobe", "right upper zone", "right apex"),
    ("right", "mid"): ("right middle lobe", "right mid lung", "right perihilar region"),
    ("right", "lower"): ("right lower lobe", "right lung base", "right base"),
    ("left", "upper"): ("left upper lobe", "left upper zone", "left apex"),
    ("left", "mid"): ("lingula", "left mid lung", "left perihilar region"),
    ("left", "lower"): ("left lower lobe", "left lung base", "left base"),
}


def _where(rng: np.random.Generator, side: str, zone: str) -> str:
    if side == "bilateral":
        return _pick(rng, {"upper": ("both upper zones",), "mid": ("both mid lungs",),
                           "lower": ("both lung bases", "the bases bilaterally")}[zone])
    return "the " + _pick(rng, _ZONE_WORDS[(side, zone)])


# ---------------------------------------------------------------- findings sentences per finding


def _pneumothorax(f: dict, rng, terse: bool) -> list[Sentence]:
    side, size = f["side"], f["size"]
    opp = "left" if side == "right" else "right"
    if f["subtle"]:
        text = _pick(rng, (f"Questionable small {side} apical pneumothorax.",
                           f"A tiny {side} apical pneumothorax cannot be excluded.",
                           f"Possible small {side} apical pneumothorax."))
        return [(text, {"Pneumothorax": UNCERTAIN})]
    where = " apical" if size == "small" and rng.random() < 0.6 else ""
    if f["tension"]:
        text = _pick(rng, (
            f"{_cap(size)} {side} pneumothorax with {opp}ward mediastinal shift and depression of the "
            f"{side} hemidiaphragm, consistent with tension pneumothorax.",
            f"There is a {size} {side} tension pneumothorax with shift of the mediastinum to the {opp}.",
        ))
    elif terse:
        text = f"{_cap(size)} {side}{where} pneumothorax."
    else:
        text = _pick(rng, (f"There is a {size} {side}{where} pneumothorax.",
                           f"{_cap(size)} {side}{where} pneumothorax is present.",
                           f"A {size} {side}{where} pneumothorax is seen with a visible pleural line."))
    return [(text, {"Pneumothorax": POSITIVE})]


def _effusion(f: dict, rng, terse: bool, atelectasis: dict | None) -> list[Sentence]:
    side, size = f["side"], f["size"]
    if f["subtle"]:
        side_word = "bilateral costophrenic angles" if side == "bilateral" else f"{side} costophrenic angle"
        text = _pick(rng, (f"Blunting of the {side_word} may reflect a small effusion.",
                           f"Possible trace {side} pleural effusion."))
        return [(text, {"Pleural Effusion": UNCERTAIN})]
    noun = "pleural effusions" if side == "bilateral" else "pleural effusion"
    if terse:
        noun = noun.replace("pleural ", "")
    obs = {"Pleural Effusion": POSITIVE}
    tail = ""
    if atelectasis is not None and not atelectasis["subtle"] and rng.random() < 0.5:
        tail = _pick(rng, (" with adjacent atelectasis", " with associated basilar atelectasis"))
        obs["Atelectasis"] = POSITIVE
    if terse:
        return [(f"{_cap(size)} {side} {noun}{tail}.", obs)]
    text = _pick(rng, (f"There {'are' if side == 'bilateral' else 'is a'} {size} {side} {noun}{tail}.",
                       f"{_cap(size)} {side} {noun}{tail}.",
                       f"{_cap(size)} {side} {noun} {'are' if side == 'bilateral' else 'is'} "
                       f"present{tail}."))
    return [(text, obs)]


def _cardiac(findings: dict, rng, terse: bool) -> list[Sentence]:
    out: list[Sentence] = []
    cm, ecm = findings.get("cardiomegaly"), findings.get("enlarged_cardiomediastinum")
    if cm is None and ecm is None:
        if rng.random() < 0.6:
            out.append((_pick(rng, ("The cardiomediastinal silhouette is within normal limits.",
                                    "Normal cardiomediastinal silhouette.",
                                    "Heart size and mediastinal contours are normal.")),
                        {"Cardiomegaly": NEGATIVE, "Enlarged Cardiomediastinum": NEGATIVE}))
        else:
            out.append((_pick(rng, ("Heart size is normal.", "The heart is not enlarged.")),
                        {"Cardiomegaly": NEGATIVE}))
        return out
    if cm is not None:
        if cm["subtle"]:
            text = _pick(rng, ("Borderline cardiomegaly.", "The heart size is borderline enlarged.",
                               "The cardiac silhouette is possibly mildly enlarged."))
            out.append((text, {"Cardiomegaly": UNCERTAIN}))
        else:
            sev = cm["severity"]
            if terse:
                text = _pick(rng, ("Cardiomegaly.", f"{_cap(sev)} cardiomegaly."))
            else:
                text = _pick(rng, ("The heart is enlarged.", "Cardiomegaly.", "The cardiac silhouette is enlarged.",
                                   f"{_cap(sev)} cardiomegaly.", f"The heart is {sev}ly enlarged."
                                   if sev != "severe" else "The heart is markedly enlarged."))
            out.append((text, {"Cardiomegaly": POSITIVE}))
    elif rng.random() < 0.5:
        out.append((_pick(rng, ("Heart size is normal.", "The heart is normal in size.")),
                    {"Cardiomegaly": NEGATIVE}))
    if ecm is not None:
        if ecm["subtle"]:
            text = _pick(rng, ("The mediastinal contour may be slightly widened.",
                               "Possible mild widening of the superior mediastinum."))
            out.append((text, {"Enlarged Cardiomediastinum": UNCERTAIN}))
        else:
            text = _pick(rng, ("The mediastinum is widened.", "Widened superior mediastinum.",
                               "The upper mediastinal silhouette is enlarged."))
            out.append((text, {"Enlarged Cardiomediastinum": POSITIVE}))
    elif rng.random() < 0.5:
        out.append((_pick(rng, ("The mediastinal contours are unremarkable.", "Normal mediastinal contours.")),
                    {"Enlarged Cardiomediastinum": NEGATIVE}))
    return out


def _consolidation(f: dict, rng, terse: bool) -> list[Sentence]:
    where = _where(rng, f["side"], f["zone"])
    if f["subtle"]:
        obs = {"Consolidation": UNCERTAIN}
        text = _pick(rng, (f"Possible early consolidation in {where}.",
                           f"Subtle consolidation in {where} cannot be excluded."))
        if f["pneumonia"] != "none" and rng.random() < 0.5:
            text = text[:-1] + ", which could represent early pneumonia."
            obs["Pneumonia"] = UNCERTAIN
        return [(text, obs)]
    obs = {"Consolidation": POSITIVE}
    text = (f"Consolidation in {where}." if terse else
            _pick(rng, (f"There is focal consolidation in {where}.", f"Dense consolidation in {where}.",
                        f"Airspace consolidation is present in {where}.")))
    if f["pneumonia"] != "none" and rng.random() < 0.4:
        if f["pneumonia"] == "stated":
            text = text[:-1] + ", compatible with pneumonia."
            obs["Pneumonia"] = POSITIVE
        else:
            text = text[:-1] + ", which may represent pneumonia."
            obs["Pneumonia"] = UNCERTAIN
    return [(text, obs)]


def _opacity(f: dict, rng, terse: bool) -> list[Sentence]:
    where = _where(rng, f["side"], f["zone"])
    if f["subtle"]:
        return [(_pick(rng, (f"Questionable faint opacity in {where}.",
                             f"Possible subtle opacity in {where}.")), {"Lung Opacity": UNCERTAIN})]
    text = (f"Opacity in {where}." if terse else
            _pick(rng, (f"Hazy opacity in {where}.", f"There is a patchy opacity in {where}.",
                        f"Ill-defined airspace opacity is seen in {where}.")))
    return [(text, {"Lung Opacity": POSITIVE})]


def _atelectasis(f: dict, rng, terse: bool) -> list[Sentence]:
    side = f["side"]
    base = "bibasilar" if side == "bilateral" else f"{side} basilar"
    if f["subtle"]:
        return [(_pick(rng, (f"Possible minimal {base} atelectasis.",
                             f"Minimal {base} atelectasis is not excluded.")), {"Atelectasis": UNCERTAIN})]
    text = (f"{_cap(base)} atelectasis." if terse else
            _pick(rng, (f"Plate-like atelectasis at the {'lung bases' if side == 'bilateral' else side + ' base'}.",
                        f"{_cap(base)} subsegmental atelectasis.", f"There is mild {base} atelectasis.")))
    return [(text, {"Atelectasis": POSITIVE})]


def _edema(f: dict, rng, terse: bool) -> list[Sentence]:
    if f["subtle"]:
        return [(_pick(rng, ("Possible mild interstitial edema.",
                             "Mild interstitial edema cannot be excluded.")), {"Edema": UNCERTAIN})]
    sev = f["severity"]
    kerley = " with Kerley B lines" if f["kerley"] and not terse else ""
    text = (f"{_cap(sev)} pulmonary edema." if terse else
            _pick(rng, (f"{_cap(sev)} pulmonary edema{kerley}.", f"There is {sev} interstitial edema{kerley}.",
                        f"Findings of {sev} pulmonary edema{kerley}.")))
    return [(text, {"Edema": POSITIVE})]


def _lesion(f: dict, rng, terse: bool) -> list[Sentence]:
    where = _where(rng, f["side"], f["zone"])
    kind, size = f["kind"], f"{f['size_cm']:.1f} cm"
    if f["subtle"]:
        return [(_pick(rng, (f"Possible small nodule in {where}.",
                             f"A questionable nodular density in {where}.")), {"Lung Lesion": UNCERTAIN})]
    text = (f"{size} {kind} in {where}." if terse else
            _pick(rng, (f"A {size} {kind} is seen in {where}.", f"There is a {size} rounded {kind} in {where}.",
                        f"{_cap(size)} {kind} projecting over {where}.")))
    return [(text, {"Lung Lesion": POSITIVE})]


def _pleural_other(f: dict, rng, terse: bool) -> list[Sentence]:
    side = f["side"]
    if f["kind"] == "thickening":
        text = _pick(rng, (f"{_cap(side)} pleural thickening.", f"There is {side} lateral pleural thickening."))
    else:
        text = _pick(rng, (f"Calcified pleural plaque along the {side} chest wall.",
                           f"{_cap(side)} calcified pleural plaques."))
    return [(text, {"Pleural Other": POSITIVE})]


def _ordinal(n: int) -> str:
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n, 'th')}"


def _fracture(f: dict, rng, terse: bool) -> list[Sentence]:
    side, rib = f["side"], _ordinal(f["rib"])
    if f["subtle"]:
        return [(_pick(rng, (f"Possible nondisplaced fracture of the {side} {rib} rib.",
                             f"A subtle {side} {rib} rib fracture cannot be excluded.")), {"Fracture": UNCERTAIN})]
    text = (f"{_cap(side)} {rib} rib fracture." if terse else
            _pick(rng, (f"Acute fracture of the {side} lateral {rib} rib.",
                        f"There is a displaced fracture of the {side} {rib} rib.")))
    return [(text, {"Fracture": POSITIVE})]


def _devices(d: dict, rng, terse: bool) -> list[Sentence]:
    out: list[Sentence] = []
    sd = {"Support Devices": POSITIVE}
    if "ett" in d:
        cm = f"{d['ett']['cm_above_carina']:.1f}".rstrip("0").rstrip(".")
        out.append((f"ETT {cm} cm above the carina." if terse else
                    _pick(rng, (f"Endotracheal tube terminates {cm} cm above the carina.",
                                f"The endotracheal tube tip is {cm} cm above the carina.")), sd))
    if "central_line" in d:
        line = d["central_line"]
        route = "internal jugular" if line["route"] == "jugular" else "subclavian"
        tip = "the mid SVC" if line["tip"] == "svc" else "the cavoatrial junction"
        out.append((_pick(rng, (f"{_cap(line['side'])} {route} central venous catheter terminates in {tip}.",
                                f"{_cap(line['side'])} {route} line with tip in {tip}.")), sd))
    if "pacemaker" in d:
        leads = "right atrium and right ventricle" if d["pacemaker"]["leads"] == 2 else "right ventricle"
        out.append((_pick(rng, (f"Left chest wall pacemaker with leads in the {leads}.",
                                f"A cardiac pacemaker is present with leads terminating in the {leads}.")), sd))
    if "chest_tube" in d:
        out.append((f"{_cap(d['chest_tube']['side'])} chest tube in place.", sd))
    return out


def _lungs(findings: dict, rng, terse: bool, atelectasis_stated: bool) -> list[Sentence]:
    out: list[Sentence] = []
    for key, fn in (("consolidation", _consolidation), ("lung_opacity", _opacity), ("edema", _edema),
                    ("lung_lesion", _lesion)):
        if key in findings:
            out += fn(findings[key], rng, terse)
    if "atelectasis" in findings and not atelectasis_stated:
        out += _atelectasis(findings["atelectasis"], rng, terse)
    lung_keys = ("consolidation", "lung_opacity", "edema", "lung_lesion", "atelectasis")
    ptx = findings.get("pneumothorax")
    if not any(k in findings for k in lung_keys) and not (ptx and ptx["size"] != "small"):
        clear = ("The lungs are clear.", "Lungs are clear.") + (() if ptx else ("The lungs are well expanded and clear.",))
        out.append((_pick(rng, clear), {"Lung Opacity": NEGATIVE}))
    if "consolidation" not in findings and rng.random() < 0.6:
        out.append(_pick(rng, (("No focal consolidation.", {"Consolidation": NEGATIVE}),
                               ("No focal consolidation to suggest pneumonia.",
                                {"Consolidation": NEGATIVE, "Pneumonia": NEGATIVE}))))
    if "edema" not in findings and rng.random() < 0.4:
        out.append(("No pulmonary edema.", {"Edema": NEGATIVE}))
    return out


def _pleura(findings: dict, rng, terse: bool) -> list[Sentence]:
    out: list[Sentence] = []
    if "pneumothorax" in findings:
        out += _pneumothorax(findings["pneumothorax"], rng, terse)
    if "pleural_effusion" in findings:
        out += _effusion(findings["pleural_effusion"], rng, terse, findings.get("atelectasis"))
    return out + _pleura_rest(findings, rng, terse)


def _pleura_rest(findings: dict, rng, terse: bool) -> list[Sentence]:
    out: list[Sentence] = []
    if "pleural_other" in findings:
        out += _pleural_other(findings["pleural_other"], rng, terse)
    absent = [k for k in ("pleural_effusion", "pneumothorax") if k not in findings]
    if len(absent) == 2:
        text = _pick(rng, ("No effusion or pneumothorax.",) if terse else
                     ("No pleural effusion or pneumothorax.", "No pneumothorax or pleural effusion.",
                      "There is no pleural effusion or pneumothorax."))
        out.append((text, {"Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}))
    elif absent == ["pleural_effusion"]:
        out.append((_pick(rng, ("No pleural effusion.", "No effusion.")), {"Pleural Effusion": NEGATIVE}))
    elif absent == ["pneumothorax"]:
        out.append(("No pneumothorax.", {"Pneumothorax": NEGATIVE}))
    return out


def _bones(findings: dict, rng, terse: bool) -> list[Sentence]:
    if "fracture" in findings:
        return _fracture(findings["fracture"], rng, terse)
    if rng.random() < 0.6:
        return [(_pick(rng, ("No acute osseous abnormality.", "The osseous structures are intact.",
                             "No displaced rib fracture.")), {"Fracture": NEGATIVE})]
    return []


# ---------------------------------------------------------------- findings section


def _findings_section(findings: dict, family: str, rng) -> list[Sentence]:
    terse = family == "terse"
    pleura = _pleura(findings, rng, terse)
    atelectasis_stated = any("Atelectasis" in obs for _, obs in pleura)  # "... with adjacent atelectasis"
    groups = {
        "devices": _devices(findings["support_devices"], rng, terse) if "support_devices" in findings else [],
        "cardiac": _cardiac(findings, rng, terse),
        "lungs": _lungs(findings, rng, terse, atelectasis_stated),
        "pleura": pleura,
        "bones": _bones(findings, rng, terse),
    }
    order = ["devices", "cardiac", "lungs", "pleura", "bones"]
    if family != "structured":
        middle = ["cardiac", "lungs", "pleura"]
        rng.shuffle(middle)
        order = (["devices"] + middle if rng.random() < 0.6 else middle + ["devices"]) + ["bones"]
        for name in order:
            perm = rng.permutation(len(groups[name]))
            groups[name] = [groups[name][i] for i in perm]
    out: list[Sentence] = []
    projection = findings["projection"]
    if family == "structured" or rng.random() < 0.4:
        out.append((_pick(rng, (f"{projection} view of the chest.", f"Single frontal {projection} chest radiograph.",
                                f"Frontal {projection} radiograph of the chest.")), {}))
    if family == "comparison":
        out.append((_pick(rng, ("Compared to prior radiograph from the previous day.",
                                "Comparison is made to the prior study.",
                                "Compared to the prior examination.")), {}))
    for name in order:
        for text, obs in groups[name]:
            if family == "comparison" and any(v != NEGATIVE for v in obs.values()) and rng.random() < 0.6:
                text = text[:-1] + _pick(rng, (", new since the prior study.", ", unchanged from prior.",
                                               ", not seen previously."))
            out.append((text, obs))
    return out


# ---------------------------------------------------------------- impression section


def _impression_items(findings: dict, rng, style: str) -> list[Sentence]:
    """One short statement per positive finding, critical (pneumothorax) first."""
    terse = style == "terse"
    items: list[Sentence] = []
    f = findings.get("pneumothorax")
    if f is not None:
        if f["subtle"]:
            items.append((f"Questionable small {f['side']} apical pneumothorax.", {"Pneumothorax": UNCERTAIN}))
        elif f["tension"]:
            items.append((_pick(rng, (f"{_cap(f['size'])} {f['side']} tension pneumothorax.",
                                      f"{_cap(f['side'])} tension pneumothorax with mediastinal shift.")),
                          {"Pneumothorax": POSITIVE}))
        else:
            items.append((f"{_cap(f['size'])} {f['side']} pneumothorax.", {"Pneumothorax": POSITIVE}))
    rest: list[Sentence] = []
    merged = set()
    cm, ed, ef = (findings.get(k) for k in ("cardiomegaly", "edema", "pleural_effusion"))
    if style == "prose" and cm and ed and not cm["subtle"] and not ed["subtle"]:
        obs = {"Cardiomegaly": POSITIVE, "Edema": POSITIVE}
        tail = ""
        if ef and not ef["subtle"]:
            tail = f" and {ef['size']} {ef['side']} pleural effusion{'s' if ef['side'] == 'bilateral' else ''}"
            obs["Pleural Effusion"] = POSITIVE
            merged.add("pleural_effusion")
        rest.append((f"Cardiomegaly with {ed['severity']} pulmonary edema{tail}, consistent with congestive heart "
                     f"failure.", obs))
        merged |= {"cardiomegaly", "edema"}
    for key in ("consolidation", "edema", "pleural_effusion", "lung_opacity", "lung_lesion", "atelectasis",
                "cardiomegaly", "enlarged_cardiomediastinum", "fracture", "pleural_other"):
        if key in findings and key not in merged:
            rest.append(_impression_item(key, findings[key], rng, terse))
    perm = rng.permutation(len(rest)) if rng.random() < 0.5 else range(len(rest))
    items += [rest[i] for i in perm]
    if "support_devices" in findings and (not items or rng.random() < 0.7):
        text = _pick(rng, ("Support devices in standard position.", "Lines and tubes in appropriate position."))
        items.append((text, {"Support Devices": POSITIVE}))
    return items


def _impression_item(key: str, f: dict, rng, terse: bool) -> Sentence:
    obs = FINDING_OBSERVATION[key]
    hedge = f.get("subtle", False)
    label = {obs: UNCERTAIN if hedge else POSITIVE}
    side = f.get("side", "")
    if key == "consolidation":
        where = _where(rng, f["side"], f["zone"])
        if f["pneumonia"] == "stated" and not hedge:
            return (_pick(rng, (f"Pneumonia in {where}.", f"Consolidation in {where} compatible with pneumonia.")),
                    {"Consolidation": POSITIVE, "Pneumonia": POSITIVE})
        if f["pneumonia"] != "none":
            text = (f"Possible early consolidation in {where}, which may represent pneumonia." if hedge else
                    f"Consolidation in {where}, may represent pneumonia.")
            return text, {"Consolidation": label[obs], "Pneumonia": UNCERTAIN}
        return (f"Possible early consolidation in {where}." if hedge else f"Consolidation in {where}."), label
    if key == "edema":
        text = "Possible mild pulmonary edema." if hedge else f"{_cap(f['severity'])} pulmonary edema."
    elif key == "pleural_effusion":
        plural = "s" if side == "bilateral" else ""
        text = (f"Possible small {side} pleural effusion." if hedge else
                f"{_cap(f['size'])} {side} pleural effusion{plural}.")
    elif key == "lung_opacity":
        text = ("Questionable faint lung opacity." if hedge else "Nonspecific lung opacity." if terse else
                f"Nonspecific {side} lung opacity; follow-up radiographs recommended.")
    elif key == "lung_lesion":
        text = ("Possible small pulmonary nodule; consider CT." if hedge else
                f"{_cap(side)} lung {f['kind']}." if terse else
                f"{f['size_cm']:.1f} cm {side} lung {f['kind']}; recommend chest CT.")
    elif key == "atelectasis":
        where = "Bibasilar" if side == "bilateral" else f"{_cap(side)} basilar"
        text = "Possible minimal atelectasis." if hedge else f"{where} atelectasis."
    elif key == "cardiomegaly":
        text = "Borderline cardiomegaly." if hedge else "Cardiomegaly."
    elif key == "enlarged_cardiomediastinum":
        text = ("Possible mild mediastinal widening." if hedge else
                "Widened mediastinum; consider CT if clinically indicated.")
    elif key == "fracture":
        text = f"Possible {side} rib fracture." if hedge else f"{_cap(side)} {_ordinal(f['rib'])} rib fracture."
    else:
        kind = "pleural thickening" if f["kind"] == "thickening" else "calcified pleural plaque"
        text = f"{_cap(side)} {kind}."
    return text, label


def _impression_section(findings: dict, labels: dict[str, int], rng) -> tuple[str, list[Sentence]]:
    if labels["No Finding"] == POSITIVE:
        out: list[Sentence] = []
        if "support_devices" in findings:
            out.append((_pick(rng, ("Support devices in standard position.",
                                    "Lines and tubes in appropriate position.")), {"Support Devices": POSITIVE}))
        out.append((_pick(rng, ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                                "No acute intrathoracic process.", "Normal chest radiograph.")),
                    {"No Finding": POSITIVE}))
        return "normal", out
    style = _pick(rng, ("numbered", "prose", "terse"))
    items = _impression_items(findings, rng, style)
    if "pneumothorax" not in findings and "central_line" in findings.get("support_devices", {}) \
            and rng.random() < 0.5:
        items.append(("No pneumothorax.", {"Pneumothorax": NEGATIVE}))
    if all(v != POSITIVE for _, obs in items for k, v in obs.items() if k != "Support Devices"):
        items.append(("Otherwise no acute cardiopulmonary process.", {}))
    if style == "numbered":
        items = [(f"{i}. {text}", obs) for i, (text, obs) in enumerate(items, 1)]
    if labels["Pneumothorax"] == POSITIVE and rng.random() < 0.5:
        items.append((_pick(rng, ("Findings were communicated to the referring clinician by telephone.",
                                  "These critical results were discussed with the ordering physician.")), {}))
    return style, items


def write_report(findings: dict, rng: np.random.Generator) -> Report:
    """Report text, its mentions and ``"{findings_family}/{impression_style}"`` for ``findings``."""
    labels = finding_labels(findings)
    family = _pick(rng, FINDINGS_FAMILIES)
    body = _findings_section(findings, family, rng)
    style, impression = _impression_section(findings, labels, rng)
    mentions = tuple(Mention("findings", t, o) for t, o in body) + tuple(
        Mention("impression", t, o) for t, o in impression)
    text = ("FINDINGS: " + " ".join(t for t, _ in body) + "\n\nIMPRESSION: " + " ".join(t for t, _ in impression))
    return Report(text, mentions, f"{family}/{style}")
