"""The reward's NLG terms read the default evaluation's words, so they equal ``evaluate``'s scores.

The evaluation side is what ``scoring.score`` does with a generated target: ``parse_target`` of the
decoded ids, the sections joined, ``metrics.normalize_text`` with the default normaliser, then
pycocoevalcap (per report here: ``compute_score``'s second output). The reward side is
``hierarchical_reward`` on the ids with a ``words.WordTable``. Tolerance: float32 on device, so
BLEU and ROUGE-L to 2e-6 and CIDEr-D (0..10) to 2e-5 (``rewards/nlg.py`` measures ~2e-7 / ~1e-6).
"""

from __future__ import annotations

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from radflow_jax import metrics
from radflow_jax.data.sections import Sections, format_target, parse_sections, parse_target
from radflow_jax.data.synthetic import generate_case
from radflow_jax.data.tokenizer import SPECIAL_TOKENS, train_tokenizer
from radflow_jax.rewards import nlg, words
from radflow_jax.rewards.hierarchy import (
    RewardInputs,
    default_reward_config,
    hierarchical_reward,
    reward_config_from,
    section_masks,
)
from radflow_jax.schema import get_schema

CXR = get_schema("cxr")
T = 232  # padded length of every target here (the longest synthetic carotid report is ~220 tokens)

# Real-style reports (Findings | Impression) with what the tokenizer and the evaluation read apart:
# commas, colons, decimals, numbers, units with "/", hyphens, "%", ">=", list markers, "..", "XXXX".
PLANTED = [
    ("The heart is normal in size. The lungs are clear. | No acute disease.",
     "Heart size is normal. Lungs are clear. No pleural effusion. | No acute cardiopulmonary process."),
    ("Heart, lungs clear: no effusion. | Normal.", "Heart and lungs clear; no effusion. | Normal chest."),
    ("Nodule of 245 mm. Another of 1.5 cm.. | Nodule.", "Nodule of 245 mm seen, 1.5 cm. | Nodule 1.5 cm."),
    ("No b-lines. PSV 245 cm/s, >= 70% stenosis. | 50-69% stenosis.",
     "No b lines seen. PSV 245 cm/s; 70 % stenosis. | Severe stenosis 70%."),
    ("1. Cardiomegaly. 2. Small left effusion. | 1. Cardiomegaly. 2. Effusion.",
     "Cardiomegaly. Small left pleural effusion. | 1. Cardiomegaly 2. Effusion."),
    ("XXXX opacities at T12 and L1-L2, 5cm. | Atelectasis versus scarring.",
     "XXXX opacity at T12, likely atelectasis. | Atelectasis."),
    ("Lungs are clear. | ", "Lungs are clear. Heart normal. | "),  # findings-only, as R2Gen data
    ("Findings: 1. 2. 3. Stable. | 12. Stable; 4. fine", "Stable. | Stable; fine."),
    ("Stable.......... 11. Left. 2. 2. 2. Right. | 21. Clear.", "Stable. Left. Right. | Clear."),  # R2Gen quirks
]


def _target(pair_text: str) -> str:
    findings, _, impression = pair_text.partition(" | ")
    return format_target(Sections(findings.strip(), impression.strip()))


def _synthetic(count: int) -> list[str]:
    out = []
    for i in range(count):
        report = generate_case("carotid" if i % 2 else "cxr", 23, i, 32).report
        sections = parse_sections(report)
        out.append(f"{sections.findings} | {sections.impression}")
    return out


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    synthetic = _synthetic(12)
    return PLANTED + list(zip(synthetic[::2], synthetic[1::2]))


def _tokenizer(corpus, kind: str):
    texts = [_target(t) for pair in corpus for t in pair]
    if kind == "word":
        return train_tokenizer(texts, kind="word", vocab_size=1200, min_frequency=1)
    return train_tokenizer(texts, kind="bpe", vocab_size=300, min_frequency=2)  # words in pieces


@pytest.fixture(scope="module")
def tok(corpus):
    return _tokenizer(corpus, "word")


def _pad(rows: list[list[int]], size: int = T) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(rows), size), np.int32)
    mask = np.zeros((len(rows), size), bool)
    for n, row in enumerate(rows):
        row = row[:size]
        ids[n, : len(row)], mask[n, : len(row)] = row, True
    return ids, mask


def _generated(tok, refs: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
    """'Generated' reports: references edited as a sampler errs (drops, swaps, inserted digits,
    points and punctuation, repeated spans, a lost or repeated tag, stray specials), then eos."""
    extra = [tok.encode(x)[0] for x in ["1", " 2", ".", " .", ",", ";", " 45", "-", "/", " the"]]
    extra += list(range(len(SPECIAL_TOKENS))) + [tok.vocab_size - 1]
    out = []
    for ref in refs:
        row = list(ref)
        for _ in range(int(rng.integers(0, 6))):
            op, at = int(rng.integers(0, 4)), int(rng.integers(0, max(1, len(row))))
            if op == 0 and row:
                del row[at]
            elif op == 1:
                row.insert(at, int(rng.choice(extra)))
            elif op == 2:
                row.insert(at, int(rng.integers(len(SPECIAL_TOKENS), tok.vocab_size)))
            else:
                row[at:at] = row[at : at + int(rng.integers(1, 6))]
        out.append(row + [tok.eos_id])
    return out


def _eval_text(tok, ids: np.ndarray) -> str:
    """The string ``scoring.score`` hands the normaliser for a generated target."""
    sections = parse_target(tok.decode(ids))
    return f"{sections.findings} {sections.impression}".strip()


ROWS = 512  # every words batch is padded to this many rows, so report_words compiles once


def _read_words(tok, ids, mask, impression_from: int | None = None, normalize: str = "radflow") -> list[list[str]]:
    """``report_words`` of each row, as strings; rows from ``impression_from`` on read the
    Impression alone."""
    count = len(ids)
    ids, mask = (np.concatenate([x, np.zeros((ROWS - count, T), x.dtype)]) for x in (ids, mask))
    masks = _MASKS(jnp.asarray(ids), jnp.asarray(mask), reward_config_from(default_reward_config(), CXR))
    section = np.asarray(masks.section).copy()
    if impression_from is not None:
        section[impression_from:][section[impression_from:] == 1] = 0
    out = _WORDS(words.word_table(tok, normalize=normalize), ids, section, masks.spaced)
    keys, kept = np.asarray(out.keys), np.asarray(out.mask)
    return [[words.unpack(k) for k in keys[n][kept[n]]] for n in range(count)]


_MASKS = jax.jit(section_masks, static_argnums=2)
_WORDS = jax.jit(words.report_words)


@pytest.mark.parametrize("kind,normalize", [("word", "radflow"), ("bpe", "radflow"), ("word", "r2gen_iu"),
                                            ("bpe", "r2gen_mimic")])
def test_words_equal_the_evaluation_words(kind, normalize, corpus):
    """``report_words`` gives exactly the normalised evaluation words, for planted reports and for
    'generated' ones full of stray digits, points, tags and specials."""
    assert metrics.DEFAULT_NORMALIZE in words.NORMALIZERS
    tok = _tokenizer(corpus, kind)
    refs = [tok.encode(_target(t)) for pair in corpus for t in pair]
    rows = refs + _generated(tok, refs * 6, np.random.default_rng(0))
    assert 2 * len(rows) <= ROWS
    ids, mask = _pad(rows)
    got = _read_words(tok, np.concatenate([ids, ids]), np.concatenate([mask, mask]), impression_from=len(rows),
                      normalize=normalize)
    for n in range(len(rows)):
        row = ids[n][mask[n]]
        assert got[n] == words.text_words(_eval_text(tok, row), normalize), tok.decode(row)
        impression = parse_target(tok.decode(row)).impression
        assert got[len(rows) + n] == words.text_words(impression, normalize), tok.decode(row)


def _pycoco(cands: list[str], refs: list[str]) -> np.ndarray:
    """Per-report BLEU-1..4, ROUGE-L and CIDEr of pycocoevalcap on default-normalised text."""
    norm = metrics.DEFAULT_NORMALIZE
    res = {i: [metrics.normalize_text(c, norm)] for i, c in enumerate(cands)}
    gts = {i: [metrics.normalize_text(r, norm)] for i, r in enumerate(refs)}
    with contextlib.redirect_stdout(io.StringIO()):
        _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
    _, rouge = Rouge().compute_score(gts, res)
    _, cider = Cider().compute_score(gts, res)
    return np.concatenate([np.array(bleu).T, np.asarray(rouge)[:, None], np.asarray(cider)[:, None]], 1)


@pytest.fixture(scope="module")
def scored(tok, corpus) -> dict:
    """Planted pairs, synthetic pairs and 'generated' edits of the references against the raw
    reference text: the reward's terms (word table, CIDEr-D weighted) and pycocoevalcap's."""
    ref_texts = [t for _, t in corpus] * 3
    ref_rows = [tok.encode(_target(t)) + [tok.eos_id] for t in ref_texts]
    cand_rows = [tok.encode(_target(c)) + [tok.eos_id] for c, _ in corpus]
    cand_rows += _generated(tok, [r[:-1] for r in ref_rows[len(corpus):]], np.random.default_rng(1))
    gen_ids, gen_mask = _pad(cand_rows)
    ref_ids, ref_mask = _pad(ref_rows)
    raw_refs = [t.replace(" | ", " ").strip() for t in ref_texts]  # as scoring.score joins them
    cands = [_eval_text(tok, g[m]) for g, m in zip(gen_ids, gen_mask)]
    labels = jnp.zeros((len(cand_rows), 3, len(CXR.observations)), jnp.int8)
    inputs = RewardInputs(*map(jnp.asarray, (gen_ids, gen_mask, ref_ids, ref_mask)), labels, labels)
    c = default_reward_config()
    c.nlg.cider_d = 1.0
    table, df = words.corpus_df(tok, raw_refs)  # pycocoevalcap's df: the evaluated references
    _, terms = jax.jit(hierarchical_reward, static_argnums=1)(inputs, reward_config_from(c, CXR), df, table)
    return dict(inputs=inputs, cands=cands, refs=raw_refs, terms={k: np.asarray(v) for k, v in terms.items()},
                expected=_pycoco(cands, raw_refs),
                expected_impression=_pycoco([parse_target(tok.decode(g[m])).impression
                                             for g, m in zip(gen_ids, gen_mask)],
                                            [t.partition(" | ")[2] for t in ref_texts]))


def test_reward_nlg_terms_equal_pycocoevalcap_per_report(scored):
    """BLEU-4, ROUGE-L and CIDEr-D of the reward (word table) equal pycocoevalcap's per-report
    scores on the default normalisation of what ``evaluate`` reads."""
    terms, expected = scored["terms"], scored["expected"]
    np.testing.assert_allclose(terms["bleu4"], expected[:, 3], rtol=0, atol=2e-6)
    np.testing.assert_allclose(terms["rouge_l"], expected[:, 4], rtol=0, atol=2e-6)
    # the reward clips CIDEr-D/10 to [0, 1]
    np.testing.assert_allclose(terms["cider_d"] * 10, np.minimum(expected[:, 5], 10.0), rtol=0, atol=2e-5)
    assert 0.05 < expected[:, 3].mean() < 0.95 and expected[:, 5].max() > 1.0  # not trivial
    # the Impression's ROUGE-L reads the Impression's words the same way
    np.testing.assert_allclose(terms["impression_rouge_l"], scored["expected_impression"][:, 4], rtol=0, atol=2e-6)
    # and evaluate's corpus ROUGE-L is the mean of the per-report scores
    scores = metrics.nlg_scores(dict(enumerate(scored["cands"])), dict(enumerate(scored["refs"])), meteor=False)
    assert scores["ROUGE_L"] == pytest.approx(float(terms["rouge_l"].mean()), abs=2e-6)


def test_token_ids_alone_disagree_where_words_are_not_tokens(scored):
    """Why the table: on token ids "," ":" "-" are words, "245" is three and "lines" after "b-" is
    another id than "lines"; the evaluation drops the punctuation and keeps numbers whole."""
    inputs, expected = scored["inputs"], scored["expected"]
    content = len(SPECIAL_TOKENS)  # section tags, eos and padding are not scored, as in the reward
    gen_mask = inputs.gen_mask & (inputs.gen_tokens >= content) & (jnp.cumsum(inputs.gen_tokens == 2, 1) == 0)
    ref_mask = inputs.ref_mask & (inputs.ref_tokens >= content) & (jnp.cumsum(inputs.ref_tokens == 2, 1) == 0)
    on_tokens = np.asarray(nlg.rouge_l(inputs.gen_tokens, gen_mask, inputs.ref_tokens, ref_mask))
    planted = slice(1, 4)  # commas and colons; 245 and 1.5; b-lines, cm/s, >=, %
    assert np.abs(on_tokens[planted] - expected[planted, 4]).min() > 1e-3
    np.testing.assert_allclose(on_tokens[0], expected[0, 4], atol=2e-6)  # words and periods only


def test_documented_disagreements(tok):
    """What the reward cannot see (rewards/words.py): a reference word the tokenizer does not know
    is "unk", and "?"/"!" have no token, so the evaluation's sentence end there is lost."""
    raw = ["Lungs clear zygoma. | Normal.", "Lungs clear? | Normal!"]
    ids, mask = _pad([tok.encode(_target(r)) for r in raw])
    assert _read_words(tok, ids, mask) == [["lungs", "clear", "unk", ".", "normal", "."],
                                           ["lungs", "clear", "normal", "."]]
    assert [words.text_words(r.replace(" | ", " ")) for r in raw] == [
        ["lungs", "clear", "zygoma", ".", "normal", "."], ["lungs", "clear", ".", "normal", "."]]


def test_word_ids_are_exact_and_known_words_keep_their_ids(tok):
    table, _ = words.corpus_df(tok, ["nodule 15 cm .", "nodule ."])
    stream = words.Words(jnp.asarray([[words.pack(w) for w in ("nodule", "1.5", "15", "nodule", "x" * 50)]]),
                         jnp.ones((1, 5), bool))
    other = words.Words(jnp.asarray([[words.pack(w) for w in ("cm", "1.5", "y" * 50)]]), jnp.ones((1, 3), bool))
    a, b = (np.asarray(x)[0] for x in jax.jit(words.word_ids)(table, stream, other))
    known = {w: i for i, w in enumerate(sorted(["nodule", "15", "cm", "."], key=words.pack))}
    assert a[0] == a[3] == known["nodule"] and a[2] == known["15"] and b[0] == known["cm"]
    assert a[1] == b[1] >= len(known) and len({a[1], a[4], b[2]}) == 3
    assert words.unpack(words.pack("1.5")) == "1.5"
    assert words.unpack(words.pack("b-lines")) == "b-lines"  # R2Gen keeps hyphens
    with pytest.raises(ValueError, match="is one or more of"):
        words.pack("b,lines")
    with pytest.raises(ValueError, match="not 'none'"):
        words.word_table(tok, normalize="none")
