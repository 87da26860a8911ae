"""Rollout speed: our sampler against Hugging Face ``generate`` on the same weights.

    python tools/bench_rollout.py [--sizes=tiny,small,base] [--repeats=3]

For each size a randomly initialised policy is exported with ``radflow_jax.hf.export`` and loaded
back with ``transformers.LlavaForConditionalGeneration``; both sides then produce the same 64
sequences (8 prompts x group 8, the RL default), from the same images and prompt, exactly
``--new_tokens`` new tokens each (EOS disabled on both sides), greedy and sampled (temperature
0.3 as the RL default, no top-k/top-p), torch at JAX's thread count. Times are end to end
(image encoding, prefill, decode), the median of ``--repeats`` calls after a warm-up call. Greedy
token ids are compared row by row. Our decode step (``(t(T) - t(1)) / (T - 1)``) is set against
the roofline of this machine's matmul rate and copy bandwidth, measured in the same run.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import roofline  # noqa: E402

import hf_pair  # noqa: E402

from radflow_jax.models.policy import Policy, policy_config  # noqa: E402
from radflow_jax.rl.sampling import sample  # noqa: E402

TEMPERATURE = 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small,base")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    rate, bandwidth = roofline.matmul_rate(), roofline.memory_bandwidth()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}; "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; {threads} cores")
    print(f"measured: matmul {rate / 1e9:.1f} GFLOP/s, copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows, new = args.prompts * args.group, args.new_tokens
    print(f"{rows} sequences ({args.prompts} prompts x group {args.group}), {new} new tokens, float32")

    workdir = tempfile.mkdtemp(prefix="bench_rollout_")
    tokenizer = hf_pair.tokenizer(workdir)
    ours_batch, images = hf_pair.prefix_inputs(tokenizer, args.prompts)

    header = f"{'size':6} {'mode':8} {'ours tok/s':>11} {'HF tok/s':>9} {'ratio':>6}  greedy rows equal"
    lines, result = [header], {"bench": "rollout", "ratio_vs_hf": {}, "greedy_rows_equal": {},
                               "decode_step_ms": {}, "decode_step_vs_roofline": {}}
    for size in args.sizes.split(","):
        cfg = policy_config(size, hf_pair.VOCAB, hf_pair.IMAGE, max_views=1)
        graphdef, state = nnx.split(Policy(cfg, rngs=nnx.Rngs(0)))
        model, processor = hf_pair.load_hf(hf_pair.export_to_hf(state, cfg, workdir, size, new))
        model.eval()
        model.generation_config.eos_token_id = None  # every row runs the full length
        hf_in = hf_pair.hf_prefix(processor, tokenizer, images)
        hf_greedy_in = {k: v.repeat_interleave(args.group, 0) for k, v in hf_in.items()}

        def ours(greedy: bool, n: int = new):
            out = sample(graphdef, state, ours_batch, rng=jax.random.key(0), max_new_tokens=n,
                         group_size=args.group, greedy=greedy, temperature=TEMPERATURE, eos_id=-1,
                         pad_id=tokenizer.pad_id)
            return np.asarray(jax.block_until_ready(out.tokens))

        def hf(greedy: bool):
            with torch.inference_mode():
                if greedy:
                    out = model.generate(**hf_greedy_in, do_sample=False, max_new_tokens=new, min_new_tokens=new)
                else:
                    out = model.generate(**hf_in, do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0,
                                         num_return_sequences=args.group, max_new_tokens=new, min_new_tokens=new)
            return out[:, hf_in["input_ids"].shape[1]:].numpy()

        ratios, ours_time = {}, {}
        for mode, greedy in (("greedy", True), ("sampled", False)):
            t_ours = ours_time[mode] = roofline.median_time(lambda: ours(greedy), args.repeats)
            t_hf = roofline.median_time(lambda: hf(greedy), args.repeats)
            ratios[mode] = t_hf / t_ours
            equal = ""
            if greedy:
                a, b = ours(True), hf(True)
                assert a.shape == b.shape == (rows, new), (a.shape, b.shape)
                same = int(np.all(a == b, axis=1).sum())
                result["greedy_rows_equal"][size] = f"{same}/{rows}"
                equal = f"{same}/{rows}"
            lines.append(f"{size:6} {mode:8} {rows * new / t_ours:11.0f} {rows * new / t_hf:9.0f} "
                         f"{ratios[mode]:6.2f}  {equal}")
            print(lines[-1], flush=True)
        result["ratio_vs_hf"][size] = {k: round(v, 3) for k, v in ratios.items()}
        step = (ours_time["greedy"] - roofline.median_time(lambda: ours(True, 1), args.repeats)) / (new - 1)
        flops, nbytes = roofline.decode_step_cost(cfg, rows, cfg.vision.num_patches + hf_pair.PROMPT_LEN + new)
        predicted = max(flops / rate, nbytes / bandwidth)
        result["decode_step_ms"][size] = round(step * 1e3, 3)
        result["decode_step_vs_roofline"][size] = round(step / predicted, 2)
        print(f"{size:6} decode step {step * 1e3:.2f} ms; roofline {predicted * 1e3:.2f} ms "
              f"(matmul {flops / rate * 1e3:.2f}, memory {nbytes / bandwidth * 1e3:.2f}): "
              f"{step / predicted:.2f}x the roofline", flush=True)
    print("\n".join(lines))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
