"""Rule-based report labeler in the spirit of the CheXpert labeler, for every modality schema.

Rewards, consistency checks and evaluation all need the same question answered for generated and
reference text: which observations does it state as present (1), absent (0), uncertain (-1), or not
at all (``None``)? What a careful reader answers for chest X-rays, and where that departs from the
CheXpert labeler, is written down in ``docs/labeling.md``; ``rewards/openi_devset.py`` measures this
labeler against it on hand-labeled Open-I reports. The pipeline, with regular expressions only (no
parser is available here):

1. **Sentences**: split at ``.``/``!``/``?`` followed by a space or the end, at line breaks, and at
   a run-on "apex.There" (decimals, "vs." and "e.g." do not split; Open-I's ``XXXX`` masks are
   ordinary unknown words). Within a sentence, **clauses** end at ``;`` ``:``, "but",
   "however", "although", "except", "which", "whereas", "while", "there is/are", "and the/there", and
   at a comma before a hedge ("no definite flow, likely occlusion").
2. **Mentions**: each modality's phrase rules (``phrases_cxr``, ``phrases_carotid``) are matched over
   the whole text; a match overlapping one of its rule's "unmention" patterns is dropped ("mass
   effect" is no Lung Lesion), and so is one inside conditional advice ("if clinical concern for
   rib fracture, ..."). State rules ("heart size is normal", "lungs are clear") carry their value
   in the match (``normal`` group → 0, ``borderline`` group → -1 unless negated before it).
3. **Value** of a finding mention, by priority (NegEx-style, cue scope = the mention's clause):
   a negation-shaped hedge anywhere in the clause ("cannot be excluded", "not ruled out") → -1;
   a negation cue before it ("no", "without", "free of", "resolution of", "rather than"), or after
   it ("is not seen", "are absent", "has resolved", "is ruled out", "has been removed", "within
   normal limits") → 0; a hedge before it ("possible", "likely", "questionable", "may",
   "suggestive of", "concerning for", "borderline", "versus", "differential", "if", "evaluation
   for") or after it ("is possible", "if present", "versus", "is a consideration") → -1;
   otherwise 1.
   Pseudo-negations ("no change in", "no interval increase", "not only", "not seen previously")
   are not negation cues, pseudo-hedges ("age-indeterminate", "if clinically indicated") no
   hedges. "likely" counts as uncertain, as in CheXpert's uncertainty rules. A hedge after a
   finding is about its cause ("opacity, may represent atelectasis": the opacity stays 1).
   **Alternatives**: positive mentions of two or more observations chained by "or", "versus",
   "/" or "and/or" (bare list commas between) become -1 ("atelectasis or scarring").
   Measurement rules (intima-media thickness in mm) are positive above the rule's threshold and
   uncertain when the clause hedges. Rules marked ``negated_only`` (e.g. "osseous abnormality",
   a bare "stenosis") give a label only when negated.
4. **Aggregation** per observation: positive beats uncertain beats negative. "No Finding" is 1
   when no observation other than Support Devices is positive or uncertain and the text mentions
   anything at all; otherwise it is blank (CheXpert's rule — never 0).

Carotid observations are per side: a mention takes the nearest laterality word of its sentence
("right", "left", "bilateral"/"both" → both sides), else the side carried over from the last
sentence that named a side (``RIGHT:`` paragraphs; "bilateral", "both", "either" and "right
greater than left" name both); a section header resets it, and a mention with no side at all
("IMPRESSION: No stenosis.") concerns both sides. A side that states no band at all gets the SRU
band of its ICA peak systolic velocity (``_velocity_bands``).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
from collections.abc import Sequence

import numpy as np

from radflow_jax.data.sections import parse_sections
from radflow_jax.rewards import phrases_carotid, phrases_cxr
from radflow_jax.rewards.rules import Rule
from radflow_jax.schema import LABEL_BLANK, NEGATIVE, POSITIVE, UNCERTAIN, Schema

_FLAGS = re.IGNORECASE
# Names the conventions labels follow, stored beside every number they produce (evaluate, label CLI).
CONVENTIONS = "radflow-labeler/2 (docs/labeling.md)"


@dataclasses.dataclass(frozen=True)
class Mention:
    """One observation stated in the text, with its value and character spans in that text."""

    observation: str
    value: int
    start: int
    end: int
    sentence_start: int
    sentence_end: int


@dataclasses.dataclass(frozen=True)
class Labels:
    """Aggregated values (``None`` = not mentioned) for every schema observation, and the mentions."""

    values: dict[str, int | None]
    mentions: tuple[Mention, ...]


# ------------------------------------------------------------------------------------------ cues

def _alternation(patterns: Sequence[str]) -> re.Pattern:
    """One regex for many cue patterns; a shared leading ``\\b`` is factored out (3x faster scans)."""
    bounded = [p[2:] for p in patterns if p.startswith(r"\b")]
    rest = [p for p in patterns if not p.startswith(r"\b")]
    parts = ([r"\b(?:" + "|".join(f"(?:{p})" for p in bounded) + ")"] if bounded else []) + [f"(?:{p})" for p in rest]
    return re.compile("|".join(parts), _FLAGS)


_SENTENCE_END = re.compile(
    r"(?<!\bvs)(?<!\be\.g)(?<!\bi\.e)(?<!\bdr)[.!?](?=\s|$)|\n"
    r"|(?-i:(?<=[a-z]{2})\.(?=[A-Z][a-z]))",  # a run-on "apex.There" (case-sensitive)
    _FLAGS)
_TERMINATOR = _alternation((
    r"[;:]", r"\bbut\b", r"\bhowever\b", r"\balthough\b", r"\bthough\b", r"\bexcept\b",
    r"\b(?:apart|aside) from\b", r"\bwhich\b", r"\bwhereas\b", r"\bwhile\b", r"(?<!\bthat )\bthere (?:is|are)\b",
    r"\band (?=the\b|there\b)",
    r",\s*(?=(?:possible|possibly|probable|probably|likely|questionable|suspected|new|unchanged|stable)\b)",
))
_PSEUDO = _alternation((
    r"\bno (?:significant |appreciable |definite |interval |further )*(?:change|increase|decrease|worsening"
    r"|improvement|progression)\b",
    r"\bwithout (?:significant |interval )*change\b", r"\bnot only\b", r"\bgram[- ]negative\b",
    r"\bnot (?:been )?(?:significantly )?changed\b",
    r"\bnot (?:seen|visualized|identified|present|appreciated|evident) (?:previously|before|on (?:the )?"
    r"(?:prior|previous|earlier))",
    r"\bnot previously (?:seen|visualized|identified)\b",
))
_NEG_UNCERTAIN = _alternation((
    r"\b(?:cannot|can ?not|can't|could not|not) (?:be )?(?:entirely |completely |definitely |totally )?"
    r"(?:excluded|ruled out)",
    r"\b(?:cannot|can ?not|can't|could not|difficult to|unable to) (?:entirely |completely |definitely )?"
    r"(?:exclude|rule out)\b",
    r"\bto (?:ensure|confirm|document) (?:that )?there is no\b",
))
_PRE_NEGATION = _alternation((
    r"\bno\b", r"\bnot\b", r"\bwithout\b", r"\bnor\b", r"\bneither\b", r"\babsence of\b", r"\babsent\b",
    r"\bnegative for\b", r"\bfree of\b", r"\bclear of\b", r"\bresolution of\b", r"\bresolved\b",
    r"\bremoval of\b", r"\bclearing of\b", r"\bfails? to (?:show|demonstrate|reveal)\b", r"\bnever\b", r"\brather than\b",
    r"\binstead of\b",
))
_POST_NEGATION = _alternation((
    r"\b(?:not|no longer) (?:\w+ly )?(?:seen|identified|visualized|visible|appreciated|present|demonstrated"
    r"|detected|evident|noted|apparent|shown)\b",
    r"\b(?:is|are|was|were) (?:now )?absent\b", r"\b(?:has|have)? ?(?:since |now |completely )*resolved\b",
    r"\b(?:is|are|was|were|has been|have been) (?:ruled out|excluded)\b",
    r"\b(?:has|have) (?:since )?(?:been )?removed\b", r"\b(?:has|have) (?:since )?cleared\b",
    r"\b(?:is|are) negative\b", r"\b(?:is|are|appears?) normal\b",
    r"\b(?:(?:is|are|appears?) )?within (?:the )?(?:normal )?limits(?: of normal)?\b",
))
_HEDGE = (
    r"\bpossib(?:le|ly|ility)\b", r"\bprobabl[ey]\b", r"\blikely\b", r"\bquestionabl[ey]\b",
    r"\bquestion(?: of)?\b", r"\bfavou?red\b", r"\?", r"\bsuspicio(?:us|n) (?:for|of)\b", r"\bsuspect(?:ed)?\b",
    r"\bconcern(?:ing)? for\b", r"\bworrisome for\b", r"\bsuggestive of\b", r"\bsuggest(?:s|ing|ed)?\b",
    r"\bmay\b", r"\bmight\b", r"\bcould\b", r"\bborderline\b", r"\bequivocal\b", r"\bindeterminate\b",
    r"\buncertain\b", r"\bpresum(?:ed|ably|ptive)\b", r"\bdifferential\b", r"\bversus\b", r"\bvs\b\.?", r"\bconsider(?:ed|ation)?\b", r"\bpotential(?:ly)?\b", r"\bperhaps\b",
    r"\bmaybe\b", r"\bnot (?:entirely )?certain\b", r"\bif\b", r"\bcorrelat(?:e|ion) (?:clinically )?(?:for|with)\b",
    r"\bevaluat(?:e|ion) (?:of|for)\b", r"\b(?:rule|ruling) out\b", r"\br/o\b", r"\bto exclude\b",
    r"\bassess(?:ment)? for\b", r"\bin the (?:appropriate |proper )?clinical setting\b",
)
_PRE_HEDGE = _alternation(_HEDGE)
_POST_HEDGE = _alternation((
    r"\b(?:is|are) (?:also |more |most )?(?:possible|likely|probable|suspected|questionable|favored)\b",
    r"\bversus\b", r"\bvs\b\.?", r"\bif (?:present|any)\b", r"\b(?:is|be) (?:a|another) consideration\b", r"\?",
    r"\bis in the differential\b", r"\b(?:is|are) questioned\b",
))
_PSEUDO_HEDGE = _alternation((  # hedge-shaped words that hedge no finding
    r"\bage[- ]indeterminate\b", r"\b(?:if|as) clinically (?:indicated|warranted)\b",
))
# Conditional advice is no mention: "if clinical concern for rib fracture, dedicated rib films".
_DISCLAIMER = _alternation((
    r"\b(?:if|should) (?:there is )?(?:continued |persistent |further |ongoing )?(?:clinical )?"
    r"(?:concern|suspicion) (?:for|of)\b[^.;]*",
))
# Two findings offered as alternatives ("atelectasis or scarring", "atelectasis/infiltrate",
# "airspace disease and/or atelectasis"): up to 3 modifier words before the second one.
# A comma links only bare list items ("atelectasis, infiltrate and/or effusion"), so "opacity,
# probable atelectasis or scarring" keeps its opacity.
_LINK = re.compile(r"\s*,\s*|\s*(?P<alt>or|and/or|versus|vs\.?|/)\s*(?:[\w-]+\s+){0,3}?", _FLAGS)
_SIDE_WORD = re.compile(r"\b((?:right|left) (?:greater|worse|more) than (?:left|right)|right|left|bilateral(?:ly)?"
                        r"|both|either)\b", _FLAGS)
_HEADER = re.compile(r"\s*(?:\d+\.\s*)?([A-Z][A-Z /]+):")


# ------------------------------------------------------------------------------------ compilation

@dataclasses.dataclass(frozen=True)
class _Compiled:
    rule: Rule
    regex: re.Pattern
    unmention: re.Pattern | None


@functools.lru_cache(maxsize=None)
def _rules(modality: str) -> tuple[_Compiled, ...]:
    phrases = {"cxr": phrases_cxr.RULES, "carotid": phrases_carotid.RULES}
    if modality not in phrases:
        raise ValueError(f"no labeler rules for modality {modality!r}; supported: {sorted(phrases)}")
    return tuple(_Compiled(r, re.compile(r.pattern, _FLAGS),
                           re.compile(r.unmention, _FLAGS) if r.unmention else None) for r in phrases[modality])


@functools.lru_cache(maxsize=None)
def _check_schema(schema: Schema) -> None:
    """The rules must name exactly the schema's observations, or labels would silently go missing."""
    named = set()
    for c in _rules(schema.modality):
        for obs in c.rule.observations:
            named |= {obs.format(side=s) for s in ("Right", "Left")} if "{side}" in obs else {obs}
    if named != set(schema.observations):
        raise ValueError(f"labeler rules for {schema.modality!r} do not match the schema: "
                         f"missing {sorted(set(schema.observations) - named)}, "
                         f"unknown {sorted(named - set(schema.observations))}")


# ------------------------------------------------------------------------------------ text scan

def _spans(regex: re.Pattern, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in regex.finditer(text)]


def _sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans without surrounding whitespace; the final period is included."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append((start, m.end()))
        start = m.end()
    out.append((start, len(text)))
    spans = []
    for a, b in out:
        piece = text[a:b]
        if piece.strip():
            a += len(piece) - len(piece.lstrip())
            spans.append((a, a + len(piece.strip())))
    return spans


class _Cues:
    """All cue matches of one text, queried by range."""

    def __init__(self, text: str):
        pseudo = _spans(_PSEUDO, text)

        def free(spans):
            return [s for s in spans if not any(p[0] <= s[0] < p[1] for p in pseudo)]

        self.terminators = _spans(_TERMINATOR, text)
        self.term_starts = [s for s, _ in self.terminators]
        self.term_ends = sorted(e for _, e in self.terminators)
        pseudo_hedge = _spans(_PSEUDO_HEDGE, text)

        def hedges(spans):
            return [s for s in spans if not any(a < s[1] and s[0] < b for a, b in pseudo_hedge)]

        self.kinds = {
            "neg_unc": _spans(_NEG_UNCERTAIN, text),
            "pre_neg": free(_spans(_PRE_NEGATION, text)),
            "post_neg": free(_spans(_POST_NEGATION, text)),
            "pre_unc": hedges(_spans(_PRE_HEDGE, text)),
            "post_unc": hedges(_spans(_POST_HEDGE, text)),
        }
        self.starts = {k: [s for s, _ in v] for k, v in self.kinds.items()}

    def clause(self, anchor: int, end: int, sentence: tuple[int, int]) -> tuple[int, int]:
        i = bisect.bisect_right(self.term_ends, anchor)
        start = max(sentence[0], self.term_ends[i - 1] if i else sentence[0])
        j = bisect.bisect_left(self.term_starts, end)
        stop = min(sentence[1], self.term_starts[j] if j < len(self.term_starts) else sentence[1])
        return start, stop

    def any_in(self, kind: str, lo: int, hi: int) -> bool:
        """Whether a cue of ``kind`` lies entirely inside [lo, hi)."""
        starts, spans = self.starts[kind], self.kinds[kind]
        i = bisect.bisect_left(starts, lo)
        while i < len(spans) and spans[i][0] < hi:
            if spans[i][1] <= hi:
                return True
            i += 1
        return False


def _value(m: re.Match, rule: Rule, cues: _Cues, sentence: tuple[int, int]) -> int:
    groups = m.groupdict()
    if groups.get("normal") is not None:
        return NEGATIVE
    anchor = next((m.start(g) for g in groups if g.startswith("anchor") and groups[g] is not None), m.start())
    lo, hi = cues.clause(anchor, m.end(), sentence)
    if groups.get("borderline") is not None:  # "no costophrenic angle blunting" is negated
        return NEGATIVE if cues.any_in("pre_neg", lo, m.start()) else UNCERTAIN
    hedged_before, hedged_after = cues.any_in("pre_unc", lo, anchor), cues.any_in("post_unc", m.end(), hi)
    if rule.threshold is not None:  # a measurement: hedged anywhere in its sentence -> uncertain
        if cues.any_in("pre_unc", *sentence):
            return UNCERTAIN
        if cues.any_in("pre_neg", lo, m.start()):
            return NEGATIVE
        return POSITIVE if float(groups["num"]) > rule.threshold else NEGATIVE
    if cues.any_in("neg_unc", lo, hi):
        return UNCERTAIN
    if cues.any_in("pre_neg", lo, anchor) or cues.any_in("post_neg", m.end(), hi):
        return NEGATIVE
    if hedged_before or hedged_after:
        return UNCERTAIN
    return POSITIVE


def _sides(text: str, sentences: list[tuple[int, int]]) -> list[tuple[list[tuple[int, str]], str | None]]:
    """Per sentence: its laterality words (position, word) and the side carried in from before."""
    out, carry = [], None
    for a, b in sentences:
        header = _HEADER.match(text, a, b)
        if header and header.group(1).strip().lower() not in ("right", "left"):
            carry = None
        words = [(m.start(), m.group(1).lower()) for m in _SIDE_WORD.finditer(text, a, b)]
        out.append((words, carry))
        if words:
            carry = words[-1][1]
    return out


def _mention_sides(start: int, words: list[tuple[int, str]], carry: str | None) -> tuple[str, ...]:
    before = [w for p, w in words if p < start]
    after = [w for p, w in words if p >= start]
    word = before[-1] if before else after[0] if after else carry
    if word in ("right", "left"):
        return (word.capitalize(),)
    return ("Right", "Left")


# ------------------------------------------------------------------------------------ public API

def _aggregate(mentions: Sequence[Mention], schema: Schema) -> dict[str, int | None]:
    values: dict[str, int | None] = {obs: None for obs in schema.observations}
    rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
    for m in mentions:
        if m.observation == "No Finding":
            continue
        current = values[m.observation]
        if current is None or rank[m.value] > rank[current]:
            values[m.observation] = m.value
    abnormal = any(v in (POSITIVE, UNCERTAIN) for k, v in values.items()
                   if k not in ("No Finding", "Support Devices"))
    if "No Finding" in values:
        values["No Finding"] = POSITIVE if mentions and not abnormal else None
    return values


_ICA_PSV = re.compile(phrases_carotid.ICA_PSV, _FLAGS)
_BAND_NAMES = ("Stenosis <50%", "Stenosis 50-69%", "Stenosis >=70%", "Near Occlusion", "Occlusion")


def _velocity_bands(text: str, sentences: list[tuple[int, int]], sides: list, mentions: list[Mention]) -> list[Mention]:
    """The SRU band of a side's highest ICA peak systolic velocity, for a side that states no band.

    ``phrases_carotid``: > ``SRU_PSV_70`` cm/s is >= 70 %, from ``SRU_PSV_50`` 50-69 %, below it
    < 50 % when the side has plaque (a plaque-free vessel below it is normal, no band).
    """
    stated = {m.observation.split(" ", 1)[0] for m in mentions if m.observation.split(" ", 1)[1] in _BAND_NAMES}
    plaque = {m.observation.split(" ", 1)[0] for m in mentions if m.observation.endswith("Plaque") and m.value == POSITIVE}
    best: dict[str, tuple[float, re.Match, tuple[int, int]]] = {}
    starts = [a for a, _ in sentences]
    for m in _ICA_PSV.finditer(text):
        k = bisect.bisect_right(starts, m.start()) - 1
        for side in _mention_sides(m.start(), *sides[k]):
            psv = float(m.group("num"))
            if side not in stated and (side not in best or psv > best[side][0]):
                best[side] = (psv, m, sentences[k])
    out = []
    for side, (psv, m, sentence) in best.items():
        if psv > phrases_carotid.SRU_PSV_70:
            band = "Stenosis >=70%"
        elif psv >= phrases_carotid.SRU_PSV_50:
            band = "Stenosis 50-69%"
        elif side in plaque:
            band = "Stenosis <50%"
        else:
            continue
        out.append(Mention(f"{side} {band}", POSITIVE, m.start(), m.end(), *sentence))
    return out


def _alternatives(text: str, mentions: list[Mention]) -> list[Mention]:
    """Positive mentions of different observations chained by "or" / "versus" / "/" become uncertain.

    Mentions (in text order) are chained when only a ``_LINK`` separates them; a chain with at
    least one alternative link and two observations is a differential, so its positives are -1
    ("no A or B" is negated already and stays 0).
    """
    spans = sorted({(m.start, m.end) for m in mentions})
    chain, chains, alternative = [spans[0]] if spans else [], [], False
    for prev, cur in zip(spans, spans[1:]):
        link = _LINK.fullmatch(text, prev[1], cur[0]) if cur[0] >= prev[1] else None
        if link:
            chain.append(cur)
            alternative |= link.group("alt") is not None
        else:
            chains.append((chain, alternative))
            chain, alternative = [cur], False
    chains.append((chain, alternative))
    uncertain = set()
    for chain, alternative in chains:
        members = set(chain)
        if alternative and len({m.observation for m in mentions if (m.start, m.end) in members}) > 1:
            uncertain |= members
    return [dataclasses.replace(m, value=UNCERTAIN) if m.value == POSITIVE and (m.start, m.end) in uncertain
            else m for m in mentions]


def label_text(text: str, schema: Schema) -> Labels:
    """Labels of any text (one section or a whole report), with each mention's character span."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    _check_schema(schema)
    compiled = _rules(schema.modality)
    sentences = _sentences(text)
    sentence_starts = [a for a, _ in sentences]
    cues = _Cues(text)
    sided = schema.modality == "carotid"
    sides = _sides(text, sentences) if sided else []
    disclaimers = _spans(_DISCLAIMER, text)
    mentions = []
    for c in compiled:
        dropped = (_spans(c.unmention, text) if c.unmention else []) + disclaimers
        for m in c.regex.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in dropped):
                continue
            k = bisect.bisect_right(sentence_starts, m.start()) - 1
            if k < 0:
                continue
            sentence = sentences[k]
            value = _value(m, c.rule, cues, sentence)
            if c.rule.negated_only and value != NEGATIVE:
                continue
            names = c.rule.observations
            if any("{side}" in n for n in names):
                found = _mention_sides(m.start(), *sides[k])
                names = tuple(n.format(side=s) for s in found for n in names)
            mentions += [Mention(n, value, m.start(), m.end(), *sentence) for n in names]
    if sided:
        mentions += _velocity_bands(text, sentences, sides, mentions)
    mentions.sort(key=lambda x: (x.start, x.end, schema.index(x.observation)))
    mentions = _alternatives(text, mentions)
    return Labels(_aggregate(mentions, schema), tuple(mentions))


def label_report(report: str, schema: Schema) -> dict[str, Labels]:
    """Labels of a report's ``"findings"``, ``"impression"`` and the whole ``"report"``.

    Sections come from ``parse_sections(report, fallback="findings")`` (``SectionError`` for an
    empty report); spans of the section labels
    index the section strings. ``"report"`` aggregates both sections' mentions; its spans index
    ``findings + " " + impression``.
    """
    sections = parse_sections(report, fallback="findings")
    findings = label_text(sections.findings, schema)
    impression = label_text(sections.impression, schema)
    shift = len(sections.findings) + 1
    moved = tuple(dataclasses.replace(m, start=m.start + shift, end=m.end + shift,
                                      sentence_start=m.sentence_start + shift,
                                      sentence_end=m.sentence_end + shift) for m in impression.mentions)
    mentions = findings.mentions + moved
    whole = Labels(_aggregate(mentions, schema), mentions)
    return {"report": whole, "findings": findings, "impression": impression}


def label_array(texts: Sequence[str], schema: Schema) -> np.ndarray:
    """int8 ``[N, K]`` labels of ``texts`` in schema order, ``LABEL_BLANK`` where not mentioned."""
    out = np.full((len(texts), len(schema.observations)), LABEL_BLANK, dtype=np.int8)
    for i, text in enumerate(texts):
        values = label_text(text, schema).values
        for j, obs in enumerate(schema.observations):
            if values[obs] is not None:
                out[i, j] = values[obs]
    return out
