"""RadFlow on carotid duplex ultrasound — the embedded synthetic dataset by default.

Each study has two views (right and left duplex: B-mode above, ICA spectral Doppler below).

    python -m radflow_jax.train --config=configs/carotid.py [--workdir=runs/carotid]
    python -m radflow_jax.train --config=configs/carotid.py:quick
    python -m radflow_jax.train --config=configs/carotid.py:flat   # ablation row (flat|hierarchical|capo|full)
"""

from radflow_jax.config import QUICK, apply_args, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.modality = "carotid"
    c.data.max_views = 2
    c.data.prompt = "carotid duplex ultrasound right and left"
    c.data.max_target_len = 272  # duplex reports carry many numbers (one token per digit)
    apply_args(c, arg, QUICK, "configs/carotid.py")
    return c
