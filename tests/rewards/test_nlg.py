"""NLG rewards on token ids equal pycocoevalcap's per-sentence scores on the same words.

Token id ``k`` is written as the word ``"wk"``; pycocoevalcap 1.2 has no separate ``CiderD``: its
``Cider`` is vrama91's CIDEr-D (clipping + Gaussian length penalty) with the df taken from the
evaluated references, so ``cider_d`` is compared with a df table built from those same references,
and, for a training-corpus df, with ``CiderScorer.compute_cider`` given that corpus's df.
"""

from __future__ import annotations

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer
from pycocoevalcap.rouge.rouge import Rouge

from radflow_jax.data.synthetic import generate_case
from radflow_jax.rewards import nlg

T = 72  # padded length of every candidate and reference in these tests


def _words(ids) -> str:
    return " ".join(f"w{int(x)}" for x in ids)


def _pad(seqs, size: int = T) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(seqs), size), np.int32)
    mask = np.zeros((len(seqs), size), bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    return ids, mask


def _edge_pairs() -> list[tuple[list[int], list[int]]]:
    a = [3, 1, 4, 1, 5, 9, 2, 6]
    return [
        ([], a),  # empty candidate
        (a, []),  # empty reference
        ([], []),  # both empty: ROUGE-L 1 in pycocoevalcap (it splits "" into one empty token)
        ([7], a),  # one word
        (a, a),  # identical
        (a + a + a, a),  # longer, repeated n-grams
        (a[:3], a),  # shorter (brevity penalty)
        ([1, 1, 1, 1, 1, 1], [1, 1, 1]),  # clipping of a repeated unigram
        ([1, 2, 1, 2, 1, 2], [2, 1, 2, 1]),
        ([8, 8, 9], [10, 11, 12]),  # nothing in common
        (list(range(40)), list(range(39, -1, -1))),  # reversed: LCS 1
    ]


def _realistic_pairs(count: int) -> list[tuple[list[int], list[int]]]:
    """Synthetic report texts, word-tokenised; candidates are other cases' reports."""
    vocab: dict[str, int] = {}
    texts = []
    for i in range(count + 1):
        modality = "cxr" if i % 2 else "carotid"
        report = generate_case(modality, seed=3, index=i, image_size=32).report.lower()
        words = re.findall(r"[a-z0-9%<>=.-]+", report)[: T]
        texts.append([vocab.setdefault(w, len(vocab)) for w in words])
    return [(texts[i], texts[i + 1] if i % 3 else texts[i]) for i in range(count)]


def _random_pairs(rng: np.random.Generator, count: int) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for _ in range(count):
        vocab = int(rng.integers(2, 12))  # small vocabularies make n-grams repeat and match
        pairs.append(
            (
                rng.integers(0, vocab, rng.integers(0, 30)).tolist(),
                rng.integers(0, vocab, rng.integers(1, 30)).tolist(),
            )
        )
    return pairs


@pytest.fixture(scope="module")
def pairs() -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(0)
    return _edge_pairs() + _realistic_pairs(30) + _random_pairs(rng, 200)


def _coco(pairs_or_multi):
    """pycocoevalcap inputs: ``{i: [candidate]}``, ``{i: [references...]}``."""
    res = {i: [_words(c)] for i, (c, _) in enumerate(pairs_or_multi)}
    gts = {
        i: [_words(r) for r in (refs if refs and isinstance(refs[0], list) else [refs])]
        for i, (_, refs) in enumerate(pairs_or_multi)
    }
    return gts, res


def _reference_scores(gts, res):
    with contextlib.redirect_stdout(io.StringIO()):
        _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
    _, rouge = Rouge().compute_score(gts, res)
    _, cider = Cider().compute_score(gts, res)
    return np.array(bleu).T, np.asarray(rouge), np.asarray(cider)


def test_single_reference_matches_pycocoevalcap(pairs):
    cand, cand_mask = _pad([c for c, _ in pairs])
    ref, ref_mask = _pad([r for _, r in pairs])
    bleu_ref, rouge_ref, cider_ref = _reference_scores(*_coco(pairs))
    df = nlg.build_df([r for _, r in pairs])

    bleu = np.asarray(nlg.bleu_all(cand, cand_mask, ref, ref_mask))
    np.testing.assert_allclose(bleu, bleu_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(nlg.bleu(cand, cand_mask, ref, ref_mask, n=4)), bleu_ref[:, 3], atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(nlg.rouge_l(cand, cand_mask, ref, ref_mask)), rouge_ref, rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(nlg.cider_d(cand, cand_mask, ref, ref_mask, df)), cider_ref, rtol=1e-6, atol=1e-6
    )
    # The edge cases score what they should, not only what pycocoevalcap says.
    assert bleu[0].max() < 1e-6 and bleu[4].min() > 1 - 1e-6  # empty candidate; identical
    assert rouge_ref[10] == pytest.approx(1 / 40) and rouge_ref[2] == 1.0  # reversed sequence: LCS of one token
    assert bleu_ref[:, 3].min() < 1e-3 < bleu_ref[:, 3].max()  # smoothing regime covered


def test_several_references_match_pycocoevalcap():
    rng = np.random.default_rng(1)
    k_refs = 3
    multi = []
    for _ in range(120):
        vocab = int(rng.integers(2, 10))
        refs = [rng.integers(0, vocab, rng.integers(0, 25)).tolist() for _ in range(k_refs)]
        multi.append((rng.integers(0, vocab, rng.integers(0, 25)).tolist(), refs))
    cand, cand_mask = _pad([c for c, _ in multi], 32)
    flat_ref, flat_mask = _pad([r for _, refs in multi for r in refs], 32)
    ref, ref_mask = flat_ref.reshape(-1, k_refs, 32), flat_mask.reshape(-1, k_refs, 32)
    bleu_ref, rouge_ref, cider_ref = _reference_scores(*_coco(multi))
    df = nlg.build_df([refs for _, refs in multi])

    np.testing.assert_allclose(nlg.bleu_all(cand, cand_mask, ref, ref_mask), bleu_ref, atol=1e-6)
    np.testing.assert_allclose(nlg.rouge_l(cand, cand_mask, ref, ref_mask), rouge_ref, atol=1e-6)
    np.testing.assert_allclose(
        nlg.cider_d(cand, cand_mask, ref, ref_mask, df), cider_ref, rtol=1e-6, atol=1e-6
    )


def test_cider_d_with_training_corpus_df(pairs):
    """df from another corpus (the training references) rather than the evaluated set."""
    rng = np.random.default_rng(2)
    evaluated = pairs[:60]
    training = [r for _, r in _random_pairs(rng, 60)]  # same size: pycocoevalcap's ref_len
    scorer = CiderScorer(n=4, sigma=6.0)
    for c, r in evaluated:
        scorer += (_words(c), [_words(r)])
    for doc in training:
        for g in {tuple(doc[i : i + k]) for k in range(1, 5) for i in range(len(doc) - k + 1)}:
            scorer.document_frequency[tuple(f"w{x}" for x in g)] += 1
    expected = np.asarray(scorer.compute_cider())

    cand, cand_mask = _pad([c for c, _ in evaluated])
    ref, ref_mask = _pad([r for _, r in evaluated])
    ours = nlg.cider_d(cand, cand_mask, ref, ref_mask, nlg.build_df(training))
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    same_set = nlg.cider_d(cand, cand_mask, ref, ref_mask, nlg.build_df(r for _, r in evaluated))
    assert np.abs(np.asarray(same_set) - expected).max() > 1e-3  # the df choice matters


def test_float64_is_exact(pairs):
    cand, cand_mask = _pad([c for c, _ in pairs])
    ref, ref_mask = _pad([r for _, r in pairs])
    bleu_ref, rouge_ref, cider_ref = _reference_scores(*_coco(pairs))
    with jax.enable_x64(True):
        df = nlg.build_df([r for _, r in pairs])
        cider = nlg.cider_d(cand, cand_mask, ref, ref_mask, df)
        assert cider.dtype == jnp.float64
        np.testing.assert_allclose(cider, cider_ref, rtol=0, atol=1e-12)
        bleu = nlg.bleu_all(cand, cand_mask, ref, ref_mask)
        np.testing.assert_allclose(bleu, bleu_ref, rtol=0, atol=1e-12)
        rouge = nlg.rouge_l(cand, cand_mask, ref, ref_mask)
        np.testing.assert_allclose(rouge, rouge_ref, rtol=0, atol=1e-12)


def test_inside_jit_with_holes_in_the_mask(pairs):
    """Masked-out tokens anywhere (e.g. section tags) score as if deleted; works under jit."""
    rng = np.random.default_rng(3)
    some = pairs[10:42]
    cand, cand_mask = _pad([c for c, _ in some])
    ref, ref_mask = _pad([r for _, r in some])
    df = nlg.build_df([r for _, r in some])
    # Interleave junk tokens that the mask drops.
    holes = rng.random((len(some), 2 * T)) < 0.3
    holey = np.where(holes, 999, 0).astype(np.int32)
    holey_mask = np.zeros(holey.shape, bool)
    for i in range(len(some)):
        keep = np.flatnonzero(~holes[i])[: cand_mask[i].sum()]
        holey[i, keep] = cand[i, : len(keep)]
        holey_mask[i, keep] = True
        assert len(keep) == cand_mask[i].sum()  # every token found a slot

    @jax.jit
    def reward(c, cm, r, rm, table):
        return nlg.bleu(c, cm, r, rm), nlg.rouge_l(c, cm, r, rm), nlg.cider_d(c, cm, r, rm, table)

    want = reward(cand, cand_mask, ref, ref_mask, df)
    for got, expected in zip(reward(holey, holey_mask, ref, ref_mask, df), want):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert float(jnp.max(want[2])) > 1.0 and float(jnp.min(want[0])) < 0.5


def test_build_df_counts_once_per_document():
    df = nlg.build_df([[[1, 2, 1, 2]], [1, 2], [[3], [3, 1]]], n=2)
    unigrams = {int(g[0]): float(v) for g, v in zip(df.ngrams[0], df.idf[0])}
    log3 = np.log(3.0)
    assert unigrams == pytest.approx({1: log3 - np.log(3), 2: log3 - np.log(2), 3: log3})
    assert [tuple(map(int, g)) for g in df.ngrams[1]] == [(1, 2), (2, 1), (3, 1)]  # sorted
    with pytest.raises(ValueError, match="ids in"):
        nlg.build_df([[1, -4]])
    with pytest.raises(ValueError, match="at least one document"):
        nlg.build_df([])


def test_shape_errors_are_clear():
    ids, mask = _pad([[1, 2]], 4)
    with pytest.raises(ValueError, match="masks must match"):
        nlg.rouge_l(ids, mask[:, :3], ids, mask)
    with pytest.raises(ValueError, match=r"\[B, R\] or \[B, K, R\]"):
        nlg.bleu_all(ids, mask, ids[0], mask[0])


# Whether the reward's words are the evaluation's: tests/rewards/test_words.py.
