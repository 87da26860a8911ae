"""Procedurally generated chest X-ray and carotid ultrasound studies with known ground truth.

``generate_case(modality, seed, index, image_size)`` renders one case deterministically from
``(seed, index)`` alone, so datasets can be generated in any order or in parallel and still be
byte-identical. ``writer.write_dataset`` puts them on disk in the R2Gen format.
"""

from __future__ import annotations

import numpy as np

from radflow_jax.data.synthetic.case import Case, Mention

MODALITIES = ("cxr", "carotid")


def generate_case(modality: str, seed: int, index: int, image_size: int = 128) -> Case:
    """Render case ``index`` of the dataset with ``seed`` for ``modality``."""
    rng = np.random.default_rng([seed, index])
    if modality == "cxr":
        from radflow_jax.data.synthetic import cxr

        return cxr.generate_case(rng, image_size)
    if modality == "carotid":
        from radflow_jax.data.synthetic import carotid

        return carotid.generate_case(rng, image_size)
    raise ValueError(f"unknown modality {modality!r}; supported: {list(MODALITIES)}")


__all__ = ["Case", "Mention", "MODALITIES", "generate_case"]
