"""RadFlow on one's own studies (e.g. a hospital's carotid duplex ultrasound) from a JSONL file.

The format is documented in ``radflow_jax/data/formats_jsonl.py``. Prepare once, then train:

    python -m radflow_jax.data.tfds --dataset=jsonl_studies/carotid --manual_dir=$HOME/data/us \
        --data_dir=$HOME/tensorflow_datasets
    python -m radflow_jax.train --config=configs/jsonl_studies.py:carotid \
        --config.data.dir=$HOME/tensorflow_datasets --workdir=runs/my_carotid
    python -m radflow_jax.train --config=configs/jsonl_studies.py:carotid,quick --config.data.dir=...

``arg`` is the modality (``carotid`` or ``cxr``), optionally followed by ``,quick``.
"""

from radflow_jax.config import REAL_QUICK, apply_overrides, base_config

_PROMPTS = {
    "carotid": ("carotid duplex ultrasound right and left", 2, 272),
    "cxr": ("chest x-ray frontal view", 1, 192),
}


def get_config(arg: str | None = None):
    modality, _, variant = (arg or "carotid").partition(",")
    if modality not in _PROMPTS or variant not in ("", "quick"):
        raise ValueError(f"configs/jsonl_studies.py: unknown argument {arg!r}; known: "
                         "'carotid', 'cxr', each optionally with ',quick'")
    c = base_config()
    c.modality = modality
    d = c.data
    d.source = "tfds"
    d.tfds_name = f"jsonl_studies/{modality}"
    d.dir = ""  # required: the --data_dir the dataset was prepared into
    d.labels = ""  # labels, where given, travel inside the TFDS records
    d.prompt, d.max_views, d.max_target_len = _PROMPTS[modality]
    d.image_size = 224
    d.num_workers = 4
    c.model.size = "small"
    c.sft.num_steps, c.sft.batch_size, c.sft.learning_rate, c.sft.warmup_steps = 5000, 16, 5e-4, 250
    c.sft.log_every, c.sft.checkpoint_every = 50, 500
    c.rl.num_steps, c.rl.batch_size, c.rl.group_size, c.rl.learning_rate = 500, 16, 8, 1e-5
    c.rl.log_every, c.rl.checkpoint_every = 10, 100
    if variant == "quick":
        apply_overrides(c, REAL_QUICK)
    return c
