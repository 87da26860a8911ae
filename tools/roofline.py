"""This machine's limits, measured in the calling benchmark's own run: matmul rate and memory
bandwidth, and the roofline cost of a decode step. Benchmarks compare against these, not against
a datasheet, so a ratio stays meaningful on a shared or throttled machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from radflow_jax.models.policy import PolicyConfig


def timed(fn: Callable[[], object], repeats: int = 3) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up (compilation) call; ``fn`` blocks."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median of ``timed``: robust to one slow call on a shared machine."""
    return statistics.median(timed(fn, repeats))


def matmul_rate(n: int = 2048, dtype=jnp.float32) -> float:
    """FLOP/s of a jitted n x n matmul (the machine's practical matmul peak)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / min(timed(lambda: jax.block_until_ready(f(a, a))))


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
    return flops, 4 * matmul_params + cache_bytes  # parameters are float32
