"""One whole GRPO step: our ``rl_step`` against TRL's ``GRPOTrainer`` on the same weights.

    python tools/bench_grpo.py [--sizes=tiny] [--steps=5]

For each size a randomly initialised policy is exported with ``radflow_jax.hf.export`` and given
to ``trl.GRPOTrainer`` as a ``LlavaForConditionalGeneration`` with its processor (a one-line chat
template renders ``<image><bos>prompt``, as ``export.hf_prompt`` does). Both sides then run full
steps of the same shape: 8 prompts (generated chest X-rays) × group 8, at most 64 new tokens at
temperature 0.3, the k3 KL to a frozen reference (beta 0.04), ``dapo`` loss, one update per
rollout, AdamW. A step is rollout + reward + reference pass + update.

The rewards differ, unavoidably: ours is the product's hierarchical reward (host decode and rule
labeler on every completion and reference, then the jitted NLG/label/consistency terms and CAPO),
TRL's a Python function on the decoded text (distinct-word share: cheap, with variance), as TRL
users write them. Ours therefore does more reward work. Completion lengths are reported for
both (EOS is live on both sides; a random policy rarely emits it).

Times: the median of ``--steps`` steps after one warm-up step (which compiles ours); the same
step count on both sides; torch at JAX's thread count. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_pair  # noqa: E402

from radflow_jax import config as config_lib  # noqa: E402
from radflow_jax import schema as schema_lib  # noqa: E402
from radflow_jax.data import pipeline, sections  # noqa: E402
from radflow_jax.data.synthetic import generate_case  # noqa: E402
from radflow_jax.rewards import hierarchy, words  # noqa: E402
from radflow_jax.rl import trainer  # noqa: E402

PROMPTS, GROUP, NEW, TEMPERATURE, BETA = 8, 8, 64, 0.3, 0.04
CHAT_TEMPLATE = (
    "{% for message in messages %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endfor %}<bos>"
    "{% for message in messages %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endfor %}"
)


def bench_config(size: str):
    c = config_lib.load_config_file("configs/cxr.py")
    c.model.size, c.data.image_size, c.data.max_views = size, hf_pair.IMAGE, 1
    c.data.max_prompt_len = hf_pair.PROMPT_LEN
    c.rl.batch_size, c.rl.group_size, c.rl.max_new_tokens = PROMPTS, GROUP, NEW
    c.rl.temperature, c.rl.beta, c.rl.loss_type, c.rl.num_iterations = TEMPERATURE, BETA, "dapo", 1
    return config_lib.validate(c)


def distinct_words(completions, **_) -> list[float]:
    """TRL-side reward: the share of distinct words in a completion."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[0]["content"]
        w = text.split()
        out.append(len(set(w)) / max(len(w), 1))
    return out


def run_ours(size: str, tok, prefix: dict, steps: int) -> tuple[list[float], float, object]:
    config = bench_config(size)
    schema = schema_lib.get_schema("cxr")
    run = trainer.RLRun(config, tok.vocab_size)
    policy = run.train.policy_state(run.train.init_state())
    state = run.train.init_from_policy(policy)
    reference = trainer.reference_params(policy, run.train.model_config.compute_dtype, BETA)
    reports = [generate_case("cxr", 0, i).report for i in range(PROMPTS)]
    targets = np.stack([pipeline.target_tokens(tok, sections.parse_sections(r), config.data.max_target_len)
                        for r in reports])
    batch = dict(prefix, target_tokens=targets, target_mask=targets != tok.pad_id)
    data = types.SimpleNamespace(tokenizer=tok, schema=schema)
    reward_cfg = hierarchy.reward_config_from(config.reward, schema)
    table = words.word_table(tok, normalize="radflow")
    times, lengths = [], []
    for step in range(steps + 1):
        start = time.perf_counter()
        state, metrics = trainer.rl_step(run, state, reference, batch, reward_cfg, data, jax.random.key(step),
                                         word_table=table)
        metrics = jax.device_get(metrics)
        times.append(time.perf_counter() - start)
        lengths.append(float(metrics["response_length"]))
    return times[1:], float(np.mean(lengths)), (run, policy)


def run_trl(out_dir: str, images, steps: int, workdir: str) -> tuple[list[float], float]:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, processor = hf_pair.load_hf(out_dir)
    processor.chat_template = CHAT_TEMPLATE
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": hf_pair.PROMPT}]}],
             "image": img} for img in images]
    dataset = datasets.Dataset.from_list(rows * (steps + 1))
    args = GRPOConfig(
        output_dir=os.path.join(workdir, "trl"), use_cpu=True, bf16=False, report_to="none",
        per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP, gradient_accumulation_steps=1,
        max_completion_length=NEW, temperature=TEMPERATURE, top_p=1.0, top_k=0, beta=BETA, loss_type="dapo",
        num_iterations=1, learning_rate=5e-5, max_steps=steps + 1, logging_steps=1, save_strategy="no",
        shuffle_dataset=False, dataloader_num_workers=0, seed=0,
    )
    times, lengths = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    torch.manual_seed(0)
    GRPOTrainer(model=model, processing_class=processor, reward_funcs=[distinct_words], args=args,
                train_dataset=dataset, callbacks=[Clock()]).train()
    return times[1:], float(np.mean(lengths)) if lengths else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"jax {jax.__version__}; torch {torch.__version__} with {torch.get_num_threads()} threads; {threads} cores")
    workdir = tempfile.mkdtemp(prefix="bench_grpo_")
    tok = hf_pair.tokenizer(workdir)
    prefix, images = hf_pair.prefix_inputs(tok, PROMPTS)
    n = PROMPTS * GROUP
    header = f"{'size':6} {'ours samples/s':>14} {'TRL samples/s':>13} {'ratio':>6}  mean completion length ours / TRL"
    lines, result = [header], {"bench": "grpo", "ratio_vs_trl": {}, "samples_per_s": {}}
    for size in args.sizes.split(","):
        ours, ours_len, (run, policy) = run_ours(size, tok, prefix, args.steps)
        out_dir = hf_pair.export_to_hf(policy, run.train.model_config, workdir, size, NEW)
        theirs, trl_len = run_trl(out_dir, images, args.steps, workdir)
        t_ours, t_trl = statistics.median(ours), statistics.median(theirs)
        result["ratio_vs_trl"][size] = round(t_trl / t_ours, 3)
        result["samples_per_s"][size] = {"ours": round(n / t_ours, 2), "trl": round(n / t_trl, 2)}
        lines.append(f"{size:6} {n / t_ours:14.1f} {n / t_trl:13.1f} {t_trl / t_ours:6.2f}  {ours_len:.1f} / {trl_len:.1f}")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
