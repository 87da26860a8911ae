"""NLG rewards on token ids: BLEU-1..4, ROUGE-L and CIDEr-D, vectorised in JAX.

Each function equals pycocoevalcap's per-sentence score on the same tokens written as words
(token id ``k`` ↔ word ``"wk"``, joined by single spaces), so the RL reward and the evaluation
tables measure the same thing, but runs inside a jitted step on the accelerator.

Inputs: candidate ids ``[B, T]`` with a mask, references ``[B, R]`` (one per candidate) or
``[B, K, R]`` (K references each; every one of the K rows counts as a reference, an all-masked row
as an empty one). Masks may drop tokens anywhere (e.g. section tags): kept tokens are moved to the
front first, exactly as if the dropped ones had been deleted from the string. Ids must be
non-negative int32 values.

How it stays exact without hashing: within each row ``[candidate | references]`` an n-gram gets
a dense code, the rank of the pair (code of its (n-1)-gram prefix, rank of its last token), so
equal codes mean equal n-grams and codes fit int32 (JAX has no int64 unless x64 is on). Counts are
histograms over these codes, which gives pycocoevalcap's clipped counts with fixed shapes.
Document frequencies are looked up by a fixed-length binary search over lexicographically sorted
n-gram rows, again exact. Nothing needs numpy at run time; only ``build_df`` (host, once) does.

Numerics: float32 unless ``jax_enable_x64`` is on (then float64). In float32 BLEU and ROUGE-L
agree with pycocoevalcap to ~2e-7 and CIDEr-D (×10, so up to 10) to ~1e-6; under x64 to ~1e-15.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_BLEU_TINY = 1e-15  # pycocoevalcap: added to matched counts ("if guess is 0 still return 0")
_BLEU_SMALL = 1e-9  # pycocoevalcap: added to guess counts and the reference length
_PAD = -1  # id written past the end of a compacted sequence; never equal to a real id


class DocumentFrequencies(NamedTuple):
    """CIDEr-D document frequencies of a reference corpus (a pytree, so it can enter ``jit``).

    ``ngrams[n-1]`` is ``[M, n]`` int32, the distinct n-grams sorted lexicographically;
    ``idf[n-1]`` is ``[M]``, ``log(num_docs) - log(df)`` computed in float64 on the host and
    rounded once (subtracting two float32 logs on device would lose ~1e-6 of CIDEr-D);
    ``log_num_docs`` (pycocoevalcap's ``ref_len``) is the idf of an n-gram the corpus lacks.
    """

    ngrams: tuple[jax.Array, ...]
    idf: tuple[jax.Array, ...]
    log_num_docs: jax.Array


# --------------------------------------------------------------------------- shared helpers


def _float() -> jnp.dtype:
    return jnp.result_type(float)


def _compact(ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Kept tokens moved to the front in order, ``_PAD`` after them; and the kept count."""
    mask = mask.astype(bool)
    order = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=-1, stable=True)
    ids = jnp.take_along_axis(ids.astype(jnp.int32), order, axis=-1)
    length = mask.sum(-1).astype(jnp.int32)
    inside = jnp.arange(ids.shape[-1]) < length[..., None]
    return jnp.where(inside, ids, _PAD), length


def _prepare(cand, cand_mask, ref, ref_mask):
    """Compacted candidates ``[B, T]`` and references ``[B, K, R]`` with their lengths."""
    cand, ref = jnp.asarray(cand), jnp.asarray(ref)
    if cand.ndim != 2:
        raise ValueError(f"candidate ids must be [B, T], got shape {cand.shape}")
    if ref.ndim == 2:
        ref, ref_mask = ref[:, None], jnp.asarray(ref_mask)[:, None]
    if ref.ndim != 3 or ref.shape[0] != cand.shape[0]:
        raise ValueError(
            f"reference ids must be [B, R] or [B, K, R] with B={cand.shape[0]}, got {ref.shape}"
        )
    if jnp.shape(cand_mask) != cand.shape or jnp.shape(ref_mask) != ref.shape:
        raise ValueError(
            f"masks must match their ids: candidate {cand.shape} vs {jnp.shape(cand_mask)}, "
            f"reference {ref.shape} vs {jnp.shape(ref_mask)}"
        )
    c, lc = _compact(cand, cand_mask)
    r, lr = _compact(ref, ref_mask)
    return c, lc, r, lr


def _starts(length: jax.Array, size: int, n: int) -> jax.Array:
    """Which positions start an n-gram that lies inside the sequence: ``[..., size]``."""
    return jnp.arange(size) <= (length[..., None] - n)


def _dense_rank(keys: jax.Array) -> jax.Array:
    """Each key replaced by its rank among its row's distinct keys (equal keys, equal rank)."""
    order = jnp.argsort(keys, axis=-1)
    ordered = jnp.take_along_axis(keys, order, -1)
    new = jnp.concatenate(
        [jnp.zeros_like(ordered[:, :1]), (ordered[:, 1:] != ordered[:, :-1]).astype(keys.dtype)], -1
    )
    return jnp.put_along_axis(keys, order, jnp.cumsum(new, -1), axis=-1, inplace=False)


class _Ngrams(NamedTuple):
    """One n-gram order over the row ``[candidate | reference 1 | ... | reference K]``."""

    cand: jax.Array  # [B, L + 1] candidate counts per n-gram code (last bin: outside n-grams)
    refs: jax.Array  # [B, K, L + 1] counts per reference
    codes: jax.Array  # [B, L] code of the n-gram starting at each position
    valid: jax.Array  # [B, L] whether an n-gram starts there (inside its own segment)


def _ngram_counts(c, lc, r, lr, n_max: int) -> list[_Ngrams]:
    """Exact n-gram histograms, orders 1..n_max, without hashing or pairwise tensors.

    Codes are dense ranks within a row, built up by order: the code of an n-gram is the rank of
    the pair (code of its (n-1)-gram prefix, rank of its last token), so two n-grams get the same
    code iff they are equal; codes stay below the row length L, so the pair fits int32.
    """
    batch, size_c = c.shape
    k_refs, size_r = r.shape[1:]
    ids = jnp.concatenate([c, r.reshape(batch, k_refs * size_r)], -1)
    size = ids.shape[-1]
    if size * size >= 2**31:
        raise ValueError(f"candidate + references too long for int32 n-gram codes: {size} tokens")
    seg_len = jnp.concatenate(
        [
            jnp.broadcast_to(lc[:, None], (batch, size_c)),
            jnp.broadcast_to(lr[:, :, None], (batch, k_refs, size_r)).reshape(batch, -1),
        ],
        -1,
    )
    offset = jnp.concatenate([jnp.arange(size_c), jnp.tile(jnp.arange(size_r), k_refs)])
    segment = jnp.repeat(jnp.arange(k_refs), size_r)  # reference index of each reference slot
    rows = jnp.arange(batch)[:, None]
    unigram = _dense_rank(ids)
    codes, out = unigram, []
    for n in range(1, n_max + 1):
        if n > 1:
            codes = _dense_rank(codes * size + jnp.pad(unigram[:, n - 1 :], ((0, 0), (0, n - 1))))
        valid = offset <= seg_len - n
        bins = jnp.where(valid, codes, size)
        cand = jnp.zeros((batch, size + 1), jnp.int32).at[rows, bins[:, :size_c]].add(1)
        refs = jnp.zeros((batch, k_refs, size + 1), jnp.int32)
        refs = refs.at[rows, segment, bins[:, size_c:]].add(1)
        out.append(_Ngrams(cand, refs, codes, valid))
    return out


# --------------------------------------------------------------------------- BLEU


@functools.partial(jax.jit, static_argnames=("n",))
def bleu_all(
    cand: jax.Array, cand_mask: jax.Array, ref: jax.Array, ref_mask: jax.Array, n: int = 4
) -> jax.Array:
    """Per-sentence BLEU-1..n, ``[B, n]``: pycocoevalcap ``Bleu`` (``option='closest'``).

    Matches its conventions: clipped counts against the per-n-gram maximum over references,
    the "closest" reference length (ties to the shorter one), ``tiny=1e-15`` added to matches and
    ``small=1e-9`` to guesses and to the reference length, brevity penalty when shorter.
    """
    c, lc, r, lr = _prepare(cand, cand_mask, ref, ref_mask)
    ft = _float()
    log_p = []
    for k, grams in enumerate(_ngram_counts(c, lc, r, lr, n)):
        clipped = jnp.minimum(grams.cand, grams.refs.max(1))[:, :-1]
        correct = clipped.sum(-1).astype(ft)
        guess = jnp.maximum(lc - k, 0).astype(ft)
        log_p.append(jnp.log(correct + _BLEU_TINY) - jnp.log(guess + _BLEU_SMALL))
    orders = jnp.arange(1, n + 1, dtype=ft)
    scores = jnp.exp(jnp.cumsum(jnp.stack(log_p, -1), -1) / orders)
    dist = jnp.abs(lr - lc[:, None])
    closest = dist == dist.min(1, keepdims=True)
    reflen = jnp.min(jnp.where(closest, lr, jnp.iinfo(jnp.int32).max), 1)  # ties: shorter
    ratio = (lc.astype(ft) + _BLEU_TINY) / (reflen.astype(ft) + _BLEU_SMALL)
    brevity = jnp.where(ratio < 1, jnp.exp(1 - 1 / ratio), 1.0)
    return scores * brevity[:, None]


def bleu(
    cand: jax.Array, cand_mask: jax.Array, ref: jax.Array, ref_mask: jax.Array, n: int = 4
) -> jax.Array:
    """Per-sentence BLEU-n, ``[B]`` (see ``bleu_all``)."""
    return bleu_all(cand, cand_mask, ref, ref_mask, n=n)[:, n - 1]


# --------------------------------------------------------------------------- ROUGE-L


def _lcs(c: jax.Array, lc: jax.Array, r: jax.Array, lr: jax.Array) -> jax.Array:
    """LCS length of ``c [B, T]`` against each ``r [B, K, R]``: ``[B, K]``.

    Row-wise DP scanned over candidate positions, each row in one shot: with
    ``t[j] = max(L[i-1][j], match ? L[i-1][j-1] + 1 : 0)`` the row is ``L[i] = cummax(t)``.
    Padding never matches, so rows past the candidate's end leave the table unchanged.
    """
    match = (c[:, None, :, None] == r[:, :, None, :]) & _starts(lr, r.shape[-1], 1)[:, :, None, :]
    match = match & _starts(lc, c.shape[-1], 1)[:, None, :, None]
    zero = jnp.zeros(r.shape[:2] + (1,), jnp.int32)

    def row(prev, m):
        t = jnp.maximum(prev[..., 1:], jnp.where(m, prev[..., :-1] + 1, 0))
        return jnp.concatenate([zero, jax.lax.cummax(t, axis=t.ndim - 1)], -1), None

    init = jnp.zeros(r.shape[:2] + (r.shape[-1] + 1,), jnp.int32)
    final, _ = jax.lax.scan(row, init, jnp.moveaxis(match, 2, 0))
    return final[..., -1]


@functools.partial(jax.jit, static_argnames=("beta",))
def rouge_l(
    cand: jax.Array, cand_mask: jax.Array, ref: jax.Array, ref_mask: jax.Array, beta: float = 1.2
) -> jax.Array:
    """Per-sentence ROUGE-L F-measure, ``[B]``: pycocoevalcap ``Rouge``.

    Precision and recall are each maximised over references before the F-measure. pycocoevalcap
    splits on ``" "``, so an empty string is one empty token: empty vs empty scores 1, empty vs
    anything else 0; reproduced here.
    """
    c, lc, r, lr = _prepare(cand, cand_mask, ref, ref_mask)
    ft = _float()
    both_empty = (lc[:, None] == 0) & (lr == 0)
    lcs = (_lcs(c, lc, r, lr) + both_empty).astype(ft)
    prec = jnp.max(lcs / jnp.maximum(lc, 1)[:, None].astype(ft), 1)
    rec = jnp.max(lcs / jnp.maximum(lr, 1).astype(ft), 1)
    b2 = beta**2
    ok = (prec != 0) & (rec != 0)
    denom = jnp.where(ok, rec + b2 * prec, 1.0)
    return jnp.where(ok, (1 + b2) * prec * rec / denom, 0.0)


# --------------------------------------------------------------------------- CIDEr-D


def _as_documents(documents: Iterable) -> list[list[np.ndarray]]:
    """Each document as a list of references; a flat id sequence is one reference."""
    out = []
    for i, doc in enumerate(documents):
        nested = len(doc) > 0 and not isinstance(doc[0], (int, np.integer))
        refs = [np.asarray(x, np.int64) for x in doc] if nested else [np.asarray(doc, np.int64)]
        for ref in refs:
            if ref.ndim != 1 or (ref.size and (ref.min() < 0 or ref.max() >= 2**31)):
                raise ValueError(
                    f"document {i}: references must be 1-D sequences of ids in [0, 2**31)"
                )
        out.append(refs)
    return out


def build_df(
    documents: Iterable[Sequence[int] | Sequence[Sequence[int]]], n: int = 4
) -> DocumentFrequencies:
    """Document frequencies of n-grams (1..n) over a reference corpus, for ``cider_d``.

    A document is one case's reference (a sequence of ids) or its references (a sequence of id
    sequences); an n-gram counts once per document, as in pycocoevalcap. We take the df from the
    *training* references (CIDEr-D's "corpus" mode with a fixed corpus, as self-critical training
    does), so a candidate's reward does not depend on which other cases share its batch.
    pycocoevalcap's ``Cider`` instead takes the df from the evaluated set itself; building the
    table from the evaluated references reproduces it exactly.
    """
    docs = _as_documents(documents)
    if not docs:
        raise ValueError("build_df needs at least one document")
    ngrams, idf = [], []
    log_num_docs = np.log(len(docs))
    for k in range(1, n + 1):
        freq: dict[tuple[int, ...], int] = {}
        for refs in docs:
            seen = {tuple(ref[i : i + k].tolist()) for ref in refs for i in range(len(ref) - k + 1)}
            for g in seen:
                freq[g] = freq.get(g, 0) + 1
        if freq:
            rows = np.array(list(freq), dtype=np.int32).reshape(-1, k)
            weight = log_num_docs - np.log(np.array(list(freq.values()), dtype=np.float64))
            order = np.lexsort(rows.T[::-1])
            rows, weight = rows[order], weight[order]
        else:  # one row that no real n-gram equals, so lookups keep fixed shapes
            rows, weight = np.full((1, k), _PAD, np.int32), np.full(1, log_num_docs)
        ngrams.append(jnp.asarray(rows))
        idf.append(jnp.asarray(weight, _float()))
    return DocumentFrequencies(tuple(ngrams), tuple(idf), jnp.asarray(log_num_docs, _float()))


def _windows(ids: jax.Array, n: int) -> jax.Array:
    """``[..., T, n]``: the n tokens starting at each position (``_PAD`` past the end)."""
    size = ids.shape[-1]
    padded = jnp.concatenate([ids, jnp.full(ids.shape[:-1] + (n,), _PAD, ids.dtype)], -1)
    return jnp.stack([padded[..., k : k + size] for k in range(n)], -1)


def _lex_less(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise lexicographic ``a < b`` over the last axis."""
    less = jnp.zeros(jnp.broadcast_shapes(a.shape, b.shape)[:-1], bool)
    for k in reversed(range(a.shape[-1])):
        less = (a[..., k] < b[..., k]) | ((a[..., k] == b[..., k]) & less)
    return less


def sorted_lookup(table: jax.Array, queries: jax.Array) -> jax.Array:
    """Row of ``table`` (``[M, w]``, rows sorted lexicographically) equal to each query
    ``[..., w]``, or -1: a jitted binary search (n-gram idf here, word ids in ``words``)."""
    size = table.shape[0]

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        less = _lex_less(table[jnp.minimum(mid, size - 1)], queries)
        active = lo < hi
        return jnp.where(active & less, mid + 1, lo), jnp.where(active & ~less, mid, hi)

    lo = jnp.zeros(queries.shape[:-1], jnp.int32)
    hi = jnp.full(queries.shape[:-1], size, jnp.int32)
    lo, _ = jax.lax.fori_loop(0, int(size).bit_length(), step, (lo, hi))
    idx = jnp.minimum(lo, size - 1)
    return jnp.where((lo < size) & jnp.all(table[idx] == queries, -1), idx, -1)


def _lookup_idf(
    table: jax.Array, idf: jax.Array, missing: jax.Array, queries: jax.Array
) -> jax.Array:
    """idf of each query n-gram ``[..., n]`` (``missing`` when absent)."""
    idx = sorted_lookup(table, queries)
    return jnp.where(idx >= 0, idf[jnp.maximum(idx, 0)], missing)


@functools.partial(jax.jit, static_argnames=("sigma",))
def cider_d(
    cand: jax.Array,
    cand_mask: jax.Array,
    ref: jax.Array,
    ref_mask: jax.Array,
    df_table: DocumentFrequencies,
    sigma: float = 6.0,
) -> jax.Array:
    """Per-sentence CIDEr-D, ``[B]``: the vrama91 scorer that pycocoevalcap ships as ``Cider``.

    tf-idf vectors over n-grams 1..n (n = the df table's order) with idf
    ``log(num_docs) - log(max(1, df))``; clipped similarity ``min(v_c, v_r) · v_r`` over the
    norms; Gaussian length penalty ``exp(-δ²/2σ²)`` where δ is the difference in *bigram counts*
    (pycocoevalcap's ``length``); mean over n, mean over references, ×10.
    """
    c, lc, r, lr = _prepare(cand, cand_mask, ref, ref_mask)
    ft = _float()
    n_max = len(df_table.ngrams)
    ids = jnp.concatenate([c, r.reshape(r.shape[0], -1)], -1)
    rows = jnp.arange(ids.shape[0])[:, None]
    vals = []
    for k, grams in enumerate(_ngram_counts(c, lc, r, lr, n_max)):
        table = (df_table.ngrams[k], df_table.idf[k], df_table.log_num_docs)
        idf = _lookup_idf(*table, _windows(ids, k + 1))
        # Equal codes carry equal idf, so scattering per position gives the idf of each code.
        bins = jnp.where(grams.valid, grams.codes, ids.shape[-1])
        idf = jnp.zeros(grams.cand.shape, ft).at[rows, bins].set(jnp.where(grams.valid, idf, 0.0))
        vec_c = grams.cand.astype(ft) * idf  # [B, L + 1]
        vec_r = grams.refs.astype(ft) * idf[:, None]  # [B, K, L + 1]
        norm_c = jnp.sqrt(jnp.sum(vec_c**2, -1))[:, None]
        norm_r = jnp.sqrt(jnp.sum(vec_r**2, -1))
        num = jnp.sum(jnp.minimum(vec_c[:, None], vec_r) * vec_r, -1)  # [B, K]
        nonzero = (norm_c != 0) & (norm_r != 0)
        cosine = num / jnp.where(nonzero, norm_c * norm_r, 1.0)
        vals.append(jnp.where(nonzero, cosine, num))
    bigrams_c = jnp.maximum(lc - 1, 0) if n_max >= 2 else jnp.zeros_like(lc)
    bigrams_r = jnp.maximum(lr - 1, 0) if n_max >= 2 else jnp.zeros_like(lr)
    delta = (bigrams_c[:, None] - bigrams_r).astype(ft)
    penalty = jnp.exp(-(delta**2) / (2 * sigma**2))
    per_ref = jnp.mean(jnp.stack(vals, -1), -1) * penalty  # [B, K]
    return 10.0 * jnp.mean(per_ref, -1)
