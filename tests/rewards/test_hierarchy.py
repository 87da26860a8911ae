"""Hierarchical reward: hand-computed terms, planted edits, flat mode, jit, host labels, timing.

Reports are written by hand, tokenised by a real word-level tokenizer trained on them, decoded and
labeled by the real labeler, as in the RL step. Every batch is padded to one shape so each reward
mode compiles once.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radflow_jax.data.sections import format_target, parse_sections, parse_target
from radflow_jax.data.synthetic import generate_case
from radflow_jax.data.tokenizer import train_tokenizer
from radflow_jax.rewards import nlg
from radflow_jax.rewards.hierarchy import (
    RewardInputs,
    corpus_f1_credit,
    default_reward_config,
    hierarchical_reward,
    host_labels,
    label_f1,
    repeated_4gram_fraction,
    reward_config_from,
    section_masks,
)
from radflow_jax.rewards.labeler import label_report
from radflow_jax.schema import LABEL_BLANK, get_schema

CXR = get_schema("cxr")
N, T = 16, 160  # every test batch is padded to this shape

REF_F = ("There is a moderate right pneumothorax. Small left pleural effusion. "
         "The heart size is normal. The lungs are otherwise clear.")
REF_I = "Moderate right pneumothorax. Small left pleural effusion."
REF = f"<findings> {REF_F} <impression> {REF_I}"
REF2 = "<findings> The heart is enlarged. Small right pneumothorax. <impression> Cardiomegaly. Small right pneumothorax."
NORMAL = ("<findings> The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax. "
          "<impression> No acute cardiopulmonary process.")
NORMAL2 = ("<findings> Normal heart size. Clear lungs without focal consolidation. No pneumothorax. "
           "<impression> No acute cardiopulmonary abnormality.")

CASES = {  # name: (generated, reference)
    "copy": (REF, REF),
    "drop_critical": (f"<findings> {REF_F} <impression> Small left pleural effusion.", REF),
    "contradict": (f"<findings> {REF_F} <impression> Moderate right pneumothorax. No pleural effusion.", REF),
    "repeat": ("<findings> " + "Small left pleural effusion. " * 10 + f"<impression> {REF_I}", REF),
    "normal": (NORMAL2, NORMAL),
    "no_impression": (f"<findings> {REF_F} {REF_I}", REF),
    "moved_tag": ("<findings> There is a moderate right pneumothorax. Small left pleural effusion. "
                  "The heart size is normal. <impression> The lungs are otherwise clear. " + REF_I, REF),
    "no_tags": (f"{REF_F} {REF_I}", REF),
    "miss_critical": ("<findings> The heart is enlarged. No pneumothorax. <impression> Cardiomegaly.", REF2),
    "keep_critical": ("<findings> Heart size is normal. Small right pneumothorax. "
                      "<impression> Small right pneumothorax.", REF2),
    "silent_critical": ("<findings> The heart is enlarged. <impression> Cardiomegaly.", REF2),
    # R2Gen-style findings-only data: the target ends with an empty Impression
    "findings_only": (f"<findings> {REF_F} <impression>", f"<findings> {REF_F} <impression>"),
    "findings_only_missing": ("<findings> <impression>", f"<findings> {REF_F} <impression>"),
}
NAMES = list(CASES)


@pytest.fixture(scope="module")
def tok():
    texts = [t for pair in CASES.values() for t in pair]
    return train_tokenizer(texts, vocab_size=400, min_frequency=1)


def _pad(rows: list[list[int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(rows), size), np.int32)
    mask = np.zeros((len(rows), size), bool)
    for n, row in enumerate(rows):
        assert len(row) <= size, f"test report longer than {size} tokens"
        ids[n, : len(row)], mask[n, : len(row)] = row, True
    return ids, mask


def _inputs(tok, pairs: list[tuple[str, str]], size: int = T, schema=CXR) -> RewardInputs:
    """Token ids (+eos) and host labels of the *decoded* ids, as the RL step computes them."""
    gen_ids, gen_mask = _pad([tok.encode(g) + [tok.eos_id] for g, _ in pairs], size)
    ref_ids, ref_mask = _pad([tok.encode(r) + [tok.eos_id] for _, r in pairs], size)
    gen_labels = host_labels([tok.decode(row) for row in gen_ids], schema)
    ref_labels = host_labels([tok.decode(row) for row in ref_ids], schema)
    return RewardInputs(*map(jnp.asarray, (gen_ids, gen_mask, ref_ids, ref_mask, gen_labels, ref_labels)))


_REWARD = jax.jit(hierarchical_reward)


def _config(**overrides):
    c = default_reward_config()
    c.update(overrides)
    return reward_config_from(c, CXR)


@pytest.fixture(scope="module")
def batch(tok):
    pairs = [CASES[n] for n in NAMES]
    return _inputs(tok, pairs + [pairs[0]] * (N - len(pairs)))


def _score(batch, cfg, df_table=None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    total, terms = _REWARD(batch, cfg, df_table)
    terms = {k: np.asarray(v) for k, v in terms.items()}
    totals = {n: float(total[i]) for i, n in enumerate(NAMES)}
    return totals, {n: {k: float(v[i]) for k, v in terms.items()} for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def hier(batch):
    """Per-report F1 correctness, so each case's terms depend on that case alone."""
    return _score(batch, _config(label_credit="report_f1"))


def test_every_term_lies_in_unit_interval(hier, batch, tok):
    totals, terms = hier
    for name, t in terms.items():
        assert 0.0 <= totals[name] <= 1.0, name
        for key, value in t.items():
            if not key.startswith("consistency_"):  # those are counts
                assert 0.0 <= value <= 1.0 + 1e-6, (name, key, value)
    rng = np.random.default_rng(0)  # garbage: random ids, tags anywhere, no eos
    garbage = batch.replace(gen_tokens=jnp.asarray(rng.integers(0, tok.vocab_size, (N, T)), jnp.int32),
                            gen_mask=jnp.ones((N, T), bool))
    total, out = _REWARD(garbage, _config())
    assert bool(jnp.all((total >= 0) & (total <= 1)))
    for key, value in out.items():
        if not key.startswith("consistency_"):
            assert bool(jnp.all((value >= 0) & (value <= 1 + 1e-6))), key


def test_perfect_copy_scores_one(hier):
    totals, terms = hier
    t = terms["copy"]
    assert t["correctness"] == 1.0 and t["impression_labels"] == 1.0 and t["consistency"] == 1.0
    assert t["bleu4"] == pytest.approx(1.0, abs=1e-6) and t["rouge_l"] == pytest.approx(1.0, abs=1e-6)
    assert t["fluency"] == pytest.approx(1.0, abs=1e-6) and t["format_gate"] == 1.0
    assert totals["copy"] == pytest.approx(1.0, abs=1e-6)


def test_hand_computed_values(hier):
    totals, terms = hier
    # Reference {Cardiomegaly, Pneumothorax (critical, weight 2)}.
    # Missing the critical one: tp = 1, fn = 2 -> 2/(2+2); missing the other: tp = 2, fn = 1 -> 4/5.
    assert terms["miss_critical"]["correctness"] == pytest.approx(0.5)
    assert terms["keep_critical"]["correctness"] == pytest.approx(0.8)
    assert terms["miss_critical"]["impression_labels"] == pytest.approx(0.5)
    assert terms["keep_critical"]["impression_labels"] == pytest.approx(0.8)
    # Both normal, worded differently: no positive on either side -> F1 = 1 (documented choice).
    assert terms["normal"]["correctness"] == 1.0 and terms["normal"]["impression_labels"] == 1.0
    # Dropping the critical finding from the Impression: consistency 1/(1+2); Impression labels
    # {Effusion} vs {Pneumothorax (2), Effusion}: 2/(2+2).
    t = terms["drop_critical"]
    assert t["consistency"] == pytest.approx(1 / 3) and t["consistency_omitted_critical"] == 1
    assert t["impression_labels"] == pytest.approx(0.5)
    assert t["impression"] == pytest.approx(0.5 * 0.5 + 0.5 * t["impression_rouge_l"])
    assert t["correctness"] == 1.0  # the whole report still states both findings
    expected = (1 * t["fluency"] + 2 * t["correctness"] + 1 * t["consistency"] + 1 * t["impression"]) / 5
    assert totals["drop_critical"] == pytest.approx(expected, abs=1e-6)


def test_planted_edits_move_terms_the_right_way(hier):
    totals, terms = hier
    copy = terms["copy"]
    drop, contra, rep = terms["drop_critical"], terms["contradict"], terms["repeat"]
    assert drop["consistency"] < copy["consistency"] and drop["impression"] < copy["impression"]
    assert contra["consistency"] == pytest.approx(0.5) and contra["consistency_contradictions"] == 1
    assert contra["consistent"] == 0.0 and copy["consistent"] == 1.0
    assert rep["gate_repetition"] == 0.0 and rep["format_gate"] == 0.0 and rep["fluency"] == 0.0
    assert rep["nlg"] > 0.1  # the n-grams alone would have paid
    missing = terms["no_impression"]
    assert missing["gate_sections"] == 0.0 and missing["fluency"] == 0.0 and missing["consistency"] == 0.0
    for name in ("drop_critical", "contradict", "repeat", "no_impression"):
        assert totals[name] < totals["copy"], name
    assert terms["findings_only"]["gate_sections"] == 1.0 and totals["findings_only"] == pytest.approx(1.0)
    assert terms["findings_only_missing"]["gate_sections"] == 0.0


def test_consistency_is_not_paid_for_leaving_a_critical_finding_out(batch, hier):
    """Saying nothing critical is perfectly self-consistent; the critical gate takes that credit
    away (the carotid reward hack), and only where the reference's critical finding is missed."""
    _, terms = hier
    silent = terms["silent_critical"]
    assert silent["consistent"] == 1.0 and silent["gate_critical"] == 0.0 and silent["consistency"] == 0.0
    assert terms["keep_critical"]["gate_critical"] == 1.0 and terms["normal"]["gate_critical"] == 1.0
    assert terms["keep_critical"]["consistency"] > 0.0
    _, ungated = _score(batch, _config(gate_consistency_critical=False))
    assert ungated["silent_critical"]["consistency"] == 1.0
    for name in NAMES:
        if terms[name]["gate_critical"] == 1.0:
            assert ungated[name]["consistency"] == terms[name]["consistency"], name


def test_flat_mode_ignores_sections(batch, hier):
    flat_totals, flat = _score(batch, _config(mode="flat"))
    for name in ("moved_tag", "no_tags", "no_impression"):
        assert flat_totals[name] == pytest.approx(flat_totals["copy"], abs=1e-6), name
        assert flat[name]["format_gate"] == 1.0
    assert flat_totals["copy"] == pytest.approx(1.0, abs=1e-6)
    hier_totals, _ = hier
    assert hier_totals["moved_tag"] < hier_totals["copy"] - 0.01
    # flat = (w_flu * fluency + w_cor * correctness) / (w_flu + w_cor); consistency is not in it
    t = flat["contradict"]
    assert flat_totals["contradict"] == pytest.approx((t["fluency"] + 2 * t["correctness"]) / 3, abs=1e-6)


def test_jit_equals_eager_and_cider_option(batch, hier, tok):
    cfg = _config(label_credit="report_f1")
    total, terms = hierarchical_reward(batch, cfg)
    np.testing.assert_allclose(np.asarray(total), [hier[0][n] for n in NAMES] + [hier[0]["copy"]] * (N - len(NAMES)),
                               rtol=1e-6, atol=1e-7)
    df = nlg.build_df([tok.encode(r) for _, r in CASES.values()])
    with_cider = _config(nlg={"bleu4": 0.25, "rouge_l": 0.25, "cider_d": 0.5}, label_credit="report_f1")
    with pytest.raises(ValueError, match="df_table"):
        hierarchical_reward(batch, with_cider)
    _, terms = hierarchical_reward(batch, with_cider, df)  # eager: one compile less
    cider = np.asarray(terms["cider_d"])
    assert cider[NAMES.index("copy")] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < cider[NAMES.index("contradict")] < 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        _config(mode="hierarchy")
    with pytest.raises(ValueError, match="uncertain_as"):
        _config(uncertain_as="maybe")
    with pytest.raises(ValueError, match="length_band"):
        _config(length_band=(1.5, 2.0))


# ------------------------------------------------------------------------------------ pieces


def test_label_f1_uncertain_modes():
    k = len(CXR.observations)
    gen = np.full((1, k), LABEL_BLANK, np.int8)
    ref = gen.copy()
    gen[0, CXR.index("Edema")] = -1
    ref[0, CXR.index("Edema")] = 1
    ref[0, CXR.index("Cardiomegaly")] = 1
    w = jnp.ones(k)
    assert float(label_f1(gen, ref, w, "negative")[0]) == pytest.approx(0.0)
    assert float(label_f1(gen, ref, w, "positive")[0]) == pytest.approx(2 / 3)
    # half: tp = 0.5, fn = 0.5 + 1 -> 1 / (1 + 1.5)
    assert float(label_f1(gen, ref, w, "half")[0]) == pytest.approx(0.4)
    assert float(label_f1(gen, gen, w, "half")[0]) == 1.0


def _brute_force_credit(gen, ref, w, uncertain_as):
    """F + N·(F − F without report i), from scratch with numpy, one report left out at a time."""
    soft = {"negative": 0.0, "positive": 1.0, "half": 0.5}[uncertain_as]
    degree = lambda x: np.where(x == 1, 1.0, np.where(x == -1, soft, 0.0))  # noqa: E731
    g, r = degree(gen), degree(ref)
    tp, fp, fn = (w * np.minimum(g, r)).sum(1), (w * (g - np.minimum(g, r))).sum(1), (w * (r - np.minimum(g, r))).sum(1)

    def f1(keep):
        d = 2 * tp[keep].sum() + fp[keep].sum() + fn[keep].sum()
        return 2 * tp[keep].sum() / d if d > 0 else 1.0

    n, every = len(gen), np.ones(len(gen), bool)
    return np.array([np.clip(f1(every) + n * (f1(every) - f1(np.arange(n) != i)), 0, 1) for i in range(n)])


@pytest.mark.parametrize("uncertain_as", ["negative", "positive", "half"])
def test_corpus_f1_credit_equals_leave_one_out(uncertain_as):
    rng = np.random.default_rng(1)
    k = len(CXR.observations)
    gen = rng.choice([1, 0, -1, LABEL_BLANK], size=(12, k), p=[0.15, 0.1, 0.05, 0.7]).astype(np.int8)
    ref = rng.choice([1, 0, -1, LABEL_BLANK], size=(12, k), p=[0.15, 0.1, 0.05, 0.7]).astype(np.int8)
    w = np.where(np.isin(np.arange(k), [CXR.index(c) for c in CXR.critical]), 2.0, 1.0)
    got = np.asarray(corpus_f1_credit(gen, ref, jnp.asarray(w), uncertain_as))
    np.testing.assert_allclose(got, _brute_force_credit(gen, ref, w, uncertain_as), atol=1e-5)


def test_corpus_f1_credit_prices_errors_as_micro_f1_does():
    """Per-report F1 charges a false finding on a normal study as much as a missed finding (both
    0); corpus credit, like corpus micro-F1, charges the false finding less, and credits a normal
    study called normal (a No Finding true positive) like a hit. Columns: No Finding, Cardiomegaly."""
    k = len(CXR.observations)
    nf, cm = CXR.index("No Finding"), CXR.index("Cardiomegaly")

    def labels(*positives):
        row = np.full(k, LABEL_BLANK, np.int8)
        row[list(positives)] = 1
        return row

    normal, abnormal = labels(nf), labels(cm)
    cases = {"normal_ok": (normal, normal), "normal_fp": (labels(nf, cm), normal),
             "hit": (abnormal, abnormal), "miss": (normal, abnormal)}
    gen = np.stack([g for g, _ in cases.values()] * 4)
    ref = np.stack([r for _, r in cases.values()] * 4)
    w = jnp.ones(k)
    credit = dict(zip(cases, np.asarray(corpus_f1_credit(gen, ref, w, "negative"))))
    per_report = dict(zip(cases, np.asarray(label_f1(gen, ref, w.at[nf].set(0.0), "negative"))))
    assert per_report["normal_fp"] == per_report["miss"] == 0.0
    assert credit["hit"] == pytest.approx(credit["normal_ok"])
    assert credit["normal_ok"] > credit["normal_fp"] > credit["miss"]


def test_hierarchical_reward_uses_the_configured_correctness(batch):
    _, corpus = _score(batch, _config(label_credit="corpus_f1"))
    total, terms = _REWARD(batch, _config(label_credit="corpus_f1"))
    every = jnp.where(jnp.asarray(_config().critical), 2.0, 1.0)
    want = corpus_f1_credit(batch.gen_labels[:, 0], batch.ref_labels[:, 0], every, "negative")
    np.testing.assert_allclose(np.asarray(terms["correctness"]), np.asarray(want), atol=1e-6)
    with pytest.raises(ValueError, match="label_credit"):
        _config(label_credit="accuracy")


def test_repeated_4gram_fraction_exact():
    ids = jnp.asarray([[1, 2, 3, 4, 1, 2, 3, 4, 0], [5, 6, 7, 8, 9, 10, 0, 0, 0], [5, 5, 5, 5, 5, 5, 5, 0, 0]])
    mask = ids > 0
    # row 0: 1234 2341 3412 4123 1234 -> 1 repeat of 5; row 2: 5555 x4 -> 3 of 4
    np.testing.assert_allclose(np.asarray(repeated_4gram_fraction(ids, mask)), [0.2, 0.0, 0.75])


def test_section_masks_agree_with_parse_target(tok):
    texts = ["<findings> The heart is enlarged. <impression> Cardiomegaly.",
             "The lungs <impression> Pneumothorax. <findings> Small effusion. <impression> No acute process.",
             "<impression> Small right pneumothorax.", "Normal heart size. Clear lungs.",
             "The heart <findings> Lungs are clear. <impression> Normal."]
    inputs = _inputs(tok, [(t, t) for t in texts], size=32)
    masks = section_masks(inputs.gen_tokens, inputs.gen_mask, _config())
    ids = np.asarray(inputs.gen_tokens)
    for n, text in enumerate(texts):
        parsed = parse_target(tok.decode(ids[n]))
        assert tok.decode(ids[n][np.asarray(masks.findings[n])]) == parsed.findings, text
        assert tok.decode(ids[n][np.asarray(masks.impression[n])]) == parsed.impression, text
    assert np.asarray(masks.tagged).tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("modality", ["cxr", "carotid"])
def test_host_report_labels_equal_labeling_the_whole_report(modality):
    schema = get_schema(modality)
    reports = [generate_case(modality, 7, i, 32).report for i in range(60)]
    labels = host_labels([format_target(parse_sections(r)) for r in reports], schema)
    for n, report in enumerate(reports):
        values = label_report(report, schema)
        for row, section in enumerate(("report", "findings", "impression")):
            expected = [LABEL_BLANK if values[section].values[o] is None else values[section].values[o]
                        for o in schema.observations]
            assert labels[n, row].tolist() == expected, (report, section)


def test_timing_1024_reports():
    """Host labeling and device reward time for 1,024 synthetic reports (printed, not asserted)."""
    size, count = 192, 1024
    targets = [format_target(parse_sections(generate_case("cxr", 11, i, 32).report)) for i in range(count)]
    tok = train_tokenizer(targets, vocab_size=2000)
    gen_texts = [tok.decode(tok.encode(t)) for t in targets]
    refs = gen_texts[1:] + gen_texts[:1]
    start = time.perf_counter()
    gen_labels = host_labels(gen_texts, CXR)
    host_s = time.perf_counter() - start
    ref_labels = host_labels(refs, CXR)
    gen_ids, gen_mask = _pad([tok.encode(t) + [tok.eos_id] for t in gen_texts], size)
    ref_ids, ref_mask = _pad([tok.encode(t) + [tok.eos_id] for t in refs], size)
    inputs = RewardInputs(*map(jnp.asarray, (gen_ids, gen_mask, ref_ids, ref_mask, gen_labels, ref_labels)))
    cfg = _config()
    jax.block_until_ready(_REWARD(inputs, cfg))
    start = time.perf_counter()
    total, _ = jax.block_until_ready(_REWARD(inputs, cfg))
    device_s = time.perf_counter() - start
    print(f"\n1024 reports: host labeling {host_s:.2f} s, device reward {device_s:.3f} s "
          f"({jax.devices()[0].platform})")
    assert total.shape == (count,)
