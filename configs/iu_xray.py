"""RadFlow on IU X-Ray (Open-I): 3,955 studies, frontal and lateral views, read from TFDS ArrayRecord.

Prepare once (R2Gen's ``iu_xray`` folder or the Open-I XML + PNG release; see
``radflow_jax/data/tfds/builders.py:IuXray``), then train:

    python -m radflow_jax.data.tfds --dataset=iu_xray --manual_dir=$HOME/data/iu_xray \
        --data_dir=$HOME/tensorflow_datasets
    python -m radflow_jax.train --config=configs/iu_xray.py \
        --config.data.dir=$HOME/tensorflow_datasets --workdir=runs/iu_xray
    python -m radflow_jax.train --config=configs/iu_xray.py:quick --config.data.dir=...  # smoke

The target budget covers the Open-I reports: with the word tokenizer their Findings + Impression
targets have p50 44, p95 94, p99 132 tokens, so 160 truncates 14 of 3,927 (0.4 %).
"""

from radflow_jax.config import REAL_QUICK, apply_args, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.modality = "cxr"
    d = c.data
    d.source = "tfds"
    d.tfds_name = "iu_xray"
    d.dir = ""  # required: the --data_dir the dataset was prepared into
    d.labels = ""  # no ground-truth labels: clinical metrics compare labeler outputs
    d.image_size = 224
    d.max_views = 2  # frontal and lateral, as R2Gen
    d.prompt = "chest x-ray frontal and lateral views"
    d.max_prompt_len = 12  # the prompt is 9 tokens with <bos>
    d.max_target_len = 160
    d.num_workers = 4
    c.tokenizer.vocab_size = 2000  # the Open-I reports have ~1,300 words seen 3+ times
    c.tokenizer.min_frequency = 3  # R2Gen's threshold for IU X-Ray
    c.model.size = "small"
    c.sft.num_steps = 6000  # ~40 epochs of the ~2,700 training studies at batch 16
    c.sft.batch_size = 16
    c.sft.learning_rate = 5e-4
    c.sft.warmup_steps = 300
    c.sft.log_every, c.sft.checkpoint_every = 50, 500
    c.rl.num_steps, c.rl.batch_size, c.rl.group_size = 600, 16, 8
    c.rl.learning_rate = 1e-5
    c.rl.log_every, c.rl.checkpoint_every = 10, 100
    c.eval.batch_size = 64
    c.eval.normalize = "r2gen_iu"  # R2Gen's clean_report_iu_xray before pycocoevalcap, as published numbers
    apply_args(c, arg, REAL_QUICK, "configs/iu_xray.py")
    return c
