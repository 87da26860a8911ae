"""Using a trained workdir: restore its newest policy and write reports for new studies.

Shared by ``radflow_jax.generate``, ``radflow_jax.evaluate --workdir`` and the Hugging Face export
(kept free of absl flags so each CLI can import it).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from radflow_jax import checkpoint as ckpt_lib
from radflow_jax import config as config_lib
from radflow_jax.data import pipeline
from radflow_jax.data.formats import Record
from radflow_jax.data.sections import parse_target
from radflow_jax.data.tokenizer import ReportTokenizer
from radflow_jax.rl.sampling import sample
from radflow_jax.scoring import report_text
from radflow_jax.sft import vision
from radflow_jax.sft.trainer import SFTRun


def load_run(workdir: str, stage: str | None = None, step: int | None = None):
    """(config, tokenizer, run, state, stage, step) of a workdir checkpoint (newest stage/step by default).

    ``stage`` defaults to ``rl`` when the workdir has RL checkpoints, else ``sft``; ``step`` to the
    latest. The RL and SFT train states share one layout (``runtime.PolicyTrainState``), so one
    ``SFTRun`` restores both; the layout depends on which modules the run froze.
    """
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = config_lib.from_saved(json.load(f))
    tokenizer = ReportTokenizer.load(os.path.join(workdir, "tokenizer"))
    stages = [stage] if stage else ["rl", "sft"]
    found = [s for s in stages if os.path.isdir(os.path.join(workdir, "checkpoints", s))]
    if not found:
        raise FileNotFoundError(f"no checkpoints for {stages} under {workdir}/checkpoints")
    run = SFTRun(config, tokenizer.vocab_size, frozen=vision.frozen_modules(config, workdir))
    directory = os.path.join(workdir, "checkpoints", found[0])
    with ckpt_lib.Checkpointer(directory, save_every=1, keep=1) as checkpointer:
        state, step = checkpointer.restore(run.train.abstract_state, step=step)
    return config, tokenizer, run, state, found[0], step


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
    graphdef, params = nnx.split(run.train.policy(state))
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
