"""Reads the Open-I (IU X-Ray) XML reports, ``ecgen-radiology/*.xml``, into records.

Each XML file is one study: ``<AbstractText Label="FINDINGS">`` and ``Label="IMPRESSION"`` hold the
two sections (``INDICATION`` is kept too), ``<parentImage id="CXR1_1_IM-0001-3001">`` names the
views, whose files are ``<image_root>/<id><image_ext>`` in the ``NLMCXR_png`` release, and
``<MeSH><major>/<minor>`` terms are kept as weak labels (``Record.tags``). The release has no
official split, so ``formats.assign_split`` draws a stable one from the id (R2Gen used 70/10/20).
"""

from __future__ import annotations

import dataclasses
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from radflow_jax.data.formats import (
    Record,
    RecordError,
    SPLIT_FRACTIONS,
    SkipReport,
    resolve_image,
    assign_split,
    bad_record_handler,
)

_SECTIONS = ("FINDINGS", "IMPRESSION")


@dataclasses.dataclass(frozen=True)
class OpenIReport:
    """The fields of one Open-I XML file (texts with whitespace collapsed, ``""`` if absent)."""

    id: str  # the uId, e.g. "CXR1"
    findings: str
    impression: str
    indication: str
    comparison: str
    mesh: tuple[str, ...]  # major terms, then minor ones
    image_ids: tuple[str, ...]


def _text(element: ET.Element | None) -> str:
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def parse_openi_xml(path: str) -> OpenIReport:
    """Parses one report; a ``RecordError`` naming the file and field when it is not usable.

    A usable file is UTF-8 XML with a ``uId``, at least one of the FINDINGS/IMPRESSION
    ``AbstractText`` fields, and not both of them empty.
    """
    name = os.path.basename(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        context = data[max(e.start - 20, 0) : e.end + 20]
        raise RecordError(path, None, "", f"not valid UTF-8 at byte {e.start}: {context!r}",
                          location=name, reason="not UTF-8") from None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise RecordError(path, None, "", f"malformed XML: {e}", location=name,
                          reason="malformed XML") from None
    uid = root.find("uId")
    rid = uid.get("id", "").strip() if uid is not None else ""
    if not rid:
        raise RecordError(path, None, "uId", "missing <uId id=...>", location=name,
                          reason="missing field")
    texts: dict[str, str] = {}
    for element in root.iter("AbstractText"):
        label = element.get("Label", "").upper()
        texts[label] = " ".join(filter(None, (texts.get(label), _text(element))))
    if not any(label in texts for label in _SECTIONS):
        raise RecordError(path, rid, "AbstractText", "no AbstractText with Label FINDINGS or "
                          f"IMPRESSION (labels present: {sorted(texts)})", location=name,
                          reason="missing field")
    findings, impression = texts.get("FINDINGS", ""), texts.get("IMPRESSION", "")
    if not findings and not impression:
        raise RecordError(path, rid, "AbstractText", "empty findings and impression",
                          location=name, reason="empty report")
    mesh = tuple(_text(e) for kind in ("major", "minor") for e in root.iter(kind) if _text(e))
    images = tuple(e.get("id", "").strip() for e in root.iter("parentImage"))
    return OpenIReport(
        id=rid, findings=findings, impression=impression, indication=texts.get("INDICATION", ""),
        comparison=texts.get("COMPARISON", ""), mesh=mesh, image_ids=images,
    )


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _images(report: OpenIReport, path: str, root: str, ext: str, verify: bool) -> tuple[str, ...]:
    def fail(field: str, message: str, reason: str) -> RecordError:
        return RecordError(path, report.id, field, message, location=os.path.basename(path),
                           reason=reason)

    if not report.image_ids:
        raise fail("parentImage", "no <parentImage>: the study has no images", "no images")
    out = []
    for k, image_id in enumerate(report.image_ids):
        field = f"parentImage[{k}]"
        if not image_id:
            raise fail(field, "<parentImage> without an id", "missing field")
        image, problem = resolve_image(root, image_id + ext, verify)
        if problem:
            raise fail(field, problem[1], problem[0])
        out.append(image)
    return tuple(out)


def load_openi(
    xml_dir: str,
    *,
    image_root: str,
    image_ext: str = ".png",
    splits: Sequence[str] = ("train", "val", "test"),
    split_seed: int = 0,
    split_fractions: Sequence[float] = SPLIT_FRACTIONS,
    on_bad_record: str = "error",
    verify_images: bool = True,
) -> tuple[dict[str, list[Record]], SkipReport]:
    """Loads every ``*.xml`` in ``xml_dir`` into the requested splits; returns records and skips.

    Records have no ``labels`` (Open-I has no CheXpert labels; MeSH terms are in ``tags``).
    """
    if not os.path.isdir(xml_dir):
        raise RecordError(xml_dir, None, "", "folder not found (expected ecgen-radiology/*.xml)")
    files = sorted((f for f in os.listdir(xml_dir) if f.endswith(".xml")), key=_natural_key)
    if not files:
        raise RecordError(xml_dir, None, "", "no .xml files in the folder")
    root = os.path.realpath(image_root)
    report = SkipReport()
    on_error = bad_record_handler(on_bad_record, report)
    out: dict[str, list[Record]] = {s: [] for s in splits}
    seen: dict[str, str] = {}
    for name in files:
        path = os.path.join(xml_dir, name)
        try:
            parsed = parse_openi_xml(path)
            if parsed.id in seen:
                raise RecordError(path, parsed.id, "uId", "duplicate id (first in "
                                  f"{seen[parsed.id]})", location=name, reason="duplicate id")
            seen[parsed.id] = name
            split = assign_split(parsed.id, split_seed, split_fractions)
            if split not in out:
                continue
            images = _images(parsed, path, root, image_ext, verify_images)
        except RecordError as e:
            on_error(e)
            continue
        text = "\n".join(f"{label}: {value}" for label, value in
                         (("FINDINGS", parsed.findings), ("IMPRESSION", parsed.impression)) if value)
        out[split].append(Record(
            id=parsed.id, split=split, image_paths=images, report=text, findings=parsed.findings,
            impression=parsed.impression, labels=None, critical=None, where=f"{path}:{name}",
            indication=parsed.indication, tags=parsed.mesh,
        ))
    return out, report
