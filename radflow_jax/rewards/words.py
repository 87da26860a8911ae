"""The evaluation's words, read from token ids on device, so the reward scores what ``evaluate`` scores.

``evaluate`` scores ``metrics.normalize_text(findings + " " + impression, eval.normalize)``, where
the sections come from ``parse_target(tokenizer.decode(ids))``. Its words are not the tokenizer's
tokens: the tokenizer splits "1.5" into ``▁1 . 5``, "245" into three digits, "b-lines" into
``▁b - lines`` (and ``lines`` there is another id than ``▁lines``), keeps ``,`` ``:`` ``%`` as
tokens and writes BPE words in pieces. The default normaliser (``radflow``) keeps "1.5" and "245"
whole, reads "b-lines" as "b lines", drops the punctuation, removes list markers ("2. ") and
writes one ``.`` word per sentence; R2Gen's cleaners (``r2gen_iu``, ``r2gen_mimic``) delete the
punctuation instead ("b-lines", "15", "cms"), end sentences only at ". " and rewrite list numbers
by their quirky replacements ("1. " goes anywhere, " 2. " becomes ". "). ``report_words``
rebuilds the chosen normaliser's word sequence from the ids, exactly, with fixed shapes inside
``jit``; ``word_ids`` turns words into integer ids (equal ids ⇔ equal words) that
``nlg.bleu_all`` / ``rouge_l`` / ``cider_d`` score like any ids. ``none`` (the raw strings) has no
counterpart: token ids are already normalised text.

How, per report (``[N, T]`` ids; cumulative sums, scatters and scans, no host work):

1. the tokens of the wanted sections in the evaluation's order (all Findings pieces, then all
   Impression pieces, as ``parse_target`` joins repeated tags), a space before each piece;
   ``<pad>``/``<bos>`` render nothing, a lone ``▁`` is a space, ``<unk>``/``<image>`` render as the
   text ``<unk>``/``<image>``, which the evaluation reads as the word "unk"/"image";
2. ``radflow``: list markers removed as ``radflow_normalize``'s regex does, left to right and
   non-overlapping (``"1. 2. 3. x"`` keeps the "2"), by a scan; sentence ends (a run of ``.``
   followed by a space or the end), points kept only between two digits ("1.5"), words as
   maximal runs of letters, digits and kept points, and a ``.`` word after each non-empty
   sentence;
3. R2Gen: runs of ``.`` shrink as 3 (MIMIC: 8) passes of ``replace("..", ".")`` do, then each of
   R2Gen's 9 list replacements in order, overlapping matches resolved as ``str.replace`` does (a
   scan each); sentences split at ". ", words are the runs of letters, digits and hyphens between
   spaces (other punctuation vanishes), and every sentence, empty ones too, ends with a ``.``.

A word is its characters (``[a-z0-9.-]``, 6 bits each, packed 5 to an int32 key) and its length,
so equality is exact for words up to ``MAX_CHARS`` characters (longer ones, which only degenerate
output that glues pieces without spaces produces, compare by their first ``MAX_CHARS`` characters
and their length).

What cannot agree, and why (the reward sees token ids, the evaluation raw reference text):

- words the word-level tokenizer does not know: the reference's become ``<unk>`` ("unk" here), the
  evaluation reads the real word; a generated ``<unk>`` is "unk" for both;
- reference text the tokenizer's normalizer rewrites: "!" and "?" (no token; a space for the
  tokenizer, a sentence end for the evaluation), list markers written "1)" (")" has no token),
  characters outside the tokenizer's alphabet (a space there; R2Gen deletes ``( ) _ *`` and
  others, gluing what they separated), accented letters (the tokenizer strips the accent, the
  evaluation drops the letter), line breaks and double spaces inside R2Gen's patterns, and
  references longer than ``data.max_target_len`` (truncated);
- a section tag spelled out by punctuation and letter tokens (``<`` ``▁impression`` ``>``):
  ``parse_target`` reads it as a tag, the reward (here and in its labels) as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from radflow_jax import metrics
from radflow_jax.data.tokenizer import SPECIAL_TOKENS
from radflow_jax.rewards import nlg

NORMALIZERS = ("radflow", "r2gen_iu", "r2gen_mimic")  # the metrics normalisers read exactly here
MAX_CHARS = 40  # characters of a word that take part in its identity (with its full length)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789.-"
_CODE = {c: i + 1 for i, c in enumerate(_ALPHABET)}  # 0 pads
_BITS, _PER_KEY = 6, 5
KEY_WIDTH = MAX_CHARS // _PER_KEY + 1  # packed characters, then the length
_BOUNDARY = "\u2581"
_SPECIAL_WORDS = {"<unk>": "unk", "<image>": "image"}  # how the evaluation reads them

# Token kinds: what a token renders as, in ``tokenizer.decode`` and then the evaluation.
DROP, EMPTY, LETTERS, DIGIT, DOT, CLAUSE, SEP, SPECIAL, HYPHEN = range(9)
_CHARS_OF = (LETTERS, DIGIT, DOT, SPECIAL, HYPHEN)  # kinds whose characters can belong to a word


@struct.dataclass
class WordTable:
    """Per token id: kind, leading space, characters; the known words; and whose words to read
    (``normalize``, static). A pytree, so it enters ``jit``.

    ``vocab`` rows are the packed keys of the known words, sorted; word ``vocab[i]`` has id ``i``
    (``word_ids``), so a CIDEr-D df table built over those ids (``corpus_df``) applies. A table
    without known words has one row no word equals.
    """

    kind: jax.Array  # int32 [V]
    lead: jax.Array  # bool [V]: the token starts with "▁"
    chars: jax.Array  # int32 [V, C]: character codes of the token without "▁", 0-padded
    length: jax.Array  # int32 [V]
    vocab: jax.Array  # int32 [M, KEY_WIDTH]
    normalize: str = struct.field(pytree_node=False, default="radflow")  # one of NORMALIZERS


class Words(NamedTuple):
    """One report's words per slot, ``[N, T + 1]``: packed keys and which slots hold a word."""

    keys: jax.Array  # int32 [N, T + 1, KEY_WIDTH]
    mask: jax.Array  # bool [N, T + 1]


# ------------------------------------------------------------------------------------------ host


def pack(word: str) -> tuple[int, ...]:
    """A word's key: ``MAX_CHARS`` character codes packed 5 to an int32, then its length."""
    bad = set(word) - set(_ALPHABET)
    if bad or not word:
        raise ValueError(f"a word is one or more of {_ALPHABET!r}, got {word!r}")
    codes = [_CODE[c] for c in word[:MAX_CHARS]] + [0] * max(0, MAX_CHARS - len(word))
    packed = [
        sum(codes[j * _PER_KEY + i] << (_BITS * i) for i in range(_PER_KEY))
        for j in range(MAX_CHARS // _PER_KEY)
    ]
    return (*packed, len(word))


def unpack(key: Sequence[int]) -> str:
    """The word of a key (its first ``MAX_CHARS`` characters); for tests and debugging."""
    chars = []
    for value in list(key)[:-1]:
        for i in range(_PER_KEY):
            code = (int(value) >> (_BITS * i)) & ((1 << _BITS) - 1)
            if code:
                chars.append(_ALPHABET[code - 1])
    return "".join(chars)


def text_words(text: str, normalize: str = "radflow") -> list[str]:
    """The evaluation's words of a text (what ``report_words`` computes from ids)."""
    return metrics.normalize_text(text, normalize).split()


def _vocab_keys(words: Iterable[str]) -> list[tuple[int, ...]]:
    """Distinct keys of ``words``, sorted: row ``i`` of a table's ``vocab`` is word id ``i``."""
    return sorted({pack(w) for w in words})


def _kind(body: str) -> int:
    if not body:
        return EMPTY
    if body.isascii() and body.isalpha() and body.islower():
        return LETTERS
    if len(body) == 1 and body.isdigit():
        return DIGIT
    if body == ".":
        return DOT
    if body in (";", ":"):
        return CLAUSE
    if body == "-":
        return HYPHEN  # a separator for radflow, part of the word for R2Gen's cleaners
    if len(body) == 1 and body in ",%/<>=":
        return SEP
    raise ValueError(f"{body!r} is not a unit of the report tokenizer (letters, a digit or a "
                     f"punctuation mark), so its words cannot be read")


def word_table(tokenizer, vocabulary: Iterable[str] = (), normalize: str = "radflow") -> WordTable:
    """The table of a ``ReportTokenizer`` (word or BPE) for the ``normalize`` normaliser's words,
    with ``vocabulary`` as known words."""
    if normalize not in NORMALIZERS:
        raise ValueError(f"the reward reads the words of {NORMALIZERS}, not {normalize!r} "
                         "('none' scores raw strings, which token ids do not have)")
    size = tokenizer.vocab_size
    kind = np.zeros(size, np.int32)
    lead = np.zeros(size, bool)
    bodies = [""] * size
    for i in range(size):
        token = tokenizer.id_to_token(i)
        if token in SPECIAL_TOKENS:
            if token in _SPECIAL_WORDS:
                kind[i], bodies[i] = SPECIAL, _SPECIAL_WORDS[token]
            else:
                kind[i] = DROP  # pad/bos render nothing; eos and tags are handled by the sections
            continue
        lead[i] = token.startswith(_BOUNDARY)
        bodies[i] = token[1:] if lead[i] else token
        kind[i] = _kind(bodies[i])
    width = max(1, max(len(b) for b in bodies))
    chars = np.zeros((size, width), np.int32)
    for i, body in enumerate(bodies):
        if kind[i] in _CHARS_OF:  # the others never join a word
            chars[i, : len(body)] = [_CODE[c] for c in body]
    known = _vocab_keys(vocabulary)
    vocab = np.array(known, np.int32).reshape(-1, KEY_WIDTH) if known else np.full((1, KEY_WIDTH), -1, np.int32)
    length = [len(b) if k in _CHARS_OF else 0 for b, k in zip(bodies, kind)]
    return WordTable(jnp.asarray(kind), jnp.asarray(lead), jnp.asarray(chars),
                     jnp.asarray(length, jnp.int32), jnp.asarray(vocab), normalize)


def corpus_df(
    tokenizer, texts: Sequence[str], n: int = 4, normalize: str = "radflow"
) -> tuple[WordTable, nlg.DocumentFrequencies]:
    """A table whose known words are those of ``texts``, and the CIDEr-D df of ``texts`` over them.

    Pass the training references for the reward (a fixed df, as ``nlg.build_df`` explains), or
    the evaluated references to reproduce pycocoevalcap's ``Cider`` exactly.
    """
    docs = [text_words(t, normalize) for t in texts]
    vocabulary = [w for d in docs for w in d]
    index = {key: i for i, key in enumerate(_vocab_keys(vocabulary))}
    ids = [[index[pack(w)] for w in d] for d in docs]
    return word_table(tokenizer, vocabulary, normalize), nlg.build_df(ids, n=n)


# ---------------------------------------------------------------------------------------- device


def _shift(x: jax.Array, k: int, fill) -> jax.Array:
    """``x[..., t + k]`` at ``t`` (``fill`` beyond either end)."""
    size = x.shape[-1]
    pad = jnp.full(x.shape[:-1] + (abs(k),), fill, x.dtype)
    if k > 0:
        return jnp.concatenate([x[..., k:], pad], -1)[..., :size]
    return jnp.concatenate([pad, x[..., : size + k]], -1)


def _move(dest: jax.Array, *arrays: jax.Array) -> list[jax.Array]:
    """Each ``arrays[..., t]`` moved to position ``dest[..., t]`` (dropped where out of range)."""
    rows = jnp.arange(dest.shape[0])[:, None]
    return [jnp.zeros_like(a).at[rows, dest].set(a, mode="drop") for a in arrays]


def _squeeze(keep: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """Kept positions moved to the front in order; their count and the moved arrays."""
    dest = jnp.where(keep, jnp.cumsum(keep, -1) - 1, keep.shape[-1])
    return keep.sum(-1), _move(dest, *arrays)


def _remove_list_markers(kind: jax.Array, lead: jax.Array, valid: jax.Array) -> jax.Array:
    """Which positions belong to a list marker that ``radflow_normalize`` removes.

    Its regex ``(^|[.!?;:]\\s+)\\d{1,2}[.)]\\s+`` in tokens: at the start, or after ``.``/``;``/``:``
    and a space, one or two digits, a point and a space. Matches do not overlap, so a marker whose
    ``.`` opens the next one uses it up ("1. 2. 3. x" loses "1. " and "3. "): a scan.
    """
    pos = jnp.arange(kind.shape[-1])
    digit, dot = valid & (kind == DIGIT), valid & (kind == DOT)
    clause = valid & ((kind == DOT) | (kind == CLAUSE))
    tight = lambda k: _shift(valid & ~lead, k, False)  # noqa: E731  (a token with no space before)
    spaced = lambda k: _shift(valid & lead, k, False)  # noqa: E731
    first = pos == 0
    start = digit & (lead | first) & (first | _shift(clause, -1, False))
    one = start & _shift(dot, 1, False) & tight(1) & spaced(2)
    two = start & _shift(digit, 1, False) & tight(1) & _shift(dot, 2, False) & tight(2) & spaced(3)

    def step(carry, x):
        one1, one2, two1, two2, two3 = carry  # removed markers that began 1, 2 (3) tokens back
        c1, c2, at_start = x
        free = at_start | ~(one2 | two3)  # the "." before is not the end of a removed marker
        r1, r2 = c1 & free, c2 & free
        return (r1, one1, r2, two1, two2), (r1, r2)

    false = jnp.zeros(kind.shape[:-1], bool)
    xs = (jnp.moveaxis(one, -1, 0), jnp.moveaxis(two, -1, 0), first)
    _, (r1, r2) = jax.lax.scan(step, (false,) * 5, xs)
    r1, r2 = jnp.moveaxis(r1, 0, -1), jnp.moveaxis(r2, 0, -1)
    return r1 | _shift(r1, -1, False) | r2 | _shift(r2, -1, False) | _shift(r2, -2, False)


def _in_order(table: WordTable, tokens, section, spaced):
    """Step 1: the kept tokens in the evaluation's order, with a leading-space flag each."""
    tokens = jnp.clip(jnp.asarray(tokens).astype(jnp.int32), 0, table.kind.shape[0] - 1)
    pos = jnp.arange(tokens.shape[-1])
    section = jnp.asarray(section).astype(jnp.int32)
    kind = table.kind[tokens]
    keep = (section > 0) & (kind != DROP)
    # Findings pieces, then Impression pieces, each piece after a space; lone "▁" are spaces
    # (within a piece only pad/bos/"▁" stand between two rendered tokens, so the count works).
    full = keep & (kind != EMPTY)
    empties = jnp.cumsum(keep & (kind == EMPTY), -1)
    before = _shift(jax.lax.cummax(jnp.where(full, pos, -1), axis=1), -1, -1)
    gap = empties - jnp.where(before >= 0, jnp.take_along_axis(empties, jnp.maximum(before, 0), -1), 0)
    lead = table.lead[tokens] | jnp.asarray(spaced, bool) | (gap > 0)
    in_f, in_i = full & (section == 1), full & (section == 2)
    dest = jnp.where(in_f, jnp.cumsum(in_f, -1) - 1,
                     jnp.where(in_i, in_f.sum(-1, keepdims=True) + jnp.cumsum(in_i, -1) - 1, tokens.shape[-1]))
    ids, lead = _move(dest, tokens, lead)
    return ids, lead, full.sum(-1)


def _radflow(table: WordTable, ids, lead, length):
    """Steps 2-3 for ``radflow_normalize``: (ids, word tokens, word starts, periods, final period)."""
    pos = jnp.arange(ids.shape[-1])
    valid = pos < length[:, None]
    gone = _remove_list_markers(table.kind[ids], lead, valid)
    length, (ids, lead) = _squeeze(valid & ~gone, ids, lead)
    valid = pos < length[:, None]
    kind = jnp.where(valid, table.kind[ids], DROP)
    dot, digit, special = kind == DOT, kind == DIGIT, kind == SPECIAL
    nxt_tight = _shift(valid & ~lead, 1, False)
    cont = dot & _shift(dot, -1, False) & ~lead  # continues the run of points before it
    run_end = dot & ~(_shift(dot, 1, False) & nxt_tight)
    closes = run_end & ~nxt_tight  # a space or the end follows the run
    end_of_run = jax.lax.cummin(jnp.where(run_end, pos, ids.shape[-1]), axis=1, reverse=True)
    sentence = dot & jnp.take_along_axis(closes, jnp.minimum(end_of_run, ids.shape[-1] - 1), -1)
    kept_dot = dot & ~sentence & ~lead & _shift(digit, -1, False) & _shift(digit, 1, False) & nxt_tight
    wordy = (kind == LETTERS) | digit | kept_dot | special
    starts = wordy & (lead | ~_shift(wordy, -1, False) | special | _shift(special, -1, False))
    opens = sentence & ~cont  # the first point of a sentence end
    before_words = jnp.cumsum(starts, -1) - starts
    at_opens = jnp.where(opens, before_words, 0)
    previous = _shift(jax.lax.cummax(at_opens, axis=1), -1, 0)
    period = opens & (before_words > previous)
    final = starts.sum(-1) > at_opens.max(-1)
    return ids, wordy, starts, period, final


def _blocked_chain(candidate: jax.Array) -> jax.Array:
    """Which candidates ``str.replace`` takes when a candidate at ``t`` overlaps one at ``t - 2``:
    left to right, a candidate right after a taken one is skipped (a scan)."""
    def step(carry, c):
        taken1, taken2 = carry
        taken = c & ~taken2
        return (taken, taken1), taken

    false = jnp.zeros(candidate.shape[:-1], bool)
    _, taken = jax.lax.scan(step, (false, false), jnp.moveaxis(candidate, -1, 0))
    return jnp.moveaxis(taken, 0, -1)


def _r2gen(table: WordTable, ids, lead, length):
    """Steps 2-3 for R2Gen's cleaners on decoded text (single spaces, no line breaks, no ``_``,
    so ``clean_report_iu_xray`` and ``clean_report_mimic_cxr`` differ only in how many times
    ``".."`` shrinks): (ids, word tokens, word starts, periods, final period)."""
    size = ids.shape[-1]
    pos = jnp.arange(size)
    lead = lead & (pos > 0)  # the text is stripped: no space before its first character

    def state(ids, length):
        valid = pos < length[:, None]
        kind = jnp.where(valid, table.kind[ids], DROP)
        digit = jnp.where(kind == DIGIT, table.chars[ids][..., 0] - _CODE["0"], -1)
        return valid, kind, digit

    # ".." -> "." three (eight) times: a run of k points keeps ceil(k / 2**passes).
    passes = 3 if table.normalize == "r2gen_iu" else 8
    valid, kind, _ = state(ids, length)
    dot = kind == DOT
    tight = valid & ~lead
    first = dot & ~(_shift(dot, -1, False) & tight)
    last = dot & ~(_shift(dot, 1, False) & _shift(tight, 1, False))
    run_start = jax.lax.cummax(jnp.where(first, pos, -1), axis=1)
    run_end = jax.lax.cummin(jnp.where(last, pos, size), axis=1, reverse=True)
    keep = valid & (~dot | (pos - run_start < (run_end - run_start + 2**passes) // 2**passes))
    length, (ids, lead) = _squeeze(keep, ids, lead)
    # "1. " -> "" anywhere (matches never overlap); what follows takes the space before the "1".
    valid, kind, digit = state(ids, length)
    tight, spaced = valid & ~lead, valid & lead
    one = (digit == 1) & _shift((kind == DOT) & tight, 1, False) & _shift(spaced, 2, False)
    gone = one | _shift(one, -1, False)
    first_gone = gone & ~_shift(gone, -1, False)
    inherit = _shift(jax.lax.cummax(jnp.where(first_gone, pos, -1), axis=1), -1, -1)
    lead = jnp.where(valid & ~gone & _shift(gone, -1, False),
                     jnp.take_along_axis(lead, jnp.maximum(inherit, 0), -1), lead)
    length, (ids, lead) = _squeeze(valid & ~gone, ids, lead)
    # ". d. " -> ". " for d = 2..5 (the digit and its point go), then " d. " -> ". " (the digit
    # goes with the space before it; its point stays), each a pass over the previous one's text.
    for d, with_point in [(d, True) for d in range(2, 6)] + [(d, False) for d in range(2, 6)]:
        valid, kind, digit = state(ids, length)
        tight, spaced = valid & ~lead, valid & lead
        is_dot = kind == DOT
        if with_point:
            cand = (is_dot & _shift((digit == d) & spaced, 1, False) & _shift(is_dot & tight, 2, False)
                    & _shift(spaced, 3, False))
            taken = _blocked_chain(cand)
            gone = _shift(taken, -1, False) | _shift(taken, -2, False)
        else:
            cand = (digit == d) & spaced & _shift(is_dot & tight, 1, False) & _shift(spaced, 2, False)
            gone = _blocked_chain(cand)
        length, (ids, lead) = _squeeze(valid & ~gone, ids, lead)
    # Sentences end at ". "; punctuation is deleted, not spaced, so words are the runs between
    # spaces of letters, digits and hyphens; every sentence, empty or not, ends with a ".".
    valid, kind, _ = state(ids, length)
    period = (kind == DOT) & _shift(valid & lead, 1, False)
    wordy = (kind == LETTERS) | (kind == DIGIT) | (kind == HYPHEN) | (kind == SPECIAL)
    chunk = jax.lax.cummax(jnp.where(valid & (lead | (pos == 0)), pos, -1), axis=1)
    previous = _shift(jax.lax.cummax(jnp.where(wordy, pos, -1), axis=1), -1, -1)
    starts = wordy & (previous < chunk)
    return ids, wordy, starts, period, jnp.ones(ids.shape[:-1], bool)


def report_words(table: WordTable, tokens: jax.Array, section: jax.Array, spaced: jax.Array) -> Words:
    """The evaluation's words of the tokens in a section, ``[N, T]`` ids, by ``table.normalize``.

    ``section`` ``[N, T]`` gives each token's section: 1 Findings, 2 Impression, 0 none (a stray
    preamble, past the eos, or a section left out: zero the Findings to read the Impression
    alone); ``spaced`` whether a section tag stands between the token and the one rendered before
    it (``parse_target`` joins the pieces of a section with a space). Slot ``t`` holds the word
    starting at the ``t``-th kept token or the ``.`` closing a sentence; the last slot the final
    ``.``. Equal to ``text_words`` of ``findings + " " + impression`` (module docstring).
    """
    ids, lead, length = _in_order(table, tokens, section, spaced)
    read = _radflow if table.normalize == "radflow" else _r2gen
    ids, wordy, starts, period, final = read(table, ids, lead, length)
    # Characters of each word, scattered to the slot of its first token.
    size = ids.shape[-1]
    pos = jnp.arange(size)
    owner = jax.lax.cummax(jnp.where(starts, pos, -1), axis=1)
    tok_len = jnp.where(wordy, table.length[ids], 0)
    excl = jnp.cumsum(tok_len, -1) - tok_len
    offset = excl - jnp.take_along_axis(excl, jnp.maximum(owner, 0), -1)
    chars = table.chars[ids]  # [N, T, C]
    col = offset[..., None] + jnp.arange(chars.shape[-1])
    ok = wordy[..., None] & (jnp.arange(chars.shape[-1]) < tok_len[..., None]) & (col < MAX_CHARS)
    rows = jnp.arange(ids.shape[0])[:, None, None]
    buf = jnp.zeros((ids.shape[0], size, MAX_CHARS), jnp.int32)
    buf = buf.at[rows, jnp.maximum(owner, 0)[..., None], jnp.where(ok, col, MAX_CHARS)].set(
        chars, mode="drop")
    word_len = jnp.zeros((ids.shape[0], size), jnp.int32).at[
        jnp.arange(ids.shape[0])[:, None], jnp.maximum(owner, 0)].add(tok_len)
    shifts = (_BITS * jnp.arange(_PER_KEY)).astype(jnp.int32)
    packed = jnp.sum(buf.reshape(ids.shape[0], size, -1, _PER_KEY) << shifts, -1)
    word_keys = jnp.concatenate([packed, word_len[..., None]], -1)
    point = jnp.asarray(pack("."), jnp.int32)
    keys = jnp.where(starts[..., None], word_keys, jnp.where(period[..., None], point, 0))
    keys = jnp.concatenate([keys, jnp.where(final[:, None, None], point, 0)], 1)
    return Words(keys, jnp.concatenate([starts | period, final[:, None]], -1))


def word_ids(table: WordTable, *streams: Words) -> list[jax.Array]:
    """Integer ids of the words of several streams of the same rows (a candidate and its
    references): a known word's ``vocab`` row, otherwise ``M +`` its rank among the row's other
    words, so equal ids ⇔ equal words within a row, and ids of known words agree across rows."""
    keys = jnp.concatenate([s.keys for s in streams], 1)
    batch, size, width = keys.shape
    iota = jnp.broadcast_to(jnp.arange(size), (batch, size))
    *ordered, slot = jax.lax.sort((*jnp.moveaxis(keys, -1, 0), iota), dimension=1, num_keys=width)
    ordered = jnp.stack(ordered, -1)
    new = jnp.any(ordered[:, 1:] != ordered[:, :-1], -1)
    rank = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), jnp.cumsum(new, -1, dtype=jnp.int32)], -1)
    rank = jnp.zeros((batch, size), jnp.int32).at[jnp.arange(batch)[:, None], slot].set(rank)
    known = nlg.sorted_lookup(table.vocab, keys)
    ids = jnp.where(known >= 0, known, table.vocab.shape[0] + rank)
    out, start = [], 0
    for s in streams:
        out.append(ids[:, start : start + s.keys.shape[1]])
        start += s.keys.shape[1]
    return out
