"""Llama-style text decoder with an explicit, fixed-shape KV cache.

RMSNorm, RoPE (HF "rotate half" layout), grouped-query attention, SwiGLU MLP, untied ``lm_head``.
Attribute names mirror Hugging Face ``LlamaForCausalLM`` (``model.embed_tokens``,
``model.layers.self_attn.q_proj`` ..., ``model.norm``, ``lm_head``); see the table in
``policy.py``. ``attention_bias`` adds Qwen2-style biases to q/k/v (not to o_proj). The layers are
one stacked ``DecoderLayer`` (leading axis = layer, HF's ``layers.N`` is slice N) run by
``scan_layers``.

The decoder works on *embeddings*, not token ids, so the policy can put image features in front.
Two modes share one layer implementation:
- full sequence (training, prefill): attention over the sequence itself, returning each layer's
  keys/values so a prefill can store them;
- cached (decode): the new keys/values are written into the cache at ``cache.index`` and the
  queries attend over the whole fixed-length cache, masked by ``cache.key_mask``. The cache of all
  layers is one array per keys/values carried through the layer scan, so each layer writes its
  one new slot in place.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from radflow_jax.models.layers import LAYERS, Dense, RMSNorm, attend, param, rope, scan_layers, stack_layers
from radflow_jax.models.sharding import constrain

# Logical names of the activations (``sharding.constrain``).
RESIDUAL = ("batch", "length", "embed")
Q_HEADS = ("batch", "length", "heads", "head_dim")
KV_HEADS = ("batch", "length", "kv_heads", "head_dim")
HIDDEN = ("batch", "length", "mlp")
LOGITS = ("batch", "length", "vocab")
CACHE = (LAYERS, "cache_batch", "length", "kv_heads", "head_dim")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    attention_bias: bool = False
    max_seq_len: int = 2048

    def __post_init__(self):
        if self.heads % self.kv_heads:
            raise ValueError(f"text heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"text head_dim {self.head_dim} must be even for RoPE")
        if self.layers < 1:
            raise ValueError(f"text layers must be >= 1, got {self.layers}")


@struct.dataclass
class KVCache:
    """Keys/values of every layer, of a fixed capacity S, plus what a decode step needs to continue.

    ``index`` is shared by the batch: every row's prefix has the same padded length, so the n-th
    generated token of every row lands in the same slot. Pads inside the prefix are excluded by
    ``key_mask`` and do not advance ``positions``.
    """

    k: jax.Array  # [layers, B, S, kv_heads, head_dim]
    v: jax.Array
    key_mask: jax.Array  # bool [B, S]: slot holds a real token
    positions: jax.Array  # int32 [B]: RoPE position of the next token
    index: jax.Array  # int32 []: slot of the next token

    @property
    def capacity(self) -> int:
        return self.key_mask.shape[1]

    def repeat(self, n: int) -> KVCache:
        """Each row repeated ``n`` times in place (row b -> rows b*n .. b*n+n-1), for group sampling."""
        return self.replace(
            k=constrain(jnp.repeat(self.k, n, axis=1), CACHE),
            v=constrain(jnp.repeat(self.v, n, axis=1), CACHE),
            key_mask=jnp.repeat(self.key_mask, n, axis=0),
            positions=jnp.repeat(self.positions, n, axis=0),
        )


class Attention(nnx.Module):
    """Causal grouped-query self-attention (``self_attn``)."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.theta = cfg.rope_theta
        kw = dict(dtype=dtype, rngs=rngs)
        self.q_proj = Dense((d,), (h, hd), ("embed", "heads", "head_dim"), use_bias=bias, **kw)
        self.k_proj = Dense((d,), (kv, hd), ("embed", "kv_heads", "head_dim"), use_bias=bias, **kw)
        self.v_proj = Dense((d,), (kv, hd), ("embed", "kv_heads", "head_dim"), use_bias=bias, **kw)
        self.o_proj = Dense((h, hd), (d,), ("heads", "head_dim", "embed"), use_bias=False, **kw)

    def _qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        q = constrain(rope(self.q_proj(x), positions, self.theta), Q_HEADS)
        k = constrain(rope(self.k_proj(x), positions, self.theta), KV_HEADS)
        return q, k, constrain(self.v_proj(x), KV_HEADS)

    def __call__(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x [B, L, D], positions [B, L], mask bool [B, L, L] -> (out [B, L, D], (keys, values))."""
        q, k, v = self._qkv(x, positions)
        return self.o_proj(attend(q, k, v, mask)), (k, v)

    def decode(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array],
        layer: jax.Array,
        index: jax.Array,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Writes this sequence's keys/values into slot ``index`` of layer ``layer`` of the
        all-layer ``cache`` [layers, B, S, KV, hd] and attends over that layer (mask [B, L, S])."""
        q, k, v = self._qkv(x, positions)
        start = (layer, 0, index, 0, 0)
        ck = jax.lax.dynamic_update_slice(cache[0], k[None].astype(cache[0].dtype), start)
        cv = jax.lax.dynamic_update_slice(cache[1], v[None].astype(cache[1].dtype), start)
        return self.o_proj(attend(q, ck[layer], cv[layer], mask)), (ck, cv)


class MLP(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        d, m = cfg.hidden, cfg.mlp
        self.gate_proj = Dense((d,), (m,), ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.up_proj = Dense((d,), (m,), ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.down_proj = Dense((m,), (d,), ("mlp", "embed"), use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(constrain(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x), HIDDEN))


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden, eps=cfg.rms_eps)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, eps=cfg.rms_eps)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def _mlp_residual(self, x: jax.Array) -> jax.Array:
        return constrain(x + self.mlp(self.post_attention_layernorm(x)), RESIDUAL)

    def __call__(self, x, positions, mask):
        h, kv = self.self_attn(self.input_layernorm(x), positions, mask)
        return self._mlp_residual(x + h), kv

    def decode(self, x, positions, mask, cache, layer, index):
        h, cache = self.self_attn.decode(self.input_layernorm(x), positions, mask, cache, layer, index)
        return self._mlp_residual(x + h), cache


class Embedding(nnx.Module):
    """Token embedding table ``weight`` [vocab, D]."""

    def __init__(self, vocab: int, dim: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.weight = param(rngs, (vocab, dim), ("vocab", "embed"))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        table = constrain(self.weight[...], ("vocab", None))  # gathered whole along embed (FSDP)
        return constrain(jnp.take(table, tokens, axis=0).astype(self.dtype), RESIDUAL)


class TextModel(nnx.Module):
    """HF ``LlamaModel``: embeddings, layers (stacked), final norm (no head)."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden, dtype=dtype, rngs=rngs)
        self.layers = stack_layers(lambda: DecoderLayer(cfg, dtype=dtype, rngs=rngs), cfg.layers)
        self.norm = RMSNorm(cfg.hidden, eps=cfg.rms_eps)


def lm_logits(norm: RMSNorm, lm_head: Dense, hidden: jax.Array) -> jax.Array:
    """Final norm and head: hidden [B, L, D] -> logits float32 [B, L, vocab]."""
    return constrain(lm_head(norm(hidden)).astype(jnp.float32), LOGITS)


class Decoder(nnx.Module):
    """HF ``LlamaForCausalLM``: ``model`` plus an untied ``lm_head`` (kernel [D, vocab])."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, remat: str, rngs: nnx.Rngs,
                 unroll: bool = False):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.unroll = unroll
        self.model = TextModel(cfg, dtype=dtype, rngs=rngs)
        self.lm_head = Dense(
            (cfg.hidden,), (cfg.vocab_size,), ("embed", "vocab"), use_bias=False, dtype=dtype, rngs=rngs
        )

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.model.embed_tokens(tokens)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """``lm_logits`` of this decoder: hidden [B, L, D] -> float32 [B, L, vocab]."""
        return lm_logits(self.model.norm, self.lm_head, hidden)

    def __call__(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Full-sequence pass. x [B, L, D], positions [B, L], mask bool [B, L, L].

        Returns the hidden states before the final norm and every layer's (keys, values), each
        [layers, B, L, KV, hd].
        """
        return scan_layers(lambda layer, y, p, m: layer(y, p, m), self.model.layers, x, positions, mask,
                           remat=self.remat, unroll=self.unroll)

    def decode(self, x: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One new token per row: x [B, 1, D] -> (hidden [B, 1, D], cache with it appended)."""
        index = cache.index
        key_mask = jax.lax.dynamic_update_slice_in_dim(
            cache.key_mask, jnp.ones((x.shape[0], 1), bool), index, axis=1
        )

        def body(layer, carry, positions, mask):
            x, kv, i = carry
            x, kv = layer.decode(x, positions, mask, kv, i, index)
            return (x, kv, i + 1), None

        start = (x, (cache.k, cache.v), jnp.zeros((), jnp.int32))
        (x, (k, v), _), _ = scan_layers(
            body, self.model.layers, start, cache.positions[:, None], key_mask[:, None, :], unroll=self.unroll
        )
        new_cache = KVCache(
            k=constrain(k, CACHE), v=constrain(v, CACHE), key_mask=key_mask,
            positions=cache.positions + 1, index=index + 1,
        )
        return x, new_cache


def cache_from_prefill(
    kvs: tuple[jax.Array, jax.Array], prefix_mask: jax.Array, capacity: int, dtype: jnp.dtype
) -> KVCache:
    """Pads a prefill's keys/values [layers, B, L, KV, hd] to ``capacity`` slots."""
    b, length = prefix_mask.shape
    if capacity < length:
        raise ValueError(f"cache capacity {capacity} is smaller than the prefix length {length}")
    pad = ((0, 0), (0, 0), (0, capacity - length), (0, 0), (0, 0))
    k, v = kvs
    return KVCache(
        k=constrain(jnp.pad(k.astype(dtype), pad), CACHE),
        v=constrain(jnp.pad(v.astype(dtype), pad), CACHE),
        key_mask=jnp.pad(prefix_mask, ((0, 0), (0, capacity - length))),
        positions=prefix_mask.sum(-1).astype(jnp.int32),
        index=jnp.asarray(length, jnp.int32),
    )
