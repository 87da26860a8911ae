"""Reports for new images: ``python -m radflow_jax.generate --workdir=DIR --image=PATH [--image=...]``.

Each ``--image`` is one study; a multi-view study (carotid: right and left duplex) lists its views
comma-separated: ``--image=right.png,left.png``. Uses the latest checkpoint of ``--stage``
(default: ``rl`` if the workdir has one, else ``sft``) and greedy decoding unless told otherwise.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from radflow_jax.inference import generate_reports, load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder written by radflow_jax.train.", required=True)
_IMAGES = flags.DEFINE_multi_string("image", None, "Image(s) of one study (views comma-separated).", required=True)
_STAGE = flags.DEFINE_enum("stage", None, ["sft", "rl"], "Checkpoint to use (default: newest stage).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples at this temperature.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (with --temperature > 0).")


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
