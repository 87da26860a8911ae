"""RadFlow on MIMIC-CXR: ~227k studies, the frontal view, CheXpert labels, read from TFDS ArrayRecord.

Prepare once (R2Gen's ``mimic_cxr`` folder, or MIMIC-CXR-JPG with the MIMIC-CXR reports; see
``radflow_jax/data/tfds/builders.py:MimicCxr``; needs PhysioNet credentials), then train:

    python -m radflow_jax.data.tfds --dataset=mimic_cxr --manual_dir=$HOME/data/mimic-cxr-jpg \
        --data_dir=$HOME/tensorflow_datasets --on_bad_record=skip --max_target_len=256
    python -m radflow_jax.train --config=configs/mimic_cxr.py \
        --config.data.dir=$HOME/tensorflow_datasets --workdir=runs/mimic_cxr
    python -m radflow_jax.train --config=configs/mimic_cxr.py:quick --config.data.dir=...  # smoke

The prepare step prints how many targets exceed ``max_target_len``; raise it if that is more
than a few percent. Larger models (``1b``/``7b``) belong to the scale configs.
"""

from radflow_jax.config import REAL_QUICK, apply_args, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.modality = "cxr"
    d = c.data
    d.source = "tfds"
    d.tfds_name = "mimic_cxr"
    d.dir = ""  # required: the --data_dir the dataset was prepared into
    d.labels = ""  # the CheXpert labels travel inside the TFDS records
    d.image_size = 224
    d.max_views = 1  # the frontal view (PA before AP), as R2Gen
    d.prompt = "chest x-ray frontal view"
    d.max_target_len = 256
    d.num_workers = 8
    c.tokenizer.vocab_size = 8000
    c.tokenizer.min_frequency = 10  # R2Gen's threshold for MIMIC-CXR
    c.model.size = "base"
    c.sft.num_steps = 40000  # ~10 epochs of ~270k training images at batch 64
    c.sft.batch_size = 64
    c.sft.learning_rate = 3e-4
    c.sft.warmup_steps = 1000
    c.sft.log_every, c.sft.checkpoint_every, c.sft.keep_checkpoints = 100, 2000, 3
    c.rl.num_steps, c.rl.batch_size, c.rl.group_size = 3000, 32, 8
    c.rl.learning_rate = 1e-5
    c.rl.log_every, c.rl.checkpoint_every = 10, 250
    c.eval.batch_size = 128
    c.eval.normalize = "r2gen_mimic"  # R2Gen's clean_report_mimic_cxr before pycocoevalcap, as published numbers
    apply_args(c, arg, REAL_QUICK, "configs/mimic_cxr.py")
    return c
