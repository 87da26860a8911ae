"""Loads the records of whichever dataset ``config.data.source`` names: one call for the data stage.

=================  ==========================================================================
source             ``data.dir`` holds ... (``annotation``, ``image_root``, ``labels`` relative)
=================  ==========================================================================
``synthetic``      the generator's output (R2Gen layout + ``labels.jsonl``)
``r2gen``          ``annotation`` (annotation.json), images under ``image_root``, optional
                   ``labels`` (labels.jsonl)
``mimic_cxr_jpg``  the MIMIC-CXR-JPG folder; reports under ``reports_dir`` ("" → ``dir``);
                   ``labels`` is the CheXpert CSV ("" → none); views ordered by ``view_order``
``openi_xml``      ``annotation`` = the ``ecgen-radiology`` folder, ``image_root`` = ``NLMCXR_png``
``jsonl``          ``annotation`` = the studies ``.jsonl``, images under ``image_root``
``tfds``           a TFDS data dir where ``tfds_name`` was prepared (``data/tfds/cli.py``)
=================  ==========================================================================

Sources without official splits (Open-I, JSONL without ``split``) draw them from the record id
with ``split_seed`` and ``split_fractions``. TFDS records were checked (and bad ones skipped) when
the dataset was prepared, so their skip report here is empty; see ``<data.dir>/summary.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections

from radflow_jax.data import formats, formats_jsonl, formats_mimic, formats_openi
from radflow_jax.schema import Schema

SOURCES = ("synthetic", "r2gen", "mimic_cxr_jpg", "openi_xml", "jsonl", "tfds")


def load_records(
    config: ml_collections.ConfigDict, data_dir: str, schema: Schema
) -> tuple[dict[str, Sequence[formats.Record]], formats.SkipReport]:
    """Records by split (lists, or lazy sequences for ``tfds``) and the skip report."""
    d = config.data

    def under(rel: str) -> str | None:
        return os.path.join(data_dir, rel) if rel else None

    common = dict(on_bad_record=d.on_bad_record, verify_images=d.verify_images)
    if d.source in ("synthetic", "r2gen"):
        return formats.load_r2gen(
            os.path.join(data_dir, d.annotation), image_root=under(d.image_root),
            labels_path=under(d.labels), schema=schema, section_fallback=d.section_fallback,
            **common,
        )
    if d.source == "mimic_cxr_jpg":
        return formats_mimic.load_mimic_cxr_jpg(
            data_dir, reports_root=under(d.reports_dir), labels_csv=d.labels or None,
            schema=schema, view_order=tuple(d.view_order), **common,
        )
    if d.source == "openi_xml":
        return formats_openi.load_openi(
            os.path.join(data_dir, d.annotation), image_root=under(d.image_root) or data_dir,
            split_seed=d.split_seed, split_fractions=tuple(d.split_fractions), **common,
        )
    if d.source == "jsonl":
        return formats_jsonl.load_jsonl_studies(
            os.path.join(data_dir, d.annotation), schema=schema, image_root=under(d.image_root),
            split_seed=d.split_seed, split_fractions=tuple(d.split_fractions), **common,
        )
    if d.source == "tfds":
        from radflow_jax.data.tfds import source  # needs the tfds extra

        return source.load_splits(d.tfds_name, data_dir), formats.SkipReport()
    raise ValueError(f"config.data.source={d.source!r}; known: {SOURCES}")
