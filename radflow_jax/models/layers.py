"""Building blocks shared by the vision tower and the text decoder.

Parameters are always float32 and carry logical axis names (``out_sharding`` metadata) from the
moment they are created; the mapping from logical names to mesh axes lives in config, and sharded
parameters are made by jitting ``init`` with ``out_shardings`` from ``nnx.get_partition_spec``
(STYLE §4, §6). Eager sharding is off so that a model builds without a mesh on one CPU.

Every module takes a compute ``dtype``: inputs and weights are cast to it for the matmuls, while
norms, softmax and log-probabilities run in float32.

Repeated blocks are built once per layer and stacked (``stack_layers``): each variable gains a
leading ``layers`` axis, and ``scan_layers`` runs them as one scan, so compile time does not grow
with depth. ``REMAT`` names what a scanned block keeps for the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# A large finite negative, so rows whose keys are all masked stay finite (uniform) instead of NaN.
MASK_VALUE = -1e30

INIT_STD = 0.02  # Hugging Face `initializer_range`

LAYERS = "layers"  # logical name of the stacked-layer axis of every scanned block's variables

# What a scanned block keeps for its backward pass (``PolicyConfig.remat``): "none" everything;
# "full" nothing (the block is recomputed from its input); "dots_saveable" the outputs of matmuls
# without batch dimensions, i.e. the projections, while attention scores and probabilities
# (batched over rows and heads, growing with length squared) and elementwise ops are recomputed.
REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def param(
    rngs: nnx.Rngs | None,
    shape: Sequence[int],
    names: Sequence[str | None],
    init: str = "normal",
) -> nnx.Param:
    """A float32 parameter named by logical axes; ``init`` is "normal" (std 0.02), "zeros" or "ones"."""
    if len(shape) != len(names):
        raise ValueError(f"shape {tuple(shape)} and axis names {tuple(names)} differ in rank")
    if init == "normal":
        value = INIT_STD * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(tuple(shape), jnp.float32)
    elif init == "ones":
        value = jnp.ones(tuple(shape), jnp.float32)
    else:
        raise ValueError(f"unknown init {init!r}; use 'normal', 'zeros' or 'ones'")
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` over the trailing ``len(in_shape)`` axes of ``x``.

    The kernel is ``[*in_shape, *out_shape]`` (input first, unlike torch's ``[out, in]``), so a
    head-split projection ``[embed, heads, head_dim]`` keeps heads as their own shardable axis.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        names: Sequence[str | None],
        *,
        use_bias: bool,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.in_rank = len(in_shape)
        self.dtype = dtype
        self.kernel = param(rngs, (*in_shape, *out_shape), names)
        out_names = tuple(names)[len(in_shape) :]
        self.bias = param(None, tuple(out_shape), out_names, "zeros") if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        contract = (tuple(range(x.ndim - self.in_rank, x.ndim)), tuple(range(self.in_rank)))
        y = jnp.tensordot(x.astype(self.dtype), kernel, axes=contract)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm with weight and bias (SigLIP, eps 1e-6), computed in float32."""

    def __init__(self, dim: int, name: str, *, eps: float = 1e-6):
        self.eps = eps
        self.weight = param(None, (dim,), (name,), "ones")
        self.bias = param(None, (dim,), (name,), "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
        return y.astype(x.dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm: ``x / rms(x) * weight`` in float32, weight initialised to ones."""

    def __init__(self, dim: int, *, eps: float):
        self.eps = eps
        self.weight = param(None, (dim,), ("embed",), "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return (y * self.weight[...]).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in the Hugging Face Llama layout (rotate the two halves of head_dim).

    x: [B, L, heads, head_dim]; positions: int [B, L].
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, half]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query softmax attention.

    q: [B, Lq, H, hd]; k, v: [B, S, KV, hd] with H a multiple of KV; mask: bool [B, Lq, S]
    (True = may attend). Returns [B, Lq, H, hd]. Scores and softmax in float32.
    """
    b, lq, h, hd = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, lq, kv, h // kv, hd)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (hd**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return out.reshape(b, lq, h, hd)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """RoPE positions that count only real tokens: ``cumsum(mask) - 1`` (pads get a clipped 0).

    This is what makes a left-padded prompt produce the same logits as the unpadded one.
    """
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def stack_layers(make: Callable[[], nnx.Module], n: int) -> nnx.Module:
    """``n`` blocks from ``make()`` merged into one whose variables have a leading ``layers`` axis.

    The blocks are built one after another, so their initialisers draw from the RNG streams in
    the same order as ``n`` separate blocks do: a stacked model starts from exactly the
    parameters of the unrolled one with the same seed.
    """
    if n < 1:
        raise ValueError(f"a stack needs at least one layer, got {n}")
    blocks = [make() for _ in range(n)]
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.state(b) for b in blocks))

    def name_axis(var: nnx.Variable) -> nnx.Variable:
        names = var.get_metadata().get("out_sharding")
        return var.replace(out_sharding=(LAYERS, *names)) if names is not None else var

    stacked = jax.tree.map(name_axis, stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, stacked)


def scan_layers(
    body: Callable[..., tuple[Any, Any]], layers: nnx.Module, carry: Any, *shared: Any, remat: str = "none",
    unroll: bool = False,
) -> tuple[Any, Any]:
    """``carry, y = body(layer, carry, *shared)`` for each layer of a stacked block, in order.

    One ``jax.lax.scan`` over the block's split state (each step merges its layer's slice), so the
    program holds one layer whatever the depth. A pure scan rather than ``nnx.scan``: the module
    may come from an enclosing trace (a model closed over by the sampler's ``while_loop``).
    ``shared`` values are the same for every layer. Returns the last carry and the ``y``s stacked
    along a leading layer axis. ``remat`` (a ``REMAT`` key) checkpoints each layer's step.
    ``unroll`` lays the layers out as straight-line code (``PolicyConfig.scan_layers=False``):
    no loop and no stacked residual buffers to fill, which made a 4-layer training step ~20 %
    faster on a 2-core CPU, at a compile time that grows with depth.
    """
    graphdef, state = nnx.split(layers)

    def step(carry, layer_state):
        return body(nnx.merge(graphdef, layer_state), carry, *shared)

    if REMAT[remat] is not None:
        step = jax.checkpoint(step, policy=REMAT[remat], prevent_cse=False)
    return jax.lax.scan(step, carry, state, unroll=unroll)
