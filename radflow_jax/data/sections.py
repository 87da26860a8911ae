"""Splits a radiology report into Findings and Impression, and formats the model's target text.

Rewards and metrics score the two sections separately, so every data source (MIMIC free text,
Open-I fields, R2Gen plain strings, synthetic reports) is reduced to a ``Sections`` here, and the
model learns ``<findings> ... <impression> ...`` (``format_target``), which ``parse_target`` reads
back from generated text.

Headers accepted by ``parse_sections`` (case-insensitive, any spacing inside, spaces before the
colon allowed, e.g. ``Findings :``, ``FINDINGS  AND IMPRESSION:``):

- Findings: ``FINDINGS``, ``FINDING`` and the misspellings the MIMIC-CXR section parser maps to
  findings (``FINDNGS``, ``FINIDNGS``, ...).
- Impression: ``IMPRESSION(S)``, ``CONCLUSION(S)``, ``FINDINGS AND IMPRESSION(S)`` and
  ``FINDINGS/IMPRESSION`` (the MIMIC-CXR parser normalises both to impression), plus MIMIC's
  misspellings (``IMPRESSON``, ``IMPRESION``, ...).
- Other headers end the current section and their text is dropped: ``INDICATION``, ``HISTORY``,
  ``COMPARISON``, ``TECHNIQUE``, ``EXAMINATION``, ``NOTIFICATION``, ``RECOMMENDATION(S)``,
  ``ADDENDUM``, ``WET READ``, ... (see ``_OTHER_NAMES``).

A header is a name followed by

- ``:`` — at the start of a line, after a sentence end (``.``, ``!``, ``?``, ``;``), or anywhere
  when written in capitals (``... clear. IMPRESSION: ...`` and ``cough IMPRESSION: ...`` both
  count; ``consistent with prior findings: ...`` in lower case does not);
- a dash followed by a space (``Findings - ...``), only at the start of a line;
- nothing, when the name is alone on its line (``FINDINGS\\n...``).

Text before the first header (MIMIC's ``FINAL REPORT`` preamble) is dropped when a Findings or
Impression header exists. A section that appears twice is joined in order. Inside a section
whitespace collapses to single spaces; everything else is kept as written (``___``
de-identification blanks, numbered impressions ``1. ... 2. ...``).

``fallback`` says what a report with no Findings/Impression header becomes (its text outside other
headed sections, i.e. the whole string when it has no headers at all):

- ``"error"``: raise ``SectionError``;
- ``"findings"``: the whole text is the Findings and the Impression is empty — the R2Gen
  convention (R2Gen's ``annotation.json`` reports for IU X-Ray and MIMIC-CXR are findings only);
- ``"last_sentence"``: the last sentence is the Impression, the rest the Findings.

With only one of the two headers, the other section is empty. Empty text always raises
``SectionError("empty report")``; so does a report whose Findings and Impression are both empty.
"""

from __future__ import annotations

import dataclasses
import re

FINDINGS_TAG = "<findings>"
IMPRESSION_TAG = "<impression>"
FALLBACKS = ("error", "findings", "last_sentence")

_FINDINGS_NAMES = (
    "findings", "finding", "findins", "findngs", "findnings", "finidngs", "findgings", "findindgs",
)  # fmt: skip
_IMPRESSION_NAMES = (
    "impression", "impressions", "conclusion", "conclusions",
    "findings and impression", "findings and impressions", "findings/impression",
    "impresson", "impresion", "impession", "imprssion", "impressoin", "imperssion", "imoression",
    "imprression",
)  # fmt: skip
_OTHER_NAMES = (
    "indication", "indications", "clinical indication", "reason for exam", "reason for examination",
    "history", "clinical history", "patient history", "clinical information",
    "comparison", "comparisons", "comparison exam", "comparison film", "reference exam",
    "examination", "exam", "type of examination", "technique", "procedure",
    "notification", "recommendation", "recommendations", "recommendation(s)",
    "addendum", "wet read", "wetread", "comment", "comments", "final report",
)  # fmt: skip

_KIND_BY_NAME = {
    **{n: "other" for n in _OTHER_NAMES},
    **{n: "findings" for n in _FINDINGS_NAMES},
    **{n: "impression" for n in _IMPRESSION_NAMES},
}


def _name_pattern(name: str) -> str:
    """Regex for one header name: any run of spaces between words, optional spaces around '/'."""
    words = [re.escape(w) for w in name.split()]
    return r"\s+".join(words).replace("/", r"\s*/\s*")


_HEADER_RE = re.compile(
    r"(?<![A-Za-z])(?P<name>"
    + "|".join(_name_pattern(n) for n in sorted(_KIND_BY_NAME, key=len, reverse=True))
    + r")(?:(?P<colon>[ \t]*:)|(?P<dash>[ \t]*[-\u2013\u2014](?=\s))|(?P<alone>[ \t]*(?=\n|\Z)))",
    re.IGNORECASE,
)
_TAG_RE = re.compile(r"<\s*(findings|impression)\s*>", re.IGNORECASE)
# A sentence ends at . ! ? followed by space, except after an enumeration number ("1. ").
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])(?<!\b\d\.)(?<!\b\d\d\.)\s+")


@dataclasses.dataclass(frozen=True)
class Sections:
    findings: str
    impression: str


class SectionError(ValueError):
    """A report that cannot be split into sections; the message says why (callers add where)."""


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _at_line_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t")
    return not before or before.endswith("\n")


def _accepts(text: str, match: re.Match) -> bool:
    """Whether a header-shaped match is a real header, by the rules in the module docstring."""
    start = match.start()
    if match.group("colon") is not None:
        if _at_line_start(text, start) or match.group("name").isupper():
            return True
        return text[:start].rstrip().endswith((".", "!", "?", ";"))
    return _at_line_start(text, start)  # dash or alone on its line


def _headers(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every accepted header, in order."""
    out = []
    for match in _HEADER_RE.finditer(text):
        if _accepts(text, match):
            name = re.sub(r"\s*/\s*", "/", " ".join(match.group("name").lower().split()))
            out.append((match.start(), match.end(), _KIND_BY_NAME[name]))
    return out


def _split_last_sentence(text: str) -> Sections:
    sentences = _SENTENCE_END_RE.split(text)
    return Sections(findings=" ".join(sentences[:-1]), impression=sentences[-1])


def parse_sections(text: str, fallback: str = "error") -> Sections:
    """Findings and Impression of a free-text report (rules and ``fallback`` in the module doc)."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if not text or not text.strip():
        raise SectionError("empty report")
    headers = _headers(text)
    bodies: dict[str, list[str]] = {"findings": [], "impression": [], "other": []}
    for (_, end, kind), nxt in zip(headers, headers[1:] + [(len(text), 0, "")]):
        bodies[kind].append(text[end : nxt[0]])
    if bodies["findings"] or bodies["impression"]:
        sections = Sections(
            findings=_collapse(" ".join(bodies["findings"])),
            impression=_collapse(" ".join(bodies["impression"])),
        )
        if not sections.findings and not sections.impression:
            raise SectionError("FINDINGS/IMPRESSION header present but both sections are empty")
        return sections
    rest = _collapse(text[: headers[0][0]] if headers else text)
    if fallback == "error":
        raise SectionError("no FINDINGS or IMPRESSION header (a fallback accepts plain text)")
    if not rest:
        raise SectionError("no FINDINGS or IMPRESSION header and no text outside other sections")
    if fallback == "findings":
        return Sections(findings=rest, impression="")
    return _split_last_sentence(rest)


def format_target(sections: Sections) -> str:
    """The model's target, ``"<findings> {findings} <impression> {impression}"``.

    An empty section leaves no double space (``"<findings> <impression> ..."``), so
    ``parse_target(format_target(s)) == s`` for sections with collapsed whitespace.
    """
    for name, value in (("findings", sections.findings), ("impression", sections.impression)):
        if _TAG_RE.search(value):
            raise SectionError(f"{name} text contains a section tag: {value!r}")
    parts = (FINDINGS_TAG, sections.findings, IMPRESSION_TAG, sections.impression)
    return _collapse(" ".join(parts))


def parse_target(text: str) -> Sections:
    """Sections of generated text; never raises, a missing section is ``""``.

    Tolerant of what a model writes: tags in any case or with inner spaces (``< Impression >``),
    repeated tags (the texts of one section are joined in order, so repetition stays visible to
    the rewards), and text before the first tag, which counts as Findings unless the first tag is
    ``<findings>`` (then it is a stray preamble and dropped).
    """
    pieces = _TAG_RE.split(text)
    found: dict[str, list[str]] = {"findings": [], "impression": []}
    for tag, body in zip(pieces[1::2], pieces[2::2]):
        found[tag.lower()].append(body)
    if len(pieces) == 1 or pieces[1].lower() != "findings":
        found["findings"].insert(0, pieces[0])
    return Sections(
        findings=_collapse(" ".join(found["findings"])),
        impression=_collapse(" ".join(found["impression"])),
    )
