"""Export a checkpoint to a Hugging Face folder.

    python -m radflow_jax.export --workdir=DIR [--stage=rl] [--step=N] --out=HF_DIR [--dtype=bfloat16]

The folder loads with ``transformers.AutoModelForImageTextToText`` / ``AutoProcessor`` as a
``LlavaForConditionalGeneration`` (details in ``radflow_jax/hf/export.py``). Multi-host: run the
same command on every host; the shards are gathered and host 0 writes the folder.
"""

from __future__ import annotations

import sys

from absl import app, flags

from radflow_jax.hf import export
from radflow_jax.parallel import distributed

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder written by radflow_jax.train.", required=True)
_OUT = flags.DEFINE_string("out", None, "Folder to write the Hugging Face model into.", required=True)
_STAGE = flags.DEFINE_enum("stage", None, ["sft", "rl"], "Checkpoint stage (default: newest stage).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest of the stage).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(export.EXPORT_DTYPES), "Dtype of the saved weights.")
_SHARD_MB = flags.DEFINE_integer(
    "max_shard_mb", export.MAX_SHARD_BYTES // 10**6, "Largest safetensors file (MB) before sharding."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        distributed.initialize_from_flags()
    except distributed.DistributedError as e:
        sys.exit(f"distributed: {e}")
    stage, step = export.export_run(
        _WORKDIR.value, _OUT.value, stage=_STAGE.value, step=_STEP.value, dtype=_DTYPE.value,
        max_shard_bytes=_SHARD_MB.value * 10**6,
    )
    print(f"exported {stage} step {step} of {_WORKDIR.value} to {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
