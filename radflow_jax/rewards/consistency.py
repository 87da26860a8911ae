"""Findings ↔ Impression consistency of one report, from the labels of its two sections.

Reference-free (DESIGN §1.1): a radiologist's Impression must follow from their own Findings. We
compare the labels ``L(F)`` and ``L(I)`` of the same report, per observation ``k`` (values 1 / 0 /
-1 / ``LABEL_BLANK``), and count four kinds of disagreement:

- **contradictions** (full penalty): ``F`` negative & ``I`` positive, or ``F`` positive & ``I``
  negative.
- **unsupported** (full penalty): ``I`` positive while no Findings observation that can support it
  is positive or uncertain. Support is more than identity, because the Impression interprets and
  summarises: "right lower lobe consolidation" supports an Impression of "pneumonia", specific
  lung findings support "opacity" and vice versa, an enlarged cardiac silhouette supports
  cardiomegaly; for carotid, a stenosis band of a side supports that side's plaque
  (``SUPPORT_PAIRS``).
- **omitted critical** (full penalty): a critical observation positive in ``F`` and not mentioned
  in ``I``. Non-critical positives may be left out (the Impression summarises).
- **uncertain mismatches** (``uncertain_penalty``, softer): one side hedges what the other states
  (``I`` uncertain & ``F`` positive or negative, ``I`` negative & ``F`` uncertain), an Impression
  positive backed only by uncertain Findings, a hedged Impression with no support at all, an
  uncertain critical Finding left out of the Impression, and (once per report) an Impression
  stating a normal study ("No acute cardiopulmonary process": ``I`` No Finding = 1) over Findings
  with a definite positive. The last is soft on purpose: in real reports (Open-I) "no acute
  disease" above calcified granulomas or healed fractures is common and correct, since those are
  not acute; a normal Impression over a *critical* Finding is still an omitted critical finding.

Clinical exemptions: "No Finding" is not compared as an observation (it is derived from the others;
a normal Impression over negative-only Findings is consistent); Support Devices need neither be
repeated in the Impression nor be described in the Findings (``EXEMPT``), though stating a device
in one section and denying it in the other is still a contradiction. Observations of critical
findings weigh ``critical_weight``.

Score: ``1 / (1 + P)`` with ``P`` the weighted penalty sum, so 1 means consistent, one
contradiction gives 0.5, and the score only rises by removing disagreements (padding the report
with agreeing statements cannot dilute a contradiction). A report is **consistent** (the
evaluation's ``consistency_rate``) when it has no contradiction, unsupported positive or omitted
critical finding; uncertain mismatches lower the score but do not make it inconsistent.

Everything here is ``jax.numpy`` on label arrays ``[..., K]``: jittable for the RL step, and
callable on numpy arrays by the evaluation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from radflow_jax.schema import LABEL_BLANK, NEGATIVE, POSITIVE, UNCERTAIN, Schema

NO_FINDING = "No Finding"
EXEMPT = {"cxr": ("Support Devices",), "carotid": ()}
_LUNG_SPECIFIC = ("Edema", "Consolidation", "Pneumonia", "Atelectasis", "Lung Lesion")
_CAROTID_BANDS = ("Stenosis <50%", "Stenosis 50-69%", "Stenosis >=70%", "Near Occlusion", "Occlusion")
# (Impression observation, Findings observation that supports it), besides identity.
SUPPORT_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "cxr": (
        *(("Lung Opacity", k) for k in _LUNG_SPECIFIC),
        *((k, "Lung Opacity") for k in _LUNG_SPECIFIC),
        ("Pneumonia", "Consolidation"),
        ("Consolidation", "Pneumonia"),
        ("Cardiomegaly", "Enlarged Cardiomediastinum"),
        ("Enlarged Cardiomediastinum", "Cardiomegaly"),
    ),
    "carotid": tuple(
        (f"{side} Plaque", f"{side} {band}") for side in ("Right", "Left") for band in _CAROTID_BANDS
    ),
}
COUNT_KEYS = ("contradictions", "unsupported", "omitted_critical", "uncertain_mismatch")


@dataclasses.dataclass(frozen=True)
class ConsistencyRules:
    """Per-observation masks and weights (tuples, so a config holding them stays hashable/static).

    ``support[k][j]``: a Findings label on observation ``j`` can support an Impression positive on
    ``k``. ``no_finding``: index of "No Finding" (-1 if the schema has none).
    """

    critical: tuple[bool, ...]
    exempt: tuple[bool, ...]
    support: tuple[tuple[bool, ...], ...]
    no_finding: int
    uncertain_penalty: float = 0.5
    critical_weight: float = 2.0

    def __post_init__(self) -> None:
        k = len(self.critical)
        if len(self.exempt) != k or len(self.support) != k or any(len(r) != k for r in self.support):
            raise ValueError(f"critical, exempt and support must all cover the same {k} observations")
        if not -1 <= self.no_finding < k:
            raise ValueError(f"no_finding must be an observation index or -1, got {self.no_finding}")
        if not 0.0 <= self.uncertain_penalty <= 1.0:
            raise ValueError(f"uncertain_penalty must be in [0, 1], got {self.uncertain_penalty}")
        if self.critical_weight < 1.0:
            raise ValueError(f"critical_weight must be >= 1, got {self.critical_weight}")


def consistency_rules(
    schema: Schema, uncertain_penalty: float = 0.5, critical_weight: float = 2.0
) -> ConsistencyRules:
    """The rules of ``schema``'s modality (support pairs, exemptions) with its critical set."""
    obs = schema.observations
    support = np.eye(len(obs), dtype=bool)
    for imp, find in SUPPORT_PAIRS.get(schema.modality, ()):
        support[schema.index(imp), schema.index(find)] = True
    exempt = set(EXEMPT.get(schema.modality, ()))
    return ConsistencyRules(
        critical=tuple(o in schema.critical for o in obs),
        exempt=tuple(o in exempt for o in obs),
        support=tuple(tuple(bool(x) for x in row) for row in support),
        no_finding=obs.index(NO_FINDING) if NO_FINDING in obs else -1,
        uncertain_penalty=uncertain_penalty,
        critical_weight=critical_weight,
    )


def _masks(rules: ConsistencyRules) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    critical = jnp.asarray(rules.critical, bool)
    exempt = jnp.asarray(rules.exempt, bool)
    compared = jnp.ones(len(rules.critical), bool)
    if rules.no_finding >= 0:
        compared = compared.at[rules.no_finding].set(False)
    return critical, exempt, compared, jnp.asarray(rules.support, bool)


def consistency_breakdown(
    findings_labels: jax.Array, impression_labels: jax.Array, rules: ConsistencyRules
) -> dict[str, jax.Array]:
    """Per report ``[...]``: the four counts (``COUNT_KEYS``, int32), ``penalty`` (weighted sum),
    ``score`` = 1 / (1 + penalty) in (0, 1], and ``consistent`` (bool). Labels are ``[..., K]``."""
    f = jnp.asarray(findings_labels).astype(jnp.int32)
    i = jnp.asarray(impression_labels).astype(jnp.int32)
    if f.shape != i.shape or f.shape[-1] != len(rules.critical):
        raise ValueError(
            f"findings {f.shape} and impression {i.shape} labels must be [..., {len(rules.critical)}]"
        )
    critical, exempt, compared, support = _masks(rules)
    f_pos, f_neg, f_unc, f_blank = f == POSITIVE, f == NEGATIVE, f == UNCERTAIN, f == LABEL_BLANK
    i_pos, i_neg, i_unc, i_blank = i == POSITIVE, i == NEGATIVE, i == UNCERTAIN, i == LABEL_BLANK
    backed = (f_pos[..., None, :] & support).any(-1)  # [..., K]: a positive Finding supports I_k
    hedged = (f_unc[..., None, :] & support).any(-1)  # an uncertain Finding supports I_k
    may_need_support = compared & ~exempt

    contradiction = compared & ((f_neg & i_pos) | (f_pos & i_neg))
    unsupported = may_need_support & i_pos & ~f_neg & ~backed & ~hedged
    omitted = compared & critical & f_pos & i_blank
    uncertain = compared & (
        (i_unc & (f_pos | f_neg))
        | (i_neg & f_unc)
        | (may_need_support & i_pos & ~f_neg & ~backed & hedged)
        | (may_need_support & i_unc & f_blank & ~backed & ~hedged)
        | (critical & f_unc & i_blank)
    )
    if rules.no_finding >= 0:
        normal_impression = i[..., rules.no_finding] == POSITIVE
        abnormal_findings = (f_pos & may_need_support).any(-1)
        normal_over_abnormal = (normal_impression & abnormal_findings).astype(jnp.int32)
    else:
        normal_over_abnormal = jnp.zeros(f.shape[:-1], jnp.int32)

    weight = jnp.where(critical, rules.critical_weight, 1.0)
    per_obs = (contradiction.astype(weight.dtype) + unsupported + omitted
               + rules.uncertain_penalty * uncertain)
    penalty = (weight * per_obs).sum(-1) + rules.uncertain_penalty * normal_over_abnormal
    counts = {
        "contradictions": contradiction.sum(-1, dtype=jnp.int32),
        "unsupported": unsupported.sum(-1, dtype=jnp.int32),
        "omitted_critical": omitted.sum(-1, dtype=jnp.int32),
        "uncertain_mismatch": uncertain.sum(-1, dtype=jnp.int32) + normal_over_abnormal,
    }
    consistent = (counts["contradictions"] + counts["unsupported"] + counts["omitted_critical"]) == 0
    return {**counts, "penalty": penalty, "score": 1.0 / (1.0 + penalty), "consistent": consistent}


def consistency_score(
    findings_labels: jax.Array, impression_labels: jax.Array, rules: ConsistencyRules
) -> jax.Array:
    """The consistency reward in (0, 1], ``[...]`` (see ``consistency_breakdown``)."""
    return consistency_breakdown(findings_labels, impression_labels, rules)["score"]


def consistency_rate(
    findings_labels: jax.Array, impression_labels: jax.Array, rules: ConsistencyRules
) -> float:
    """Fraction of reports that are consistent (the evaluation metric ``consistency_rate``).

    ``findings_labels``/``impression_labels``: ``[N, K]`` int8 arrays (numpy or JAX), e.g. from
    ``labeler.label_array`` on each section; ``rules``: ``consistency_rules(schema)``.
    """
    consistent = consistency_breakdown(findings_labels, impression_labels, rules)["consistent"]
    if consistent.size == 0:
        raise ValueError("consistency_rate needs at least one report")
    return float(jnp.mean(consistent))
