"""A whole RL step on the quick config: no implicit host<->device transfer (``jax.transfer_guard``),
no recompilation once a completion length has been seen, and the logged time split."""

import jax
import numpy as np
import pytest

from radflow_jax import config as config_lib
from radflow_jax.data import prepare
from radflow_jax.rewards import hierarchy, words
from radflow_jax.rl import trainer

BUCKET, NEW, STEPS = 8, 32, 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = config_lib.load_config_file("configs/cxr.py:quick")
    config.sft.length_bucket, config.rl.max_new_tokens = BUCKET, NEW
    config = config_lib.validate(config)
    data = prepare.prepare_data(config, str(tmp_path_factory.mktemp("rl_step")))
    run = trainer.RLRun(config, data.tokenizer.vocab_size)
    return config, data, run


def _eos_prone(run: trainer.RLRun, state, eos_id: int, eos_logit: float):
    """The policy with a near-constant ``<eos>`` logit (~``eos_logit``) and all others ~0, so every
    completion ends after a geometric number of tokens and completion lengths vary step to step.

    One residual channel is made large and constant (the embedding table's column 0), the final
    norm keeps only that channel, and only ``<eos>``'s ``lm_head`` column reads it."""
    params = run.train.policy_state(state)
    lm = params["language_model"]
    table = np.array(lm["model"]["embed_tokens"]["weight"][...])
    table[:, 0] = 100.0
    norm = np.zeros(np.shape(lm["model"]["norm"]["weight"][...]), np.float32)
    norm[0] = 1.0
    head = np.zeros(np.shape(lm["lm_head"]["kernel"][...]), np.float32)
    head[0, eos_id] = eos_logit / np.sqrt(table.shape[1])  # RMSNorm scales channel 0 to ~sqrt(D)
    lm["model"]["embed_tokens"]["weight"][...] = table
    lm["model"]["norm"]["weight"][...] = norm
    lm["lm_head"]["kernel"][...] = head
    return params


def test_rl_steps_transfer_nothing_implicitly_and_compile_once_per_completion_length(setup):
    config, data, run = setup
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _secs, **_: compiles.append(1) if event == "/jax/core/compile/backend_compile_duration" else None
    )
    policy = _eos_prone(run, run.train.init_state(), data.tokenizer.eos_id, eos_logit=1.0)
    state = run.train.init_from_policy(policy)  # a copy: the updates donate it, the reference stays
    reference = trainer.reference_params(policy, np.float32, config.rl.beta)
    reward_cfg = hierarchy.reward_config_from(config.reward, data.schema)
    table = words.word_table(data.tokenizer, normalize="radflow")
    iterator = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=config.rl.batch_size))
    seen, log = set(), []
    for step in range(STEPS):
        key, batch, before = jax.random.key(step), next(iterator), len(compiles)
        with jax.transfer_guard("disallow"):  # an implicit copy anywhere in the step raises
            state, metrics = trainer.rl_step(run, state, reference, batch, reward_cfg, data, key,
                                             word_table=table)
        metrics = jax.device_get(metrics)
        length = int(metrics["completion_length_padded"])
        assert length in range(BUCKET, NEW + 1, BUCKET)
        log.append((length, len(compiles) - before))
        if length in seen:
            assert len(compiles) == before, f"step {step} recompiled at a completion length seen before: {log}"
        seen.add(length)
        for part in ("rollout", "labeling", "scoring", "update"):
            assert metrics[f"time/{part}"] > 0
    assert len(seen) >= 2 and len(log) > len(seen), f"lengths did not vary or never repeated: {log}"
    assert all(n > 0 for _, n in log[:1])  # the counter sees compilations
