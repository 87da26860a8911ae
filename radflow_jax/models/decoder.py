"""Llama-style text decoder with an explicit, fixed-shape KV cache.

RMSNorm, RoPE (HF "rotate half" layout), grouped-query attention, SwiGLU MLP, untied ``lm_head``.
Attribute names mirror Hugging Face ``LlamaForCausalLM`` (``model.embed_tokens``,
``model.layers.N.self_attn.q_proj`` ..., ``model.norm``, ``lm_head``); see the table in
``policy.py``. ``attention_bias`` adds Qwen2-style biases to q/k/v (not to o_proj).

The decoder works on *embeddings*, not token ids, so the policy can put image features in front.
Two modes share one layer implementation:
- full sequence (training, prefill): attention over the sequence itself, returning each layer's
  keys/values so a prefill can store them;
- cached (decode): the new keys/values are written into the cache at ``cache.index`` and the
  queries attend over the whole fixed-length cache, masked by ``cache.key_mask``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from radflow_jax.models.layers import Dense, RMSNorm, attend, param, rope


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


@struct.dataclass
class KVCache:
    """Per-layer keys/values of a fixed capacity S, plus what a decode step needs to continue.

    ``index`` is shared by the batch: every row's prefix has the same padded length, so the n-th
    generated token of every row lands in the same slot. Pads inside the prefix are excluded by
    ``key_mask`` and do not advance ``positions``.
    """

    k: tuple[jax.Array, ...]  # per layer [B, S, kv_heads, head_dim]
    v: tuple[jax.Array, ...]
    key_mask: jax.Array  # bool [B, S]: slot holds a real token
    positions: jax.Array  # int32 [B]: RoPE position of the next token
    index: jax.Array  # int32 []: slot of the next token

    @property
    def capacity(self) -> int:
        return self.key_mask.shape[1]

    def repeat(self, n: int) -> KVCache:
        """Each row repeated ``n`` times in place (row b -> rows b*n .. b*n+n-1), for group sampling."""
        rep = lambda x: jnp.repeat(x, n, axis=0)  # noqa: E731
        return self.replace(
            k=tuple(map(rep, self.k)),
            v=tuple(map(rep, self.v)),
            key_mask=rep(self.key_mask),
            positions=rep(self.positions),
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

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x [B, L, D], positions [B, L], mask bool [B, L, S] -> (out [B, L, D], (keys, values)).

        Without a cache S == L and the returned keys/values are this sequence's; with one, they
        are the cache with this sequence written at ``index``.
        """
        q = rope(self.q_proj(x), positions, self.theta)
        k = rope(self.k_proj(x), positions, self.theta)
        v = self.v_proj(x)
        if cache_kv is not None:
            ck, cv = cache_kv
            k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), index, axis=1)
        return self.o_proj(attend(q, k, v, mask)), (k, v)


class MLP(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        d, m = cfg.hidden, cfg.mlp
        self.gate_proj = Dense((d,), (m,), ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.up_proj = Dense((d,), (m,), ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.down_proj = Dense((m,), (d,), ("mlp", "embed"), use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden, eps=cfg.rms_eps)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, eps=cfg.rms_eps)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, positions, mask, cache_kv=None, index=None):
        h, kv = self.self_attn(self.input_layernorm(x), positions, mask, cache_kv, index)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Embedding(nnx.Module):
    """Token embedding table ``weight`` [vocab, D]."""

    def __init__(self, vocab: int, dim: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.weight = param(rngs, (vocab, dim), ("vocab", "embed"))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], tokens, axis=0).astype(self.dtype)


class TextModel(nnx.Module):
    """HF ``LlamaModel``: embeddings, layers, final norm (no head)."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.layers)])
        self.norm = RMSNorm(cfg.hidden, eps=cfg.rms_eps)


class Decoder(nnx.Module):
    """HF ``LlamaForCausalLM``: ``model`` plus an untied ``lm_head`` (kernel [D, vocab])."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, remat: str, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.model = TextModel(cfg, dtype=dtype, rngs=rngs)
        self.lm_head = Dense(
            (cfg.hidden,), (cfg.vocab_size,), ("embed", "vocab"), use_bias=False, dtype=dtype, rngs=rngs
        )

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.model.embed_tokens(tokens)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final norm and head; logits in float32."""
        return self.lm_head(self.model.norm(hidden)).astype(jnp.float32)

    def __call__(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
        """Full-sequence pass. x [B, L, D], positions [B, L], mask bool [B, L, L].

        Returns the hidden states before the final norm and each layer's (keys, values).
        """
        kvs = []
        for layer in self.model.layers:
            if self.remat != "none":
                x, kv = nnx.remat(lambda lyr, *a: lyr(*a))(layer, x, positions, mask)
            else:
                x, kv = layer(x, positions, mask)
            kvs.append(kv)
        return x, kvs

    def decode(self, x: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One new token per row: x [B, 1, D] -> (hidden [B, 1, D], cache with it appended)."""
        index = cache.index
        key_mask = jax.lax.dynamic_update_slice_in_dim(
            cache.key_mask, jnp.ones((x.shape[0], 1), bool), index, axis=1
        )
        positions = cache.positions[:, None]
        ks, vs = [], []
        for i, layer in enumerate(self.model.layers):
            x, (k, v) = layer(x, positions, key_mask[:, None, :], (cache.k[i], cache.v[i]), index)
            ks.append(k)
            vs.append(v)
        new_cache = KVCache(
            k=tuple(ks), v=tuple(vs), key_mask=key_mask, positions=cache.positions + 1, index=index + 1
        )
        return x, new_cache


def cache_from_prefill(
    kvs: list[tuple[jax.Array, jax.Array]], prefix_mask: jax.Array, capacity: int, dtype: jnp.dtype
) -> KVCache:
    """Pads a prefill's per-layer keys/values [B, L, KV, hd] to ``capacity`` slots."""
    b, length = prefix_mask.shape
    if capacity < length:
        raise ValueError(f"cache capacity {capacity} is smaller than the prefix length {length}")
    pad = ((0, 0), (0, capacity - length), (0, 0), (0, 0))
    return KVCache(
        k=tuple(jnp.pad(k.astype(dtype), pad) for k, _ in kvs),
        v=tuple(jnp.pad(v.astype(dtype), pad) for _, v in kvs),
        key_mask=jnp.pad(prefix_mask, ((0, 0), (0, capacity - length))),
        positions=prefix_mask.sum(-1).astype(jnp.int32),
        index=jnp.asarray(length, jnp.int32),
    )
