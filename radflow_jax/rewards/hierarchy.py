"""The hierarchical RadFlow reward (DESIGN §1.1) and its flat ablation, on device.

The RL step samples ``<findings> … <impression> … <eos>`` token ids; the host decodes them and runs
the rule labeler once per section (``host_labels``); everything after that is pure JAX here, so
the reward is jitted into the RL step. Terms, each in [0, 1] and logged on its own:

- ``fluency``: a mix of BLEU-4, ROUGE-L and (optional, /10) CIDEr-D of the report's words against
  the reference's, times the **format gate**. Given a ``words.WordTable`` (``word_table``), the
  words are those the evaluation scores under the table's normaliser (``rewards/words.py``;
  build it with ``normalize=config.eval.normalize``: ``radflow`` keeps "1.5" and "245" whole and
  drops punctuation, R2Gen's cleaners delete it), Findings then Impression, so the reward's
  BLEU/ROUGE-L/CIDEr-D equal ``evaluate``'s per-report scores; without one they are the token ids
  (section tags, eos and padding removed), which differ wherever a word is not one token. The
  gate is 1 when the
  report is exactly ``<findings> F <impression> I`` with each section non-empty where the
  reference's is (hierarchical mode only; R2Gen-style findings-only references need no
  Impression), its share of repeated 4-grams exceeds the reference's by at most ``repeat_margin``
  (relative, because parallel left/right carotid descriptions legitimately repeat ~10-30 % of
  their 4-grams while chest reports repeat < 15 %), and its token count is within
  ``length_band`` times the reference's (the gates read tokens, with or without a word table);
  else 0. A gate, not a discount: a degenerate report earns no fluency however many n-grams it
  happens to share.
- ``correctness``: agreement of the report's positive observations with the reference's;
  critical observations weigh ``critical_weight`` in every count, so missing one costs most. Two
  forms (``label_credit``, also used by the Impression's label term): ``"report_f1"``, the
  weighted F1 of this report (``label_f1``), or ``"corpus_f1"``, this report's share of the
  micro-F1 of its whole rollout batch (``corpus_f1_credit``). Why the second exists: the
  evaluation's headline is corpus micro-F1, where true negatives count for nothing, while
  per-report F1 scores a normal study called normal 1 and the same report with one false positive
  0, so a false finding on a normal study costs as much as a missed finding on an abnormal one.
  On cxr rollouts of the default SFT model the per-report F1 advantage pushes away from stating
  pleural effusion (its statements are right 43 % of the time) and the corpus credit pushes
  towards it. At the end of a run the difference did not show in greedy test metrics, and on
  carotid ``corpus_f1`` did worse (docs/results.md), so ``report_f1`` is the default.
- ``consistency``: ``consistency.consistency_score`` of the report's own Findings and Impression
  labels (reference-free), times the sections gate when ``gate_consistency`` (a report without an
  Impression has no consistency to reward), and times the **critical gate** when
  ``gate_consistency_critical``: 0 if a critical observation positive in the reference is not
  positive in the report. Why: consistency alone is cheapest to satisfy by stating nothing
  critical — on carotid ultrasound, GRPO learned to write "<50 %" on both sides (consistency
  0.68 → 1.00, critical sensitivity 0.75 → 0.00), because a hedged or wrong-sided critical call
  costs more consistency than it earns correctness. A consistent report that misses a critical
  finding earns no consistency credit.
- ``impression``: ``(1 - a)·L(I, I*) + a·ROUGE-L(I, I*)``, ``a = impression_rouge_weight``, ``L`` the
  label credit above on the Impression's labels.

Total: ``R = Σ w·term / Σ w`` — weights are normalised, so R lies in [0, 1] in both modes and the
weights state relative importance. Where the reference has no Impression (R2Gen's findings-only
IU X-Ray and MIMIC-CXR annotations), consistency and impression do not apply and are left out of
that case's sum (its ``Σ w`` too). ``mode="flat"``: ``R`` uses fluency (gate without the sections
check) and correctness only, on the whole report; consistency and impression are still returned,
as diagnostics with no weight, so ablation logs stay comparable.

Choices (documented here, configurable in ``RewardConfig``): "No Finding" is not scored in the F1
(it is derived from the other observations, so counting it would reward a normal call twice);
instead two reports with no positive observation agree perfectly (F1 = 1: a normal study called
normal). Uncertain labels count as ``uncertain_as`` (negative, the R2Gen evaluation convention; or
positive; or half, a soft membership of 0.5 — F1 then uses ``min(g, r)`` as the true positive).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from radflow_jax.data.sections import parse_target
from radflow_jax.data.tokenizer import SPECIAL_TOKENS
from radflow_jax.rewards import labeler, nlg, words
from radflow_jax.rewards.consistency import (
    COUNT_KEYS,
    NO_FINDING,
    ConsistencyRules,
    consistency_breakdown,
    consistency_rules,
)
from radflow_jax.schema import LABEL_BLANK, NEGATIVE, POSITIVE, UNCERTAIN, Schema

MODES = ("hierarchical", "flat")
LABEL_CREDITS = ("report_f1", "corpus_f1")
UNCERTAIN_AS = {"negative": 0.0, "positive": 1.0, "half": 0.5}
SECTIONS = ("report", "findings", "impression")  # order of the label array's second axis
_REPORT, _FINDINGS, _IMPRESSION = range(3)
_STATIC = {"pytree_node": False}


@struct.dataclass
class RewardInputs:
    """One batch of generated and reference reports: token ids with masks, and section labels."""

    gen_tokens: jax.Array  # int [N, T] generated target ids (tags, eos included)
    gen_mask: jax.Array  # bool [N, T]
    ref_tokens: jax.Array  # int [N, R] reference target ids
    ref_mask: jax.Array  # bool [N, R]
    gen_labels: jax.Array  # int8 [N, 3, K]: report, findings, impression (SECTIONS)
    ref_labels: jax.Array  # int8 [N, 3, K]


@struct.dataclass
class RewardConfig:
    """Static reward settings (hashable; part of the jit cache key). Build with ``reward_config_from``."""

    critical: tuple[bool, ...] = struct.field(**_STATIC)  # per observation, schema order
    scored: tuple[bool, ...] = struct.field(**_STATIC)  # observations in the F1s (not No Finding)
    consistency: ConsistencyRules = struct.field(**_STATIC)  # same critical set and weight
    mode: str = struct.field(**_STATIC)  # MODES
    w_flu: float = struct.field(**_STATIC)  # term weights, normalised by their sum
    w_cor: float = struct.field(**_STATIC)
    w_con: float = struct.field(**_STATIC)  # hierarchical mode only
    w_imp: float = struct.field(**_STATIC)  # hierarchical mode only
    uncertain_as: str = struct.field(**_STATIC)  # UNCERTAIN_AS key
    critical_weight: float = struct.field(**_STATIC)  # weight of critical observations (>= 1)
    nlg_weights: tuple[float, float, float] = struct.field(**_STATIC)  # bleu4, rouge_l, cider_d
    impression_rouge_weight: float = struct.field(**_STATIC)  # a in the impression term
    length_band: tuple[float, float] = struct.field(**_STATIC)  # words / reference words
    repeat_margin: float = struct.field(**_STATIC)  # allowed repeated-4-gram share above the ref's
    gate_consistency: bool = struct.field(**_STATIC)  # consistency x sections gate
    gate_consistency_critical: bool = struct.field(default=True, **_STATIC)  # x no critical missed
    label_credit: str = struct.field(default="report_f1", **_STATIC)  # LABEL_CREDITS
    pad_id: int = struct.field(default=SPECIAL_TOKENS.index("<pad>"), **_STATIC)
    bos_id: int = struct.field(default=SPECIAL_TOKENS.index("<bos>"), **_STATIC)
    eos_id: int = struct.field(default=SPECIAL_TOKENS.index("<eos>"), **_STATIC)
    image_id: int = struct.field(default=SPECIAL_TOKENS.index("<image>"), **_STATIC)
    findings_id: int = struct.field(default=SPECIAL_TOKENS.index("<findings>"), **_STATIC)
    impression_id: int = struct.field(default=SPECIAL_TOKENS.index("<impression>"), **_STATIC)

    def __post_init__(self) -> None:
        k = len(self.critical)
        if len(self.scored) != k or len(self.consistency.critical) != k:
            raise ValueError(f"critical, scored and consistency rules must cover the same {k} observations")
        rules = self.consistency
        if rules.critical != self.critical or rules.critical_weight != self.critical_weight:
            raise ValueError("consistency rules must use the same critical set and critical_weight")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.label_credit not in LABEL_CREDITS:
            raise ValueError(f"label_credit must be one of {LABEL_CREDITS}, got {self.label_credit!r}")
        if self.uncertain_as not in UNCERTAIN_AS:
            raise ValueError(
                f"uncertain_as must be one of {tuple(UNCERTAIN_AS)}, got {self.uncertain_as!r}"
            )
        weights = (self.w_flu, self.w_cor, self.w_con, self.w_imp)
        if min(weights) < 0 or self.w_flu + self.w_cor <= 0:
            raise ValueError(f"term weights must be >= 0 with w_flu + w_cor > 0, got {weights}")
        if len(self.nlg_weights) != 3 or min(self.nlg_weights) < 0 or sum(self.nlg_weights) <= 0:
            raise ValueError(
                f"nlg_weights (bleu4, rouge_l, cider_d) must be >= 0, not all 0: {self.nlg_weights}"
            )
        if not 0.0 <= self.impression_rouge_weight <= 1.0:
            raise ValueError(f"impression_rouge_weight must be in [0, 1], got {self.impression_rouge_weight}")
        lo, hi = self.length_band
        if not 0.0 <= lo <= 1.0 <= hi:
            raise ValueError(
                f"length_band must be (lo, hi) with 0 <= lo <= 1 <= hi, got {self.length_band}"
            )
        if not 0.0 <= self.repeat_margin <= 1.0:
            raise ValueError(f"repeat_margin must be in [0, 1], got {self.repeat_margin}")
        if self.critical_weight < 1.0:
            raise ValueError(f"critical_weight must be >= 1, got {self.critical_weight}")


def reward_config_from(config_reward: ml_collections.ConfigDict, schema: Schema) -> RewardConfig:
    """``RewardConfig`` from the ``config.reward`` section and the modality schema (critical set)."""
    c = config_reward
    rules = consistency_rules(schema, uncertain_penalty=float(c.uncertain_penalty),
                              critical_weight=float(c.critical_weight))
    return RewardConfig(
        critical=rules.critical,
        scored=tuple(o != NO_FINDING for o in schema.observations),
        consistency=rules,
        mode=str(c.mode),
        w_flu=float(c.w_flu),
        w_cor=float(c.w_cor),
        w_con=float(c.w_con),
        w_imp=float(c.w_imp),
        uncertain_as=str(c.uncertain_as),
        critical_weight=float(c.critical_weight),
        nlg_weights=(float(c.nlg.bleu4), float(c.nlg.rouge_l), float(c.nlg.cider_d)),
        impression_rouge_weight=float(c.impression_rouge_weight),
        length_band=(float(c.length_band[0]), float(c.length_band[1])),
        repeat_margin=float(c.repeat_margin),
        gate_consistency=bool(c.gate_consistency),
        gate_consistency_critical=bool(c.gate_consistency_critical),
        label_credit=str(c.label_credit),
    )


# ------------------------------------------------------------------------------------ host part


def _combine(findings: np.ndarray, impression: np.ndarray, schema: Schema) -> np.ndarray:
    """Whole-report labels from section labels, by the labeler's aggregation rule on arrays.

    Positive beats uncertain beats negative beats blank; No Finding is 1 when anything is mentioned
    and nothing but Support Devices is positive or uncertain, else blank — what ``label_report``
    gives for the whole report (a section with any mention has a non-blank label).
    """
    rank = np.array([0, 2, 1, 3], np.int8)  # by value + 2: blank, uncertain, negative, positive
    value = np.array([LABEL_BLANK, NEGATIVE, UNCERTAIN, POSITIVE], np.int8)  # by rank
    out = value[np.maximum(rank[findings + 2], rank[impression + 2])]
    if NO_FINDING in schema.observations:
        counted = np.array([o not in (NO_FINDING, "Support Devices") for o in schema.observations])
        abnormal = ((out == POSITIVE) | (out == UNCERTAIN))[..., counted].any(-1)
        mentioned = (findings != LABEL_BLANK).any(-1) | (impression != LABEL_BLANK).any(-1)
        out[..., schema.index(NO_FINDING)] = np.where(mentioned & ~abnormal, POSITIVE, LABEL_BLANK)
    return out


def host_labels(
    texts: Sequence[str],
    schema: Schema,
    label_fn: Callable[[Sequence[str], Schema], np.ndarray] = labeler.label_array,
) -> np.ndarray:
    """int8 ``[N, 3, K]`` labels (report, findings, impression) of decoded target texts.

    Sections come from ``parse_target`` (tolerant of malformed output); each distinct section
    string is labeled once, in one batched ``label_fn`` call (the rule labeler by default, or the
    Flax labeler's ``NetLabeler.label_array``), which pays off in RL, where a group's references
    are equal and short Impressions recur. The report row combines the two section rows with the
    labeler's own aggregation rule, equal to labeling the headed report.
    """
    sections = [parse_target(t) for t in texts]
    unique = list(dict.fromkeys(x for s in sections for x in (s.findings, s.impression)))
    rows = np.asarray(label_fn(unique, schema), np.int8)
    index = {t: i for i, t in enumerate(unique)}
    out = np.empty((len(texts), 3, len(schema.observations)), np.int8)
    out[:, _FINDINGS] = rows[[index[s.findings] for s in sections]]
    out[:, _IMPRESSION] = rows[[index[s.impression] for s in sections]]
    out[:, _REPORT] = _combine(out[:, _FINDINGS], out[:, _IMPRESSION], schema)
    return out


# ------------------------------------------------------------------------------------ device part


@struct.dataclass
class SectionMasks:
    """Where the words of a target sequence are, by section, as ``parse_target`` reads its text."""

    content: jax.Array  # bool [N, T]: words (no special tokens), before the first eos
    findings: jax.Array  # bool [N, T]
    impression: jax.Array  # bool [N, T]
    tagged: jax.Array  # bool [N]: tags exactly as "<findings> F <impression> I" (F, I may be empty)
    section: jax.Array  # int32 [N, T]: 1 Findings, 2 Impression, 0 neither, for every non-tag token
    spaced: jax.Array  # bool [N, T]: a tag stands between the token and the one rendered before it


def section_masks(tokens: jax.Array, mask: jax.Array, cfg: RewardConfig) -> SectionMasks:
    """Section masks of target ids ``[N, T]`` (tokens after the first eos are ignored).

    A word belongs to the section of the last tag before it; words before the first tag are
    Findings unless that tag is ``<findings>`` (then they are a stray preamble, in no section),
    exactly as ``parse_target`` splits the decoded text, so the host labels and these masks agree.
    """
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    valid = jnp.asarray(mask, bool) & (jnp.cumsum(tokens == cfg.eos_id, axis=-1) == 0)
    is_f = valid & (tokens == cfg.findings_id)
    is_i = valid & (tokens == cfg.impression_id)
    specials = jnp.asarray(
        (cfg.pad_id, cfg.bos_id, cfg.eos_id, cfg.image_id, cfg.findings_id, cfg.impression_id)
    )
    content = valid & ~jnp.isin(tokens, specials)
    positions = jnp.arange(tokens.shape[-1])
    last_tag = jax.lax.cummax(jnp.where(is_f | is_i, positions, -1), axis=tokens.ndim - 1)
    kind = jnp.where(is_f, 1, jnp.where(is_i, 2, 0))
    current = jnp.where(last_tag >= 0, jnp.take_along_axis(kind, jnp.maximum(last_tag, 0), -1), 0)
    first_tag = jnp.argmax(is_f | is_i, axis=-1)
    first_is_f = jnp.take_along_axis(is_f, first_tag[:, None], -1)[:, 0]
    before_tags = content & (current == 0)
    findings = content & ((current == 1) | (before_tags & ~first_is_f[:, None]))
    impression = content & (current == 2)
    tagged = (
        (is_f.sum(-1) == 1)
        & (is_i.sum(-1) == 1)
        & (jnp.argmax(is_f, -1) < jnp.argmax(is_i, -1))
        & ~before_tags.any(-1)
    )
    # Every token's section, <unk>/<image> (rendered as text) and pad/bos (rendered as nothing)
    # included, for the evaluation's words (rewards/words.py).
    untagged = valid & ~(is_f | is_i)
    in_findings = (current == 1) | ((current == 0) & ~first_is_f[:, None])
    section = jnp.where(untagged, jnp.where(in_findings, 1, jnp.where(current == 2, 2, 0)), 0)
    rendered = untagged & ~jnp.isin(tokens, jnp.asarray((cfg.pad_id, cfg.bos_id)))
    last_rendered = jax.lax.cummax(jnp.where(rendered, positions, -1), axis=tokens.ndim - 1)
    spaced = last_tag > jnp.pad(last_rendered[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    return SectionMasks(content, findings, impression, tagged, section.astype(jnp.int32), spaced)


def sections_gate(gen: SectionMasks, ref: SectionMasks) -> jax.Array:
    """``[N]``: tagged as ``<findings> F <impression> I``, each section non-empty where the
    reference's is, and not empty as a whole."""
    has_f, has_i = gen.findings.any(-1), gen.impression.any(-1)
    needs_f, needs_i = ref.findings.any(-1), ref.impression.any(-1)
    return gen.tagged & (has_f | ~needs_f) & (has_i | ~needs_i) & (has_f | has_i)


def _compact(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Kept ids moved to the front in order (-1 after them), and their count."""
    order = jnp.argsort(~mask, axis=-1, stable=True)
    ids = jnp.take_along_axis(jnp.asarray(tokens).astype(jnp.int32), order, -1)
    length = mask.sum(-1)
    return jnp.where(jnp.arange(ids.shape[-1]) < length[:, None], ids, -1), length


def repeated_4gram_fraction(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """``[N]``: the share of a sequence's 4-grams that already occurred earlier in it (0 if none).

    Exact, by one multi-key sort per row: equal 4-grams end up adjacent, and every member of a run
    but its first is a repeat. A sentence written 10 times gives ~0.9; real reports ~0-0.1.
    """
    ids, length = _compact(tokens, jnp.asarray(mask, bool))
    size = ids.shape[-1]
    padded = jnp.pad(ids, ((0, 0), (0, 3)), constant_values=-1)
    grams = [padded[:, k : k + size] for k in range(4)]
    outside = (jnp.arange(size) > length[:, None] - 4).astype(jnp.int32)
    keys = jax.lax.sort((outside, *grams), dimension=-1, num_keys=5)
    same = (keys[0][:, 1:] == 0) & (keys[0][:, :-1] == 0)
    for g in keys[1:]:
        same &= g[:, 1:] == g[:, :-1]
    count = jnp.maximum(length - 3, 0)
    return same.sum(-1) / jnp.maximum(count, 1)


def positive_degree(labels: jax.Array, uncertain_as: str) -> jax.Array:
    """How positive each label counts: 1 positive, ``UNCERTAIN_AS[uncertain_as]`` uncertain, else 0."""
    labels = jnp.asarray(labels)
    uncertain = jnp.where(labels == UNCERTAIN, UNCERTAIN_AS[uncertain_as], 0.0)
    return jnp.where(labels == POSITIVE, 1.0, uncertain)


def _label_counts(
    gen_labels: jax.Array, ref_labels: jax.Array, weights: jax.Array, uncertain_as: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted ``tp, fp, fn`` per report: ``Σ w·min(g, r)``, ``Σ w·(g - min)``, ``Σ w·(r - min)``."""
    g, r = positive_degree(gen_labels, uncertain_as), positive_degree(ref_labels, uncertain_as)
    both = jnp.minimum(g, r)
    return jnp.sum(weights * both, -1), jnp.sum(weights * (g - both), -1), jnp.sum(weights * (r - both), -1)


def _f1(tp: jax.Array, errors: jax.Array) -> jax.Array:
    """``2tp / (2tp + fp + fn)``, and 1 when there is no positive on either side."""
    denom = 2 * tp + errors
    return jnp.where(denom > 0, 2 * tp / jnp.where(denom > 0, denom, 1.0), 1.0)


def label_f1(
    gen_labels: jax.Array, ref_labels: jax.Array, weights: jax.Array, uncertain_as: str
) -> jax.Array:
    """Weighted F1 of positive observations, ``[...]`` from labels ``[..., K]``.

    ``tp = Σ w·min(g, r)``, ``fp = Σ w·(g - min)``, ``fn = Σ w·(r - min)`` with ``g, r`` the positive
    degrees and ``w`` per observation (0 = not scored); ``2tp / (2tp + fp + fn)``, and 1 when
    neither side has a positive (a normal study called normal).
    """
    tp, fp, fn = _label_counts(gen_labels, ref_labels, weights, uncertain_as)
    return _f1(tp, fp + fn)


def corpus_f1_credit(
    gen_labels: jax.Array, ref_labels: jax.Array, weights: jax.Array, uncertain_as: str
) -> jax.Array:
    """Each report's credit for the micro-F1 of its batch, ``[N]`` in [0, 1] from labels ``[N, K]``.

    ``F + N·(F - F₋ᵢ)``, clipped to [0, 1]: the batch's weighted micro-F1 ``F`` (counts as in
    ``label_f1``, summed over all N reports) plus N times what removing report ``i`` would take
    from it (a leave-one-out *difference reward*). ``F`` is the same for every report, so group
    advantages see only the difference term, which to first order is
    ``(2(1-F)·tpᵢ - F·(fpᵢ + fnᵢ)) / s̄`` with ``s̄`` the batch mean of ``2tp + fp + fn``: a true
    positive gains, a false positive or a miss costs, and true negatives count for nothing, as in
    corpus micro-F1. Pass weights that score "No Finding" to mirror the evaluation, where a normal
    study called normal earns its true positive through that observation.
    """
    tp, fp, fn = _label_counts(gen_labels, ref_labels, weights, uncertain_as)
    total = _f1(tp.sum(), fp.sum() + fn.sum())
    without = _f1(tp.sum() - tp, fp.sum() - fp + fn.sum() - fn)
    return jnp.clip(total + tp.shape[0] * (total - without), 0.0, 1.0)


def _nlg(cand, cand_mask, ref, ref_mask, cfg: RewardConfig, df_table) -> dict[str, jax.Array]:
    """BLEU-4, ROUGE-L, CIDEr-D/10 (when weighted) and their normalised mix ``nlg``, on ids."""
    w_bleu, w_rouge, w_cider = cfg.nlg_weights
    scores = {"bleu4": nlg.bleu(cand, cand_mask, ref, ref_mask, n=4),
              "rouge_l": nlg.rouge_l(cand, cand_mask, ref, ref_mask)}
    mix = w_bleu * scores["bleu4"] + w_rouge * scores["rouge_l"]
    if w_cider > 0:
        if df_table is None:
            raise ValueError("nlg_weights gives CIDEr-D a weight but no df_table was passed "
                             "(build one with nlg.build_df on the training references)")
        cider = nlg.cider_d(cand, cand_mask, ref, ref_mask, df_table)
        scores["cider_d"] = jnp.clip(cider / 10.0, 0.0, 1.0)  # CIDEr-D lies in [0, 10]
        mix = mix + w_cider * scores["cider_d"]
    return {**scores, "nlg": mix / sum(cfg.nlg_weights)}


def _eval_words(table: words.WordTable, inputs: RewardInputs, gen: SectionMasks, ref: SectionMasks):
    """Word ids and masks ``(gen, gen_mask, ref, ref_mask)`` of the whole reports and of the
    Impressions, the evaluation's words; one ``report_words`` over all four, stacked."""
    n, size = inputs.gen_tokens.shape[0], max(inputs.gen_tokens.shape[1], inputs.ref_tokens.shape[1])

    def pad(x):
        return jnp.pad(jnp.asarray(x), ((0, 0), (0, size - x.shape[1])))

    tokens = jnp.concatenate([pad(inputs.gen_tokens), pad(inputs.ref_tokens)] * 2)
    section = jnp.concatenate([pad(gen.section), pad(ref.section)])
    section = jnp.concatenate([section, jnp.where(section == 2, 2, 0)])  # the Impressions alone
    spaced = jnp.concatenate([pad(gen.spaced), pad(ref.spaced)] * 2)
    w = words.report_words(table, tokens, section, spaced)
    rows = lambda k: words.Words(w.keys[k * n : (k + 1) * n], w.mask[k * n : (k + 1) * n])  # noqa: E731
    gen_w, ref_w = (words.Words(*map(jnp.concatenate, zip(rows(k), rows(k + 2)))) for k in (0, 1))
    gen_ids, ref_ids = words.word_ids(table, gen_w, ref_w)
    report = (gen_ids[:n], gen_w.mask[:n], ref_ids[:n], ref_w.mask[:n])
    impression = (gen_ids[n:], gen_w.mask[n:], ref_ids[n:], ref_w.mask[n:])
    return report, impression


def hierarchical_reward(
    inputs: RewardInputs,
    cfg: RewardConfig,
    df_table: nlg.DocumentFrequencies | None = None,
    word_table: words.WordTable | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total reward ``[N]`` and every term ``[N]`` (module docstring); pure and jittable.

    ``word_table`` (``words.word_table(tokenizer, normalize=...)``): the NLG terms score the words
    the evaluation scores under that normaliser; a ``df_table`` for CIDEr-D must then be built
    over the same table's word ids (``words.corpus_df``). Without it they score token ids (and
    ``df_table`` is ``nlg.build_df``'s).

    Terms in [0, 1]: ``fluency``, ``correctness``, ``consistency``, ``impression``, ``format_gate``
    and their parts (``bleu4``, ``rouge_l``, [``cider_d``], ``nlg``, ``gate_sections``,
    ``gate_repetition``, ``gate_length``, ``gate_critical``, ``impression_labels``, ``impression_rouge_l``,
    ``consistent``). Counts (int32): ``consistency_<kind>`` for each of ``COUNT_KEYS``.
    """
    gen = section_masks(inputs.gen_tokens, inputs.gen_mask, cfg)
    ref = section_masks(inputs.ref_tokens, inputs.ref_mask, cfg)
    flat = cfg.mode == "flat"
    ft = jnp.result_type(float)

    if word_table is None:
        report = (inputs.gen_tokens, gen.content, inputs.ref_tokens, ref.content)
        impression_words = (inputs.gen_tokens, gen.impression, inputs.ref_tokens, ref.impression)
    else:
        report, impression_words = _eval_words(word_table, inputs, gen, ref)
    scores = _nlg(*report, cfg, df_table)
    lo, hi = cfg.length_band
    ratio = gen.content.sum(-1) / jnp.maximum(ref.content.sum(-1), 1)
    gates = {
        "gate_sections": sections_gate(gen, ref),
        "gate_repetition": repeated_4gram_fraction(inputs.gen_tokens, gen.content)
        <= repeated_4gram_fraction(inputs.ref_tokens, ref.content) + cfg.repeat_margin,
        "gate_length": (ratio >= lo) & (ratio <= hi),
    }
    gate = gates["gate_repetition"] & gates["gate_length"]
    if not flat:
        gate &= gates["gate_sections"]

    weights = jnp.where(jnp.asarray(cfg.critical), cfg.critical_weight, 1.0) * jnp.asarray(cfg.scored)
    gen_labels, ref_labels = jnp.asarray(inputs.gen_labels), jnp.asarray(inputs.ref_labels)
    if cfg.label_credit == "corpus_f1":
        every = jnp.where(jnp.asarray(cfg.critical), cfg.critical_weight, 1.0)  # No Finding too

        def credit(gen: jax.Array, ref: jax.Array) -> jax.Array:
            return corpus_f1_credit(gen, ref, every, cfg.uncertain_as)
    else:
        def credit(gen: jax.Array, ref: jax.Array) -> jax.Array:
            return label_f1(gen, ref, weights, cfg.uncertain_as)
    correctness = credit(gen_labels[:, _REPORT], ref_labels[:, _REPORT])

    gen_f, gen_i = gen_labels[:, _FINDINGS], gen_labels[:, _IMPRESSION]
    breakdown = consistency_breakdown(gen_f, gen_i, cfg.consistency)
    consistency = breakdown["score"]
    if cfg.gate_consistency:
        consistency = consistency * gates["gate_sections"]
    missed = jnp.asarray(cfg.critical) & (ref_labels[:, _REPORT] == POSITIVE) & (gen_labels[:, _REPORT] != POSITIVE)
    gates["gate_critical"] = ~missed.any(-1)
    if cfg.gate_consistency_critical:
        consistency = consistency * gates["gate_critical"]

    imp_labels = credit(gen_i, ref_labels[:, _IMPRESSION])
    imp_rouge = nlg.rouge_l(*impression_words)
    a = cfg.impression_rouge_weight
    impression = (1 - a) * imp_labels + a * imp_rouge

    terms = {
        "fluency": scores["nlg"] * gate,
        "correctness": correctness,
        "consistency": consistency,
        "impression": impression,
        "format_gate": gate,
        **scores,
        **gates,
        "impression_labels": imp_labels,
        "impression_rouge_l": imp_rouge,
        "consistent": breakdown["consistent"],
    }
    terms = {k: v.astype(ft) for k, v in terms.items()}
    terms.update({f"consistency_{k}": breakdown[k] for k in COUNT_KEYS})
    weighted = [(cfg.w_flu, "fluency"), (cfg.w_cor, "correctness")]
    if not flat:
        has_impression = ref.impression.any(-1)  # else the Impression terms do not apply
        weighted += [(cfg.w_con * has_impression, "consistency"), (cfg.w_imp * has_impression, "impression")]
    total = sum(w * terms[k] for w, k in weighted) / sum(w for w, _ in weighted)
    return total, terms


def default_reward_config() -> ml_collections.ConfigDict:
    """The ``config.reward`` section with its defaults (the lead merges it into ``config.py``)."""
    c = ml_collections.ConfigDict()
    c.mode = "hierarchical"
    c.w_flu, c.w_cor, c.w_con, c.w_imp = 1.0, 2.0, 1.0, 1.0
    c.uncertain_as = "negative"
    c.critical_weight = 2.0
    c.uncertain_penalty = 0.5
    c.nlg = ml_collections.ConfigDict({"bleu4": 0.5, "rouge_l": 0.5, "cider_d": 0.0})
    c.impression_rouge_weight = 0.5
    c.length_band = (0.5, 2.0)
    c.repeat_margin = 0.2
    c.gate_consistency = True
    c.gate_consistency_critical = True
    c.label_credit = "report_f1"
    return c
