"""The report-writing policy: SigLIP-style ViT -> MLP projector -> Llama-style decoder.

Sequence layout: ``[image tokens of every view][prompt (left-padded, starts with <bos>)][report]``.
Attention is causal over the whole sequence (image prefix included, as in Llava) plus a key
padding mask; RoPE positions count only real tokens, so padding never changes a report's logits.
Missing views give zeroed, masked image tokens that do not advance positions either.

Parameters are float32 (``nnx.Param``) with logical axis names; ``PolicyConfig.dtype`` sets the
compute dtype. Pure use::

    graphdef, state = nnx.split(Policy(cfg, rngs=nnx.Rngs(0)))
    scores = jax.jit(lambda s, b: token_scores(nnx.merge(graphdef, s), b, chunk_size=64))(state, batch)

Hugging Face mapping onto ``LlavaForConditionalGeneration`` saved-file keys (SigLIP tower with
``vision_use_head=False``, ``vision_feature_select_strategy="full"``, ``vision_feature_layer=-1``;
``LlamaForCausalLM`` text model). Our ``kernel`` tensors are ``[in..., out...]`` while HF ``weight``
is ``[out, in]``: every kernel is reshaped to 2-D and transposed; the rest is a renaming. Below,
``v.`` is ours ``vision_tower.`` / HF ``vision_tower.`` (transformers 5 saves SigLIP keys without
``vision_model.``; import also accepts the 4.x spelling), ``t.`` is
``language_model.model.`` on both sides, ``i`` a layer index. Our blocks are stacked: every
``layers.`` parameter has a leading layer axis, and HF's ``layers.i.X`` is slice ``i`` of our
``layers.X`` (the transforms in the last column apply to the slice).

==========================================  ===========================================  ====================
ours (``nnx.state`` path)                   HF key                                       ours -> HF
==========================================  ===========================================  ====================
v.patch_embedding.kernel [p*p*C, D]         v.embeddings.patch_embedding.weight          reshape(p,p,C,D)
                                                                                         .transpose(3,2,0,1)
v.patch_embedding.bias                      v.embeddings.patch_embedding.bias            -
v.position_embedding [N, D]                 v.embeddings.position_embedding.weight       -
v.layers.layer_norm{1,2}.{weight,bias}      v.encoder.layers.i.layer_norm{1,2}.*         -
v.layers.self_attn.{q,k,v}_proj.kernel      v.encoder.layers.i.self_attn.{q,k,v}_proj.w  [D,H,hd]: (D,-1).T
v.layers.self_attn.{q,k,v}_proj.bias        v.encoder.layers.i.self_attn.{q,k,v}_proj.b  [H,hd]: (-1,)
v.layers.self_attn.out_proj.kernel          v.encoder.layers.i.self_attn.out_proj.w      [H,hd,D]: (-1,D).T
v.layers.self_attn.out_proj.bias            v.encoder.layers.i.self_attn.out_proj.b      -
v.layers.mlp.fc{1,2}.{kernel,bias}          v.encoder.layers.i.mlp.fc{1,2}.{w,b}         kernel .T
v.post_layernorm.{weight,bias}              v.post_layernorm.{weight,bias}               -
multi_modal_projector.linear_{1,2}.kernel   multi_modal_projector.linear_{1,2}.weight    .T
multi_modal_projector.linear_{1,2}.bias     multi_modal_projector.linear_{1,2}.bias      -
t.embed_tokens.weight [V, D]                t.embed_tokens.weight                        -
t.layers.{input,post_attention}_layernorm   t.layers.i.{input,post_attention}_layernorm  - (``.weight``)
t.layers.self_attn.q_proj.kernel            t.layers.i.self_attn.q_proj.weight           [D,H,hd]: (D,-1).T
t.layers.self_attn.{k,v}_proj.kernel        t.layers.i.self_attn.{k,v}_proj.weight       [D,KV,hd]: (D,-1).T
t.layers.self_attn.{q,k,v}_proj.bias        (``attention_bias`` only) ...proj.bias       [H|KV,hd]: (-1,)
t.layers.self_attn.o_proj.kernel            t.layers.i.self_attn.o_proj.weight           [H,hd,D]: (-1,D).T
t.layers.mlp.{gate,up,down}_proj.kernel     t.layers.i.mlp.{gate,up,down}_proj.weight    .T
t.norm.weight                               t.norm.weight                                -
language_model.lm_head.kernel [D, V]        language_model.lm_head.weight                .T
==========================================  ===========================================  ====================

(``w``/``b`` abbreviate ``weight``/``bias``.)

Notes for export: the projector uses exact GELU (Llava ``projector_hidden_act="gelu"``), the ViT
the tanh approximation (``gelu_pytorch_tanh``). With ``attention_bias`` HF Llama also gives o_proj a
bias (export zeros) while Qwen2 matches exactly. Export writes a 1-channel SigLIP tower
(``num_channels=1``, mean = std = 0.5, grayscale PIL images) with ``tie_last_hidden_states=True``,
because our ViT's features are taken after ``post_layernorm``; import folds any channel count and
the processor's mean/std into the patch kernel (``hf/convert.py``). HF inputs equivalent to ours put the ``<image>`` tokens first,
then ``<bos>`` and the prompt, left padding in front of everything, and need explicit
``position_ids = cumsum(attention_mask) - 1`` (``generate`` computes them so itself).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from radflow_jax.models.decoder import Decoder, KVCache, TextConfig, cache_from_prefill, lm_logits
from radflow_jax.models.layers import REMAT, Dense, positions_from_mask
from radflow_jax.models.vit import VisionConfig, VisionTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = tuple(REMAT)  # what a block keeps for the backward pass (``layers.REMAT``)


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    vision: VisionConfig
    text: TextConfig
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: str = "none"  # REMAT_POLICIES: what each scanned block keeps for the backward pass
    scan_layers: bool = True  # False: layers unrolled (faster few-layer steps; compile grows with depth)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return DTYPES[self.dtype]


# Named sizes. Vision: hidden, layers, heads, mlp, patch. Text: hidden, layers, heads, kv_heads,
# head_dim, mlp, rope_theta, text_len (tokens budgeted beyond the image prefix for max_seq_len).
# Parameter counts at vocab 4000: toy ~0.3M (unit tests), tiny ~2.2M (CPU demo, minutes on 2 cores), small ~27M,
# base ~104M; `1b` is a SigLIP-B/16 tower with a Llama-3.2-1B-like decoder and `7b` a
# SigLIP-So400m-like tower (patch 16) with a Llama-2-7B-like decoder: sizes for accelerators.
SIZES: dict[str, dict[str, Any]] = {
    "toy": dict(
        vision=dict(hidden=32, layers=2, heads=2, mlp=64, patch_size=16),
        text=dict(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, mlp=64, rope_theta=10000.0),
        text_len=64,
    ),
    "tiny": dict(
        vision=dict(hidden=96, layers=3, heads=4, mlp=384, patch_size=32),
        text=dict(hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32, mlp=384, rope_theta=10000.0),
        text_len=256,
    ),
    "small": dict(
        vision=dict(hidden=256, layers=6, heads=4, mlp=1024, patch_size=16),
        text=dict(hidden=512, layers=6, heads=8, kv_heads=4, head_dim=64, mlp=1408, rope_theta=10000.0),
        text_len=512,
    ),
    "base": dict(
        vision=dict(hidden=384, layers=12, heads=6, mlp=1536, patch_size=16),
        text=dict(hidden=768, layers=12, heads=12, kv_heads=4, head_dim=64, mlp=2048, rope_theta=10000.0),
        text_len=512,
    ),
    "1b": dict(
        vision=dict(hidden=768, layers=12, heads=12, mlp=3072, patch_size=16),
        text=dict(hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, mlp=8192, rope_theta=500000.0),
        text_len=2048,
    ),
    "7b": dict(
        vision=dict(hidden=1152, layers=27, heads=16, mlp=4304, patch_size=16),
        text=dict(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, mlp=11008, rope_theta=10000.0),
        text_len=4096,
    ),
}


def policy_config(
    size: str,
    vocab_size: int,
    image_size: int,
    max_views: int = 1,
    text_len: int | None = None,
    **overrides: Any,
) -> PolicyConfig:
    """The named ``size`` for a tokenizer's vocabulary and the data's image size.

    ``max_seq_len`` = image prefix of ``max_views`` views + ``text_len`` (prompt + report tokens;
    default: the size's text budget). ``overrides`` set top-level fields (``dtype``, ``remat``, ``scan_layers``).
    """
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; available: {tuple(SIZES)}")
    spec = SIZES[size]
    vision = VisionConfig(image_size=image_size, channels=1, **spec["vision"])
    text = TextConfig(
        vocab_size=vocab_size,
        max_seq_len=max_views * vision.num_patches + (text_len or spec["text_len"]),
        **spec["text"],
    )
    return PolicyConfig(vision=vision, text=text, **overrides)


class Projector(nnx.Module):
    """HF ``LlavaMultiModalProjector``: ``linear_2(gelu(linear_1(x)))``, vision -> text width."""

    def __init__(self, vision_hidden: int, text_hidden: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.linear_1 = Dense(
            (vision_hidden,), (text_hidden,), ("vit_embed", "mlp"), use_bias=True, dtype=dtype, rngs=rngs
        )
        self.linear_2 = Dense(
            (text_hidden,), (text_hidden,), ("mlp", "embed"), use_bias=True, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=False))


def _causal_mask(key_mask: jax.Array) -> jax.Array:
    """bool [B, L] -> [B, L, L]: causal and only real keys."""
    length = key_mask.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    return causal[None] & key_mask[:, None, :]


class Policy(nnx.Module):
    """Image(s) + prompt -> report logits; full-sequence forward plus prefill/decode with a KV cache."""

    def __init__(self, cfg: PolicyConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = cfg.compute_dtype
        self.vision_tower = VisionTransformer(cfg.vision, dtype=dtype, remat=cfg.remat,
                                              unroll=not cfg.scan_layers, rngs=rngs)
        self.multi_modal_projector = Projector(
            cfg.vision.hidden, cfg.text.hidden, dtype=dtype, rngs=rngs
        )
        self.language_model = Decoder(cfg.text, dtype=dtype, remat=cfg.remat, unroll=not cfg.scan_layers,
                                      rngs=rngs)

    def encode_images(self, image: jax.Array, view_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """image [B, V, H, W, C], view_mask [B, V] -> (tokens [B, V*N, D_text], mask [B, V*N]).

        Each view goes through the tower and projector on its own; missing views are zeroed.
        """
        b, v = image.shape[:2]
        feats = self.multi_modal_projector(self.vision_tower(image.reshape(b * v, *image.shape[2:])))
        n = feats.shape[1]
        feats = feats.reshape(b, v, n, -1) * view_mask[:, :, None, None].astype(feats.dtype)
        mask = jnp.repeat(view_mask, n, axis=1)
        return feats.reshape(b, v * n, -1), mask

    def _embed(self, image, view_mask, tokens, token_mask):
        """``[images][tokens]`` embeddings. With ``G`` times as many token rows as image rows
        (an RL group: row b's completions are rows b*G .. b*G+G-1), each case's images are encoded
        once and their features shared by its G rows."""
        img, img_mask = self.encode_images(image, view_mask)
        b, n = image.shape[0], tokens.shape[0]
        if n != b:
            if n % b:
                raise ValueError(f"{n} token rows are not a whole group of {b} image rows")
            img, img_mask = jnp.repeat(img, n // b, axis=0), jnp.repeat(img_mask, n // b, axis=0)
        x = jnp.concatenate([img, self.language_model.embed(tokens)], axis=1)
        mask = jnp.concatenate([img_mask, token_mask.astype(bool)], axis=1)
        if x.shape[1] > self.cfg.text.max_seq_len:
            raise ValueError(
                f"sequence of {x.shape[1]} tokens exceeds max_seq_len {self.cfg.text.max_seq_len}"
            )
        return x, mask, img.shape[1]

    def text_hidden(
        self, image: jax.Array, view_mask: jax.Array, tokens: jax.Array, token_mask: jax.Array
    ) -> jax.Array:
        """Decoder states [B, L, D] (before the final norm) at every text position of ``[images][tokens]``."""
        x, mask, n_img = self._embed(image, view_mask, tokens, token_mask)
        hidden, _ = self.language_model(x, positions_from_mask(mask), _causal_mask(mask))
        return hidden[:, n_img:]

    def __call__(
        self, image: jax.Array, view_mask: jax.Array, tokens: jax.Array, token_mask: jax.Array
    ) -> jax.Array:
        """Logits (float32) [B, L, vocab] at every text position of ``[images][tokens]``."""
        return self.language_model.logits(self.text_hidden(image, view_mask, tokens, token_mask))

    def prefill(
        self,
        image: jax.Array,
        view_mask: jax.Array,
        prompt_tokens: jax.Array,
        prompt_mask: jax.Array,
        capacity: int,
    ) -> tuple[jax.Array, KVCache]:
        """Runs ``[images][prompt]`` once -> (next-token logits [B, vocab], cache of ``capacity`` slots).

        The prompt must be left-padded, so its last column is a real token for every row.
        """
        x, mask, _ = self._embed(image, view_mask, prompt_tokens, prompt_mask)
        hidden, kvs = self.language_model(x, positions_from_mask(mask), _causal_mask(mask))
        logits = self.language_model.logits(hidden[:, -1:])[:, 0]
        return logits, cache_from_prefill(kvs, mask, capacity, self.cfg.compute_dtype)

    def decode_step(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Feeds one token per row [B] -> (next-token logits [B, vocab], updated cache)."""
        hidden, cache = self.language_model.decode(self.language_model.embed(tokens[:, None]), cache)
        return self.language_model.logits(hidden)[:, 0], cache


def target_hidden(model: Policy, batch: dict[str, jax.Array]) -> jax.Array:
    """Teacher-forced decoder states [B, T, D] (before the final norm); [:, t] predicts target t.

    ``model.language_model.logits`` of it are the full teacher-forced logits (what interop checks
    compare); training goes through ``token_scores``, which never holds them all."""
    prompt, target = batch["prompt_tokens"], batch["target_tokens"]
    tokens = jnp.concatenate([prompt, target[:, :-1]], axis=1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["target_mask"][:, :-1]], axis=1)
    return model.text_hidden(batch["image"], batch["view_mask"], tokens, mask)[:, prompt.shape[1] - 1 :]


@struct.dataclass
class TokenScores:
    """What the losses need per target token: all [B, T], zero (False) where ``target_mask`` is False."""

    logp: jax.Array  # float32: log pi(target_t) under softmax(logits / temperature)
    entropy: jax.Array  # float32: entropy of softmax(logits / temperature)
    correct: jax.Array  # bool: argmax of the logits == target_t


def _scores(logits: jax.Array, target: jax.Array, mask: jax.Array) -> TokenScores:
    """``TokenScores`` of float32 logits [..., vocab] (already divided by the temperature)."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0] - logz
    entropy = logz - (jax.nn.softmax(logits, axis=-1) * logits).sum(-1)
    correct = (jnp.argmax(logits, axis=-1) == target) & mask
    return TokenScores(
        logp=jnp.where(mask, logp, 0.0), entropy=jnp.where(mask, entropy, 0.0), correct=correct
    )


def token_scores(
    model: Policy, batch: dict[str, jax.Array], *, temperature: float = 1.0, chunk_size: int = 0
) -> TokenScores:
    """Teacher-forced ``TokenScores`` of ``target_tokens``, computed ``chunk_size`` positions at a time.

    The decoder runs once; the final norm, ``lm_head`` and softmax then run per chunk of target
    positions inside a rematerialised scan, so neither the forward nor the backward pass ever
    holds more than one chunk's float32 logits [B, chunk, vocab] (the largest activation of a
    report-length batch at a real vocabulary). ``chunk_size=0`` is one chunk. The last chunk is
    padded (masked) when ``chunk_size`` does not divide T.
    """
    hidden = target_hidden(model, batch)
    target, mask = batch["target_tokens"], batch["target_mask"].astype(bool)
    decoder = model.language_model
    head_def, head = nnx.split((decoder.model.norm, decoder.lm_head))

    def score(head: nnx.State, h: jax.Array, t: jax.Array, m: jax.Array) -> TokenScores:
        return _scores(lm_logits(*nnx.merge(head_def, head), h) / temperature, t, m)

    b, length = target.shape
    if chunk_size <= 0 or chunk_size >= length:
        return score(head, hidden, target, mask)
    n = -(-length // chunk_size)

    def chunks(x: jax.Array) -> jax.Array:  # [B, T, ...] -> [n, B, chunk, ...]
        x = jnp.pad(x, [(0, 0), (0, n * chunk_size - length)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(b, n, chunk_size, *x.shape[2:]), 1, 0)

    chunk_score = jax.checkpoint(score)  # the backward pass recomputes each chunk's logits
    _, per_chunk = jax.lax.scan(
        lambda _, xs: (None, chunk_score(head, *xs)), None, (chunks(hidden), chunks(target), chunks(mask))
    )
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(b, n * chunk_size)[:, :length], per_chunk)


def count_params(state: nnx.State) -> int:
    """Number of parameter scalars in a (possibly abstract) state."""
    return sum(int(x.size) for x in jax.tree.leaves(state))
