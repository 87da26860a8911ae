"""Carotid duplex mention patterns for the rule labeler (per-side SRU consensus observations).

``{side}`` in an observation name is filled in by the labeler from the laterality of the sentence
(or the side carried over from a ``RIGHT:``/``LEFT:`` paragraph). Choices worth knowing:

- SRU bands come from their percentages ("70 % or greater", ">= 70%", "50-69 %", "less than 50 %")
  or their words ("severe"/"high-grade"/"critical" ≥ 70 %, "moderate" 50-69 %, "mild"/"minimal"
  < 50 % stenosis); "near-occlusion", "string sign", "trickle flow" are near-occlusion; "occlusion",
  "occluded", "no flow"/"absent flow" are occlusion.
- A band the radiologist states wins. Only for a side with no band statement at all (stated,
  negated or hedged) does the ICA peak systolic velocity give one, by the SRU consensus
  thresholds (``SRU_PSV_50``, ``SRU_PSV_70``): > 230 cm/s ≥ 70 %, 125-230 cm/s 50-69 %, < 125 cm/s
  < 50 % when that side has plaque (else normal). "At least 50 %" is the 50-69 % band.
- "String sign", "trickle flow", "near-complete occlusion" and "pseudo-occlusion" are
  near-occlusion; "contralateral occlusion" names the other side and is no mention here.
- A stenosis mention without a band counts only when negated: "no stenosis" negates every band,
  "no hemodynamically significant stenosis" the bands from 50 % up.
- Intima-media thickness with a number: > 1.0 mm is thickening, unless hedged ("borderline",
  "possibly"), which makes it uncertain.
"""

from __future__ import annotations

from radflow_jax.rewards.rules import Rule

_BANDS = ("{side} Stenosis <50%", "{side} Stenosis 50-69%", "{side} Stenosis >=70%",
          "{side} Near Occlusion", "{side} Occlusion")
_STENOSIS = r"stenos[ie]s|narrowing"
_GRADE_WORDS = r"(?:\w+ ){0,2}?(?:" + _STENOSIS + r")"
IMT_THRESHOLD_MM = 1.0
SRU_PSV_50, SRU_PSV_70 = 125.0, 230.0  # ICA PSV (cm/s) thresholds of the SRU bands (Grant et al. 2003)
# An ICA peak systolic velocity ("Right ICA PSV 260 cm/s", "the left ICA peak systolic velocity is
# 140 cm/s"); not the CCA's or ECA's.
ICA_PSV = (r"\bica\b[^.;\d]{0,30}?\b(?:psv|peak systolic velocit(?:y|ies))\b[^.;\d]{0,25}?"
           r"(?P<num>\d{2,3}(?:\.\d+)?)\s*cm/s(?:ec)?\b")

RULES: tuple[Rule, ...] = (
    Rule(
        ("No Finding",),
        r"\bnormal (?:bilateral )?carotid (?:duplex )?(?:doppler )?(?:ultrasound|sonogram|examination|exam|study)\b",
    ),
    Rule(("{side} Plaque",), r"\b(?:plaques?|atheromas?|atheromatous (?:disease|changes?))\b"),
    Rule(
        ("{side} Intima-Media Thickening",),
        r"\b(?:intima[- ]media thickening|intimal thickening|(?P<anchor>thicken(?:ed|ing)) (?:of )?(?:the )?"
        r"intima(?:[- ]media)?(?: complex)?|(?:intima[- ]media (?:thickness|complex)|imt|cimt)\b[^.;\d]{0,30}?"
        r"(?P<anchor2>thickened|increased))\b",
    ),
    Rule(
        ("{side} Intima-Media Thickening",),
        r"\b(?:intima[- ]media (?:thickness|complex)|imt|cimt)\b[^.;\d]{0,40}?(?P<num>\d+(?:\.\d+)?)\s*mm\b",
        threshold=IMT_THRESHOLD_MM,
    ),
    Rule(("{side} Intima-Media Thickening",),  # a normal IMT without a number (with one: the rule above)
         r"\b(?P<normal>normal|unremarkable) (?:\w+ )?(?:intima[- ]media thickness|imt|cimt)\b(?![^.;\d]{0,40}?\d)"),
    Rule(("{side} Intima-Media Thickening",),
         r"\b(?:intima[- ]media thickness|imt|cimt) (?:is |are )?(?P<normal>normal|within normal limits)\b"),
    Rule(
        ("{side} Stenosis >=70%",),
        r"(?:(?:(?<!<unk)>=?|≥|greater than|more than|at least)\s*70\s*(?:%|percent|per cent)"  # "<unk> 70 %" is no ">"
        r"|\b70\s*(?:%|percent|per cent)\s*(?:or (?:greater|more)|and (?:greater|above)|\+)|\b[78]0\s*(?:-|–|to)\s*99\s*(?:%|percent|per cent)|\b(?:severe|high[- ]grade|critical|tight|significant high[- ]grade) "
        + _GRADE_WORDS + r")",
    ),
    Rule(
        ("{side} Stenosis 50-69%",),
        r"(?:\b50\s*(?:-|–|to)\s*69\s*(?:%|percent|per cent)|(?:(?<!<unk)>=?|≥|at least)\s*50\s*(?:%|percent|per cent)"
        r"|\bmoderate " + _GRADE_WORDS + r")",
    ),
    Rule(
        ("{side} Stenosis <50%",),
        r"(?:(?:<|less than|under|below)\s*50\s*(?:%|percent|per cent)|\b(?:1\s*-\s*)?49\s*(?:%|percent|per cent)|\b(?:mild|minimal|minor) "
        + _GRADE_WORDS + r")",
    ),
    Rule(
        ("{side} Near Occlusion",),
        r"\b(?:near[- ]?(?:complete )?occlu(?:sion|sive|ded)|string sign|trickle (?:of )?flow"
        r"|(?:sub-?total|pseudo-?)\s*occlusion)",
    ),
    Rule(
        ("{side} Occlusion",),
        r"\b(?:occlu(?:sion|ded|sive)|(?:no|absent|absence of) flow(?![- ]*limiting)|flow is absent)\b",
        unmention=r"\b(?:near[- ]?(?:complete )?|sub-?total\s*|pseudo-?\s*|non-?)occlu\w*"
        r"|\bcontralateral (?:\w+ )?occlu\w*",
    ),
    Rule(_BANDS[1:], r"\b(?:hemodynamically |haemodynamically |flow[- ]limiting |significant )+(?:\w+ )?(?:"
         + _STENOSIS + r")\b", negated_only=True),
    Rule(_BANDS, r"\b(?:" + _STENOSIS + r")\b", negated_only=True,
         unmention=r"\b(?:hemodynamically |haemodynamically |flow[- ]limiting |significant )+(?:\w+ )?(?:"
         + _STENOSIS + r")\b"),
)
