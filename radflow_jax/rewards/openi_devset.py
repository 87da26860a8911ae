"""The hand-labeled Open-I dev set: how well the rule labeler reads real chest X-ray reports.

``tests/rewards/openi_devset.json`` holds Open-I (IU X-Ray) report ids and the labels a careful
reader gives them under ``docs/labeling.md``; the text comes from the ``torchxrayvision`` 1.5.7
wheel (``torchxrayvision/data/NLMCXR_reports.tgz``, or the wheel itself), never from this
repository. ``devset_scores`` measures a labeler against those labels and ``mesh_agreement``
against the MeSH terms Open-I's indexers gave all 3,955 reports (a weak check: indexers tag what
is present, hedged or not, and nothing that is absent). ``load_handwritten`` reads the carotid
counterpart, ``tests/rewards/carotid_handlabeled.json``: reports written by hand (so their text is
in the repository) with their labels. ``tools/labeler_devset.py`` prints all of it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np

from radflow_jax.schema import LABEL_BLANK, NEGATIVE, POSITIVE, UNCERTAIN, Schema

REPORTS_ENV = "RADFLOW_OPENI_REPORTS"  # path of NLMCXR_reports.tgz or of the wheel
REPORTS_PATH = "~/.cache/radflow_jax/openi/NLMCXR_reports.tgz"
_WHEEL_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"

# MeSH major terms (the part before the first "/") that name an observation, with a required
# word in the rest of the term where the head alone is too broad ("Cicatrix/pleura/apex" is
# pleural, "Cicatrix/lung/base" is lung scarring).
MESH_TERMS: dict[str, tuple[tuple[str, str], ...]] = {
    "Enlarged Cardiomediastinum": (("Mediastinum", "prominent"), ("Mediastinum", "enlarged")),
    "Cardiomegaly": (("Cardiomegaly", ""), ("Cardiac Shadow", "enlarged")),
    "Lung Lesion": (("Nodule", ""), ("Mass", ""), ("Calcified Granuloma", ""), ("Granuloma", "")),
    "Lung Opacity": (("Opacity", ""), ("Airspace Disease", ""), ("Infiltrate", ""), ("Density", "lung"),
                     ("Cicatrix", "lung"), ("Markings", "interstitial"), ("Pulmonary Fibrosis", ""),
                     ("Lung Diseases, Interstitial", "")),
    "Edema": (("Pulmonary Edema", ""), ("Pulmonary Congestion", ""), ("Heart Failure", "")),
    "Consolidation": (("Consolidation", ""),),
    "Pneumonia": (("Pneumonia", ""),),
    "Atelectasis": (("Pulmonary Atelectasis", ""),),
    "Pneumothorax": (("Pneumothorax", ""), ("Hydropneumothorax", ""), ("Hemopneumothorax", "")),
    "Pleural Effusion": (("Pleural Effusion", ""), ("Hydropneumothorax", "")),
    "Pleural Other": (("Thickening", "pleura"), ("Cicatrix", "pleura")),
    "Fracture": (("Fractures, Bone", ""),),
    "Support Devices": (("Catheters, Indwelling", ""), ("Implanted Medical Device", ""), ("Medical Device", ""),
                        ("Tube, Inserted", ""), ("Surgical Instruments", ""), ("Stents", "")),
    "No Finding": (("normal", ""),),
}


@dataclasses.dataclass(frozen=True)
class OpenIText:
    """One Open-I report: its two sections (whitespace collapsed) and its MeSH major terms."""

    id: str
    findings: str
    impression: str
    mesh: tuple[str, ...]

    @property
    def report(self) -> str:
        """Headed text, the form the labeler reads a whole report in."""
        return f"FINDINGS: {self.findings}\n\nIMPRESSION: {self.impression}"


def find_reports(path: str | None = None) -> str | None:
    """The Open-I archive to read: ``path``, else ``$RADFLOW_OPENI_REPORTS``, else ``REPORTS_PATH``
    when it exists; ``None`` when none is given and the default is absent."""
    chosen = path or os.environ.get(REPORTS_ENV) or os.path.expanduser(REPORTS_PATH)
    if path or os.environ.get(REPORTS_ENV) or os.path.isfile(chosen):
        return chosen
    return None


def _text(element: ET.Element) -> str:
    return " ".join("".join(element.itertext()).split())


def read_reports(path: str) -> dict[str, OpenIText]:
    """Every report with a non-empty FINDINGS or IMPRESSION, by uId, from the ``.tgz`` or the wheel."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (the Open-I reports: NLMCXR_reports.tgz or the "
                         "torchxrayvision 1.5.7 wheel)")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as wheel:
                data = io.BytesIO(wheel.read(_WHEEL_MEMBER))
            tar = tarfile.open(fileobj=data)
        else:
            tar = tarfile.open(path)
    except (KeyError, tarfile.TarError, OSError) as e:
        raise ValueError(f"{path}: not an Open-I report archive ({e})") from None
    out = {}
    with tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml"):
                continue
            try:
                root = ET.fromstring(tar.extractfile(member).read())
            except ET.ParseError as e:
                raise ValueError(f"{path}: {member.name}: malformed XML ({e})") from None
            uid = root.find("uId")
            if uid is None or not uid.get("id"):
                raise ValueError(f"{path}: {member.name}: missing <uId id=...>")
            sections = {a.get("Label", "").upper(): _text(a) for a in root.iter("AbstractText")}
            findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
            if findings or impression:
                mesh = tuple(_text(e) for e in root.iter("major") if _text(e))
                out[uid.get("id")] = OpenIText(uid.get("id"), findings, impression, mesh)
    if not out:
        raise ValueError(f"{path}: no Open-I reports in the archive")
    return out


def load_devset(path: str, schema: Schema) -> dict[str, dict[str, int]]:
    """``{report id: {observation: 1 | 0 | -1}}`` (unlisted = not mentioned), validated."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        labels = data["labels"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a dev-set file with a 'labels' object ({e!r})") from None
    findings = [o for o in schema.observations if o != "No Finding"]
    for rid, row in labels.items():
        if not re.fullmatch(r"CXR\d+", rid) or not isinstance(row, dict):
            raise ValueError(f"{path}: record {rid!r}: expected an Open-I uId with an object of labels")
        for obs, value in row.items():
            if obs not in findings:
                raise ValueError(f"{path}: record {rid!r}: field {obs!r} is not one of {findings} "
                                 "(No Finding follows from the others)")
            if value not in (POSITIVE, NEGATIVE, UNCERTAIN) or isinstance(value, bool):
                raise ValueError(f"{path}: record {rid!r}: field {obs!r}: {value!r} is not 1, 0 or -1")
    return labels


def load_handwritten(path: str, schema: Schema) -> dict[str, tuple[str, dict[str, int], bool]]:
    """``{id: (text, labels, held_out)}`` of a hand-written, hand-labeled set, validated."""
    try:
        with open(path, encoding="utf-8") as f:
            reports = json.load(f)["reports"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a hand-labeled set with a 'reports' object ({e!r})") from None
    out = {}
    for rid, row in reports.items():
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("labels"), dict):
            raise ValueError(f"{path}: record {rid!r}: expected {{'text': str, 'labels': {{...}}}}")
        for obs, value in row["labels"].items():
            if obs not in schema.observations or obs == "No Finding":
                raise ValueError(f"{path}: record {rid!r}: field {obs!r} is not an observation of "
                                 f"{schema.modality} (No Finding follows from the others)")
            if value not in (POSITIVE, NEGATIVE, UNCERTAIN) or isinstance(value, bool):
                raise ValueError(f"{path}: record {rid!r}: field {obs!r}: {value!r} is not 1, 0 or -1")
        out[rid] = (row["text"], row["labels"], bool(row.get("heldout", False)))
    return out


def gold_array(labels: Mapping[str, Mapping[str, int]], ids: list[str], schema: Schema) -> np.ndarray:
    """int8 ``[N, K]`` in schema order, blank where unlisted, No Finding by ``docs/labeling.md``."""
    out = np.full((len(ids), len(schema.observations)), LABEL_BLANK, np.int8)
    for i, rid in enumerate(ids):
        for obs, value in labels[rid].items():
            out[i, schema.index(obs)] = value
    if "No Finding" in schema.observations:
        others = [k for k, o in enumerate(schema.observations) if o not in ("No Finding", "Support Devices")]
        found = np.isin(out[:, others], (POSITIVE, UNCERTAIN)).any(1)
        out[:, schema.index("No Finding")] = np.where(found, LABEL_BLANK, POSITIVE)
    return out


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0}


def devset_scores(gold: np.ndarray, predicted: np.ndarray, schema: Schema,
                  columns: Sequence[str] | None = None) -> dict:
    """The labeler's reading of the dev set against the hand labels, both ``[N, K]``.

    ``per_observation``: precision/recall/F1 of positive mentions (label 1) and the gold counts of
    each value; ``micro_f1`` (with ``micro_precision``/``micro_recall``): positive mentions over
    ``columns`` (default: every observation but No Finding, which follows from them; for carotid
    the per-side stenosis bands); ``negation_accuracy``: share of
    gold negatives (0) the labeler calls 0; ``uncertain_accuracy``: share of gold uncertain (-1)
    it calls -1; ``no_finding_accuracy``: share of reports where its No Finding equals the gold.
    """
    if gold.shape != predicted.shape:
        raise ValueError(f"gold {gold.shape} and predicted {predicted.shape} labels differ in shape")
    cols = [k for k, o in enumerate(schema.observations) if o != "No Finding"]
    micro_cols = cols if columns is None else [schema.index(o) for o in columns]
    per, totals = {}, np.zeros(3, int)
    for k in cols:
        g, p = gold[:, k], predicted[:, k]
        counts = np.array([((g == 1) & (p == 1)).sum(), ((g != 1) & (p == 1)).sum(), ((g == 1) & (p != 1)).sum()])
        totals += counts if k in micro_cols else 0
        per[schema.observations[k]] = {**_prf(*counts.tolist()), "positive": int((g == 1).sum()),
                                       "negative": int((g == 0).sum()), "uncertain": int((g == -1).sum())}
    micro = _prf(*totals.tolist())
    g, p = gold[:, cols], predicted[:, cols]
    out = {"reports": int(gold.shape[0]), "per_observation": per, "micro_precision": micro["precision"],
           "micro_recall": micro["recall"], "micro_f1": micro["f1"]}
    for name, value in (("negation", NEGATIVE), ("uncertain", UNCERTAIN)):
        n = int((g == value).sum())
        out[f"{name}_accuracy"] = float(((g == value) & (p == value)).sum() / n) if n else None
        out[f"{name}_count"] = n
    if "No Finding" in schema.observations:
        k = schema.index("No Finding")
        out["no_finding_accuracy"] = float((gold[:, k] == predicted[:, k]).mean())
    return out


def mesh_present(mesh: tuple[str, ...], observation: str) -> bool:
    """Whether any MeSH major term names ``observation`` (``MESH_TERMS``)."""
    for term in mesh:
        head, _, rest = term.partition("/")
        for want, word in MESH_TERMS[observation]:
            if head == want and word in rest.lower():
                return True
    return False


def mesh_agreement(reports: list[OpenIText], predicted: np.ndarray, schema: Schema) -> dict[str, dict]:
    """Per observation: MeSH-tagged reports, labeler-present ones (1 or -1; for No Finding, 1) and
    their overlap, with precision/recall/F1 of the labeler against MeSH. "No Indexing" reports are
    left out by the caller."""
    out = {}
    for k, obs in enumerate(schema.observations):
        mesh = np.array([mesh_present(r.mesh, obs) for r in reports])
        said = predicted[:, k] == POSITIVE if obs == "No Finding" else np.isin(predicted[:, k], (POSITIVE, UNCERTAIN))
        tp, fp, fn = int((mesh & said).sum()), int((~mesh & said).sum()), int((mesh & ~said).sum())
        out[obs] = {"mesh": int(mesh.sum()), "labeler": int(said.sum()), "both": tp, **_prf(tp, fp, fn)}
    return out
