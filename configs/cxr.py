"""RadFlow on chest X-rays — the embedded synthetic dataset by default.

    python -m radflow_jax.train --config=configs/cxr.py [--workdir=runs/cxr]
    python -m radflow_jax.train --config=configs/cxr.py:quick      # seconds-long smoke run

Override any field from the command line, e.g. ``--config.data.num_train=500``.
"""

from radflow_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.modality = "cxr"
    c.data.prompt = "chest x-ray frontal view"
    if arg == "quick":
        c.data.num_train, c.data.num_val, c.data.num_test = 64, 16, 16
        c.model.size = "toy"
        c.sft.num_steps, c.sft.batch_size, c.sft.log_every, c.sft.checkpoint_every = 12, 8, 4, 6
        c.rl.num_steps, c.rl.batch_size, c.rl.group_size, c.rl.max_new_tokens = 4, 4, 2, 48
        c.rl.log_every, c.rl.checkpoint_every = 2, 2
        c.eval.num_cases, c.eval.batch_size, c.eval.max_new_tokens, c.eval.meteor = 16, 8, 48, False
    elif arg:
        raise ValueError(f"configs/cxr.py: unknown argument {arg!r}; known: 'quick'")
    return c
