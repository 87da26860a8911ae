"""Report tokenizer: word-level or BPE, trained on the training reports, Hugging Face compatible.

Radiology reports use a small vocabulary, so R2Gen-style models tokenise by word; BPE is there for
larger corpora. Both kinds share one normalizer and pre-tokenizer, built from ``tokenizers``
components (no ``transformers`` here), so the saved ``tokenizer.json`` behaves the same when
``transformers.AutoTokenizer`` loads it for export:

- normalizer (``normalize_report``): NFKD and accent stripping, lower case, ``≥``/``≤`` spelled
  ``>=``/``<=``, quotes and apostrophes deleted, every character other than ``a-z``, digits and
  ``. , : ; % / < > = -`` replaced by a space, whitespace collapsed and stripped, and a special
  token always glued to what precedes it and followed by one space (``normal.<impression> no``,
  ``<image><image><findings> the``);
- pre-tokenizer: spaces become ``▁`` word-boundary markers (Metaspace), then the text splits into
  letter runs, single digits and single punctuation marks, each keeping a ``▁`` before it.
  Digits are always split one by one, so "245 cm/s" is ``▁2 4 5 ▁cm / s`` and no number is ever
  ``<unk>``;
- decoder: Metaspace, so ``decode(encode(t)) == normalize_report(t)`` exactly for in-vocabulary
  text.

The special tokens take ids 0..6 in ``SPECIAL_TOKENS`` order and are matched inside text after
normalization, so ``<findings>`` / ``<impression>`` / ``<image>`` (any case) are single tokens. The
other four are matched too: a literal ``<eos>`` in a report would act as one (reports have none).
Gluing specials to the left is what lets the Metaspace decoder restore the text exactly without a
lone ``▁`` token before each special, so ``"<image>" * n`` is exactly n tokens (as a Hugging Face
Llava processor expects when it expands ``<image>``).
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterable, Sequence

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<image>", "<findings>", "<impression>")
KINDS = ("word", "bpe")

_BOUNDARY = "\u2581"  # "▁", the Metaspace word-boundary marker
_PUNCTUATION = ".,:;%/<>=-"
_DIGITS = "0123456789"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz" + _DIGITS + _PUNCTUATION + _BOUNDARY
# Word-level units always in the vocabulary, whatever their frequency: numbers and punctuation
# must survive a tokenizer trained on a small corpus.
_ALWAYS_UNITS = (_BOUNDARY,) + tuple(p + c for c in _DIGITS + _PUNCTUATION for p in ("", _BOUNDARY))
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
_CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_MAP_FILE = "special_tokens_map.json"
_TOKENIZER_FILE = "tokenizer.json"


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [
            normalizers.NFKD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace("\u2265", ">="),
            normalizers.Replace("\u2264", "<="),
            normalizers.Replace(Regex("['\"`\u2018\u2019\u201c\u201d]"), ""),
            normalizers.Replace(Regex(r"[^a-z0-9\s.,:;%/<>=\-]"), " "),
            *[normalizers.Replace(t, f" {t} ") for t in SPECIAL_TOKENS],
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Replace(Regex(f" (?={_SPECIAL_RE.pattern})"), ""),
            normalizers.Strip(),
        ]
    )


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    b = _BOUNDARY
    unit = Regex(f"{b}?[a-z]+|{b}?[0-9]|{b}?[^a-z0-9{b}]|{b}")
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=b, prepend_scheme="always", split=False),
            pre_tokenizers.Split(unit, behavior="isolated"),
        ]
    )


_NORMALIZER = _normalizer()


def normalize_report(text: str) -> str:
    """The text the tokenizer sees, R2Gen-style (rules in the module docstring)."""
    return _NORMALIZER.normalize_str(text)


def _assemble(model: models.Model) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.Metaspace(
        replacement=_BOUNDARY, prepend_scheme="always", split=False
    )
    return tokenizer


def _add_special_tokens(tokenizer: Tokenizer) -> None:
    """Registers the specials, matched after normalization (ids already 0..6 in the model)."""
    specials = [AddedToken(t, special=True, normalized=True) for t in SPECIAL_TOKENS]
    tokenizer.add_special_tokens(specials)


def _word_vocab(texts: Iterable[str], vocab_size: int, min_frequency: int) -> dict[str, int]:
    """Specials, the always-present units, then units by falling count, ties by text."""
    pre_tokenizer = _pre_tokenizer()
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        for piece in _SPECIAL_RE.split(normalize_report(text)):
            if piece:
                counts.update(unit for unit, _ in pre_tokenizer.pre_tokenize_str(piece))
    vocab = list(SPECIAL_TOKENS) + list(_ALWAYS_UNITS)
    fixed = set(vocab)
    frequent = sorted((-n, u) for u, n in counts.items() if n >= min_frequency and u not in fixed)
    vocab += [u for _, u in frequent[: vocab_size - len(vocab)]]
    return {unit: i for i, unit in enumerate(vocab)}


def train_tokenizer(
    texts: Iterable[str], *, kind: str = "word", vocab_size: int = 4000, min_frequency: int = 2
) -> ReportTokenizer:
    """Trains a tokenizer on report texts (raw; they are normalized here).

    ``kind="word"``: one token per pre-tokenized unit (letter run, digit or punctuation mark) seen
    at least ``min_frequency`` times, most frequent first, ``vocab_size`` in all (specials
    included); digits and punctuation are always in. ``kind="bpe"``: byte-pair merges over the same
    units up to ``vocab_size``, starting from the full normalized alphabet, so BPE never emits
    ``<unk>`` on normalized text.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    minimum = len(SPECIAL_TOKENS) + (len(_ALWAYS_UNITS) if kind == "word" else len(_ALPHABET))
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be >= {minimum} for kind={kind!r}, got {vocab_size}")
    if kind == "word":
        vocab = _word_vocab(texts, vocab_size, min_frequency)
        tokenizer = _assemble(models.WordLevel(vocab, unk_token="<unk>"))
    else:
        tokenizer = _assemble(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=list(_ALPHABET),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
    _add_special_tokens(tokenizer)
    return ReportTokenizer(tokenizer)


class ReportTokenizer:
    """A trained ``tokenizers.Tokenizer`` with the ids models need; picklable for Grain workers."""

    def __init__(self, tokenizer: Tokenizer):
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != expected_id:
                raise ValueError(
                    f"special token {token!r} must have id {expected_id}, "
                    f"got {tokenizer.token_to_id(token)}"
                )
        self._tokenizer = tokenizer
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.image_id, self.findings_id, self.impression_id = 4, 5, 6
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of raw report text; no bos/eos added."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text up to the first eos, pad and bos dropped; other special tokens are kept as text."""
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                kept.append(i)
        return self._tokenizer.decode(kept, skip_special_tokens=False)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(int(token_id))

    def save(self, directory: str) -> None:
        """Writes tokenizer.json and the two config files ``transformers.AutoTokenizer`` reads."""
        os.makedirs(directory, exist_ok=True)
        self._tokenizer.save(os.path.join(directory, _TOKENIZER_FILE))
        special_map = {
            "pad_token": SPECIAL_TOKENS[0],
            "bos_token": SPECIAL_TOKENS[1],
            "eos_token": SPECIAL_TOKENS[2],
            "unk_token": SPECIAL_TOKENS[3],
            "additional_special_tokens": list(SPECIAL_TOKENS[4:]),
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000_000,
            "clean_up_tokenization_spaces": False,
            **special_map,
        }
        for name, content in ((_CONFIG_FILE, config), (_SPECIAL_MAP_FILE, special_map)):
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, sort_keys=True)
                f.write("\n")

    @classmethod
    def load(cls, directory: str) -> ReportTokenizer:
        path = os.path.join(directory, _TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {_TOKENIZER_FILE} in {directory!r}")
        return cls(Tokenizer.from_file(path))
