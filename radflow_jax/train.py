"""Main job: ``python -m radflow_jax.train --config=configs/cxr.py [--workdir=DIR] [--config.x.y=...]``.

Runs ``config.stages`` in order inside one workdir (default ``runs/<modality>``):

- ``data``: generate or load the dataset, fit the tokenizer, run one batch through the pipeline;
- ``vision``: warms up the vision tower on the labels the labeler reads from each training report
  (``sft/vision.py``), so SFT starts from a tower that sees the findings;
- ``sft``: supervised fine-tuning, checkpointed; a rerun resumes from the latest checkpoint;
- ``labeler`` (optional): trains the Flax report labeler on rule-labeled text;
- ``rl``: GRPO with the hierarchical reward and CAPO from the SFT policy, checkpointed likewise;
- ``eval``: greedy reports for the test split from every trained stage, scored into
  ``DIR/eval/<stage>.json``, and SFT vs RL side by side.

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
from radflow_jax.parallel import distributed
from radflow_jax.scoring import evaluate_policy
from radflow_jax.rewards import labeler, labeler_train
from radflow_jax.rl.trainer import RLRun, run_rl
from radflow_jax.sft import vision
from radflow_jax.sft.trainer import SFTRun, run_sft

HEADLINE = (
    "gt_ce14_micro_f1", "gt_ce14_macro_f1", "gt_critical_sensitivity", "ce14_micro_f1",
    "consistency_rate", "Bleu_4", "ROUGE_L", "mean_length",
)

DEFAULT_CONFIG = "configs/cxr.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Experiment config file (configs/*.py[:arg])."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: runs/<modality>).")


def run_data_stage(config: ml_collections.ConfigDict, workdir: str) -> prepare.PreparedData:
    """Prepares the data and pulls one training batch, so input problems surface before training.

    Process 0 generates or checks the dataset and fits the tokenizer; the others wait, then read
    what it wrote (every process needs every record: the pipeline picks each one's rows).
    """
    start = time.time()
    if distributed.is_writer():
        data = prepare.prepare_data(config, workdir)
    distributed.barrier("data prepared")
    if not distributed.is_writer():
        data = prepare.prepare_data(config, workdir)
    it = iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=8 * jax.process_count()))
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
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax/jax INFO lines would drown the progress bar
    distributed.initialize_from_flags()
    config = config_lib.validate(_CONFIG.value)
    workdir = config_lib.resolve_workdir(config, _WORKDIR.value)
    if distributed.is_writer():
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=1, sort_keys=True))
    logging.info("workdir %s on %s", workdir, jax.devices())
    processes = f" · {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(f"RadFlow-JAX · {config.modality} · stages {list(config.stages)} · {jax.device_count()} devices"
          f"{processes} · workdir {workdir}")
    data = run_data_stage(config, workdir)
    if "vision" in config.stages and config.init.from_hf:
        print(f"[vision] skipped: the tower comes trained from init.from_hf={config.init.from_hf}")
    elif "vision" in config.stages:
        vision.run_vision(config, workdir, data)
    frozen = vision.frozen_modules(config, workdir)
    sft_run = sft_state = None
    if "sft" in config.stages:
        warm = None if config.init.from_hf else vision.load_classifier(config, workdir, data)
        sft_run, sft_state = run_sft(config, workdir, data, warm_vision=warm, frozen=frozen)
    if "rl" in config.stages or "eval" in config.stages:
        sft_run, sft_state, sft_step = _latest(config, workdir, data, "sft", sft_run, sft_state, frozen)
    if "eval" in config.stages:
        _eval_once(config, workdir, data, sft_run, sft_state, stage="sft", step=sft_step)
    if "labeler" in config.stages:
        labeler_train.run_labeler(config, workdir, data)
    rl_run = rl_state = None
    if "rl" in config.stages:
        label_fn = labeler.label_array
        if config.labeler.backend == "net":  # restores the trained labeler (trains it if missing)
            label_fn = labeler_train.net_labeler(config, workdir, data).label_array
        sft_policy = sft_run.train.policy_state(sft_state)
        sft_state = None  # the SFT optimizer state is not needed by RL: free it (a train state at 7b)
        rl_run, rl_state = run_rl(config, workdir, data, sft_policy, label_fn, frozen)
    if "eval" in config.stages and (rl_state is not None or _has_checkpoint(workdir, "rl")):
        rl_run, rl_state, rl_step = _latest(config, workdir, data, "rl", rl_run, rl_state, frozen)
        _eval_once(config, workdir, data, rl_run, rl_state, stage="rl", step=rl_step)
        if distributed.is_writer():
            _print_comparison(workdir)


def _has_checkpoint(workdir: str, stage: str) -> bool:
    return os.path.isdir(os.path.join(workdir, "checkpoints", stage))


def _latest(config, workdir, data, stage: str, run, state, frozen: tuple[str, ...]):
    """The policy a stage just trained, or restored from the workdir (eval-only runs)."""
    directory = os.path.join(workdir, "checkpoints", stage)
    with ckpt_lib.Checkpointer(directory, save_every=1, keep=1) as checkpointer:
        step = checkpointer.latest_step()
        if step is None:
            raise SystemExit(f"no {stage} checkpoint in {directory}; run the {stage} stage first")
        if state is None:
            run = (RLRun if stage == "rl" else SFTRun)(config, data.tokenizer.vocab_size, frozen=frozen)
            state, step = checkpointer.restore(run.train.abstract_state)
    return run, state, step


def _print_comparison(workdir: str) -> None:
    """SFT vs RL on the headline metrics, side by side."""
    rows = {}
    for stage in ("sft", "rl"):
        with open(os.path.join(workdir, "eval", f"{stage}.json"), encoding="utf-8") as f:
            rows[stage] = json.load(f)["metrics"]
    print(f"{'metric':<26}{'sft':>9}{'rl':>9}{'delta':>9}")
    for key in HEADLINE:
        a, b = rows["sft"].get(key), rows["rl"].get(key)
        if a is not None and b is not None:
            print(f"{key:<26}{a:>9.3f}{b:>9.3f}{b - a:>+9.3f}")


def _eval_once(config, workdir, data, run, state, *, stage: str, step: int) -> None:
    """Scores the policy unless ``eval/<stage>.json`` already holds this very step."""
    path = os.path.join(workdir, "eval", f"{stage}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f)["step"] == step:
                print(f"[eval] {path} is up to date (step {step})")
                return
    graphdef, params = nnx.split(run.train.policy(state))
    metrics = evaluate_policy(
        graphdef, params, data, config, workdir, stage=stage, step=step, runtime=run.runtime
    )
    print("[eval] " + ", ".join(f"{k}={metrics[k]:.3f}" for k in HEADLINE if metrics.get(k) is not None))


def run() -> None:
    """Console entry; turns config errors into one clear line instead of a traceback."""
    try:
        config_lib.check_overrides(sys.argv[1:], DEFAULT_CONFIG)
        app.run(main)
    except (config_lib.ConfigError, flags.IllegalFlagValueError) as e:
        sys.exit(f"config error: {e}")
    except distributed.DistributedError as e:
        sys.exit(f"distributed: {e}")


if __name__ == "__main__":
    run()
