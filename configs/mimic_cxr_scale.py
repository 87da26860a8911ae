"""RadFlow on MIMIC-CXR at scale: a 1B-class or 7B-class policy on an 8-chip TPU slice or GPU node.

``configs/mimic_cxr.py`` (data, tokenizer, schedules) with the model, mesh, dtype, remat and batch
settings of one target, named ``<size>_<chip>``:

    python -m radflow_jax.train --config=configs/mimic_cxr_scale.py:7b_h100 \
        --config.data.dir=$HOME/tensorflow_datasets --config.init.from_hf=$HOME/llava-7b \
        --workdir=runs/mimic_cxr_7b
    python tools/memory_model.py --config=configs/mimic_cxr_scale.py:7b_h100   # memory, no device

==========  ======================  =========================  ======  ================  ==========
arg         target                  mesh (data, fsdp, tensor)  remat   SFT batch (accum)  RL B x G
==========  ======================  =========================  ======  ================  ==========
1b_h100     one 8xH100 80 GB node   8, 1, 1 (data parallel)    dots    256 (1)           32 x 8
1b_v5p      v5p-16 (8 chips)        2, 4, 1                    dots    256 (1)           64 x 8
1b_v6e      v6e-8 (8 chips)         1, 8, 1                    full    256 (2)           64 x 8
7b_h100     one 8xH100 80 GB node   1, 8, 1 (FSDP)             full    256 (2)           64 x 8
7b_v5p      v5p-16 (8 chips)        1, 8, 1                    full    256 (1)           96 x 8
7b_v6e      v6e-8 (8 chips)         1, 8, 1                    full    128 (2)            8 x 8
==========  ======================  =========================  ======  ================  ==========

Every target has 8 devices, so ``tools/memory_model.py`` compiles each stated mesh as it is on 8
simulated CPU devices. A larger slice adds a ``data`` axis (``--config.mesh.shape.data=4`` on a
v5p-64) with the global batches scaled by it: the per-device memory stays what
``docs/scaling.md`` lists, with the memory model and a throughput estimate per target. Compute
runs in bfloat16 (fp32 master weights, bf16 KL reference), the vision tower stays frozen after
its warm-up or ``init.from_hf``, and log-probs are taken 128 target positions at a time. On GPUs
set ``XLA_PYTHON_CLIENT_MEM_FRACTION=0.92``: JAX preallocates 75 % of the card by default, and
``1b_h100``/``7b_h100`` need ~59 GB of an 80 GB H100. ``:<target>,quick`` shrinks the model
(``toy``) and batches onto a 2x2x2 mesh for tests; ``:<target>,flat`` etc. pick an ablation row
as in the other configs.
"""

import os

from radflow_jax.config import apply_args, load_config_file

# What each target means for the memory model and the throughput estimate (tools/memory_model.py).
TARGETS = {
    "1b_h100": dict(chip="h100", slice="one 8xH100 node"),
    "1b_v5p": dict(chip="v5p", slice="v5p-16 (8 chips)"),
    "1b_v6e": dict(chip="v6e", slice="v6e-8 (8 chips)"),
    "7b_h100": dict(chip="h100", slice="one 8xH100 node"),
    "7b_v5p": dict(chip="v5p", slice="v5p-16 (8 chips)"),
    "7b_v6e": dict(chip="v6e", slice="v6e-8 (8 chips)"),
}

# size, mesh, remat, SFT batch, SFT grad_accum, RL prompts per step (each gets rl.group_size samples)
_SETTINGS = {
    "1b_h100": ("1b", dict(data=8, fsdp=1, tensor=1), "dots_saveable", 256, 1, 32),
    "1b_v5p": ("1b", dict(data=2, fsdp=4, tensor=1), "dots_saveable", 256, 1, 64),
    "1b_v6e": ("1b", dict(data=1, fsdp=8, tensor=1), "full", 256, 2, 64),
    "7b_h100": ("7b", dict(data=1, fsdp=8, tensor=1), "full", 256, 2, 64),
    "7b_v5p": ("7b", dict(data=1, fsdp=8, tensor=1), "full", 256, 1, 96),
    "7b_v6e": ("7b", dict(data=1, fsdp=8, tensor=1), "full", 128, 2, 8),
}

# ``quick``: the same stack on a toy model and a 2x2x2 mesh (seconds to compile on a CPU).
QUICK = {
    "model.size": "toy", "data.image_size": 64, "data.max_target_len": 32, "data.num_workers": 0,
    "model.logits_chunk": 16, "mesh.shape": dict(data=2, fsdp=2, tensor=2),
    "sft.num_steps": 4, "sft.batch_size": 16, "sft.grad_accum": 2, "sft.log_every": 2,
    "sft.checkpoint_every": 4, "rl.num_steps": 2, "rl.batch_size": 4, "rl.group_size": 2,
    "rl.max_new_tokens": 32, "rl.log_every": 1, "rl.checkpoint_every": 2,
    "vision.num_steps": 2, "vision.batch_size": 4, "eval.num_cases": 4, "eval.batch_size": 4,
    "eval.max_new_tokens": 32, "eval.meteor": False,
}


def get_config(arg: str | None = None):
    target, _, rest = (arg or "7b_h100").partition(",")
    if target not in _SETTINGS:
        raise ValueError(f"configs/mimic_cxr_scale.py: unknown target {target!r}; known: {', '.join(_SETTINGS)}")
    size, mesh, remat, sft_batch, accum, rl_batch = _SETTINGS[target]
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mimic_cxr.py"))
    c.model.size = size
    c.model.dtype = "bfloat16"  # explicit: compute in bf16, parameters stay float32 masters
    c.model.remat = remat
    c.model.logits_chunk = 128  # [rows, 128, vocab] float32 logits at a time, never the whole report
    c.mesh.shape = mesh
    s = c.sft
    s.batch_size, s.grad_accum = sft_batch, accum
    s.num_steps = 3000  # ~3 epochs of ~270k training images at batch 256
    s.learning_rate = 1e-4 if size == "1b" else 2e-5  # fine-tuning rates for pretrained policies
    s.warmup_steps = 100
    s.log_every, s.checkpoint_every = 20, 250
    r = c.rl
    r.batch_size, r.group_size = rl_batch, 8
    r.max_new_tokens = 256  # the whole target budget: MIMIC-CXR reports are ~40-200 tokens
    r.num_steps = 1000
    r.learning_rate = 2e-6 if size == "1b" else 1e-6
    r.warmup_steps = 20
    r.log_every, r.checkpoint_every = 5, 50
    c.eval.batch_size = rl_batch * r.group_size  # greedy decoding with the rollouts' KV cache size
    apply_args(c, rest, QUICK, f"configs/mimic_cxr_scale.py:{target}")
    return c
