"""LabelerNet: shapes, jit == eager, padded == unpadded, logical axes, and it fits hand-labeled text."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from radflow_jax.config import DEFAULT_RULES
from radflow_jax.data.tokenizer import train_tokenizer
from radflow_jax.models import labeler_net as ln
from radflow_jax.parallel import mesh as mesh_lib
from radflow_jax.rewards.labeler_train import train_step
from radflow_jax.schema import LABEL_BLANK, get_schema

CXR = get_schema("cxr")
K = len(CXR.observations)


def _model(size: str = "toy", vocab: int = 50, seed: int = 0) -> ln.LabelerNet:
    return ln.LabelerNet(ln.labeler_config(size, vocab, K), rngs=nnx.Rngs(seed))


def _tokens(rng, b: int, length: int, lengths) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.integers(7, 50, (b, length)).astype(np.int32)
    mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    return np.where(mask, tokens, 0), mask


def test_class_values_round_trip():
    values = np.array([1, 0, -1, LABEL_BLANK], np.int8)
    np.testing.assert_array_equal(ln.labels_to_classes(values), [0, 1, 2, 3])
    np.testing.assert_array_equal(ln.classes_to_labels(ln.labels_to_classes(values)), values)
    np.testing.assert_array_equal(ln.CLASS_VALUES, values)


def test_shapes_jit_and_empty_rows():
    model = _model()
    tokens, mask = _tokens(np.random.default_rng(0), 3, 12, [12, 5, 0])
    logits = model(tokens, mask)
    assert logits.shape == (3, K, ln.NUM_CLASSES) and logits.dtype == jnp.float32
    graphdef, params = nnx.split(model)
    jitted = jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, m))(params, tokens, mask)
    np.testing.assert_allclose(jitted, logits, atol=1e-5)
    labels = np.asarray(ln.predict_labels(model, tokens, mask))
    assert labels.dtype == np.int8 and labels.shape == (3, K)
    assert set(np.unique(labels)) <= {1, 0, -1, LABEL_BLANK}
    assert (labels[2] == LABEL_BLANK).all()  # no tokens: nothing mentioned


def test_padding_does_not_change_the_logits():
    model = _model("tiny")
    tokens, mask = _tokens(np.random.default_rng(1), 2, 9, [9, 6])
    padded_tokens = np.pad(tokens, ((0, 0), (0, 23)))
    padded_mask = np.pad(mask, ((0, 0), (0, 23)))
    np.testing.assert_allclose(model(padded_tokens, padded_mask), model(tokens, mask), atol=1e-5)
    alone = model(tokens[1:, :6], mask[1:, :6])  # the short row on its own, unpadded
    np.testing.assert_allclose(model(tokens, mask)[1:], alone, atol=1e-5)


def test_every_parameter_has_logical_axes_that_shard():
    model = _model("tiny")
    state = nnx.state(model, nnx.Param)
    for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var.get_value().ndim, jax.tree_util.keystr(path)
    mesh = mesh_lib.make_mesh({"data": -1})
    shardings = mesh_lib.state_shardings(nnx.state(model), mesh, DEFAULT_RULES)
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(nnx.state(model)))


def test_unknown_size_and_bad_heads_are_rejected():
    with pytest.raises(ValueError, match="unknown labeler size"):
        ln.labeler_config("huge", 10, K)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        ln.LabelerConfig(10, K, embed_dim=30, num_heads=4)


# Hand-labeled sentences: (text, {observation: value}); everything else is blank.
_HAND = [
    ("No pleural effusion.", {"Pleural Effusion": 0}),
    ("Small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Possible small pleural effusion.", {"Pleural Effusion": -1}),
    ("No pneumothorax.", {"Pneumothorax": 0}),
    ("Small left pneumothorax.", {"Pneumothorax": 1}),
    ("No effusion; small pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 1}),
    ("The heart is enlarged.", {"Cardiomegaly": 1}),
    ("Heart size is normal.", {"Cardiomegaly": 0}),
    ("Right lower lobe consolidation, likely pneumonia.", {"Consolidation": 1, "Pneumonia": -1}),
    ("Endotracheal tube in place.", {"Support Devices": 1}),
]


def _hand_arrays():
    labels = np.full((len(_HAND), K), LABEL_BLANK, np.int8)
    for n, (_, values) in enumerate(_HAND):
        for obs, v in values.items():
            labels[n, CXR.index(obs)] = v
    return [t for t, _ in _HAND], labels


def test_a_tiny_training_run_fits_hand_labeled_sentences():
    texts, labels = _hand_arrays()
    tok = train_tokenizer(texts, vocab_size=120, min_frequency=1)
    ids = [tok.encode(t) for t in texts]
    tokens = np.zeros((len(texts), 16), np.int32)
    for n, row in enumerate(ids):
        tokens[n, : len(row)] = row
    batch = {"tokens": tokens, "mask": tokens != 0, "labels": labels}
    model = ln.LabelerNet(ln.labeler_config("toy", tok.vocab_size, K), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    step = jax.jit(functools.partial(train_step, graphdef))
    losses = []
    for _ in range(150):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.05 * losses[0]
    trained, _ = nnx.merge(graphdef, state)
    predicted = np.asarray(ln.predict_labels(trained, batch["tokens"], batch["mask"]))
    np.testing.assert_array_equal(predicted, labels)
