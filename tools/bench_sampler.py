"""Decode throughput of the KV-cache sampler against a roofline measured on this machine.

    python tools/bench_sampler.py [--new_tokens=32] [--sizes=tiny,small] [--batches=32,128]

For each size and batch: decode tokens/s and time per decode step, where the step time is
``(time(T new tokens) - time(1 new token)) / (T - 1)``, so image encoding, prefill and compilation
are excluded. The roofline predicts a step as ``max(FLOPs / matmul rate, bytes / bandwidth)``:
FLOPs = 2 x batch x (decoder + head parameters) + attention over the full fixed-size cache;
bytes = those parameters + the KV cache, read once per step. The matmul rate (a large jitted
matmul) and the bandwidth (a large jitted array copy) are measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radflow_jax.models.policy import Policy, PolicyConfig, policy_config
from radflow_jax.rl.sampling import sample

VOCAB, IMAGE, PROMPT = 4000, 128, 8


def best_time(fn, repeats: int = 3) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up (compilation) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(n: int = 2048) -> float:
    """float32 FLOP/s of a jitted n x n matmul."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / best_time(lambda: f(a, a))


def memory_bandwidth(num_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s (read + write) of a jitted copy ``v + 1`` of a ``num_bytes`` array into itself.

    The input is donated so the copy reuses its buffer: a fresh output buffer each call would
    time the page faults of the new allocation (~4 GB/s here), not the memory.
    """
    f = jax.jit(lambda v: v + 1.0, donate_argnums=0)
    x = jax.block_until_ready(f(jnp.ones((num_bytes // 4,), jnp.float32)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x = jax.block_until_ready(f(x))
        times.append(time.perf_counter() - start)
    return 2 * num_bytes / min(times)


def decode_step_cost(cfg: PolicyConfig, batch: int, capacity: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one decode step: matmul parameters, attention over the full cache."""
    t = cfg.text
    per_layer = t.hidden * (t.heads + 2 * t.kv_heads) * t.head_dim + t.heads * t.head_dim * t.hidden
    per_layer += 3 * t.hidden * t.mlp
    matmul_params = t.layers * per_layer + t.hidden * t.vocab_size  # + lm_head; embedding is a gather
    attn_flops = 4 * batch * t.layers * t.heads * t.head_dim * capacity  # q.k and p.v
    flops = 2 * batch * matmul_params + attn_flops
    itemsize = jnp.dtype(cfg.compute_dtype).itemsize
    cache_bytes = 2 * t.layers * batch * capacity * t.kv_heads * t.head_dim * itemsize
    return flops, 4 * matmul_params + cache_bytes


def make_batch(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    prompt = rng.integers(7, VOCAB, (batch, PROMPT)).astype(np.int32)
    prompt[:, 0] = 1
    return dict(
        image=rng.uniform(-1, 1, (batch, 1, IMAGE, IMAGE, 1)).astype(np.float32),
        view_mask=np.ones((batch, 1), bool),
        prompt_tokens=prompt,
        prompt_mask=np.ones((batch, PROMPT), bool),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batches", default="32,128")
    args = parser.parse_args()

    rate, bandwidth = matmul_rate(), memory_bandwidth()
    print(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
    print(f"measured matmul rate {rate / 1e9:.1f} GFLOP/s, copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    header = (
        f"{'size':6} {'batch':>5} {'tok/s':>9} {'step ms':>8} {'pred ms':>8} "
        f"{'flop ms':>8} {'mem ms':>7} {'meas/pred':>9}"
    )
    print(header)
    for size in args.sizes.split(","):
        cfg = policy_config(size, VOCAB, IMAGE, max_views=1)
        graphdef, state = nnx.split(Policy(cfg, rngs=nnx.Rngs(0)))
        for b in map(int, args.batches.split(",")):
            data = make_batch(b)

            def run(n: int):
                # eos_id=-1: every sequence runs the full n steps.
                out = sample(graphdef, state, data, rng=jax.random.key(0), max_new_tokens=n, eos_id=-1)
                return out.tokens

            t_many, t_one = best_time(lambda: run(args.new_tokens)), best_time(lambda: run(1))
            step = (t_many - t_one) / (args.new_tokens - 1)
            capacity = cfg.vision.num_patches + PROMPT + args.new_tokens
            flops, nbytes = decode_step_cost(cfg, b, capacity)
            flop_s, mem_s = flops / rate, nbytes / bandwidth
            predicted = max(flop_s, mem_s)
            print(
                f"{size:6} {b:5d} {b / step:9.0f} {step * 1e3:8.2f} {predicted * 1e3:8.2f} "
                f"{flop_s * 1e3:8.2f} {mem_s * 1e3:7.2f} {step / predicted:9.2f}"
            )


if __name__ == "__main__":
    main()
