"""Reports for new images: ``python -m radflow_jax.generate --workdir=DIR --image=PATH [--image=...]``.

Each ``--image`` is one study; a multi-view study (carotid: right and left duplex) lists its views
comma-separated: ``--image=right.png,left.png``. Uses the latest checkpoint of ``--stage``
(default: ``rl`` if the workdir has one, else ``sft``) and greedy decoding unless told otherwise.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from radflow_jax import checkpoint as ckpt_lib
from radflow_jax.data import pipeline
from radflow_jax.data.formats import Record
from radflow_jax.data.sections import parse_target
from radflow_jax.data.tokenizer import ReportTokenizer
from radflow_jax.scoring import report_text
from radflow_jax.rl.sampling import sample
from radflow_jax.sft.trainer import SFTRun

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder written by radflow_jax.train.", required=True)
_IMAGES = flags.DEFINE_multi_string("image", None, "Image(s) of one study (views comma-separated).", required=True)
_STAGE = flags.DEFINE_enum("stage", None, ["sft", "rl"], "Checkpoint to use (default: newest stage).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples at this temperature.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (with --temperature > 0).")


def load_run(workdir: str, stage: str | None = None):
    """(config, tokenizer, run, state, stage, step): the latest parameters of a training workdir."""
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    tokenizer = ReportTokenizer.load(os.path.join(workdir, "tokenizer"))
    stages = [stage] if stage else ["rl", "sft"]
    for name in stages:
        directory = os.path.join(workdir, "checkpoints", name)
        if os.path.isdir(directory):
            break
    else:
        raise FileNotFoundError(f"no checkpoints for {stages} under {workdir}/checkpoints")
    run = SFTRun(config, tokenizer.vocab_size)
    with ckpt_lib.Checkpointer(directory, save_every=1, keep=1) as checkpointer:
        state, step = checkpointer.restore(run.abstract_state)
    return config, tokenizer, run, state, name, step


def generate_reports(
    config: ml_collections.ConfigDict,
    tokenizer: ReportTokenizer,
    run: SFTRun,
    state: nnx.State,
    studies: list[list[str]],
    *,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """One headed report per study (list of view paths), in order."""
    records = [
        Record(
            id=f"study-{i}", split="predict", image_paths=tuple(os.path.abspath(p) for p in views),
            report="", findings="", impression="", labels=None, critical=None, where=f"--image[{i}]",
        )
        for i, views in enumerate(studies)
    ]
    d = config.data
    dataset = pipeline.make_dataset(
        records, tokenizer, batch_size=min(len(records), config.eval.batch_size),
        image_size=d.image_size, max_views=d.max_views, max_prompt_len=d.max_prompt_len,
        max_target_len=d.max_target_len, prompt=d.prompt, train=False, seed=seed,
        process_index=0, process_count=1,
    )
    graphdef, params = nnx.split(run.policy(state))
    reports = [""] * len(records)
    for batch in dataset:
        out = sample(
            graphdef, params, run.device_batch(batch), rng=jax.random.key(seed),
            max_new_tokens=config.eval.max_new_tokens or d.max_target_len,
            greedy=temperature <= 0, temperature=max(temperature, 1e-6),
            eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
        )
        tokens = np.asarray(jax.device_get(out.tokens))
        for row, index in enumerate(batch["index"]):
            if index >= 0:
                reports[index] = report_text(parse_target(tokenizer.decode(tokens[row])))
    return reports


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    studies = [[p for p in spec.split(",") if p] for spec in _IMAGES.value]
    for views in studies:
        for path in views:
            if not os.path.isfile(path):
                sys.exit(f"--image: file not found: {path}")
    config, tokenizer, run, state, stage, step = load_run(_WORKDIR.value, _STAGE.value)
    reports = generate_reports(
        config, tokenizer, run, state, studies, temperature=_TEMPERATURE.value, seed=_SEED.value
    )
    print(f"# {stage} checkpoint, step {step}")
    for views, report in zip(studies, reports):
        print(f"== {', '.join(views)}\n{report}\n")


if __name__ == "__main__":
    app.run(main)
