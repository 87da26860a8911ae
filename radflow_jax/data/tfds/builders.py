"""TFDS builders for IU X-Ray, MIMIC-CXR and one's own JSONL studies, writing ArrayRecord files.

Each builder reads the manual-download folder with the loaders in ``data/formats*.py`` (so bad
records are named, or skipped and counted, exactly as when training from the raw files), then
re-encodes every image to 8-bit grayscale PNG/JPEG bytes no larger than ``max_image_side``: TFDS
encodes numpy images only through TensorFlow, while encoded bytes pass straight through, and a
full decode here finds the truncated files that a header check misses. Records and skips are
kept on the builder (``written``, ``skips``) for the dataset summary.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from radflow_jax.data import formats, formats_jsonl, formats_mimic, formats_openi
from radflow_jax.data.formats import Record, RecordError, SkipReport
from radflow_jax.schema import LABEL_BLANK, Schema, get_schema

SPLITS = ("train", "val", "test")
_CRITICAL_UNKNOWN = -1  # int8 encoding of Record.critical=None


def encode_image(path: str, max_side: int, image_format: str) -> bytes:
    """The image at ``path`` as 8-bit grayscale PNG/JPEG bytes, downscaled to fit ``max_side``.

    16-bit PNGs (DICOM exports) are scaled to 8 bits. Raises whatever PIL raises for unreadable
    or truncated files (the caller names the record).
    """
    with Image.open(path) as im:
        im.load()  # a full decode: truncated data fails here, not at training time
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = Image.fromarray((np.asarray(im, np.float64) / 257.0).round().astype(np.uint8))
        im = im.convert("L")
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if image_format == "jpeg":
            im.save(out, format="JPEG", quality=95)
        else:
            im.save(out, format="PNG", optimize=False)
    return out.getvalue()


def features(num_labels: int, image_format: str) -> tfds.features.FeaturesDict:
    """One study: views, report text and sections, labels (``has_labels`` False → unknown)."""
    text = tfds.features.Text()
    return tfds.features.FeaturesDict({
        "id": text,
        "images": tfds.features.Sequence(
            tfds.features.Image(shape=(None, None, 1), encoding_format=image_format)
        ),
        "report": text,
        "findings": text,
        "impression": text,
        "indication": text,
        "labels": tfds.features.Tensor(shape=(num_labels,), dtype=np.int8),
        "has_labels": tfds.features.Scalar(dtype=np.bool_),
        "critical": tfds.features.Scalar(dtype=np.int8),  # 1, 0, or -1 unknown
        "tags": tfds.features.Sequence(tfds.features.Text()),
        "where": text,  # the record's place in the raw files, for error messages
    })  # fmt: skip


def _first_image_path(annotation: str) -> str:
    """The first image path of an R2Gen annotation file, or "" (``load_r2gen`` then names
    whatever is wrong with the file)."""
    try:
        with open(annotation, "rb") as f:
            data = json.load(f)
        return next(r["image_path"][0] for split in data.values() for r in split)
    except (OSError, ValueError, TypeError, LookupError, AttributeError, StopIteration):
        return ""


class RecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: options, loading the manual folder, encoding, bookkeeping."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    IMAGE_FORMAT = "png"
    HOMEPAGE = ""
    CITATION = ""

    def __init__(
        self,
        *,
        on_bad_record: str = "error",
        max_image_side: int = 512,
        section_fallback: str = "findings",
        split_seed: int = 0,
        verify_images: bool = True,
        **kwargs,
    ):
        """Options beyond TFDS's own (``data_dir``, ``config``, ...), recorded in the summary.

        ``section_fallback`` applies to R2Gen ``annotation.json`` reports (findings only by the
        R2Gen convention); ``split_seed`` to sources without official splits.
        """
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        if on_bad_record not in formats.ON_BAD_RECORD:
            raise ValueError(f"on_bad_record must be one of {formats.ON_BAD_RECORD}")
        self.options = {
            "on_bad_record": on_bad_record, "max_image_side": max_image_side,
            "section_fallback": section_fallback, "split_seed": split_seed,
            "verify_images": verify_images,
        }  # fmt: skip
        self.skips = SkipReport()
        self.written: dict[str, list[Record]] = {}
        self.source_format = ""

    # -- what a subclass provides
    def schema(self) -> Schema:
        return get_schema("cxr")

    def load(self, manual_dir: str) -> tuple[dict[str, list[Record]], SkipReport]:
        raise NotImplementedError

    # -- TFDS hooks
    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            features=features(len(self.schema().observations), self.IMAGE_FORMAT),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    def _split_generators(self, dl_manager):
        splits, skips = self.load(os.fspath(dl_manager.manual_dir))
        self.skips.skipped += skips.skipped
        self.skips.reasons += skips.reasons
        return {s: self._generate_examples(s, records) for s, records in splits.items() if records}

    def _generate_examples(self, split: str, records: list[Record]):
        on_error = formats.bad_record_handler(self.options["on_bad_record"], self.skips)
        kept = self.written.setdefault(split, [])
        blank = np.full(len(self.schema().observations), LABEL_BLANK, np.int8)
        for rec in records:
            try:
                images = [self._encode(rec, k, p) for k, p in enumerate(rec.image_paths)]
            except RecordError as e:
                on_error(e)
                continue
            kept.append(rec)
            yield rec.id, {
                "id": rec.id,
                "images": images,
                "report": rec.report,
                "findings": rec.findings,
                "impression": rec.impression,
                "indication": rec.indication,
                "labels": blank if rec.labels is None else np.asarray(rec.labels, np.int8),
                "has_labels": rec.labels is not None,
                "critical": _CRITICAL_UNKNOWN if rec.critical is None else int(rec.critical),
                "tags": list(rec.tags),
                "where": rec.where,
            }

    def _encode(self, rec: Record, k: int, path: str) -> bytes:
        try:
            return encode_image(path, self.options["max_image_side"], self.IMAGE_FORMAT)
        except Exception as e:  # PIL/OS errors of many types; name the record instead
            raise RecordError.at(rec, f"image_path[{k}]", f"cannot decode image {path}: "
                                 f"{type(e).__name__}: {e}", "corrupt image") from None

    # -- helpers for subclasses
    def _r2gen(self, manual_dir: str) -> tuple[dict[str, list[Record]], SkipReport]:
        """R2Gen's layout: image paths relative to ``images/`` (R2Gen's releases) or to the
        folder itself (the synthetic writer), whichever holds the first record's first image."""
        annotation = os.path.join(manual_dir, "annotation.json")
        images = os.path.join(manual_dir, "images")
        in_images = os.path.isfile(os.path.join(images, _first_image_path(annotation)))
        self.source_format = "r2gen"
        return formats.load_r2gen(
            annotation,
            image_root=images if in_images else manual_dir,
            splits=SPLITS,
            section_fallback=self.options["section_fallback"],
            on_bad_record=self.options["on_bad_record"],
            verify_images=self.options["verify_images"],
        )

    def _not_found(self, manual_dir: str) -> ValueError:
        return ValueError(
            f"{manual_dir}: no dataset layout recognised.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )


class IuXray(RecordsBuilder):
    """IU X-Ray (Open-I, Indiana University): 3,955 chest X-ray reports, frontal and lateral
    views, Findings and Impression sections."""

    HOMEPAGE = "https://openi.nlm.nih.gov/faq#collection"
    CITATION = (
        "@article{demner2016preparing, title={Preparing a collection of radiology examinations "
        "for distribution and retrieval}, author={Demner-Fushman, Dina and others}, "
        "journal={JAMIA}, volume={23}, number={2}, pages={304--310}, year={2016}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put ONE of these layouts in the manual folder (--manual_dir):
    1. R2Gen's release (github.com/zhjohnchan/R2Gen, "iu_xray"): annotation.json and images/
       (images/CXR2384_IM-0942/0.png ...). Splits are R2Gen's; reports are findings only.
    2. The Open-I release (openi.nlm.nih.gov/faq#collection): unpack NLMCXR_reports.tgz
       (ecgen-radiology/*.xml) and NLMCXR_png.tgz (NLMCXR_png/*.png) side by side. Splits are
       drawn 70/10/20 from the report id with --split_seed.
    """

    def load(self, manual_dir):
        if os.path.isfile(os.path.join(manual_dir, "annotation.json")):
            return self._r2gen(manual_dir)
        xml_dir = os.path.join(manual_dir, "ecgen-radiology")
        if os.path.isdir(xml_dir):
            self.source_format = "openi_xml"
            return formats_openi.load_openi(
                xml_dir,
                image_root=os.path.join(manual_dir, "NLMCXR_png"),
                splits=SPLITS,
                split_seed=self.options["split_seed"],
                on_bad_record=self.options["on_bad_record"],
                verify_images=self.options["verify_images"],
            )
        raise self._not_found(manual_dir)


class MimicCxr(RecordsBuilder):
    """MIMIC-CXR (Beth Israel Deaconess): chest X-rays with free-text reports, sectioned with
    the MIMIC-CXR project's parser; CheXpert labels when the labels file is present."""

    IMAGE_FORMAT = "jpeg"
    HOMEPAGE = "https://physionet.org/content/mimic-cxr-jpg/"
    CITATION = (
        "@article{johnson2019mimic, title={MIMIC-CXR-JPG, a large publicly available database "
        "of labeled chest radiographs}, author={Johnson, Alistair EW and others}, "
        "journal={arXiv preprint arXiv:1901.07042}, year={2019}}"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    MIMIC-CXR needs a credentialed PhysioNet account. Put ONE of these in --manual_dir:
    1. R2Gen's release ("mimic_cxr"): annotation.json and images/ (images/p10/p10000032/...).
    2. MIMIC-CXR-JPG (physionet.org/content/mimic-cxr-jpg/): files/ and the
       mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz files, plus the reports from
       MIMIC-CXR's mimic-cxr-reports.zip unzipped into the same folder, so that
       files/p10/p10000032/s50414267.txt sits beside files/p10/p10000032/s50414267/.
       One example per study, frontal view first.
    """

    def load(self, manual_dir):
        if os.path.isfile(os.path.join(manual_dir, "annotation.json")):
            return self._r2gen(manual_dir)
        if formats_mimic.find_csv(manual_dir, formats_mimic.SPLIT_CSV):
            self.source_format = "mimic_cxr_jpg"
            return formats_mimic.load_mimic_cxr_jpg(
                manual_dir,
                splits=SPLITS,
                schema=self.schema(),
                on_bad_record=self.options["on_bad_record"],
                verify_images=self.options["verify_images"],
            )
        raise self._not_found(manual_dir)


class JsonlStudies(RecordsBuilder):
    """One's own studies from a JSONL file (format: radflow_jax/data/formats_jsonl.py), one
    builder config per modality."""

    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=m, description=f"{m} studies") for m in ("carotid", "cxr")
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put studies.jsonl in --manual_dir, with image paths relative to that folder (format:
    radflow_jax/data/formats_jsonl.py). Choose the modality with the builder config:
    --dataset=jsonl_studies/carotid or --dataset=jsonl_studies/cxr.
    """

    def schema(self):
        return get_schema(self.builder_config.name)

    def load(self, manual_dir):
        path = os.path.join(manual_dir, "studies.jsonl")
        if not os.path.isfile(path):
            raise self._not_found(manual_dir)
        self.source_format = "jsonl"
        return formats_jsonl.load_jsonl_studies(
            path,
            schema=self.schema(),
            splits=SPLITS,
            split_seed=self.options["split_seed"],
            on_bad_record=self.options["on_bad_record"],
            verify_images=self.options["verify_images"],
        )


BUILDERS = {"iu_xray": IuXray, "mimic_cxr": MimicCxr, "jsonl_studies": JsonlStudies}
