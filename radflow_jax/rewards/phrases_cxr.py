"""Chest X-ray mention patterns for the rule labeler (the 14 CheXpert observations).

Written from clinical knowledge and checked against real Open-I sentences (see ``labeler``'s
module docstring for how a match becomes 1 / 0 / -1). Choices worth knowing:

- "likely", "probable", "borderline", "suggestive of" are hedges (uncertain); "consistent with",
  "compatible with", "in keeping with" are not.
- A nodular opacity/density is a Lung Lesion, not a Lung Opacity; calcified granulomas, scarring and
  interstitial markings are neither (Open-I indexes them separately from "Opacity" and "Nodule").
- Old or healed fractures are still Fracture positives, as in CheXpert.
- Sternotomy wires, surgical clips and orthopedic hardware are not Support Devices; tubes, lines,
  catheters, ports, pacemakers/defibrillators and stents are.
- "Blunting of the costophrenic angle" alone is an uncertain effusion (it may be pleural thickening).
- Vascular congestion/prominence and heart failure count as Edema, following the CheXpert labeler.
- A heart "at the upper limits of normal" or "top normal" is normal (0); "borderline" heart size
  is uncertain (Open-I's indexers tag the former as normal, and so do radiologists).
- Granulomatous or "prior" infections are not Pneumonia; fractured hardware is not a Fracture.
- State sentences ("heart size is normal", "the lungs are clear", "osseous structures are intact")
  give negatives, so No Finding can be decided from reports written in the positive voice.
"""

from __future__ import annotations

from radflow_jax.rewards.labeler import Rule, adjective_first, state

_HEART = r"(?:heart(?: size)?|cardiac (?:silhouette|size|contours?|shadow|borders?)|heart shadow)"
_MEDIASTINUM = (
    r"(?:(?:superior |upper )?mediastin(?:um|al (?:contours?|silhouettes?|width|structures|shadow))"
    r"|cardiomediastinal (?:silhouette|contours?|size|shadow))"
)
_CARDIOMEDIASTINAL = r"(?:cardiomediastinal (?:silhouette|contours?|size|shadow)|cardio mediastinal silhouette)"
_NORMAL = (r"(?:(?:grossly |overall |otherwise )?normal|within normal limits|unremarkable|top[- ]normal|upper[- ]normal"
           r"|(?:at |on |within )?(?:the )?upper limits? of normal)")
_BORDERLINE_SIZE = r"(?:borderline|prominent)"
_ENLARGED = r"(?:enlarged|enlargement|large|increased)"
_LUNGS = r"(?:lungs?|lung fields|lung bases|lung parenchyma|lung zones)"
_BONES = r"(?:(?:osseous|bony|skeletal) (?:structures|thorax)|bones|ribs)"

RULES: tuple[Rule, ...] = (
    # --- No Finding (the final value follows the aggregation rule; these give spans)
    Rule(
        ("No Finding",),
        r"\bno acute (?:(?:cardiopulmonary|intrathoracic|pulmonary|radiographic|chest|cardiac|thoracic"
        r"|focal) )*(?:abnormalit(?:y|ies)|process(?:es)?|disease|findings?|pathology|changes?)\b"
        r"|\bno active (?:cardiopulmonary |pulmonary )?disease\b"
        r"|\bno evidence of (?:acute |active )(?:cardiopulmonary )?(?:disease|process)\b"
        r"|\bnormal (?:chest|study|examination|exam|radiograph)\b"
        r"|\bnegative (?:chest|study|examination|exam)\b"
        r"|\bnegative for acute (?:(?:cardiopulmonary|intrathoracic) )?(?:abnormality|process|disease)\b",
    ),
    # --- Enlarged Cardiomediastinum
    Rule(
        ("Enlarged Cardiomediastinum",),
        r"\b(?:(?:cardio)?mediastinal (?:widening|enlargement)"
        r"|widen(?:ed|ing) (?:of )?(?:the )?(?:\w+ )?(?:cardio)?mediastin\w*"
        r"|enlarged (?:\w+ )?(?:cardio)?mediastin\w*)\b",
    ),
    state(("Enlarged Cardiomediastinum",), _MEDIASTINUM, normal=_NORMAL,
          abnormal=r"(?:widened|widening|enlarged|enlargement)"),
    adjective_first(("Enlarged Cardiomediastinum",), _MEDIASTINUM, normal=r"(?:normal|unremarkable)"),
    # --- Cardiomegaly
    Rule(
        ("Cardiomegaly",),
        r"\b(?:cardiomegaly|cardiac (?:silhouette )?enlargement|enlargement of the (?:cardiac silhouette|heart)"
        r"|enlarged (?:\w+ )?(?:heart|cardiac silhouette|cardiac shadow))\b",
    ),
    state(("Cardiomegaly",), _HEART, normal=_NORMAL + r"|not enlarged", borderline=_BORDERLINE_SIZE,
          abnormal=_ENLARGED),
    state(("Cardiomegaly",), _CARDIOMEDIASTINAL, normal=_NORMAL, borderline=_BORDERLINE_SIZE),
    adjective_first(("Cardiomegaly",), _HEART + "|" + _CARDIOMEDIASTINAL,
                    normal=r"(?:normal|unremarkable|top[- ]normal)", borderline=r"borderline"),
    # --- Lung Lesion
    Rule(
        ("Lung Lesion",),
        r"\b(?:nodules?|nodular(?: (?:densit(?:y|ies)|opacit(?:y|ies)|lesions?))?|masses|mass|mass-?like"
        r"|round(?:ed)? (?:\w+ )?(?:densit(?:y|ies)|opacit(?:y|ies))"
        r"|(?:lung|pulmonary|parenchymal|cavitary|focal|spiculated) lesions?|tumou?rs?|neoplasms?"
        r"|carcinoma|malignancy|metastas[ie]s|metastatic (?:disease|lesions?))\b",
        unmention=r"\bmass effect\b|\bsoft tissue mass\b|\bbody mass\b",
    ),
    # --- Lung Opacity
    Rule(
        ("Lung Opacity",),
        r"\b(?:opacit(?:y|ies)|opacification|opacified|infiltrat(?:e|es|ion|ive)"
        r"|air[- ]?space (?:disease|opacit(?:y|ies)|process)|densit(?:y|ies))\b",
        unmention=r"\b(?:nodular|round(?:ed)?(?: \w+)?|mass-?like) (?:densit|opacit)\w*"
        r"|\b(?:bone|bony|osseous|soft[- ]tissue|mineral|metallic|calcific|calcified|fat|fluid) densit\w*"
        r"|\bdensit\w* (?:of|in) the (?:bones?|spine)",
    ),
    state(("Lung Opacity",), _LUNGS, normal=r"(?:clear|clean)"),
    adjective_first(("Lung Opacity",), _LUNGS, normal=r"clear"),
    # --- Edema
    Rule(
        ("Edema",),
        r"\b(?:edema(?:tous)?|oedema|(?:pulmonary |pulmonary vascular |vascular |venous )?congestion"
        r"|vascular (?:prominence|redistribution|engorgement|indistinctness)"
        r"|prominen(?:t|ce of the) (?:\w+ )?(?:pulmonary |lung )?vascula(?:rity|ture)"
        r"|(?:congestive )?heart failure|chf)\b",
        unmention=r"\b(?:soft[- ]tissue|subcutaneous|extremity|pedal|scalp|chest wall) (?:o)?edema\b",
    ),
    # --- Consolidation, Pneumonia, Atelectasis
    Rule(("Consolidation",), r"\bconsolidat(?:ion|ions|ive|ed)\b"),
    Rule(
        ("Pneumonia",),
        r"\b(?:(?:broncho)?pneumonias?|pneumonitis|infections?|infectious(?: process)?|inflammatory process)\b",
        unmention=r"\b(?:(?:prior|previous|old|remote|healed|chronic) (?:\w+ )?)?(?:granulomatous|histoplasmosis"
        r"|tuberculous) infection\b|\b(?:prior|previous|old|remote|healed) (?:\w+ )?infection\b",
    ),
    Rule(
        ("Atelectasis",),
        r"\b(?:atelecta(?:sis|ses|tic)|(?:lobar|lobe|segmental|subsegmental|lung) collapse"
        r"|collapse of the (?:\w+ ){0,3}?(?:lobe|lung))\b",
    ),
    # --- Pleura
    Rule(("Pneumothorax",), r"\b(?:(?:hydro)?pneumothora(?:x|ces)|pneumothoraxes|pleural air(?: collection)?)\b"),
    Rule(
        ("Pleural Effusion",),
        r"\b(?:effusions?|pleural fluid|hydrothorax|hydropneumothorax"
        r"|(?P<borderline>blunt(?:ing|ed) of (?:the )?(?:\w+ ){0,2}?costophrenic (?:angles?|sulci|recess(?:es)?)))\b",
        unmention=r"\b(?:pericardial|joint) effusions?\b",
    ),
    state(("Pleural Effusion",), r"(?:costophrenic (?:angles?|sulci|recess(?:es)?)|pleural spaces?)",
          normal=r"(?:sharp|clear|normal|preserved|unremarkable)",
          borderline=r"(?:blunted|blunting)"),
    Rule(
        ("Pleural Other",),
        r"\b(?:pleural (?:\w+ )?thickening|thicken(?:ed|ing) (?:of )?(?:the )?(?:\w+ )?pleura"
        r"|(?:calcified )?pleural (?:plaques?|calcifications?|scarring)|fibrothorax"
        r"|apical (?:pleural )?cap(?:ping)?|pleuro-?parenchymal (?:scarring|thickening))\b",
    ),
    # --- Fracture
    Rule(("Fracture",), r"\b(?:fractures?d?|fx)\b",
         unmention=r"\b(?:catheter|screw|wire|lead|hardware|device|sternotomy) fractures?\b"
         r"|\bfractures? may not be (?:demonstrated|seen|visible|detected)"
         r"|\bfractured (?:\w+ ){0,2}?(?:screw|wires?|leads?|catheter|hardware)\b"),
    Rule(("Fracture",), r"\b(?:osseous|bony|bone|skeletal) (?:abnormalit(?:y|ies)|findings?|injury|injuries)\b",
         negated_only=True),
    state(("Fracture",), _BONES,
          normal=r"(?:intact|unremarkable|normal|without (?:(?:acute|focal|displaced) )*(?:abnormality|fracture))"),
    # --- Support Devices
    Rule(
        ("Support Devices",),
        r"\b(?:(?:endotracheal|et|tracheostomy|trach|nasogastric|ng|orogastric|og|feeding|enteric|gastric"
        r"|chest|thoracostomy|dobb?hoff|pleural|mediastinal|drainage|gastrostomy|jejunostomy) tubes?|ett|ngt"
        r"|tip (?:\w+ ){0,4}?(?:svc|superior vena cava|(?:right )?atri(?:um|al)|cavoatrial|carina|stomach)"
        r"|(?:with|and) (?:two |three |\d )?leads|(?:pacemaker|pacer|battery|cardiac \w+) generator|ivc filter"
        r"|(?:spinal |nerve |neuro)?stimulator"
        r"|(?:central (?:venous )?|venous |picc |(?:internal )?jugular |ij |subclavian |arterial "
        r"|swan[- ]ganz |(?:hemo)?dialysis |femoral )(?:catheters?|lines?)|catheters?|picc"
        r"|port-?a-?cath|(?:chest|power|mediport|infusion|venous access) port|pacemakers?|pacers?"
        r"|pacing wires?|aicd|icd|defibrillators?|(?:pacing|pacer|pacemaker|cardiac|transvenous|intact|distal) leads?"
        r"|stents?|(?:lines|tubes) and (?:tubes|lines)|support devices?|loop recorder"
        r"|(?:medical|electronic|cardiac|implanted|implantable|closure|cardiac rhythm|monitoring) (?:\w+ )?devices?)\b",
    ),
)
