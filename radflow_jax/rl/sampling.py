"""Batched report sampling with a fixed-shape KV cache in one jitted ``lax.while_loop``.

For each batch row the images are encoded and the ``[images][prompt]`` prefix is prefilled once;
the cache is then repeated to the row's ``group_size`` members (row b -> outputs b*G .. b*G+G-1)
and every member decodes on its own. The loop stops as soon as every sequence has emitted EOS.

Returned ``logprobs`` are those of the sampled tokens under the *unmodified* policy (temperature
1, no top-k/top-p), as ``models.policy.token_scores`` gives them up to the decode's rounding. GRPO
does not use them: its log-probs are teacher-forced at the sampling temperature (``rl/trainer.py``).

The KV cache is an explicit pytree (``KVCache``, all layers in one array per keys/values) carried
through the loop, so XLA updates it in place; nothing outside the jitted function holds it.

Given a ``mesh`` (and the logical-axis ``rules``), the sampler is jitted with explicit shardings:
parameters by their logical names, the prefix rows and every output over ``batch``, and it is
traced under ``sharding_rules`` so activations and the cache are laid out by name too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from radflow_jax.models.decoder import KVCache
from radflow_jax.models.layers import MASK_VALUE
from radflow_jax.models.sharding import canonical_rules, named_sharding, sharding_rules
from radflow_jax.parallel.mesh import Rules, state_shardings

PREFIX_KEYS = ("image", "view_mask", "prompt_tokens", "prompt_mask")


@struct.dataclass
class SampleOutput:
    tokens: jax.Array  # int32 [B*G, T]; pad after EOS
    logprobs: jax.Array  # float32 [B*G, T]; log pi(token) at temperature 1; 0 where mask is False
    mask: jax.Array  # bool [B*G, T]; True up to and including EOS
    lengths: jax.Array  # int32 [B*G]; number of True in mask
    truncated: jax.Array  # bool [B*G]; ran out of tokens before EOS


@struct.dataclass
class SamplerSettings:
    """Static decoding settings (part of the jit cache key)."""

    max_new_tokens: int = struct.field(pytree_node=False)
    group_size: int = struct.field(pytree_node=False)
    temperature: float = struct.field(pytree_node=False)
    top_k: int = struct.field(pytree_node=False)
    top_p: float = struct.field(pytree_node=False)
    greedy: bool = struct.field(pytree_node=False)
    eos_id: int = struct.field(pytree_node=False)
    pad_id: int = struct.field(pytree_node=False)


@struct.dataclass
class _LoopState:
    step: jax.Array  # int32 []
    logits: jax.Array  # float32 [N, vocab]: distribution of the token at `step`
    cache: KVCache
    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    done: jax.Array  # bool [N]: EOS already emitted


def filter_logits(logits: jax.Array, settings: SamplerSettings) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus) on float32 logits [N, vocab]."""
    logits = logits / settings.temperature
    if settings.top_k > 0:
        kth = jax.lax.top_k(logits, min(settings.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, MASK_VALUE, logits)
    if settings.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < settings.top_p  # the most likely token is always kept
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, MASK_VALUE, logits)
    return logits


def categorical(rng: jax.Array, logits: jax.Array, block: int = 128) -> jax.Array:
    """One draw per row from ``softmax(logits)`` [N, vocab] by inverting its CDF → int32 [N].

    The same distribution as ``jax.random.categorical``, from one uniform per row instead of a
    Gumbel draw per vocabulary entry: on a 2-core CPU that noise cost 4.5 ms of a 10 ms decode
    step at 64 rows × 4,000 words. The CDF is walked in two levels (block sums, then one
    block) so no cumulative sum runs over the whole vocabulary. Zero-probability entries
    (filtered by top-k/top-p) are never drawn.
    """
    n, v = logits.shape
    nb = -(-v // block)
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    p = jnp.pad(p, ((0, 0), (0, nb * block - v))).reshape(n, nb, block)
    sums = p.sum(axis=-1)  # [N, blocks]
    cdf = jnp.cumsum(sums, axis=-1)
    target = jax.random.uniform(rng, (n,)) * cdf[:, -1]
    b = jnp.minimum(jnp.sum(cdf <= target[:, None], axis=-1), nb - 1)
    before = jnp.take_along_axis(cdf - sums, b[:, None], axis=-1)
    inner = jnp.take_along_axis(p, b[:, None, None], axis=1)[:, 0]  # [N, block]
    j = jnp.sum(before + jnp.cumsum(inner, axis=-1) <= target[:, None], axis=-1)
    last = jnp.max(jnp.where(inner > 0, jnp.arange(block), 0), axis=-1)  # rounding never picks a p = 0
    return (b * block + jnp.minimum(j, last)).astype(jnp.int32)


def choose_tokens(logits: jax.Array, rng: jax.Array, settings: SamplerSettings) -> jax.Array:
    """Greedy argmax or a sample from the filtered distribution; int32 [N]."""
    if settings.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return categorical(rng, filter_logits(logits, settings))


def _sample(
    graphdef: nnx.GraphDef,
    settings: SamplerSettings,
    state: nnx.State,
    prefix: dict[str, jax.Array],
    rng: jax.Array,
) -> SampleOutput:
    """Prefill once, repeat to the group, then one token per loop step.

    The carry holds the logits that choose token ``step``; each step picks the token, records its
    temperature-1 log-prob and feeds it to the cache (the last feed's logits go unused).
    """
    model = nnx.merge(graphdef, state)
    g, t_max = settings.group_size, settings.max_new_tokens
    num_image = prefix["view_mask"].shape[1] * model.cfg.vision.num_patches
    capacity = num_image + prefix["prompt_tokens"].shape[1] + t_max
    if capacity > model.cfg.text.max_seq_len:
        raise ValueError(
            f"prefix + max_new_tokens = {capacity} exceeds max_seq_len {model.cfg.text.max_seq_len}"
        )
    logits, cache = model.prefill(
        prefix["image"], prefix["view_mask"], prefix["prompt_tokens"], prefix["prompt_mask"], capacity
    )
    if g > 1:
        logits, cache = jnp.repeat(logits, g, axis=0), cache.repeat(g)
    n = logits.shape[0]
    init = _LoopState(
        step=jnp.zeros((), jnp.int32),
        logits=logits,
        cache=cache,
        tokens=jnp.full((n, t_max), settings.pad_id, jnp.int32),
        logprobs=jnp.zeros((n, t_max), jnp.float32),
        mask=jnp.zeros((n, t_max), bool),
        done=jnp.zeros((n,), bool),
    )

    def cond(s: _LoopState) -> jax.Array:
        return (s.step < t_max) & ~jnp.all(s.done)

    def body(s: _LoopState) -> _LoopState:
        token = choose_tokens(s.logits, jax.random.fold_in(rng, s.step), settings)
        logp = jnp.take_along_axis(jax.nn.log_softmax(s.logits, axis=-1), token[:, None], axis=-1)[:, 0]
        token = jnp.where(s.done, settings.pad_id, token)
        logp = jnp.where(s.done, 0.0, logp)
        next_logits, cache = model.decode_step(token, s.cache)
        return _LoopState(
            step=s.step + 1,
            logits=next_logits,
            cache=cache,
            tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], s.step, axis=1),
            logprobs=jax.lax.dynamic_update_slice_in_dim(s.logprobs, logp[:, None], s.step, axis=1),
            mask=jax.lax.dynamic_update_slice_in_dim(s.mask, ~s.done[:, None], s.step, axis=1),
            done=s.done | (token == settings.eos_id),
        )

    final = jax.lax.while_loop(cond, body, init)
    return SampleOutput(
        tokens=final.tokens,
        logprobs=final.logprobs,
        mask=final.mask,
        lengths=final.mask.sum(axis=1).astype(jnp.int32),
        truncated=~final.done,
    )


_sample_jit = jax.jit(_sample, static_argnums=(0, 1))
_sharded_samplers: dict = {}  # (graphdef, settings, mesh, rules, prefix shapes) -> jitted sampler


def _rows(shape: tuple[int, ...], *, mesh: Mesh, rules: Rules) -> NamedSharding:
    """The leading (row) dim over the ``batch`` rule's mesh axes, where they divide it."""
    return named_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh, rules)


def _sharded_sampler(
    graphdef: nnx.GraphDef,
    settings: SamplerSettings,
    mesh: Mesh,
    rules: Rules,
    state: nnx.State,
    prefix: dict[str, jax.Array],
):
    """``_sample`` jitted with explicit in/out shardings for this mesh and these shapes (cached).

    A graphdef fixes the state's structure, shapes and logical names, so its shardings are
    computed once from the first state seen.
    """
    shapes = tuple((k, tuple(v.shape)) for k, v in sorted(prefix.items()))
    key = (graphdef, settings, mesh, rules, shapes)
    if key not in _sharded_samplers:
        rows = functools.partial(_rows, mesh=mesh, rules=rules)
        n, t = prefix["prompt_tokens"].shape[0] * settings.group_size, settings.max_new_tokens
        out = SampleOutput(tokens=rows((n, t)), logprobs=rows((n, t)), mask=rows((n, t)),
                           lengths=rows((n,)), truncated=rows((n,)))
        _sharded_samplers[key] = jax.jit(
            functools.partial(_sample, graphdef, settings),
            in_shardings=(state_shardings(state, mesh, rules), {k: rows(v.shape) for k, v in prefix.items()},
                          NamedSharding(mesh, PartitionSpec())),
            out_shardings=out,
        )
    return _sharded_samplers[key]


def sample(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: dict[str, jax.Array],
    *,
    rng: jax.Array,
    max_new_tokens: int,
    group_size: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    eos_id: int = 2,
    pad_id: int = 0,
    mesh: Mesh | None = None,
    rules: Rules = (),
) -> SampleOutput:
    """Samples ``group_size`` continuations per batch row -> ``SampleOutput`` with B*G rows.

    ``batch`` needs ``image``, ``view_mask``, ``prompt_tokens`` (left-padded) and ``prompt_mask``;
    other keys are ignored. Settings are static: each new combination compiles once. With a
    ``mesh``, parameters, rows and activations are sharded by ``rules`` (module docstring).
    """
    if max_new_tokens < 1 or group_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and group_size ({group_size}) must be >= 1")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling (got {temperature}); use greedy=True")
    if not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0 (got top_p={top_p}, top_k={top_k})")
    missing = [k for k in PREFIX_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; sampling needs {PREFIX_KEYS}")
    settings = SamplerSettings(
        max_new_tokens=max_new_tokens,
        group_size=group_size,
        temperature=float(temperature),
        top_k=top_k,
        top_p=float(top_p),
        greedy=greedy,
        eos_id=eos_id,
        pad_id=pad_id,
    )
    prefix = {k: batch[k] for k in PREFIX_KEYS}
    if mesh is None:
        return _sample_jit(graphdef, settings, state, prefix, rng)
    rules = canonical_rules(rules)
    with sharding_rules(mesh, rules):
        return _sharded_sampler(graphdef, settings, mesh, rules, state, prefix)(state, prefix, rng)
