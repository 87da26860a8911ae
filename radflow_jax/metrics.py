"""Evaluation metrics as pure functions over strings and label arrays (DESIGN §4).

NLG scores are pycocoevalcap's scorers on normalised text; the normaliser is a choice
(``NORMALIZERS``) recorded with every result, because report-generation papers score R2Gen's own
cleaning and a result file that is already cleaned must be scored verbatim to reproduce them.
Clinical efficacy (CE) follows the R2Gen convention (positive = label 1; uncertain and
not-mentioned count as negative). The ``evaluate`` entry point assembles these into its output.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from radflow_jax.schema import POSITIVE

CHEXPERT_COMMON5: tuple[str, ...] = (
    "Cardiomegaly",
    "Edema",
    "Consolidation",
    "Atelectasis",
    "Pleural Effusion",
)

# --------------------------------------------------------------------------- text

# How text is normalised before pycocoevalcap scores it:
#   none         the strings verbatim (for result files already cleaned, as published ones are)
#   r2gen_iu     R2Gen's ``clean_report_iu_xray``, then whitespace tokens joined by one space
#   r2gen_mimic  R2Gen's ``clean_report_mimic_cxr``, likewise
#   radflow      ``radflow_normalize`` (this project's own R2Gen-style variant; the default so far)
NORMALIZERS: tuple[str, ...] = ("none", "r2gen_iu", "r2gen_mimic", "radflow")
DEFAULT_NORMALIZE = "radflow"

_LIST_MARKER = re.compile(r"(^|[.!?;:]\s+)\d{1,2}[.)]\s+")  # "1. " / "2) " opening a sentence
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")  # not the point of a decimal number
_QUOTES = re.compile(r"[\"'`‘’“”]")  # deleted, so "patient's" stays one word
_NON_WORD = re.compile(r"[^a-z0-9.]+")
_STRAY_DOT = re.compile(r"(?<!\d)\.|\.(?!\d)")  # any point not inside a number like 1.5


def radflow_normalize(text: str) -> str:
    """RadFlow's R2Gen-style text: lower-case, punctuation stripped, sentences joined by ``" . "``.

    Like R2Gen's cleaners, list markers ("1. ") go and every sentence ends with `` .``; unlike
    them, punctuation becomes a space rather than vanishing (so "50-69%" reads "50 69", not
    "5069", and "b-lines" reads "b lines"), decimal points survive ("1.5 cm"), and all whitespace
    collapses to single spaces (a newline makes pycocoevalcap's METEOR hang). Only ``[a-z0-9 .]``
    remains. Idempotent: normalising normalised text changes nothing. Its scores differ from
    R2Gen's cleaning by up to ~1e-3 BLEU/ROUGE-L, so papers' numbers need ``r2gen_iu``/``r2gen_mimic``.
    """
    text = _LIST_MARKER.sub(r"\1", " ".join(text.lower().split()))
    sentences = []
    for sentence in _SENTENCE_END.split(text):
        sentence = _STRAY_DOT.sub(" ", _NON_WORD.sub(" ", _QUOTES.sub("", sentence)))
        sentence = " ".join(sentence.split())
        if sentence:
            sentences.append(sentence)
    return " . ".join(sentences) + " ." if sentences else ""


# R2Gen (Chen et al., EMNLP 2020), https://github.com/cuhksz-nlp/R2Gen, modules/tokenizers.py,
# ``Tokenizer.clean_report_iu_xray`` / ``clean_report_mimic_cxr``: the same operations in the same
# order. ``":-\["`` in the character class is a *range* (":" to "[", i.e. ``:;<=>?@A-Z[``), so
# the class holds no hyphen and "b-lines" or "50-69" keep theirs, while "<" ">" "=" "@" vanish.
_R2GEN_PUNCT = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_R2GEN_LISTS = (("1. ", ""), (". 2. ", ". "), (". 3. ", ". "), (". 4. ", ". "), (". 5. ", ". "),
                (" 2. ", ". "), (" 3. ", ". "), (" 4. ", ". "), (" 5. ", ". "))
_R2GEN_IU = (("..", "."),) * 3 + _R2GEN_LISTS
_R2GEN_MIMIC = (("\n", " "),) + (("__", "_"),) * 7 + (("  ", " "),) * 6 + (("..", "."),) * 8 + _R2GEN_LISTS


def _r2gen_clean(report: str, replacements: tuple[tuple[str, str], ...]) -> str:
    for old, new in replacements:
        report = report.replace(old, new)
    sentences = []
    for sentence in report.strip().lower().split(". "):
        for char in ('"', "/", "\\", "'"):
            sentence = sentence.replace(char, "")
        # R2Gen keeps empty sentences (its filter compares a str with [], always true): "a. . b"
        # gives "a .  . b ." and an empty report " .".
        sentences.append(_R2GEN_PUNCT.sub("", sentence.strip().lower()))
    return " . ".join(sentences) + " ."


def clean_report_iu_xray(report: str) -> str:
    """R2Gen's ``clean_report_iu_xray``, character for character (source cited above ``_R2GEN_PUNCT``).

    Quirks kept because published IU X-Ray numbers carry them: ``"1. "`` is deleted anywhere
    ("11. " becomes "1"), only ``". "`` ends a sentence, hyphens survive, decimals lose their
    point ("1.5 cm" → "15 cm"), line breaks stay (R2Gen's tokenizer then splits on whitespace).
    """
    return _r2gen_clean(report, _R2GEN_IU)


def clean_report_mimic_cxr(report: str) -> str:
    """R2Gen's ``clean_report_mimic_cxr``, character for character: as the IU X-Ray cleaner, after
    line breaks become spaces, ``__`` runs and double spaces shrink and more ``..`` collapse."""
    return _r2gen_clean(report, _R2GEN_MIMIC)


def normalize_text(text: str, name: str) -> str:
    """``text`` as the ``name`` normaliser (``NORMALIZERS``) hands it to pycocoevalcap.

    The R2Gen choices are followed by what R2Gen's tokenizer and decoder do to a cleaned report
    (split on whitespace, join with one space), without its vocabulary's ``<unk>`` for rare
    words (that depends on a training set and its frequency threshold).
    """
    if name == "none":
        return text
    if name == "radflow":
        return radflow_normalize(text)
    if name == "r2gen_iu":
        return " ".join(clean_report_iu_xray(text).split())
    if name == "r2gen_mimic":
        return " ".join(clean_report_mimic_cxr(text).split())
    raise ValueError(f"unknown normaliser {name!r}; choose one of {list(NORMALIZERS)}")


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """Mean report length in words (whitespace tokens with a letter or digit, so not " . ")."""
    if not texts:
        raise ValueError("length_stats needs at least one text")
    counts = [sum(any(ch.isalnum() for ch in tok) for tok in t.split()) for t in texts]
    return {"mean_length": float(np.mean(counts))}


# --------------------------------------------------------------------------- NLG


def _meteor(gts: dict, res: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()
    except FileNotFoundError as err:
        raise RuntimeError(
            "METEOR needs Java (`java` on PATH); pass meteor=False to skip it"
        ) from err
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        del scorer  # its __del__ stops the JVM
    return float(score)


def nlg_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, str],
    *,
    meteor: bool = True,
    normalize: str = DEFAULT_NORMALIZE,
) -> dict[str, float]:
    """Corpus BLEU-1..4, METEOR, ROUGE-L and CIDEr of ``predictions`` against ``references``.

    Both pass through the ``normalize`` normaliser first (``NORMALIZERS``; ``"none"`` hands the
    strings to pycocoevalcap as they are). CIDEr's document frequencies come from these
    references, as in pycocoevalcap (so the score depends on the evaluated set). METEOR starts a
    JVM (~10 s).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if normalize not in NORMALIZERS:
        raise ValueError(f"unknown normaliser {normalize!r}; choose one of {list(NORMALIZERS)}")
    missing, extra = set(references) - set(predictions), set(predictions) - set(references)
    if missing or extra:
        raise ValueError(
            f"predictions and references must have the same ids; "
            f"without prediction: {sorted(map(str, missing))[:5]}, "
            f"without reference: {sorted(map(str, extra))[:5]}"
        )
    if not references:
        raise ValueError("nlg_scores needs at least one prediction/reference pair")
    for name, texts in (("prediction", predictions), ("reference", references)):
        bad = [k for k, v in texts.items() if not isinstance(v, str)]
        if bad:
            raise TypeError(f"every {name} must be a str; not for ids {bad[:5]}")
    res = {k: [normalize_text(predictions[k], normalize)] for k in references}
    gts = {k: [normalize_text(references[k], normalize)] for k in references}
    if not any(v[0] for v in gts.values()):
        raise ValueError("every reference is empty after normalisation; nothing to score against")
    if meteor:
        for name, texts in (("prediction", res), ("reference", gts)):
            broken = [k for k, v in texts.items() if "\n" in v[0] or "\r" in v[0]]
            if broken:
                raise ValueError(f"{name} {broken[0]!r} contains a line break, which hangs "
                                 f"pycocoevalcap's METEOR; choose a normaliser other than "
                                 f"{normalize!r} or skip METEOR")
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    if meteor:
        scores["METEOR"] = _meteor(gts, res)
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


# --------------------------------------------------------------------------- clinical efficacy


def _positives(pred_labels, ref_labels, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``[N, K]`` positive masks (label 1; uncertain, negative and blank are not)."""
    pred, ref = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred.shape != ref.shape or pred.ndim != 2 or pred.shape[0] == 0:
        raise ValueError(
            f"label arrays must both be [N, K] with N > 0; got {pred.shape} and {ref.shape}"
        )
    if width is not None and pred.shape[1] != width:
        raise ValueError(f"label arrays have {pred.shape[1]} columns but {width} observations")
    return pred == POSITIVE, ref == POSITIVE


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0 (sklearn's ``zero_division=0``)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _micro_macro(pred: np.ndarray, ref: np.ndarray) -> dict[str, object]:
    tp = (pred & ref).sum(0)
    fp = (pred & ~ref).sum(0)
    fn = (~pred & ref).sum(0)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "micro_precision": float(_ratio(tp.sum(), tp.sum() + fp.sum())),
        "micro_recall": float(_ratio(tp.sum(), tp.sum() + fn.sum())),
        "micro_f1": float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "macro_f1": float(f1.mean()),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": f1,
        "support": ref.sum(0),
    }


def ce_scores(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    observations: Sequence[str],
    *,
    common5: Sequence[str] | None,
    prefix: str = "",
) -> dict[str, object]:
    """Clinical efficacy of predicted labels against reference labels, ``[N, K]`` each.

    Keys (each with ``prefix``, e.g. ``"gt_"`` against ground truth): ``ce14_micro_precision``,
    ``ce14_micro_recall``, ``ce14_micro_f1``, ``ce14_macro_f1`` over all K observations ("14" for
    the CheXpert schema; carotid keeps the key names over its own schema), ``ce5_micro_f1`` and
    ``ce5_macro_f1`` over ``common5`` (skipped when ``None``), ``ce_example_f1`` and
    ``per_observation`` (``{name: {precision, recall, f1, support}}``).

    Undefined ratios (0/0) are 0, sklearn's default, so an observation positive nowhere has F1 0
    and lowers the macro average. Example-based F1 is per report ``2|P∩R| / (|P| + |R|)``,
    averaged; a report where neither side has a positive scores 1 (both agree nothing is there;
    sklearn's ``average="samples", zero_division=1``).
    """
    observations = list(observations)
    pred, ref = _positives(pred_labels, ref_labels, len(observations))
    full = _micro_macro(pred, ref)
    out: dict[str, object] = {
        f"{prefix}ce14_{key}": full[key]
        for key in ("micro_precision", "micro_recall", "micro_f1", "macro_f1")
    }
    if common5 is not None:
        unknown = [o for o in common5 if o not in observations]
        if unknown:
            raise ValueError(f"common observations {unknown} not in {observations}")
        cols = [observations.index(o) for o in common5]
        five = _micro_macro(pred[:, cols], ref[:, cols])
        out[f"{prefix}ce5_micro_f1"] = five["micro_f1"]
        out[f"{prefix}ce5_macro_f1"] = five["macro_f1"]
    tp, size = (pred & ref).sum(1), pred.sum(1) + ref.sum(1)
    out[f"{prefix}ce_example_f1"] = float(np.where(size > 0, _ratio(2 * tp, size), 1.0).mean())
    out[f"{prefix}per_observation"] = {
        name: {
            "precision": float(full["precision"][k]),
            "recall": float(full["recall"][k]),
            "f1": float(full["f1"][k]),
            "support": int(full["support"][k]),
        }
        for k, name in enumerate(observations)
    }
    return out


def critical_scores(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    critical_index: Sequence[int],
    *,
    prefix: str = "",
) -> dict[str, float | None]:
    """Sensitivity and specificity for critical cases (positive for any critical observation).

    Sensitivity is over reference-critical cases, specificity over the others; each is ``None``
    when it has no case to be computed on (JSON ``null``, where NaN would not be valid JSON).
    """
    pred, ref = _positives(pred_labels, ref_labels)
    cols = list(critical_index)
    if any(not 0 <= c < pred.shape[1] for c in cols):
        raise ValueError(f"critical_index {cols} out of range for {pred.shape[1]} observations")
    pred_crit, ref_crit = pred[:, cols].any(1), ref[:, cols].any(1)
    n_crit, n_other = int(ref_crit.sum()), int((~ref_crit).sum())
    return {
        f"{prefix}critical_sensitivity": (
            float((pred_crit & ref_crit).sum() / n_crit) if n_crit else None
        ),
        f"{prefix}critical_specificity": (
            float((~pred_crit & ~ref_crit).sum() / n_other) if n_other else None
        ),
    }
