"""Chest X-ray mention patterns for the rule labeler (the 14 CheXpert observations).

Written from clinical knowledge and checked against real Open-I sentences; what each observation
covers, and where that departs from the CheXpert labeler, is ``docs/labeling.md`` (the labeler's
module docstring says how a match becomes 1 / 0 / -1). Choices worth knowing:

- Granulomas (calcified or not), nodules, nodular densities and masses are Lung Lesions; a round
  or ovoid opacity is a Lung Opacity, as in CheXpert; a mediastinal mass is Enlarged
  Cardiomediastinum.
- Lung scarring, fibrosis and chronic/increased interstitial markings are Lung Opacity; pleural
  and pleuroparenchymal scarring, apical capping and pleural thickening are Pleural Other.
- A negated consolidation ("no focal consolidation") also negates Lung Opacity.
- Sternotomy (wires), CABG, surgical clips, orthopaedic hardware, tubes, lines, catheters, ports,
  pacemakers/defibrillators, stents and stimulators are Support Devices.
- "Blunting of the costophrenic angle" alone is an uncertain effusion (it may be pleural
  thickening); blunting explained as pleural thickening is no effusion mention.
- Vascular congestion/prominence, increased vascularity, fluid overload and heart failure count
  as Edema, following the CheXpert labeler.
- A heart "at the upper limits of normal" or "top normal" is normal (0); "borderline" heart size
  is uncertain.
- Old, healed and healing fractures, and vertebral wedge/compression deformities, are Fracture
  positives; granulomatous or "prior" infections are not Pneumonia; fractured hardware is not a
  Fracture.
- State sentences ("heart size is normal", "the lungs are clear", "osseous structures are intact")
  give negatives, so No Finding can be decided from reports written in the positive voice.
"""

from __future__ import annotations

from radflow_jax.rewards.rules import Rule, adjective_first, state

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
_LUNGS = r"(?:lungs?|lung fields|lung bases|lung parenchyma|lung zones|(?:left|right) (?:chest|hemithorax))"
_BONES = r"(?:(?:osseous|bony|skeletal) (?:structures|thorax)|bones|ribs|(?:thoracic )?spine)"
_CARDIAC_AND_MEDIASTINAL = r"(?:cardiac and mediastinal (?:contours?|silhouettes?))"

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
        r"\b(?:(?:cardio)?mediastinal (?:widening|enlargement|mass(?:es)?)"
        r"|widen(?:ed|ing) (?:of )?(?:the )?(?:\w+ )?(?:cardio)?mediastin\w*"
        r"|enlarged (?:\w+ )?(?:cardio)?mediastin\w*)\b",
    ),
    state(("Enlarged Cardiomediastinum",), _MEDIASTINUM, normal=rf"(?:{_NORMAL}|maintained)(?! heart| cardiac)",
          abnormal=r"(?:widened|widening|enlarged|enlargement)"),
    adjective_first(("Enlarged Cardiomediastinum",), _MEDIASTINUM, normal=r"(?:normal|unremarkable|non-?enlarged)",
                    words=3),
    state(("Enlarged Cardiomediastinum", "Cardiomegaly"), _CARDIAC_AND_MEDIASTINAL, normal=_NORMAL),
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
                    normal=r"(?:normal|unremarkable|top[- ]normal|non-?enlarged|small(?:[- ]sized)?)",
                    borderline=r"borderline"),
    Rule(("Cardiomegaly",), r"\b(?P<normal>normal (?:size|configuration)(?: and (?:configuration|contour))?) of "
         r"the (?:heart|cardiac silhouette)\b"),
    # --- Lung Lesion
    Rule(
        ("Lung Lesion",),
        r"\b(?:nodules?|nodular (?:densit(?:y|ies)|opacit(?:y|ies)|opacification|lesions?|foci)|masses|mass|mass-?like"
        r"|granulomas?|granulomata"
        r"|(?:lung|pulmonary|parenchymal|cavitary|focal|spiculated) lesions?|tumou?rs?|neoplasms?"
        r"|carcinoma|malignancy|metastas[ie]s|metastatic (?:disease|lesions?))\b",
        unmention=r"\bmass effect\b|\bsoft tissue mass\b|\bbody mass\b|\bmediastinal mass(?:es)?\b",
    ),
    # --- Lung Opacity
    Rule(
        ("Lung Opacity",),
        r"\b(?:opacit(?:y|ies)|opacification|opacified|infiltrat(?:e|es|ion|ive)"
        r"|air[- ]?space (?:disease|opacit(?:y|ies)|process)|densit(?:y|ies)"
        r"|scar(?:s|ring|red)?|fibrosis|fibrotic (?:changes?|scarring)|reticula(?:r|tion)"
        r"|interstitial (?:lung )?(?:markings?|opacit(?:y|ies)|densit(?:y|ies)|thickening|pattern|prominence"
        r"|disease|infiltrates?|changes?)"
        r"|(?:increased|coarse|coarsened|prominent|chronic|irregular) (?:\w+ )?(?:lung |interstitial )?markings"
        r"|(?:prominent|increased|coarse|thickened) (?:pulmonary )?interstitium)\b",
        unmention=r"\b(?:nodular|mass-?like) (?:densit|opacit)\w*"
        r"|\b(?:bone|bony|osseous|soft[- ]tissue|mineral|metallic|calcific|calcified|fat|fluid) densit\w*"
        r"|\bdensit\w* (?:of|in) the (?:bones?|spine)"
        r"|\b(?:pleural|pleuro-?parenchymal|pleural-parenchymal) (?:\w+ )?scar\w*"
        r"|\bcrowd\w* (?:\w+ ){0,3}?interstitial markings|\bin (?:density|opacity)\b"
        r"|\b(?:densit|opacit)\w* (?:\w+ ){0,2}?over the (?:breast|nipple)s?|\bmediastinal (?:\w+ )?opacit\w*"
        r"|\bopacit\w* (?:at|in|of|within) the (?:\w+ ){0,3}?mediastinum\b",
    ),
    Rule(("Lung Opacity",), r"\bconsolidat(?:ion|ions|ive|ed)\b", negated_only=True),
    state(("Lung Opacity",), _LUNGS, normal=r"(?:clear|clean)"),
    adjective_first(("Lung Opacity",), _LUNGS, normal=r"clear"),
    # --- Edema
    Rule(
        ("Edema",),
        r"\b(?:edema(?:tous)?|oedema|(?:pulmonary |pulmonary vascular |vascular |venous )?congestion"
        r"|vascular (?:prominence|redistribution|engorgement|indistinctness)"
        r"|prominen(?:t|ce of the) (?:\w+ )?(?:pulmonary |lung )?vascula(?:rity|ture)"
        r"|(?:increased|engorged) (?:\w+ )?(?:pulmonary )?vascula(?:rity|ture)|(?:fluid|volume) overload"
        r"|(?:congestive )?heart failure|chf)\b",
        unmention=r"\b(?:soft[- ]tissue|subcutaneous|extremity|pedal|scalp|chest wall) (?:o)?edema\b",
    ),
    state(("Edema",), r"pulmonary vascula\w*", abnormal=r"(?:increased|engorged|congested)"),
    # --- Consolidation, Pneumonia, Atelectasis
    Rule(("Consolidation",), r"\bconsolidat(?:ion|ions|ive|ed)\b"),
    Rule(
        ("Pneumonia",),
        r"\b(?:(?:broncho)?pneumonias?|pneumonitis|infections?|infectious(?: process)?|inflammatory process)\b",
        unmention=r"\b(?:(?:prior|previous|old|remote|healed|chronic) (?:\w+ )?)?(?:granulomatous|histoplasmosis"
        r"|tuberculous) infection\b|\b(?:prior|previous|old|remote|healed) (?:\w+ )?infection\b"
        r"|\bsequela\w* of (?:\w+ )?infection\b",
    ),
    Rule(
        ("Atelectasis",),
        r"\b(?:atelecta(?:sis|ses|tic)|(?:lobar|lobe|segmental|subsegmental|lung) collapse"
        r"|collapse of (?:the |a )?(?:\w+ ){0,4}?(?:lobe|lung))\b",
    ),
    # --- Pleura
    Rule(("Pneumothorax",), r"\b(?:(?:hydro|ha?emo)?pneumothora(?:x|ces)|pneumothoraxes|pleural air(?: collection)?)\b"),
    Rule(
        ("Pleural Effusion",),
        r"\b(?:effusions?|pleural fluid|hydrothorax|hydropneumothorax|ha?emothorax|ha?emopneumothorax"
        r"|(?P<borderline>blunt(?:ing|ed) of (?:the )?(?:\w+ ){0,2}?costophrenic (?:angles?|sulci|recess(?:es)?|xxxx)))\b",
        unmention=r"\b(?:pericardial|joint) effusions?\b"
        r"|\bblunt\w* [^.;]{0,60}?(?:due to|from|secondary to|representing) (?:\w+ )?pleural (?:thickening|scarring)",
    ),
    state(("Pleural Effusion",), r"(?:costophrenic (?:angles?|sulci|recess(?:es)?|xxxx)|pleural spaces?)",
          normal=r"(?:sharp|clear|normal|preserved|unremarkable)",
          borderline=r"(?:blunted|blunting)"),
    Rule(
        ("Pleural Other",),
        r"\b(?:pleural (?:\w+ )?thickening|thicken(?:ed|ing) (?:of )?(?:the )?(?:\w+ )?pleura"
        r"|(?:calcified )?pleural (?:plaques?|calcifications?|scarring)|fibrothorax"
        r"|apical (?:pleural )?(?:cap(?:ping)?|thickening)|(?:pleuro-?|pleural-)parenchymal (?:\w+ )?"
        r"(?:scarring|thickening|irregularit(?:y|ies)))\b",
    ),
    # --- Fracture
    Rule(("Fracture",), r"\b(?:fractures?d?|fx"
         r"|(?:wedge|wedging|compression|healing|healed|old|post-?traumatic) (?:\w+ ){0,2}?deformit(?:y|ies))\b",
         unmention=r"\b(?:catheter|screw|wire|lead|hardware|device|sternotomy) fractures?\b"
         r"|\bfractures? may not be (?:demonstrated|seen|visible|detected)"
         r"|\bfractured (?:\w+ ){0,2}?(?:screw|wires?|leads?|catheter|hardware)\b"),
    Rule(("Fracture",), r"\b(?:osseous|bony|bone|skeletal) (?:or soft tissue )?(?:abnormalit(?:y|ies)|findings?"
         r"|injury|injuries)\b",
         negated_only=True),
    state(("Fracture",), _BONES,
          normal=r"(?:intact|unremarkable|normal|without (?:(?:acute|focal|displaced) )*(?:abnormality|fracture)"
          r"|no (?:acute )?abnormalit(?:y|ies))"),
    # --- Support Devices
    Rule(
        ("Support Devices",),
        r"\b(?:(?:endotracheal|et|tracheostomy|trach|nasogastric|ng|orogastric|og|feeding|enteric|gastric"
        r"|chest|thoracostomy|dobb?hoff|pleural|mediastinal|drainage|gastrostomy|jejunostomy) tubes?|ett|ngt"
        r"|tip (?:\w+ ){0,6}?(?:svc|superior vena cava|superior xxxx|(?:right )?atri(?:um|al)|cavoatrial|carina|stomach)"
        r"|sternotomy|cabg|(?:sternotomy|sternal|cerclage|surgical) wires?|clips?|staples|sutures?|hardware"
        r"|intramedullary (?:rod|nail|xxxx)|(?:shunt )?tubing|drains?|balloon|valve (?:replacement|prosthesis)"
        r"|prosthetic (?:\w+ )?valve"
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
