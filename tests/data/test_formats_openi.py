"""Open-I XML: fields, MeSH tags, drawn splits, every bad-record case, and the real 3,955 reports."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from radflow_jax.data.formats import RecordError, assign_split
from radflow_jax.data.formats_openi import load_openi, parse_openi_xml

TEMPLATE = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="{uid}"/>
   <MedlineCitation Owner="Indiana University">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">Positive TB test</AbstractText>
            {abstract}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      <major>Cardiomegaly/mild</major>
      <minor>Lung/hypoinflation</minor>
   </MeSH>
   {images}
</eCitation>
"""


def write_report(root: str, n: int, *, uid: str | None = None, findings="Heart is  normal.",
                 impression="No acute disease.", images=("{uid}_IM-0001-3001", "{uid}_IM-0001-4001"),
                 make_images: bool = True) -> str:
    """``ecgen-radiology/<n>.xml`` and its PNGs under ``NLMCXR_png/``; returns the XML path."""
    uid = uid or f"CXR{n}"
    abstract = "".join(
        f'<AbstractText Label="{label}">{text}</AbstractText>' if text is not None else ""
        for label, text in (("FINDINGS", findings), ("IMPRESSION", impression))
    )
    ids = [i.format(uid=uid) for i in images]
    parents = "".join(f'<parentImage id="{i}"><caption>Xray Chest</caption></parentImage>'
                      for i in ids)
    xml_dir, png_dir = os.path.join(root, "ecgen-radiology"), os.path.join(root, "NLMCXR_png")
    os.makedirs(xml_dir, exist_ok=True)
    os.makedirs(png_dir, exist_ok=True)
    path = os.path.join(xml_dir, f"{n}.xml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(TEMPLATE.format(uid=uid, abstract=abstract, images=parents))
    if make_images:
        for k, i in enumerate(ids):
            pixels = np.random.default_rng(n * 10 + k).integers(0, 256, (20, 24), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(os.path.join(png_dir, f"{i}.png"))
    return path


def write_openi(root: str, n: int = 12) -> None:
    for i in range(1, n + 1):
        write_report(root, i)


def _load(root: str, **kw):
    return load_openi(os.path.join(root, "ecgen-radiology"),
                      image_root=os.path.join(root, "NLMCXR_png"), **kw)


def test_parse_fields_and_tags(tmp_path):
    path = write_report(str(tmp_path), 7)
    rep = parse_openi_xml(path)
    assert (rep.id, rep.findings, rep.impression) == ("CXR7", "Heart is normal.", "No acute disease.")
    assert rep.indication == "Positive TB test" and rep.comparison == "None."
    assert rep.mesh == ("Cardiomegaly/mild", "Lung/hypoinflation")
    assert rep.image_ids == ("CXR7_IM-0001-3001", "CXR7_IM-0001-4001")


def test_load_records_splits_and_paths(tmp_path):
    root = str(tmp_path)
    write_openi(root)
    data, skips = _load(root)
    assert len(skips) == 0
    ids = {s: [r.id for r in v] for s, v in data.items()}
    every = sorted(sum(ids.values(), []), key=lambda i: int(i[3:]))
    assert every == [f"CXR{i}" for i in range(1, 13)]
    for split, names in ids.items():
        assert all(assign_split(i, 0) == split for i in names)
    rec = next(r for v in data.values() for r in v if r.id == "CXR2")
    png = os.path.realpath(os.path.join(root, "NLMCXR_png"))
    assert rec.image_paths == tuple(f"{png}/CXR2_IM-0001-{v}.png" for v in (3001, 4001))
    assert rec.tags == ("Cardiomegaly/mild", "Lung/hypoinflation") and rec.labels is None
    assert rec.report == "FINDINGS: Heart is normal.\nIMPRESSION: No acute disease."
    other_seed, _ = _load(root, split_seed=1)
    assert {s: [r.id for r in v] for s, v in other_seed.items()} != ids


def test_assign_split_is_stable_and_proportional():
    splits = collections.Counter(assign_split(f"CXR{i}", 0) for i in range(4000))
    assert abs(splits["train"] / 4000 - 0.7) < 0.03 and abs(splits["test"] / 4000 - 0.2) < 0.03
    assert assign_split("CXR1", 0) == assign_split("CXR1", 0)
    with pytest.raises(ValueError, match="summing to 1"):
        assign_split("CXR1", 0, (0.5, 0.5, 0.5))


def _corrupt_png(root: str, n: int) -> None:
    with open(os.path.join(root, "NLMCXR_png", f"CXR{n}_IM-0001-3001.png"), "r+b") as f:
        f.seek(40)
        f.write(b"\x00" * 16)  # breaks the IDAT checksum


BAD_CASES = {
    # case: (how to make it, field, reason, message fragment)
    "missing image": (lambda r: os.remove(os.path.join(r, "NLMCXR_png", "CXR3_IM-0001-4001.png")),
                      "parentImage[1]", "missing image", "file not found"),
    "corrupt image": (lambda r: _corrupt_png(r, 3), "parentImage[0]", "corrupt image",
                      "corrupt or undecodable image"),
    "escaping id": (lambda r: write_report(r, 3, images=("../../outside",), make_images=False),
                    "parentImage[0]", "image outside root", "outside the image root"),
    "no images": (lambda r: write_report(r, 3, images=()), "parentImage", "no images",
                  "no <parentImage>"),
    "empty sections": (lambda r: write_report(r, 3, findings="", impression=" "), "AbstractText",
                       "empty report", "empty findings and impression"),
    "missing fields": (lambda r: write_report(r, 3, findings=None, impression=None), "AbstractText",
                       "missing field", "no AbstractText with Label FINDINGS or IMPRESSION"),
    "duplicate id": (lambda r: write_report(r, 3, uid="CXR1"), "uId", "duplicate id",
                     "duplicate id (first in 1.xml)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_report_is_named_or_skipped(tmp_path, case):
    root = str(tmp_path)
    write_openi(root, 5)
    make, field, reason, fragment = BAD_CASES[case]
    make(root)
    with pytest.raises(RecordError) as info:
        _load(root)
    e = info.value
    assert e.file.endswith("3.xml") and (e.field, e.reason) == (field, reason)
    assert e.record_id == ("CXR1" if case == "duplicate id" else "CXR3") and fragment in str(e)
    data, skips = _load(root, on_bad_record="skip")
    assert sorted(r.id for v in data.values() for r in v) == ["CXR1", "CXR2", "CXR4", "CXR5"]
    assert dict(skips.reasons) == {reason: 1} and "3.xml" in skips.summary()


@pytest.mark.parametrize("content, reason, fragment", [
    (b'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR3"/>'
     b'<AbstractText Label="FINDINGS">Caf\xe9</AbstractText></eCitation>', "not UTF-8",
     "not valid UTF-8 at byte"),
    (b"<eCitation><uId id='CXR3'/><AbstractText>", "malformed XML", "malformed XML"),
    (b"<eCitation><AbstractText Label='FINDINGS'>x</AbstractText></eCitation>", "missing field",
     "missing <uId"),
])  # fmt: skip
def test_unreadable_xml_files(tmp_path, content, reason, fragment):
    root = str(tmp_path)
    write_openi(root, 4)
    with open(os.path.join(root, "ecgen-radiology", "3.xml"), "wb") as f:
        f.write(content)
    with pytest.raises(RecordError, match=fragment) as info:
        _load(root)
    assert info.value.file.endswith("3.xml") and info.value.reason == reason
    data, skips = _load(root, on_bad_record="skip")
    assert sum(map(len, data.values())) == 3 and dict(skips.reasons) == {reason: 1}


def test_missing_folder_is_a_file_error(tmp_path):
    with pytest.raises(RecordError, match="folder not found"):
        load_openi(str(tmp_path / "nope"), image_root=str(tmp_path))


# ------------------------------------------------------------------- the real Open-I reports

CACHE = os.environ.get("RADFLOW_JAX_CACHE", os.path.expanduser("~/.cache/radflow_jax"))
WHEEL = "torchxrayvision-1.5.7-py3-none-any.whl"


def _real_reports(tmp_path) -> str:
    """``ecgen-radiology`` from the torchxrayvision 1.5.7 wheel (downloaded once into CACHE)."""
    wheel = os.path.join(CACHE, WHEEL)
    if not os.path.isfile(wheel):
        os.makedirs(CACHE, exist_ok=True)
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "torchxrayvision==1.5.7",
                 "-d", CACHE, "-q"], check=True, capture_output=True, timeout=180,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"cannot download torchxrayvision==1.5.7 (package index unreachable?): {e}")
    with zipfile.ZipFile(wheel) as z:
        z.extract("torchxrayvision/data/NLMCXR_reports.tgz", tmp_path)
    with tarfile.open(tmp_path / "torchxrayvision/data/NLMCXR_reports.tgz") as t:
        t.extractall(tmp_path, filter="data")
    return str(tmp_path / "ecgen-radiology")


def test_real_openi_reports_parse_with_expected_section_coverage(tmp_path):
    xml_dir = _real_reports(tmp_path)
    files = sorted(os.listdir(xml_dir))
    assert len(files) == 3955
    parsed, reasons = [], collections.Counter()
    for name in files:
        try:
            parsed.append(parse_openi_xml(os.path.join(xml_dir, name)))
        except RecordError as e:
            reasons[e.reason] += 1
    # 28 reports have neither findings nor impression text; everything else parses.
    assert len(parsed) == 3927 and reasons == {"empty report": 28}
    assert len({r.id for r in parsed}) == 3927
    assert sum(bool(r.findings) for r in parsed) == 3425
    assert sum(bool(r.impression) for r in parsed) == 3921
    assert sum(bool(r.findings and r.impression) for r in parsed) == 3419
    assert sum(not r.image_ids for r in parsed) == 101  # text-only studies: skipped when loading
    assert sum(bool(r.mesh) for r in parsed) == 3927
    assert collections.Counter(m for r in parsed for m in r.mesh).most_common(1) == [("normal", 1363)]
    # The loader on the same files (no images here): every usable report is named as missing
    # its images, so skip reasons account for all 3,955 files.
    data, skips = load_openi(xml_dir, image_root=str(tmp_path), on_bad_record="skip")
    assert sum(map(len, data.values())) == 0 and len(skips) == 3955
    assert skips.reasons == {"missing image": 3826, "no images": 101, "empty report": 28}
