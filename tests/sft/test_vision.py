"""Vision warm-up: labels from reports, AUC, the stage learning, and SFT with a frozen warm tower."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx

from radflow_jax import config as config_lib
from radflow_jax import runtime
from radflow_jax.data import prepare
from radflow_jax.run_log import read_metrics
from radflow_jax.sft import trainer, vision

flags.FLAGS(["pytest"])


def _config(**vision_fields):
    config = config_lib.load_config_file("configs/cxr.py:quick")
    config.data.num_train, config.data.num_val, config.data.num_test = 48, 24, 4
    config.data.max_target_len = 160
    config.sft.length_bucket = 0
    config.vision.update(vision_fields)
    return config_lib.validate(config)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare.prepare_data(_config(), str(tmp_path_factory.mktemp("vision_data")))


def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    positive = rng.random(40) < 0.3
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0
             for p, n in itertools.product(scores[positive], scores[~positive])]
    assert vision.roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
    assert vision.roc_auc(np.arange(4.0), np.array([False, False, True, True])) == 1.0
    assert np.isnan(vision.roc_auc(np.arange(3.0), np.zeros(3, bool)))


def test_tune_thresholds_finds_the_separating_cut():
    # Observation 0 is separable between 0.1 and 0.3 (the lowest cut that separates wins);
    # observation 1's positives sit below 0.5, so the default threshold misses all of them.
    probs = np.array([[0.3, 0.4], [0.3, 0.45], [0.1, 0.2], [0.1, 0.05], [0.6, 0.42]])
    labels = np.array([[1, 1], [1, 1], [0, 0], [0, 0], [1, 1]])
    thresholds = vision.tune_thresholds(probs, labels)
    assert thresholds[0] == pytest.approx(0.1) and thresholds[1] == pytest.approx(0.2)
    assert ((probs > thresholds) == (labels == 1)).all()


def test_tune_thresholds_never_does_worse_than_one_half():
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(200, 4)) < [0.05, 0.1, 0.3, 0.5]).astype(np.int8)
    labels[rng.uniform(size=labels.shape) < 0.05] = -1  # uncertain: never a positive
    probs = np.clip(0.3 * (labels == 1) + rng.uniform(0, 0.6, size=labels.shape), 0, 1)

    def micro(pred):
        tp = (pred & (labels == 1)).sum()
        return 2 * tp / (2 * tp + (pred & (labels != 1)).sum() + (~pred & (labels == 1)).sum())

    tuned = vision.tune_thresholds(probs, labels)
    assert micro(probs > tuned) >= micro(probs > 0.5)
    assert micro(probs > vision.tune_thresholds(probs, labels, grid=(0.95,))) >= micro(probs > 0.5)
    # each coordinate is a best response: no single grid move improves micro-F1
    for k in range(4):
        for t in np.linspace(0.05, 0.95, 19):
            moved = tuned.copy()
            moved[k] = t
            assert micro(probs > moved) <= micro(probs > tuned) + 1e-12


def test_classifier_scores_cover_the_split_and_refuse_unlabelled_records(data):
    k = len(data.schema.observations)
    scores, labels = vision.classifier_scores(
        lambda image, view_mask: jnp.zeros((image.shape[0], k)), data, _config(), "val")
    assert scores.shape == labels.shape == (len(data.splits["val"]), k)
    unlabelled = dataclasses.replace(
        data, splits={**data.splits, "val": [dataclasses.replace(r, labels=None) for r in data.splits["val"]]})
    with pytest.raises(ValueError, match="'val' has records without labels"):
        vision.classifier_scores(lambda image, view_mask: None, unlabelled, _config(), "val")


def test_report_labels_are_the_labelers_reading(data):
    records = data.splits["train"][:20]
    stripped = [dataclasses.replace(r, labels=None) for r in records]
    relabeled = vision.report_labels(stripped, data.schema, "reports")
    # the rule labeler reads synthetic reports exactly: it recovers the generator's positive and
    # uncertain labels (the generator also stores 0 for findings the report never mentions)
    def stated(labels):
        return [(k, v) for k, v in enumerate(labels) if v in (1, -1)]

    assert [stated(r.labels) for r in relabeled] == [stated(r.labels) for r in records]
    assert any(1 in r.labels for r in relabeled)
    unlabeled = [dataclasses.replace(records[0], labels=None)]
    with pytest.raises(ValueError, match="annotation.json.*vision.labels='reports'"):
        vision.report_labels(unlabeled, data.schema, "dataset")
    blank = [records[1], dataclasses.replace(records[0], labels=(-2,) * len(records[0].labels))]
    with pytest.raises(ValueError, match="1 records have no labels"):
        vision.report_labels(blank, data.schema, "dataset")


def test_label_targets_ignore_uncertain():
    y, w = vision.label_targets(jnp.array([[1, 0, -1, -2]]))
    np.testing.assert_array_equal(y, [[1, 0, 0, 0]])
    np.testing.assert_array_equal(w, [[1, 1, 0, 1]])


def test_warm_up_learns_and_reports_auc(data, tmp_path):
    config = _config(num_steps=40, log_every=10, checkpoint_every=20, learning_rate=3e-3, warmup_steps=5)
    vision.run_vision(config, str(tmp_path), data)
    rows = read_metrics(str(tmp_path), "vision")
    losses = [r["loss"] for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    assert 0.0 <= rows[-1]["val_mean_auc"] <= 1.0
    assert "val_auc/Cardiomegaly" in rows[-1]
    assert vision.frozen_modules(config, str(tmp_path)) == ("vision_tower",)
    assert vision.frozen_modules(config, str(tmp_path / "elsewhere")) == ()


def test_sft_starts_from_the_warm_tower_and_keeps_it_frozen(data, tmp_path):
    config = _config(num_steps=3, checkpoint_every=3)
    vision.run_vision(config, str(tmp_path), data)
    warm = vision.load_classifier(config, str(tmp_path), data)
    run, state = trainer.run_sft(config, str(tmp_path), data, warm_vision=warm, frozen=("vision_tower",))
    policy = run.train.policy(state)
    same = jax.tree.map(np.array_equal, nnx.state(policy.vision_tower), nnx.state(warm.vision_tower))
    assert all(jax.tree.leaves(same))
    fresh = trainer.SFTRun(config, data.tokenizer.vocab_size)
    fresh_tower = nnx.state(fresh.train.policy(fresh.train.init_state()).vision_tower)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, fresh_tower, nnx.state(warm.vision_tower))))
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         nnx.state(policy.multi_modal_projector), nnx.state(warm.multi_modal_projector))
    assert any(jax.tree.leaves(moved))


def test_frozen_modules_get_no_gradients_and_the_rest_unchanged(data):
    config = _config()
    run = trainer.SFTRun(config, data.tokenizer.vocab_size)
    model = run.train.policy(run.train.init_state())
    it = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=4))
    batch = {k: jnp.asarray(v) for k, v in next(it).items() if k in trainer.MODEL_KEYS}
    it.close()

    def loss(m):
        total, aux = trainer.token_nll(m, batch)
        return total, aux

    (_, _), full = runtime.value_and_grad_trainable(loss, model, ())
    (_, _), part = runtime.value_and_grad_trainable(loss, model, ("vision_tower",))
    assert "vision_tower" in full and "vision_tower" not in part
    for a, b in zip(jax.tree.leaves(full["language_model"]), jax.tree.leaves(part["language_model"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(np.any(leaf) for leaf in jax.tree.leaves(full["vision_tower"]))


def test_an_unfinished_warm_up_freezes_nothing(tmp_path):
    config = _config()
    (tmp_path / "checkpoints" / "vision").mkdir(parents=True)  # what a warm-up killed before its first save leaves
    assert vision.frozen_modules(config, str(tmp_path)) == ()
    (tmp_path / "checkpoints" / "vision" / "500").mkdir()
    assert vision.frozen_modules(config, str(tmp_path)) == ("vision_tower",)
    config = config_lib.validate(config_lib.load_config_file("configs/cxr.py:quick"))
    with config.unlocked():
        config.vision.freeze = False
    assert vision.frozen_modules(config, str(tmp_path)) == ()


def test_frozen_modules_have_no_optimizer_state_and_stay_bit_identical(data):
    """No Adam moments for a frozen tower (memory at scale), and steps never move it."""
    config = _config()
    batch_it = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=4))
    batch = next(batch_it)
    batch_it.close()
    free = trainer.SFTRun(config, data.tokenizer.vocab_size)
    frozen = trainer.SFTRun(config, data.tokenizer.vocab_size, frozen=("vision_tower",))

    def moment_paths(run):
        _, opt = nnx.merge(run.train.graphdef, run.train.abstract_state)
        return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(opt))}

    assert any("vision_tower" in p for p in moment_paths(free))
    assert not any("vision_tower" in p for p in moment_paths(frozen))
    state = frozen.train.init_state()
    before = jax.tree.map(np.asarray, nnx.state(frozen.train.policy(state).vision_tower))
    for _ in range(2):
        state, _ = frozen.step_fn(state, frozen.device_batch(batch))
    after = nnx.state(frozen.train.policy(state).vision_tower)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after)))
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), nnx.state(free.train.policy(free.train.init_state()).language_model),
                         nnx.state(frozen.train.policy(state).language_model))
    assert any(jax.tree.leaves(moved))
