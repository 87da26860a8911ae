"""Per-modality observation schemas: which findings a report is labeled for, and which are critical.

The schema is shared by the synthetic generators (ground-truth labels), the labeler, the rewards and
the evaluation, so every place agrees on names and order. Label values follow the CheXpert
convention: 1 positive, 0 negative, -1 uncertain; ``None`` (stored as ``LABEL_BLANK`` in arrays)
means not mentioned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
LABEL_BLANK = -2  # array encoding of "not mentioned" (None in JSON)

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# SRU consensus (Grant et al., Radiology 2003) internal carotid stenosis bands. "Normal" is the
# absence of all of them, so it is not an observation of its own.
STENOSIS_GRADES: tuple[str, ...] = (
    "normal",
    "<50%",
    "50-69%",
    ">=70%",
    "near-occlusion",
    "occlusion",
)
CAROTID_SIDES: tuple[str, ...] = ("Right", "Left")
_CAROTID_PER_SIDE: tuple[str, ...] = (
    "Plaque",
    "Intima-Media Thickening",
    "Stenosis <50%",
    "Stenosis 50-69%",
    "Stenosis >=70%",
    "Near Occlusion",
    "Occlusion",
)
CAROTID_OBSERVATIONS: tuple[str, ...] = ("No Finding",) + tuple(
    f"{side} {obs}" for side in CAROTID_SIDES for obs in _CAROTID_PER_SIDE
)


def carotid_stenosis_observation(side: str, grade: str) -> str | None:
    """Observation name for a side's SRU grade (``None`` for a normal vessel)."""
    if side not in CAROTID_SIDES:
        raise ValueError(f"side must be one of {CAROTID_SIDES}, got {side!r}")
    names = {
        "normal": None,
        "<50%": "Stenosis <50%",
        "50-69%": "Stenosis 50-69%",
        ">=70%": "Stenosis >=70%",
        "near-occlusion": "Near Occlusion",
        "occlusion": "Occlusion",
    }
    if grade not in names:
        raise ValueError(f"grade must be one of {STENOSIS_GRADES}, got {grade!r}")
    obs = names[grade]
    return None if obs is None else f"{side} {obs}"


@dataclasses.dataclass(frozen=True)
class Schema:
    """The observations of one modality, in a fixed order, and the critical subset."""

    modality: str
    observations: tuple[str, ...]
    critical: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [c for c in self.critical if c not in self.observations]
        if unknown:
            raise ValueError(
                f"critical observations {unknown} are not in the {self.modality} schema; "
                f"known: {list(self.observations)}"
            )

    def index(self, observation: str) -> int:
        try:
            return self.observations.index(observation)
        except ValueError:
            raise KeyError(
                f"{observation!r} is not an observation of the {self.modality} schema; "
                f"known: {list(self.observations)}"
            ) from None

    def is_critical(self, labels: dict[str, int | None]) -> bool:
        """A case is critical when it is positive for any critical observation."""
        return any(labels.get(obs) == POSITIVE for obs in self.critical)


_DEFAULT_CRITICAL = {
    "cxr": ("Pneumothorax",),
    "carotid": tuple(
        f"{side} {obs}"
        for side in CAROTID_SIDES
        for obs in ("Stenosis >=70%", "Near Occlusion", "Occlusion")
    ),
}
_OBSERVATIONS = {"cxr": CHEXPERT_OBSERVATIONS, "carotid": CAROTID_OBSERVATIONS}
MODALITIES: tuple[str, ...] = tuple(_OBSERVATIONS)


def get_schema(modality: str, extra_critical: Sequence[str] = ()) -> Schema:
    """The schema of ``modality`` (``cxr`` or ``carotid``), with optional extra critical findings."""
    if modality not in _OBSERVATIONS:
        raise ValueError(f"unknown modality {modality!r}; supported: {list(MODALITIES)}")
    critical = _DEFAULT_CRITICAL[modality] + tuple(
        c for c in extra_critical if c not in _DEFAULT_CRITICAL[modality]
    )
    return Schema(modality, _OBSERVATIONS[modality], critical)
