"""Report tokenizer: exact decode, digits, specials, determinism, pickling, transformers reload."""

import os
import pickle

import numpy as np
import pytest

from radflow_jax.data.tokenizer import (
    SPECIAL_TOKENS,
    ReportTokenizer,
    normalize_report,
    train_tokenizer,
)

REPORTS = (
    "<findings> The heart is normal in size. The lungs are clear. No pleural effusion or "
    "pneumothorax. <impression> No acute cardiopulmonary process.",
    "<findings> Right ICA PSV 245 cm/s, EDV 98 cm/s; ICA/CCA ratio 4.1. Heterogeneous plaque. "
    "<impression> >=70% stenosis of the right ICA. Left ICA <50% stenosis.",
    "<findings> Mild cardiomegaly. Small left-sided effusion, 2.5 x 3 cm. <impression> "
    "1. Small left effusion. 2. Mild cardiomegaly, unchanged since 2019-03-04.",
    "FINDINGS: Lungs are hyperinflated.\nIMPRESSION: COPD, no focal consolidation.",
    "<image> <findings> Left CCA IMT = 1.2 mm (thickened). <impression> Intima-media thickening.",
    "<findings> ET tube 4 cm above the carina; NG tube in the stomach. <impression> Lines ok.",
    "<findings> Near-occlusion of the left ICA with trickle flow. <impression> Critical: "
    "near occlusion.",
    "<findings> No pneumothorax. <impression> Normal chest.",
)
# Text the reports do not have verbatim: case, unicode, other punctuation, glued tags, new numbers.
ODD_TEXTS = (
    "  The HEART is normal  (stable)\n\tsince ___ .  ",
    "PSV 1234567890 cm/s \u2265 70 %, \u2264 50 %",
    "<FINDINGS>The lungs are clear.<Impression>Normal.",
    "Patient's \u201cright\u201d lung: no effusion; ratio 3/4 = 0.75 -- ok",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00b5 \u00d7 \u00b0",
    "",
)


def _texts(n: int = 3) -> list[str]:
    return list(REPORTS) * n


@pytest.fixture(scope="module", params=["word", "bpe"])
def tokenizer(request) -> ReportTokenizer:
    return train_tokenizer(_texts(), kind=request.param, vocab_size=600, min_frequency=2)


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("  The HEART\n\tis  normal.  ", "the heart is normal."),
        ("PSV 245 cm/s; 70% > 50% <= x >= y", "psv 245 cm/s; 70% > 50% <= x >= y"),
        ("Left-sided (small) effusion!", "left-sided small effusion"),
        ("Patient's \u201cright\u201d lung", "patients right lung"),
        ("\u2265 70 % and \u2264 50 %", ">= 70 % and <= 50 %"),
        ("Caf\u00e9 r\u00e9sum\u00e9", "cafe resume"),
        ("Dr. ___ notified at 10:15", "dr. notified at 10:15"),
        ("<FINDINGS>heart<impression>x", "<findings> heart<impression> x"),
        ("<findings> a. <impression> b.", "<findings> a.<impression> b."),
        ("<image> <image>\n<findings> a", "<image><image><findings> a"),
        ("", ""),
    ],
)
def test_normalize_report(raw, normalized):
    assert normalize_report(raw) == normalized


def test_special_token_ids(tokenizer):
    assert tokenizer.vocab_size > len(SPECIAL_TOKENS)
    ids = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id)
    ids += (tokenizer.image_id, tokenizer.findings_id, tokenizer.impression_id)
    assert ids == tuple(range(7))
    assert [tokenizer.id_to_token(i) for i in ids] == list(SPECIAL_TOKENS)


@pytest.mark.parametrize("text", REPORTS + ODD_TEXTS)
def test_decode_inverts_encode_on_normalized_text(tokenizer, text):
    ids = tokenizer.encode(text)
    if tokenizer.unk_id not in ids:
        assert tokenizer.decode(ids) == normalize_report(text)
    assert tokenizer.encode(normalize_report(text)) == ids


def test_training_reports_have_no_unk(tokenizer):
    for text in REPORTS:
        assert tokenizer.unk_id not in tokenizer.encode(text)


def test_tags_are_single_tokens(tokenizer):
    ids = tokenizer.encode("<image> <image><findings> heart. <IMPRESSION> normal")
    assert ids[:3] == [tokenizer.image_id, tokenizer.image_id, tokenizer.findings_id]
    assert ids.count(tokenizer.findings_id) == 1 and ids.count(tokenizer.impression_id) == 1
    assert tokenizer.decode(ids) == "<image><image><findings> heart.<impression> normal"
    # No word-boundary token is spent around specials: n image tags are exactly n tokens.
    assert tokenizer.encode("<image>" * 5) == [tokenizer.image_id] * 5
    with_tag = tokenizer.encode("heart. <impression> normal")
    assert len(with_tag) == len(tokenizer.encode("heart. normal")) + 1


def test_digits_are_never_unk(tokenizer):
    text = "1234 5678 90, 13.7 % 0:59; >=70 <50 = 3/4 - 2 cm/s"
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == normalize_report(text)
    # Each digit is its own token (with at most a word-boundary marker).
    digit_tokens = [tokenizer.id_to_token(i) for i in tokenizer.encode("245")]
    assert [t.lstrip("\u2581") for t in digit_tokens] == ["2", "4", "5"]


def test_decode_stops_at_eos_and_drops_pad_and_bos(tokenizer):
    body = tokenizer.encode("<findings> no effusion. <impression> normal.")
    tail = tokenizer.encode("heart") + [tokenizer.pad_id] * 3
    ids = [tokenizer.bos_id] + body + [tokenizer.eos_id] + tail
    assert tokenizer.decode(ids) == "<findings> no effusion.<impression> normal."
    padded = np.asarray([tokenizer.pad_id] + body + [tokenizer.pad_id])
    assert tokenizer.decode(padded) == tokenizer.decode(body)
    assert tokenizer.decode([tokenizer.eos_id] + body) == ""


def test_word_level_unknown_words_are_unk():
    tok = train_tokenizer(_texts(), kind="word", vocab_size=600, min_frequency=2)
    ids = tok.encode("the heart is xylophone-shaped")
    assert ids.count(tok.unk_id) == 2  # "xylophone" and "shaped" were never seen
    assert tok.decode(ids).startswith("the heart is")


def test_word_level_min_frequency_and_cap():
    texts = ["alpha alpha alpha beta beta gamma"]
    by_count = train_tokenizer(texts, kind="word", vocab_size=1000, min_frequency=2)
    assert by_count.unk_id not in by_count.encode("alpha beta")
    assert by_count.encode("gamma") == [by_count.unk_id]  # seen once, below min_frequency
    base = train_tokenizer([], kind="word", vocab_size=1000).vocab_size  # specials, digits, marks
    capped = train_tokenizer(texts, kind="word", vocab_size=base + 1, min_frequency=1)
    assert capped.vocab_size == base + 1
    assert capped.unk_id not in capped.encode("alpha")  # the most frequent unit wins the one slot
    assert capped.encode("beta") == [capped.unk_id]


def test_bpe_respects_vocab_size_and_never_emits_unk():
    tok = train_tokenizer(_texts(), kind="bpe", vocab_size=120, min_frequency=2)
    assert tok.vocab_size <= 120
    text = "quixotic zygomatic jejunum 9876 cm/s"
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == normalize_report(text)


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_random_strings_round_trip(kind):
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ \u00e9 0123456789 .,:;%/<>=-_()'\n\t\u2265")
    alphabet += ["<findings>", "<IMPRESSION>", "  "]
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 50)))) for _ in range(300)]
    tok = train_tokenizer(texts, kind=kind, vocab_size=3000, min_frequency=1)
    for text in texts:
        assert tok.decode(tok.encode(text)) == normalize_report(text), repr(text)


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_training_is_deterministic(tmp_path, kind):
    for name in ("a", "b"):
        train_tokenizer(_texts(), kind=kind, vocab_size=300).save(str(tmp_path / name))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_pickle_round_trip(tokenizer):
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.vocab_size == tokenizer.vocab_size and copy.eos_id == tokenizer.eos_id
    for text in REPORTS + ODD_TEXTS:
        assert copy.encode(text) == tokenizer.encode(text)


def test_save_load_round_trip(tmp_path, tokenizer):
    tokenizer.save(str(tmp_path))
    files = ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(os.listdir(tmp_path)) == files
    loaded = ReportTokenizer.load(str(tmp_path))
    assert loaded.vocab_size == tokenizer.vocab_size
    for text in REPORTS + ODD_TEXTS:
        ids = tokenizer.encode(text)
        assert loaded.encode(text) == ids and loaded.decode(ids) == tokenizer.decode(ids)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        ReportTokenizer.load(str(tmp_path / "missing"))


def test_transformers_auto_tokenizer_matches(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    tokenizer.save(str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    assert hf.convert_tokens_to_ids(list(SPECIAL_TOKENS[4:])) == [4, 5, 6]
    assert len(hf) == tokenizer.vocab_size
    for text in REPORTS + ODD_TEXTS:
        ids = tokenizer.encode(text)
        assert hf(text)["input_ids"] == ids, text
        assert hf.decode(ids) == tokenizer.decode(ids)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        train_tokenizer(REPORTS, kind="char")
    with pytest.raises(ValueError, match="vocab_size must be >="):
        train_tokenizer(REPORTS, kind="bpe", vocab_size=20)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(REPORTS, min_frequency=0)
