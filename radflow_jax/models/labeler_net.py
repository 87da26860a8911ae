"""The Flax report labeler: a small bidirectional transformer distilled from the rule labeler.

It reads a tokenized report (or one section) and predicts, for every observation of a schema, one
of four classes — positive, negative, uncertain, blank — as CheXbert does for the CheXpert labeler
(DESIGN §3.2). Running batched and jitted on the accelerator, it can stand in for the host-side
rule labeler inside the RL step.

Layout, leaf first (STYLE §3): class/value helpers, the attention and MLP blocks (pre-LN, RoPE on
real-token positions, padding masked), the encoder, then per-observation pooling and heads.
Pooling is one learned query per observation attending over the tokens instead of a single
mean/CLS vector: a report states many observations in different sentences ("no effusion; small
pneumothorax"), and a query per observation lets each head read its own sentence, which a shared
pooled vector of a 2-layer encoder blurs. Sizes live in ``SIZES``; ``labeler_config`` builds one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radflow_jax.models.layers import Dense, LayerNorm, MASK_VALUE, attend, param, positions_from_mask, rope
from radflow_jax.schema import LABEL_BLANK, NEGATIVE, POSITIVE, UNCERTAIN

# Class index → label value. Class c of value v is ``1 - v`` (1→0, 0→1, -1→2, LABEL_BLANK=-2→3).
CLASS_VALUES = np.array([POSITIVE, NEGATIVE, UNCERTAIN, LABEL_BLANK], np.int8)
CLASS_NAMES = ("positive", "negative", "uncertain", "blank")
NUM_CLASSES = len(CLASS_VALUES)


def labels_to_classes(labels: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """Label values (1/0/-1/LABEL_BLANK) → class indices 0..3."""
    return 1 - labels.astype(np.int32)


def classes_to_labels(classes: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """Class indices 0..3 → int8 label values."""
    return (1 - classes.astype(np.int32)).astype(np.int8)


@dataclasses.dataclass(frozen=True)
class LabelerConfig:
    vocab_size: int
    num_observations: int
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    rope_theta: float = 10_000.0
    dtype: str = "float32"  # compute dtype; parameters stay float32

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be a multiple of num_heads {self.num_heads}")
        if (self.embed_dim // self.num_heads) % 2:
            raise ValueError("head_dim (embed_dim / num_heads) must be even for RoPE")
        if min(self.vocab_size, self.num_observations, self.num_layers, self.mlp_dim) < 1:
            raise ValueError(f"sizes must be >= 1: {self}")


# Named sizes: (embed_dim, num_layers, num_heads, mlp_dim). "tiny" is the CPU default (~80k
# parameters beside the embedding table); the others are for accelerators and real text.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "toy": (32, 1, 2, 64),
    "tiny": (64, 2, 4, 128),
    "small": (128, 4, 4, 512),
    "base": (256, 6, 8, 1024),
}


def labeler_config(size: str, vocab_size: int, num_observations: int, dtype: str = "float32") -> LabelerConfig:
    """The config of a named size (``SIZES``) for a vocabulary and a schema's observation count."""
    if size not in SIZES:
        raise ValueError(f"unknown labeler size {size!r}; known: {list(SIZES)}")
    embed, layers, heads, mlp = SIZES[size]
    return LabelerConfig(vocab_size, num_observations, embed, layers, heads, mlp, dtype=dtype)


class SelfAttention(nnx.Module):
    """Bidirectional multi-head attention over real tokens (pads are never attended to)."""

    def __init__(self, cfg: LabelerConfig, *, rngs: nnx.Rngs):
        dt, d, h = jnp.dtype(cfg.dtype), cfg.embed_dim, cfg.num_heads
        self.theta = cfg.rope_theta
        hd = d // h
        names = ("embed", "heads", "head_dim")
        self.q = Dense((d,), (h, hd), names, use_bias=True, dtype=dt, rngs=rngs)
        self.k = Dense((d,), (h, hd), names, use_bias=True, dtype=dt, rngs=rngs)
        self.v = Dense((d,), (h, hd), names, use_bias=True, dtype=dt, rngs=rngs)
        self.o = Dense((h, hd), (d,), ("heads", "head_dim", "embed"), use_bias=True, dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
        q = rope(self.q(x), positions, self.theta)
        k = rope(self.k(x), positions, self.theta)
        pair = mask[:, :, None] & mask[:, None, :]  # [B, L, L]
        return self.o(attend(q, k, self.v(x), pair))


class MLP(nnx.Module):
    def __init__(self, cfg: LabelerConfig, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.dtype)
        self.up = Dense((cfg.embed_dim,), (cfg.mlp_dim,), ("embed", "mlp"), use_bias=True, dtype=dt, rngs=rngs)
        self.down = Dense((cfg.mlp_dim,), (cfg.embed_dim,), ("mlp", "embed"), use_bias=True, dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: LabelerConfig, *, rngs: nnx.Rngs):
        self.ln1 = LayerNorm(cfg.embed_dim, "embed")
        self.attn = SelfAttention(cfg, rngs=rngs)
        self.ln2 = LayerNorm(cfg.embed_dim, "embed")
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x), mask, positions)
        return x + self.mlp(self.ln2(x))


class ObservationHeads(nnx.Module):
    """One query per observation pools the tokens; a per-observation linear map gives 4 logits."""

    def __init__(self, cfg: LabelerConfig, *, rngs: nnx.Rngs):
        k, d = cfg.num_observations, cfg.embed_dim
        self.dtype = jnp.dtype(cfg.dtype)
        self.queries = param(rngs, (k, d), (None, "embed"))
        self.kernel = param(rngs, (k, d, NUM_CLASSES), (None, "embed", None))
        self.bias = param(None, (k, NUM_CLASSES), (None, None), "zeros")

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        # No 1/sqrt(d) scale: with small initial queries that starts as plain mean pooling and
        # learned to route each observation to its sentence markedly slower (measured).
        scores = jnp.einsum("bld,kd->bkl", x, self.queries[...].astype(self.dtype),
                            preferred_element_type=jnp.float32)
        scores = jnp.where(mask[:, None, :], scores, MASK_VALUE)
        pooled = jnp.einsum("bkl,bld->bkd", jax.nn.softmax(scores, -1).astype(self.dtype), x)
        logits = jnp.einsum("bkd,kdc->bkc", pooled, self.kernel[...].astype(self.dtype),
                            preferred_element_type=jnp.float32)
        return logits + self.bias[...]


class LabelerNet(nnx.Module):
    """``(tokens [B, L], mask [B, L]) -> logits float32 [B, K, 4]`` (classes as ``CLASS_VALUES``)."""

    def __init__(self, cfg: LabelerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = param(rngs, (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"))
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_ln = LayerNorm(cfg.embed_dim, "embed")
        self.heads = ObservationHeads(cfg, rngs=rngs)

    def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        mask = mask.astype(bool)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(jnp.dtype(self.cfg.dtype))
        positions = positions_from_mask(mask)
        for block in self.blocks:
            x = block(x, mask, positions)
        return self.heads(self.final_ln(x), mask)


def predict_labels(model: LabelerNet, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """int8 ``[B, K]`` label values; a row without tokens (empty text) is all blank."""
    classes = jnp.argmax(model(tokens, mask), axis=-1)
    labels = classes_to_labels(classes)
    return jnp.where(mask.any(-1, keepdims=True), labels, jnp.int8(LABEL_BLANK))
