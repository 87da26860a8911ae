"""CAPO: critical cases, group disagreement, per-sample trust regions, token weights on a planted report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radflow_jax.data.sections import format_target, parse_sections
from radflow_jax.data.synthetic import generate_case
from radflow_jax.data.tokenizer import normalize_report, train_tokenizer
from radflow_jax.schema import LABEL_BLANK, get_schema
from radflow_jax.rl.capo import (
    capo_metrics,
    critical_cases,
    critical_index,
    group_disagreement,
    per_sample_trust_region,
    sentence_token_weights,
    token_char_offsets,
)
from radflow_jax.rl.grpo import grpo_loss

CXR, CAROTID = get_schema("cxr"), get_schema("carotid")
PLANTED = (
    "<findings> heart size is normal. small right pneumothorax. "
    "<impression> small right pneumothorax."
)
B = LABEL_BLANK


def labels(schema, **values):
    """One label row in schema order; keyword names use _ for spaces (blank elsewhere)."""
    row = np.full(len(schema.observations), B, np.int8)
    for name, v in values.items():
        row[schema.index(name.replace("_", " ").replace("ge70", ">=70%"))] = v
    return row


@pytest.fixture(scope="module")
def reports():
    texts = [PLANTED, "<findings> 245 cm/s. no pneumothorax.<impression> 1. normal. 2. >= 70%."]
    for modality in ("cxr", "carotid"):
        for i in range(30):
            texts.append(format_target(parse_sections(generate_case(modality, 7, i, 32).report)))
    return texts


@pytest.fixture(scope="module", params=["word", "bpe"])
def tokenizer(request, reports):
    return train_tokenizer(reports, kind=request.param, vocab_size=700, min_frequency=1)


# --------------------------------------------------------------------------- critical-aware update


def test_critical_cases_need_a_positive_critical_reference():
    ref = np.stack([labels(CXR, Pneumothorax=1), labels(CXR, Pneumothorax=0),
                    labels(CXR, Pneumothorax=-1), labels(CXR, Edema=1)])
    assert critical_index(CXR) == (CXR.index("Pneumothorax"),)
    assert np.asarray(critical_cases(ref, critical_index(CXR))).tolist() == [True, False, False, False]
    carotid = np.stack([labels(CAROTID, Left_Occlusion=1), labels(CAROTID, Right_Plaque=1)])
    assert len(critical_index(CAROTID)) == 6
    assert np.asarray(critical_cases(carotid, critical_index(CAROTID))).tolist() == [True, False]


def test_group_disagreement_by_hand():
    idx = critical_index(CXR)
    ref = np.stack([labels(CXR, Pneumothorax=1), labels(CXR, Pneumothorax=0)])
    gen = np.stack([
        labels(CXR, Pneumothorax=1), labels(CXR, Pneumothorax=1),  # agree
        labels(CXR, Pneumothorax=-1), labels(CXR),                 # hedged / missed: disagree
        labels(CXR, Pneumothorax=0), labels(CXR, Pneumothorax=1),  # agree / invented: disagree
        labels(CXR, Pneumothorax=-1), labels(CXR, Edema=1),        # not positive: agree
    ])  # fmt: skip
    np.testing.assert_array_equal(np.asarray(group_disagreement(gen, ref, idx, 4)), [0.5, 0.25])
    # Several critical observations: any mismatch makes the completion disagree.
    idx = critical_index(CAROTID)
    ref = np.stack([labels(CAROTID, Right_Stenosis_ge70=1)])
    gen = np.stack([labels(CAROTID, Right_Stenosis_ge70=1),
                    labels(CAROTID, Right_Stenosis_ge70=1, Left_Occlusion=1)])
    np.testing.assert_array_equal(np.asarray(group_disagreement(gen, ref, idx, 2)), [0.5])
    with pytest.raises(ValueError, match="gen_labels"):
        group_disagreement(gen, ref, idx, 3)


KW = dict(epsilon_low=0.2, epsilon_high=0.28, beta=0.04, kappa=0.5, gamma=2.0, group_size=3)


def test_trust_region_changes_only_critical_groups():
    critical, d = jnp.array([True, False, True]), jnp.array([0.5, 1.0, 0.0])
    on = per_sample_trust_region(critical, d, enabled=True, **KW)
    eps_low, eps_high, beta = (np.asarray(x) for x in on)
    np.testing.assert_allclose(eps_low, np.repeat([0.1, 0.2, 0.1], 3), rtol=1e-6)
    np.testing.assert_allclose(eps_high, np.repeat([0.14, 0.28, 0.14], 3), rtol=1e-6)
    np.testing.assert_allclose(beta, np.repeat([0.04 * 2.0, 0.04, 0.04], 3), rtol=1e-6)
    off = [np.asarray(x) for x in per_sample_trust_region(critical, d, enabled=False, **KW)]
    for got, want in zip(off, (0.2, 0.28, 0.04)):
        np.testing.assert_allclose(got, np.full(9, want), rtol=1e-6)
    with pytest.raises(ValueError, match="kappa"):
        per_sample_trust_region(critical, d, enabled=True, **{**KW, "kappa": 1.5})
    with pytest.raises(ValueError, match="gamma"):
        per_sample_trust_region(critical, d, enabled=True, **{**KW, "gamma": -1.0})


def test_capo_changes_only_the_gradients_of_critical_samples():
    """Through grpo_loss: rows of the non-critical group get the same gradient with CAPO on or off."""
    rng = np.random.default_rng(0)
    critical, d = jnp.array([True, False]), jnp.array([1.0, 0.0])
    old = jnp.asarray(rng.normal(-2, 0.3, (6, 5)).astype(np.float32))
    logp = old + jnp.asarray(np.float32([0.15, -0.15, 0.3, -0.3, 0.05]))  # inside 0.2, outside 0.1
    ref = old + 0.2
    adv, mask = jnp.array([1.0, -1.0, 0.5, 1.0, -1.0, 0.5]), jnp.ones((6, 5), bool)

    def grad(enabled):
        eps_low, eps_high, beta = per_sample_trust_region(critical, d, enabled=enabled, **KW)
        loss_fn = lambda lp: grpo_loss(lp, old, ref, adv, mask, epsilon_low=eps_low,  # noqa: E731
                                       epsilon_high=eps_high, beta=beta, loss_type="grpo",
                                       max_completion_length=5)[0]
        return np.asarray(jax.grad(loss_fn)(logp))

    on, off = grad(True), grad(False)
    np.testing.assert_array_equal(on[3:], off[3:])
    assert np.all(np.abs(on[:3] - off[:3]).max(axis=1) > 1e-4)


def test_capo_metrics_by_hand():
    critical, d = jnp.array([True, False, True, False]), jnp.array([0.5, 1.0, 0.0, 0.25])
    eps_low, eps_high, beta = per_sample_trust_region(critical, d, enabled=True, **KW)
    m = {k: float(v) for k, v in capo_metrics(critical, d, eps_low, eps_high, beta, 3).items()}
    assert m["capo/critical_cases"] == 2 and m["capo/critical_fraction"] == 0.5
    np.testing.assert_allclose(m["capo/critical_disagreement"], 0.25, rtol=1e-6)
    np.testing.assert_allclose(m["capo/critical_epsilon_low"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(m["capo/critical_epsilon_high"], 0.14, rtol=1e-6)
    np.testing.assert_allclose(m["capo/critical_beta"], (0.08 + 0.04) / 2, rtol=1e-6)
    none = capo_metrics(jnp.zeros(2, bool), jnp.ones(2), *(jnp.ones(6),) * 3, 3)
    assert {k: float(v) for k, v in none.items()} == {k: 0.0 for k in m}


# ------------------------------------------------------------------------------- local sensitivity


def test_token_offsets_rebuild_the_decoded_text(tokenizer, reports):
    """Invariant on every report and on random id soup (specials, pad, bos, eos included)."""
    rng = np.random.default_rng(1)
    sequences = [tokenizer.encode(t) for t in reports]
    sequences += [rng.integers(0, tokenizer.vocab_size, rng.integers(1, 40)).tolist() for _ in range(200)]
    sequences.append([tokenizer.bos_id, *tokenizer.encode(PLANTED), tokenizer.eos_id, 9, 9, 0, 0])
    for text, ids in zip(reports + [None] * 201, sequences):
        decoded = tokenizer.decode(ids)
        if text is not None:
            assert decoded == normalize_report(text)
        offsets = token_char_offsets(ids, tokenizer)
        assert len(offsets) == len(ids)
        assert offsets[0][0] == 0 and offsets[-1][1] == len(decoded)
        assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))  # contiguous, in order
        after_eos = False
        for i, (start, end) in zip(ids, offsets):
            after_eos |= i == tokenizer.eos_id
            if after_eos or i in (tokenizer.pad_id, tokenizer.bos_id):
                assert start == end
            else:
                assert decoded[start:end].lstrip(" ") == tokenizer.id_to_token(i).lstrip("\u2581")
    digits = tokenizer.encode("flow 245 cm/s.")
    spans = token_char_offsets(digits, tokenizer)
    assert [tokenizer.decode(digits)[a:b] for a, b in spans] == ["flow", " 2", "4", "5", " cm", "/", "s", "."]


def _planted_batch(tokenizer):
    ids = tokenizer.encode(PLANTED) + [tokenizer.eos_id]
    other = tokenizer.encode("<findings> lungs are clear. <impression> no pneumothorax.") + [tokenizer.eos_id]
    t = len(ids) + 3
    batch = np.full((3, t), tokenizer.pad_id, np.int32)
    batch[0, : len(ids)], batch[1, : len(other)] = ids, other
    mask = np.zeros((3, t), bool)
    mask[0, : len(ids)], mask[1, : len(other)] = True, True  # row 2: no real tokens
    return batch, mask


def test_weights_land_on_the_planted_sentences(tokenizer):
    alpha, alpha_crit = 0.5, 2.0
    batch, mask = _planted_batch(tokenizer)
    w = sentence_token_weights(batch, mask, tokenizer, CXR, alpha=alpha, alpha_crit=alpha_crit, enabled=True)
    assert w.dtype == np.float32 and w.shape == batch.shape
    tokens = [tokenizer.id_to_token(i) for i in batch[0][mask[0]]]
    # Raw levels by hand: the heart sentence states Cardiomegaly (negative), both pneumothorax
    # sentences a critical finding; tags and eos are boilerplate.
    text = normalize_report(PLANTED)
    assert text == (
        "<findings> heart size is normal. small right pneumothorax.<impression> small right pneumothorax."
    )
    heart = ["\u2581heart", "\u2581size", "\u2581is", "\u2581normal", "."]
    ptx = ["\u2581small", "\u2581right", "\u2581pneumothorax", "."]
    assert tokens == ["<findings>", *heart, *ptx, "<impression>", *ptx, "<eos>"]
    crit = [1 + alpha_crit] * 4
    raw = np.array([1] + [1 + alpha] * 5 + crit + [1] + crit + [1], np.float32)
    np.testing.assert_allclose(w[0][mask[0]], raw * len(raw) / raw.sum(), rtol=1e-6)
    np.testing.assert_allclose(w[0][mask[0]].mean(), 1.0, rtol=1e-6)
    # Row 1: "lungs are clear" (non-critical) and "no pneumothorax" (a negated critical statement).
    np.testing.assert_allclose(w[1][mask[1]].mean(), 1.0, rtol=1e-6)
    row1 = dict(zip([tokenizer.id_to_token(i) for i in batch[1][mask[1]]], w[1][mask[1]]))
    np.testing.assert_allclose(row1["\u2581no"] / row1["<impression>"], 1 + alpha_crit, rtol=1e-6)
    np.testing.assert_allclose(row1["\u2581clear"] / row1["<impression>"], 1 + alpha, rtol=1e-6)
    assert np.all(w[~mask] == 1.0)  # outside the mask (and the empty row): untouched
    off = sentence_token_weights(batch, mask, tokenizer, CXR, alpha=alpha, alpha_crit=alpha_crit,
                                 enabled=False)
    np.testing.assert_array_equal(off, np.ones(batch.shape, np.float32))


def test_weights_on_every_report_have_mean_one_and_favour_statements(tokenizer, reports):
    """Synthetic reports (30 per modality, after the two planted ones) under their own schema."""
    for schema, texts in ((CXR, reports[2:32]), (CAROTID, reports[32:])):
        ids = [tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]
        batch = np.full((len(ids), max(map(len, ids))), tokenizer.pad_id, np.int32)
        for row, x in enumerate(ids):
            batch[row, : len(x)] = x
        mask = batch != tokenizer.pad_id
        w = sentence_token_weights(batch, mask, tokenizer, schema, alpha=1.0, alpha_crit=3.0, enabled=True)
        np.testing.assert_allclose((w * mask).sum(1) / mask.sum(1), 1.0, rtol=1e-5)
        for row, text in enumerate(texts):
            # Every report states an observation: those tokens weigh at least 1 + alpha times a tag.
            tag = w[row][batch[row] == tokenizer.findings_id]
            assert tag.size == 1 and w[row][mask[row]].max() >= 2 * tag[0] * (1 - 1e-6), text


def test_weights_reject_bad_arguments(tokenizer):
    batch, mask = _planted_batch(tokenizer)
    with pytest.raises(ValueError, match="alpha"):
        sentence_token_weights(batch, mask, tokenizer, CXR, alpha=-1.0, alpha_crit=1.0, enabled=True)
    with pytest.raises(ValueError, match="ids_batch and mask"):
        sentence_token_weights(batch, mask[:, 1:], tokenizer, CXR, alpha=1.0, alpha_crit=1.0, enabled=True)
