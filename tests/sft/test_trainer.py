"""SFT: the pure step, exact gradient accumulation, padding trim, loss going down, exact resume."""

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
from radflow_jax.sft import trainer

flags.FLAGS(["pytest"])  # Grain workers and absl-aware code expect parsed flags


def _config(**sft):
    config = config_lib.load_config_file("configs/cxr.py:quick")
    config.data.num_train, config.data.num_val, config.data.num_test = 32, 4, 8
    config.data.max_target_len = 160
    config.sft.length_bucket = 0  # one compiled shape keeps these tests fast
    config.sft.update(sft)
    return config_lib.validate(config)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare.prepare_data(_config(), str(tmp_path_factory.mktemp("sft_data")))


def _first_batch(data, config):
    it = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=config.sft.batch_size))
    batch = next(it)
    it.close()
    return batch


def test_grad_accumulation_is_exact(data):
    plain, accum = _config(grad_accum=1), _config(grad_accum=4)
    batch = _first_batch(data, plain)
    results = []
    for config in (plain, accum):
        run = trainer.SFTRun(config, data.tokenizer.vocab_size)
        state, metrics = run.step_fn(run.train.init_state(), run.device_batch(batch))
        results.append((nnx.state(run.train.policy(state), nnx.Param), metrics))
    (p1, m1), (p2, m2) = results
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), p1, p2))
    assert max(float(d) for d in diffs) < 1e-5


def test_trimming_padding_keeps_the_loss(data):
    config = _config()
    batch = _first_batch(data, config)
    trimmed = runtime.trim_targets(batch, 32)
    assert trimmed["target_tokens"].shape[1] < batch["target_tokens"].shape[1]
    assert trimmed["target_tokens"].shape[1] % 32 == 0
    assert trimmed["target_mask"].sum() == batch["target_mask"].sum()
    run = trainer.SFTRun(config, data.tokenizer.vocab_size)
    model = run.train.policy(run.train.init_state())
    full = trainer.token_nll(model, {k: jnp.asarray(batch[k]) for k in trainer.MODEL_KEYS})
    short = trainer.token_nll(model, {k: jnp.asarray(trimmed[k]) for k in trainer.MODEL_KEYS})
    np.testing.assert_allclose(full[0], short[0], rtol=1e-5)


def test_loss_decreases(data, tmp_path):
    config = _config(num_steps=30, log_every=5, checkpoint_every=100, learning_rate=3e-3, warmup_steps=5)
    trainer.run_sft(config, str(tmp_path), data)
    losses = [r["loss"] for r in read_metrics(str(tmp_path), "sft")]
    assert len(losses) == 6
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.85 * losses[0], losses


def test_resume_continues_identically(data, tmp_path):
    full = _config(num_steps=8, log_every=1, checkpoint_every=4)
    trainer.run_sft(full, str(tmp_path / "straight"), data)
    half = _config(num_steps=4, log_every=1, checkpoint_every=4)
    trainer.run_sft(half, str(tmp_path / "resumed"), data)
    _, state = trainer.run_sft(full, str(tmp_path / "resumed"), data)
    straight = read_metrics(str(tmp_path / "straight"), "sft")
    resumed = read_metrics(str(tmp_path / "resumed"), "sft")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in straight], rtol=1e-6)
    # A finished run restores instead of training again.
    _, again = trainer.run_sft(full, str(tmp_path / "resumed"), data)
    assert len(read_metrics(str(tmp_path / "resumed"), "sft")) == 8
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), nnx.state(state), nnx.state(again))
    assert all(jax.tree.leaves(same))
