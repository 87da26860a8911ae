"""Main job: ``python -m radflow_jax.train --config=configs/cxr.py [--workdir=DIR] [--config.x.y=...]``.

Runs ``config.stages`` in order inside one workdir (default ``runs/<modality>``). Today the stages
are: ``data`` (generate/load the dataset, fit the tokenizer, run one batch through the input
pipeline). SFT, RL and evaluation join this list as they land.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from radflow_jax import config as config_lib
from radflow_jax.data import prepare

DEFAULT_CONFIG = "configs/cxr.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Experiment config file (configs/*.py[:arg])."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: runs/<modality>).")


def run_data_stage(config: ml_collections.ConfigDict, workdir: str) -> prepare.PreparedData:
    """Prepares the data and pulls one training batch, so input problems surface before training."""
    start = time.time()
    data = prepare.prepare_data(config, workdir)
    it = iter(prepare.make_split_dataset(data, config, "train", train=True))
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
    stages = {"data": run_data_stage}
    for stage in config.stages:
        stages[stage](config, workdir)
    print(
        "Stopped after data preparation: the sft, rl and eval stages arrive with the training "
        "spine and RL issues."
    )


def run() -> None:
    """Console entry; turns config errors into one clear line instead of a traceback."""
    try:
        config_lib.check_overrides(sys.argv[1:], DEFAULT_CONFIG)
        app.run(main)
    except (config_lib.ConfigError, flags.IllegalFlagValueError) as e:
        sys.exit(f"config error: {e}")


if __name__ == "__main__":
    run()
