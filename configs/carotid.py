"""RadFlow on carotid duplex ultrasound — the embedded synthetic dataset by default.

Each study has two views (right and left duplex: B-mode above, ICA spectral Doppler below).

    python -m radflow_jax.train --config=configs/carotid.py [--workdir=runs/carotid]
    python -m radflow_jax.train --config=configs/carotid.py:quick
"""

from radflow_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.modality = "carotid"
    c.data.max_views = 2
    c.data.prompt = "carotid duplex ultrasound right and left"
    c.data.max_target_len = 272  # duplex reports carry many numbers (one token per digit)
    if arg == "quick":
        c.data.num_train, c.data.num_val, c.data.num_test = 64, 16, 16
        c.model.size = "toy"
        c.sft.num_steps, c.sft.batch_size, c.sft.log_every, c.sft.checkpoint_every = 12, 8, 4, 6
        c.rl.num_steps, c.rl.batch_size, c.rl.group_size, c.rl.max_new_tokens = 4, 4, 2, 48
        c.rl.log_every, c.rl.checkpoint_every = 2, 2
        c.eval.num_cases, c.eval.batch_size, c.eval.max_new_tokens, c.eval.meteor = 16, 8, 48, False
    elif arg:
        raise ValueError(f"configs/carotid.py: unknown argument {arg!r}; known: 'quick'")
    return c
