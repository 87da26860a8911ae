"""SigLIP-style vision encoder: patch embedding, learned positions, pre-LayerNorm blocks.

Mirrors Hugging Face ``SiglipVisionModel`` with ``vision_use_head=False``: no CLS token, no pooling
head, the output is ``post_layernorm`` of every patch token. Attribute names follow the HF
parameter names (see the mapping table in ``policy.py``); the encoder blocks are one stacked
``VisionBlock`` (``layers``, leading axis = layer) run by ``scan_layers``.

Grayscale: ``channels`` defaults to 1, and the Hugging Face export keeps a 1-channel tower
(``num_channels=1``), so round trips are bit-identical; RGB checkpoints are folded to 1 channel on
import (``hf/convert.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from radflow_jax.models.layers import Dense, LayerNorm, attend, param, scan_layers, stack_layers
from radflow_jax.models.sharding import constrain

# Logical names of the activations (``sharding.constrain``).
RESIDUAL = ("batch", "patches", "vit_embed")
HEADS = ("batch", "patches", "heads", "head_dim")
HIDDEN = ("batch", "patches", "vit_mlp")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    image_size: int
    patch_size: int
    channels: int
    hidden: int
    layers: int
    heads: int
    mlp: int
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden % self.heads:
            raise ValueError(f"vision hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.layers < 1:
            raise ValueError(f"vision layers must be >= 1, got {self.layers}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, N, patch*patch*C], patches row-major like a stride-p conv, pixels (i, j, c)."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class VisionAttention(nnx.Module):
    """Bidirectional multi-head attention with biases (``self_attn.{q,k,v,out}_proj``)."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        d, h = cfg.hidden, cfg.heads
        hd = d // h
        names_in = ("vit_embed", "heads", "head_dim")
        self.q_proj = Dense((d,), (h, hd), names_in, use_bias=True, dtype=dtype, rngs=rngs)
        self.k_proj = Dense((d,), (h, hd), names_in, use_bias=True, dtype=dtype, rngs=rngs)
        self.v_proj = Dense((d,), (h, hd), names_in, use_bias=True, dtype=dtype, rngs=rngs)
        self.out_proj = Dense(
            (h, hd), (d,), ("heads", "head_dim", "vit_embed"), use_bias=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = (constrain(proj(x), HEADS) for proj in (self.q_proj, self.k_proj, self.v_proj))
        full = jnp.ones((x.shape[0], x.shape[1], x.shape[1]), bool)
        return self.out_proj(attend(q, k, v, full))


class VisionMLP(nnx.Module):
    """``fc1`` -> gelu (tanh approximation, HF ``gelu_pytorch_tanh``) -> ``fc2``."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.fc1 = Dense(
            (cfg.hidden,), (cfg.mlp,), ("vit_embed", "vit_mlp"), use_bias=True, dtype=dtype, rngs=rngs
        )
        self.fc2 = Dense(
            (cfg.mlp,), (cfg.hidden,), ("vit_mlp", "vit_embed"), use_bias=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(constrain(jax.nn.gelu(self.fc1(x), approximate=True), HIDDEN))


class VisionBlock(nnx.Module):
    """Pre-LayerNorm encoder block (HF ``SiglipEncoderLayer``)."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.layer_norm1 = LayerNorm(cfg.hidden, "vit_embed", eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg, dtype=dtype, rngs=rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden, "vit_embed", eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return constrain(x + self.mlp(self.layer_norm2(x)), RESIDUAL)


class VisionTransformer(nnx.Module):
    """Images [B, H, W, C] in [-1, 1] -> patch features [B, N, hidden] (after ``post_layernorm``)."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, remat: str, rngs: nnx.Rngs,
                 unroll: bool = False):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.unroll = unroll
        # A stride-p conv written as a matmul on patchify() output: kernel [p*p*C, D].
        self.patch_embedding = Dense(
            (cfg.patch_size**2 * cfg.channels,),
            (cfg.hidden,),
            ("patch", "vit_embed"),
            use_bias=True,
            dtype=dtype,
            rngs=rngs,
        )
        self.position_embedding = param(rngs, (cfg.num_patches, cfg.hidden), ("positions", "vit_embed"))
        self.layers = stack_layers(lambda: VisionBlock(cfg, dtype=dtype, rngs=rngs), cfg.layers)
        self.post_layernorm = LayerNorm(cfg.hidden, "vit_embed", eps=cfg.layer_norm_eps)

    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.cfg
        if images.shape[1:] != (c.image_size, c.image_size, c.channels):
            raise ValueError(
                f"images must be [B, {c.image_size}, {c.image_size}, {c.channels}], got {images.shape}"
            )
        x = self.patch_embedding(patchify(images, c.patch_size))
        x = constrain(x + self.position_embedding[...].astype(self.dtype), RESIDUAL)
        x, _ = scan_layers(lambda block, y: (block(y), None), self.layers, x, remat=self.remat,
                           unroll=self.unroll)
        return self.post_layernorm(x)
