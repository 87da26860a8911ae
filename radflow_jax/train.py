"""Main job: ``python -m radflow_jax.train --config=configs/cxr.py [--workdir=DIR] [--config.x.y=...]``.

Runs ``config.stages`` in order inside one workdir (default ``runs/<modality>``):

- ``data``: generate or load the dataset, fit the tokenizer, run one batch through the pipeline;
- ``sft``: supervised fine-tuning, checkpointed; a rerun resumes from the latest checkpoint;
- ``eval``: greedy reports for the test split, scored into ``DIR/eval/<stage>.json``.

The data stage always runs (it is cheap once the dataset exists): the others need its records
and tokenizer.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import ml_collections
from flax import nnx
from absl import app, flags, logging
from ml_collections import config_flags

from radflow_jax import config as config_lib
from radflow_jax import checkpoint as ckpt_lib
from radflow_jax.data import prepare
from radflow_jax.evaluate import evaluate_policy
from radflow_jax.sft.trainer import SFTRun, run_sft

DEFAULT_CONFIG = "configs/cxr.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Experiment config file (configs/*.py[:arg])."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: runs/<modality>).")


def run_data_stage(config: ml_collections.ConfigDict, workdir: str) -> prepare.PreparedData:
    """Prepares the data and pulls one training batch, so input problems surface before training."""
    start = time.time()
    data = prepare.prepare_data(config, workdir)
    it = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=8))
    batch = next(it)
    close = getattr(it, "close", None)
    if close is not None:
        close()
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    print(f"[data] {data.data_dir}: {data.summary['cases']} cases, {data.summary['skipped']} skipped")
    print(f"[data] tokenizer: {data.tokenizer.vocab_size} tokens; target length {data.summary['target_tokens']}")
    print(f"[data] batch: {shapes} ({time.time() - start:.1f}s)")
    return data


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_lib.validate(_CONFIG.value)
    workdir = config_lib.resolve_workdir(config, _WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=1, sort_keys=True))
    logging.info("workdir %s on %s", workdir, jax.devices())
    print(f"RadFlow-JAX · {config.modality} · stages {list(config.stages)} · workdir {workdir}")
    data = run_data_stage(config, workdir)
    run = state = None
    if "sft" in config.stages:
        run, state = run_sft(config, workdir, data)
    if "eval" in config.stages:
        run, state, step = _latest_sft(config, workdir, data, run, state)
        _eval_once(config, workdir, data, run, state, stage="sft", step=step)


def _latest_sft(config, workdir, data, run, state):
    """The SFT policy just trained, or restored from the workdir for an eval-only run."""
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints", "sft"), save_every=1, keep=config.sft.keep_checkpoints
    )
    with checkpointer:
        step = checkpointer.latest_step()
        if step is None:
            raise SystemExit(f"eval: no SFT checkpoint in {workdir}/checkpoints/sft; run the sft stage")
        if state is None:
            run = SFTRun(config, data.tokenizer.vocab_size)
            state, step = checkpointer.restore(run.abstract_state)
    return run, state, step


def _eval_once(config, workdir, data, run, state, *, stage: str, step: int) -> None:
    """Scores the policy unless ``eval/<stage>.json`` already holds this very step."""
    path = os.path.join(workdir, "eval", f"{stage}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f)["step"] == step:
                print(f"[eval] {path} is up to date (step {step})")
                return
    graphdef, params = nnx.split(run.policy(state))
    metrics = evaluate_policy(
        graphdef, params, data, config, workdir, stage=stage, step=step, device_batch=run.device_batch
    )
    keys = ("gt_ce14_micro_f1", "gt_ce14_macro_f1", "gt_critical_sensitivity", "ce14_micro_f1", "Bleu_4", "ROUGE_L")
    print("[eval] " + ", ".join(f"{k}={metrics[k]:.3f}" for k in keys if metrics.get(k) is not None))


def run() -> None:
    """Console entry; turns config errors into one clear line instead of a traceback."""
    try:
        config_lib.check_overrides(sys.argv[1:], DEFAULT_CONFIG)
        app.run(main)
    except (config_lib.ConfigError, flags.IllegalFlagValueError) as e:
        sys.exit(f"config error: {e}")


if __name__ == "__main__":
    run()
