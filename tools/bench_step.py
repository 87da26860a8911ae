"""Training-step speed: our SFT step and GRPO update against the same PyTorch step in Hugging Face.

    python tools/bench_step.py [--sizes=tiny,small,base] [--repeats=3]

For each size a randomly initialised policy is exported with ``radflow_jax.hf.export`` and
loaded back with ``transformers.LlavaForConditionalGeneration`` (train mode; the model has no
dropout). Both sides then train on the same 64 sequences — 8 images × 8 completions for GRPO,
64 images for SFT — of ``--target_len`` report tokens after the same image and prompt, with
global-norm clipping and AdamW:

- SFT: next-token cross-entropy on the report tokens (HF ``labels``, -100 on the prefix);
- GRPO update: TRL's clipped surrogate at the sampling temperature with the k3 KL to given
  reference log-probs (``loss_type="dapo"``, one pass, old log-probs = the detached current
  ones), as ``rl/trainer.update_step`` runs it — the reference pass and rollout are not timed.
  TRL feeds every completion its own image; ours encodes each case's image once per group
  (``Policy._embed``), which is part of what is measured.

Times are the median of ``--repeats`` steps after a warm-up step, torch at JAX's thread count.
The first step's losses are compared (same weights, same data: they must agree). Achieved FLOP/s
counts each side's model FLOPs (``tools/memory_model.flops_per_sequence``: forward + backward,
attention over the full square) against this machine's float32 matmul peak measured in the
same run. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_pair  # noqa: E402
import memory_model  # noqa: E402
import roofline  # noqa: E402

from radflow_jax import config as config_lib  # noqa: E402
from radflow_jax.rl.trainer import RLRun  # noqa: E402
from radflow_jax.sft.trainer import SFTRun  # noqa: E402

PROMPTS, GROUP, TEMPERATURE, BETA, EPS = 8, 8, 0.3, 0.04, 0.2


def bench_config(size: str, target_len: int):
    c = config_lib.load_config_file("configs/cxr.py")
    c.model.size, c.data.image_size, c.data.max_views = size, hf_pair.IMAGE, 1
    c.data.max_prompt_len, c.data.max_target_len = hf_pair.PROMPT_LEN, target_len
    c.sft.batch_size, c.sft.grad_accum, c.sft.length_bucket = PROMPTS * GROUP, 1, 0
    c.rl.batch_size, c.rl.group_size, c.rl.max_new_tokens = PROMPTS, GROUP, target_len
    c.rl.temperature, c.rl.beta, c.rl.epsilon, c.rl.epsilon_high, c.rl.loss_type = TEMPERATURE, BETA, EPS, EPS, "dapo"
    return config_lib.validate(c)


def torch_grpo_loss(logits, completion, mask, advantages, ref_logp):
    """TRL's GRPO loss (dapo normalisation, first pass) on [N, T, V] logits of the completion."""
    import torch

    logp = torch.log_softmax(logits.float() / TEMPERATURE, dim=-1).gather(-1, completion[..., None])[..., 0]
    ratio = torch.exp(logp - logp.detach())
    a = advantages[:, None]
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - EPS, 1 + EPS) * a)
    delta = ref_logp - logp
    per_token = per_token + BETA * (torch.exp(delta) - delta - 1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small,base")
    parser.add_argument("--target_len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    peak = roofline.matmul_rate()
    n, t = PROMPTS * GROUP, args.target_len
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}; "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; {threads} cores")
    print(f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s; {n} sequences x {t} target tokens")

    workdir = tempfile.mkdtemp(prefix="bench_step_")
    tok = hf_pair.tokenizer(workdir)
    prefix, images = hf_pair.prefix_inputs(tok, n)
    rng = np.random.default_rng(0)
    targets = rng.integers(7, tok.vocab_size, (n, t)).astype(np.int32)  # no special tokens
    advantages = rng.standard_normal(n).astype(np.float32)
    ref_logp = -rng.uniform(0.5, 3.0, (n, t)).astype(np.float32)

    header = f"{'size':6} {'step':5} {'ours samples/s':>14} {'HF samples/s':>12} {'ratio':>6} {'ours %peak':>10} {'HF %peak':>8}  first loss ours / HF"
    lines, result = [header], {"bench": "step", "ratio_vs_hf": {}, "fraction_of_peak": {}, "loss_equal": {}}
    for size in args.sizes.split(","):
        config = bench_config(size, t)
        sft = SFTRun(config, tok.vocab_size)
        cfg = sft.train.model_config
        out_dir = hf_pair.export_to_hf(sft.train.policy_state(sft.train.init_state()), cfg, workdir, size, t)
        processor = hf_pair.load_hf(out_dir)[1]
        hf_in = hf_pair.hf_prefix(processor, tok, images)
        prefix_len = hf_in["input_ids"].shape[1]
        ids = torch.cat([hf_in["input_ids"], torch.from_numpy(targets).long()], dim=1)
        labels = ids.clone()
        labels[:, :prefix_len] = -100
        # GRPO: 8 images, each the prefix of its group's 8 completions (TRL: one image per row)
        group_rows = np.repeat(np.arange(PROMPTS), GROUP)
        grpo_ids = torch.cat([hf_in["input_ids"][group_rows], torch.from_numpy(targets).long()], dim=1)
        hf_loss = {
            "sft": lambda m: m(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=hf_in["pixel_values"],
                               labels=labels).loss,
            "grpo": lambda m: torch_grpo_loss(
                m(input_ids=grpo_ids, attention_mask=torch.ones_like(grpo_ids),
                  pixel_values=hf_in["pixel_values"][group_rows]).logits[:, prefix_len - 1:-1],
                torch.from_numpy(targets).long(), torch.ones(n, t), torch.from_numpy(advantages),
                torch.from_numpy(ref_logp)),
        }

        def ours(step: str):
            """Our jitted step of kind ``step`` on the exported weights, as a no-argument call."""
            policy = sft.train.policy_state(sft.train.init_state())  # the same seed: the exported weights
            if step == "sft":
                batch = sft.device_batch(dict(prefix, target_tokens=targets, target_mask=np.ones((n, t), bool)))
                box = [sft.train.init_from_policy(policy)]

                def call():
                    box[0], metrics = sft.step_fn(box[0], batch)
                    return float(jax.device_get(metrics["loss"]))
                return call
            rl = RLRun(config, tok.vocab_size)
            box = [rl.train.init_from_policy(policy)]
            batch = rl.device_batch(dict({k: v[:PROMPTS] for k, v in prefix.items()}, target_tokens=targets[:PROMPTS],
                                         target_mask=np.ones((PROMPTS, t), bool)))
            full = lambda x: jnp.full((n,), x, jnp.float32)  # noqa: E731
            rollout = dict(tokens=jnp.asarray(targets), mask=jnp.ones((n, t), bool), ref_logp=jnp.asarray(ref_logp),
                           old_logp=jnp.zeros((n, t), jnp.float32), first_pass=jnp.asarray(True),
                           advantages=jnp.asarray(advantages), eps_low=full(EPS), eps_high=full(EPS),
                           beta=full(BETA), token_weights=jnp.ones((n, t), jnp.float32),
                           truncated=jnp.zeros((n,), bool))

            def call():
                box[0], metrics, _ = rl.update_fn(box[0], batch, rollout)
                return float(jax.device_get(metrics["loss"]))
            return call

        def hf(step: str):
            """The same step in PyTorch: a freshly loaded model and AdamW, as a no-argument call."""
            model = hf_pair.load_hf(out_dir)[0].train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.01)

            def call():
                opt.zero_grad(set_to_none=True)
                loss = hf_loss[step](model)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                return float(loss.detach())
            return call

        flops = memory_model.flops_per_sequence(cfg, hf_pair.PROMPT_LEN, t, 1, ())
        work = {"sft": (n * flops["train"],) * 2,  # (ours, HF) model FLOPs of one step
                "grpo": (n * (flops["train"] - flops["image_train"]) + PROMPTS * flops["image_train"],
                         n * flops["train"])}
        result["ratio_vs_hf"][size], result["fraction_of_peak"][size], result["loss_equal"][size] = {}, {}, {}
        for step in ("sft", "grpo"):
            losses, times = [], []
            for make in (ours, hf):  # one side in memory at a time: base at batch 64 needs most of 24 GB
                call = make(step)
                losses.append(call())  # the first step (compiles ours), then the timed ones
                times.append(roofline.median_time(call, args.repeats))
                del call
                gc.collect()
                jax.clear_caches()
            (a, b), (t_ours, t_hf) = losses, times
            share = (work[step][0] / t_ours / peak, work[step][1] / t_hf / peak)
            result["ratio_vs_hf"][size][step] = round(t_hf / t_ours, 3)
            result["fraction_of_peak"][size][step] = {"ours": round(share[0], 4), "hf": round(share[1], 4)}
            result["loss_equal"][size][step] = bool(abs(a - b) <= 1e-4 * max(1.0, abs(b)))
            lines.append(f"{size:6} {step:5} {n / t_ours:14.1f} {n / t_hf:12.1f} {t_hf / t_ours:6.2f} "
                         f"{100 * share[0]:9.1f}% {100 * share[1]:7.1f}%  {a:.5f} / {b:.5f}")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
