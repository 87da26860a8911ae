"""Mention rules of the report labeler: the leaf module the phrase lists and the labeler share.

Kept apart from ``labeler`` so that ``phrases_cxr`` / ``phrases_carotid`` (data: what to look
for) and ``labeler`` (how a match becomes 1 / 0 / -1) import it and not each other.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Rule:
    """One mention pattern and the observations it names (``{side}`` filled in for carotid).

    Named groups in ``pattern`` steer the value: ``normal`` (→ 0), ``borderline`` (→ -1), ``num``
    (a measurement compared with ``threshold``), and ``anchor*`` (where negation and hedge cues are
    looked for, e.g. "enlarged" in "the heart is not enlarged"; default: the match start).
    ``unmention``: matches overlapping it are no mention ("mass effect"); ``negated_only``: the
    rule gives a label only when negated (a bare "osseous abnormality" says nothing).
    """

    observations: tuple[str, ...]
    pattern: str
    unmention: str | None = None
    negated_only: bool = False
    threshold: float | None = None


GAP = r"(?:[\s,:]+[\w'/()-]+){0,8}?[\s,:]+"  # up to 8 words between a subject and its predicate


def state(observations: tuple[str, ...], subject: str, normal: str | None = None,
          borderline: str | None = None, abnormal: str | None = None) -> Rule:
    """A "<subject> ... <predicate>" rule: "heart size is normal", "the heart is mildly enlarged"."""
    alternatives = [f"(?P<{name}>{p})" for name, p in
                    (("normal", normal), ("borderline", borderline), ("anchor", abnormal)) if p]
    return Rule(observations, rf"\b(?:{subject}){GAP}(?:{'|'.join(alternatives)})\b")


def adjective_first(observations: tuple[str, ...], subject: str, normal: str | None = None,
                    borderline: str | None = None, words: int = 2) -> Rule:
    """A "<predicate> <subject>" rule with up to ``words`` words between: "normal heart size"."""
    alternatives = [f"(?P<{name}>{p})" for name, p in (("normal", normal), ("borderline", borderline)) if p]
    return Rule(observations, rf"\b(?:{'|'.join(alternatives)})(?: [\w-]+){{0,{words}}}? (?:{subject})\b")
