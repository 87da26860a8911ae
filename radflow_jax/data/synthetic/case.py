"""What a synthetic generator returns for one case, before it is written to disk."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Mention:
    """One report sentence and the observations it states (value 1 / 0 / -1).

    Kept so tests can check that a report round-trips to its labels sentence by sentence, and so
    later stages can locate key statements without re-labeling.
    """

    section: str  # "findings" or "impression"
    sentence: str
    observations: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Case:
    """A rendered study: images, its two-section report and the ground truth it was made from.

    ``labels`` holds every observation of the modality's schema: 1 present, -1 present but stated
    with a hedge (the finding is subtle), 0 absent, ``None`` never for synthetic data.
    ``details`` carries structured attributes (side, size, severity, zone, velocities, ...).
    """

    images: tuple[np.ndarray, ...]  # uint8 grayscale, HxW each
    views: tuple[str, ...]  # view name per image, e.g. "PA" or "right duplex"
    report: str  # "FINDINGS: ...\n\nIMPRESSION: ..."
    labels: dict[str, int | None]
    details: dict[str, Any]
    critical: bool
    template: str  # report template family, e.g. "structured/numbered"
    mentions: tuple[Mention, ...]
