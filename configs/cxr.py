"""RadFlow on chest X-rays — the embedded synthetic dataset by default.

    python -m radflow_jax.train --config=configs/cxr.py [--workdir=runs/cxr]
    python -m radflow_jax.train --config=configs/cxr.py:quick      # a one-minute smoke run
    python -m radflow_jax.train --config=configs/cxr.py:flat       # ablation row (flat|hierarchical|capo|full)

Override any field from the command line, e.g. ``--config.data.num_train=500``.
"""

from radflow_jax.config import QUICK, apply_args, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.modality = "cxr"
    c.data.prompt = "chest x-ray frontal view"
    apply_args(c, arg, QUICK, "configs/cxr.py")
    return c
