"""Parameter name and layout mapping between our policy and Hugging Face Llava files, both ways.

Pure functions on flat dicts of numpy arrays: ours are keyed by the dotted ``nnx`` path
(``vision_tower.layers.self_attn.q_proj.kernel``, stacked: a leading layer axis), HF ones by the
*saved-file* keys of
``LlavaForConditionalGeneration`` as transformers 5.x writes them (``language_model.model.*``,
``language_model.lm_head.*``, ``vision_tower.*`` without 4.x's ``vision_model.``,
``multi_modal_projector.*``; table in ``models/policy.py``), one tensor per layer
(``layers.3.``) where ours hold slice 3 of a stacked array. One table (``key_table``) drives both
directions, so export and import cannot drift apart, and a JAX -> HF -> JAX round trip only
slices, stacks, reshapes and transposes: it is bit-identical.

Grayscale: our tower sees one channel with pixels ``x = 2p - 1`` (``p`` in [0, 1]). An HF tower
with ``C`` channels sees ``(p - mean_c) / std_c`` on each channel; for a grayscale image (equal
planes) that is affine in ``x``, so import folds the channels and the processor's mean/std into
our patch kernel and bias exactly. Export writes a 1-channel tower with mean = std = 0.5, which
needs no folding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from radflow_jax.models.policy import PolicyConfig

VISION_TYPES = ("siglip_vision_model", "clip_vision_model")
TEXT_TYPES = ("llama", "mistral", "qwen2")

# Other spellings of the saved-file prefixes, applied in order: the in-memory layout some files are
# saved with, and the ``vision_tower.vision_model.`` of transformers 4.x files.
_HF_PREFIX_ALIASES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
    ("vision_tower.vision_model.", "vision_tower."),
)


@dataclasses.dataclass(frozen=True)
class HFLayout:
    """What an HF checkpoint looks like beyond our ``PolicyConfig``.

    ``channels``/``image_mean``/``image_std`` describe the HF tower's input (folded on import);
    ``o_proj_bias``: the file has an o_proj bias (HF Llama with ``attention_bias``), which we
    lack, so it must be zero; ``tied``: ``lm_head`` is the embedding table (may be absent).
    """

    vision_type: str = "siglip_vision_model"
    text_type: str = "llama"
    channels: int = 1
    image_mean: tuple[float, ...] = (0.5,)
    image_std: tuple[float, ...] = (0.5,)
    o_proj_bias: bool = False
    tied: bool = False
    projector_bias: bool = True

    @property
    def identity_pixels(self) -> bool:
        """HF pixels equal ours: one channel normalised with mean = std = 0.5."""
        return self.channels == 1 and self.image_mean == (0.5,) and self.image_std == (0.5,)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: our key, the HF key and how it is transformed.

    ``kind``: "copy"; "dense" (our kernel ``[*in, *out]`` with ``in_rank`` input axes <-> HF
    ``[out, in]``); "flat" (our ``[H, hd]`` bias <-> HF ``[H*hd]``); "patch" (patch kernel);
    "positions" (position table, CLIP's class-token row dropped on import). ``layer``: the HF
    tensor is this slice of our stacked array (None: the whole array).
    """

    ours: str
    hf: str
    kind: str
    in_rank: int = 1
    layer: int | None = None


def export_layout(cfg: PolicyConfig) -> HFLayout:
    """The layout we export: SigLIP + Llama, one grayscale channel, untied head."""
    return HFLayout(o_proj_bias=cfg.text.attention_bias)


def _layer_entries(ours: str, hf: str, layers: int, names: list[tuple[str, str, int]]) -> list[Entry]:
    """HF ``{hf}{i}.{name}`` <-> slice i of our stacked ``{ours}{name}``, for (name, kind, in_rank);
    a "dense" ``x.kernel`` of ours is HF's ``x.weight``."""
    def hf_name(name: str, kind: str) -> str:
        return name.removesuffix(".kernel") + ".weight" if kind == "dense" else name

    return [Entry(f"{ours}{name}", f"{hf}{i}.{hf_name(name, kind)}", kind, in_rank, i)
            for i in range(layers) for name, kind, in_rank in names]


def key_table(cfg: PolicyConfig, layout: HFLayout) -> list[Entry]:
    """Every HF tensor of a policy with ``cfg``, paired with its parameter (table in ``policy.py``)."""
    v = "vision_tower."
    norms = ("layer_norm1", "layer_norm2")
    vision_layer = [(f"{norm}.{p}", "copy", 1) for norm in norms for p in ("weight", "bias")]
    for proj in ("q_proj", "k_proj", "v_proj"):
        vision_layer += [(f"self_attn.{proj}.kernel", "dense", 1), (f"self_attn.{proj}.bias", "flat", 1)]
    vision_layer += [("self_attn.out_proj.kernel", "dense", 2), ("self_attn.out_proj.bias", "copy", 1)]
    for fc in ("fc1", "fc2"):
        vision_layer += [(f"mlp.{fc}.kernel", "dense", 1), (f"mlp.{fc}.bias", "copy", 1)]
    table = [
        Entry(f"{v}patch_embedding.kernel", f"{v}embeddings.patch_embedding.weight", "patch"),
        Entry(f"{v}patch_embedding.bias", f"{v}embeddings.patch_embedding.bias", "copy"),
        Entry(f"{v}position_embedding", f"{v}embeddings.position_embedding.weight", "positions"),
        *_layer_entries(f"{v}layers.", f"{v}encoder.layers.", cfg.vision.layers, vision_layer),
        *(Entry(f"{v}post_layernorm.{p}", f"{v}post_layernorm.{p}", "copy") for p in ("weight", "bias")),
    ]
    for lin in ("linear_1", "linear_2"):
        p = f"multi_modal_projector.{lin}"
        table.append(Entry(f"{p}.kernel", f"{p}.weight", "dense"))
        table.append(Entry(f"{p}.bias", f"{p}.bias", "copy"))
    t = "language_model.model."
    text_layer = [(f"{norm}.weight", "copy", 1) for norm in ("input_layernorm", "post_attention_layernorm")]
    for proj in ("q_proj", "k_proj", "v_proj"):
        text_layer.append((f"self_attn.{proj}.kernel", "dense", 1))
        if cfg.text.attention_bias:
            text_layer.append((f"self_attn.{proj}.bias", "flat", 1))
    text_layer.append(("self_attn.o_proj.kernel", "dense", 2))
    text_layer += [(f"mlp.{proj}.kernel", "dense", 1) for proj in ("gate_proj", "up_proj", "down_proj")]
    table += [
        Entry(f"{t}embed_tokens.weight", f"{t}embed_tokens.weight", "copy"),
        *_layer_entries(f"{t}layers.", f"{t}layers.", cfg.text.layers, text_layer),
        Entry(f"{t}norm.weight", f"{t}norm.weight", "copy"),
        Entry("language_model.lm_head.kernel", "language_model.lm_head.weight", "dense"),
    ]
    return table


def zero_keys(cfg: PolicyConfig, layout: HFLayout) -> list[str]:
    """HF tensors we have no parameter for, so they must be zero (and are exported as zeros)."""
    if not layout.o_proj_bias:
        return []
    return [f"language_model.model.layers.{i}.self_attn.o_proj.bias" for i in range(cfg.text.layers)]


def optional_keys(layout: HFLayout) -> set[str]:
    """HF keys a file may lack: we then use zeros (biases) or the embedding table (tied head)."""
    keys = set()
    if layout.vision_type == "clip_vision_model":
        keys.add("vision_tower.embeddings.patch_embedding.bias")  # CLIP has none
    if not layout.projector_bias:
        keys |= {f"multi_modal_projector.linear_{n}.bias" for n in (1, 2)}
    if layout.tied:
        keys.add("language_model.lm_head.weight")
    return keys


def canonical_hf_keys(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames other spellings (``model.language_model.*``, ``lm_head.*``, 4.x ``vision_model.``) to ours."""
    out = {}
    for key, value in tensors.items():
        original = key
        for alias, canonical in _HF_PREFIX_ALIASES:
            if key.startswith(alias):
                key = canonical + key[len(alias):]
        if key in out:
            raise ValueError(f"tensor {original!r} and another one are both named {key!r}")
        out[key] = value
    return out


def _patch_to_hf(kernel: np.ndarray, patch: int) -> np.ndarray:
    """[p*p*C, D] (pixel order i, j, c) -> conv weight [D, C, p, p]."""
    d = kernel.shape[-1]
    return kernel.reshape(patch, patch, -1, d).transpose(3, 2, 0, 1)


def _patch_from_hf(
    weight: np.ndarray, bias: np.ndarray, layout: HFLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight [D, C, p, p] and bias -> our grayscale ([p*p, D], [D]), folding mean/std.

    HF channel c sees ``(p - m_c)/s_c = x/(2 s_c) + (0.5 - m_c)/s_c`` for our ``x = 2p - 1``.
    """
    d, c, p, _ = weight.shape
    if layout.identity_pixels:
        return weight.transpose(2, 3, 1, 0).reshape(p * p, d), bias
    if {len(layout.image_mean), len(layout.image_std)} - {1, c}:
        raise ValueError(
            f"patch embedding has {c} channels but the image processor normalises "
            f"{len(layout.image_mean)} (mean) / {len(layout.image_std)} (std)"
        )
    w = weight.astype(np.float64)
    mean = np.broadcast_to(np.asarray(layout.image_mean, np.float64), (c,))
    std = np.broadcast_to(np.asarray(layout.image_std, np.float64), (c,))
    kernel = np.einsum("dcij,c->ijd", w, 1.0 / (2.0 * std)).reshape(p * p, d)
    shift = np.einsum("dcij,c->d", w, (0.5 - mean) / std)
    return kernel.astype(weight.dtype), (bias.astype(np.float64) + shift).astype(bias.dtype)


def to_hf(params: Mapping[str, np.ndarray], cfg: PolicyConfig) -> dict[str, np.ndarray]:
    """Our flat parameters -> HF saved-file tensors (the layout of ``export_layout``)."""
    layout = export_layout(cfg)
    out = {}
    for e in key_table(cfg, layout):
        x = np.asarray(params[e.ours])
        if e.layer is not None:
            x = x[e.layer]
        if e.kind == "dense":
            x = x.reshape(math.prod(x.shape[: e.in_rank]), -1).T
        elif e.kind == "flat":
            x = x.reshape(-1)
        elif e.kind == "patch":
            x = _patch_to_hf(x, cfg.vision.patch_size)
        out[e.hf] = np.ascontiguousarray(x)
    d = params["language_model.model.norm.weight"].dtype
    for key in zero_keys(cfg, layout):
        out[key] = np.zeros((cfg.text.hidden,), d)
    return out


def from_hf(
    tensors: Mapping[str, np.ndarray], cfg: PolicyConfig, layout: HFLayout
) -> dict[str, np.ndarray]:
    """HF tensors (saved layout, see ``canonical_hf_keys``) -> our flat parameters.

    Expects every key of ``key_table`` except ``optional_keys``; ``reshape`` fails on a shape
    that does not fit. Missing and unused HF tensors are reported by ``load.py`` before this runs.
    Per-layer tensors are stacked in layer order.
    """
    shapes = param_shapes(cfg)
    out, layers = {}, {}
    for e in key_table(cfg, layout):
        if e.ours in out:
            continue  # the patch bias, set with the patch kernel
        if e.kind == "patch":
            bias_key = "vision_tower.embeddings.patch_embedding.bias"
            bias = tensors.get(bias_key, np.zeros((cfg.vision.hidden,), tensors[e.hf].dtype))
            kernel, bias = _patch_from_hf(tensors[e.hf], bias, layout)
            out[e.ours], out["vision_tower.patch_embedding.bias"] = kernel, bias
            continue
        if e.hf in tensors:
            x = tensors[e.hf]
        elif e.hf == "language_model.lm_head.weight":
            x = tensors["language_model.model.embed_tokens.weight"]  # tied: lm_head = embed_tokens
        else:
            x = np.zeros(shapes[e.ours], np.float32)  # a bias the checkpoint does not have
        if e.kind == "dense":
            x = x.T
        elif e.kind == "positions" and x.shape[0] == cfg.vision.num_patches + 1:
            x = x[1:]  # CLIP: the class token's row
        if e.layer is None:
            out[e.ours] = np.ascontiguousarray(x).reshape(shapes[e.ours])
        else:
            layers.setdefault(e.ours, []).append(np.ascontiguousarray(x).reshape(shapes[e.ours][1:]))
    return {**out, **{k: np.stack(v) for k, v in layers.items()}}


def param_shapes(cfg: PolicyConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter shapes for ``cfg``, keyed like ``flatten`` (no arrays are allocated)."""
    from flax import nnx

    from radflow_jax.models.policy import Policy

    abstract = nnx.state(nnx.eval_shape(lambda: Policy(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    return {k: tuple(v.shape) for k, v in flatten(nnx.to_pure_dict(abstract)).items()}


def flatten(tree: Mapping) -> dict:
    """Nested dict (``nnx.to_pure_dict(state)``) -> ``{"a.0.b": leaf}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[str(key)] = value
    return out


def unflatten(flat: Mapping[str, object]) -> dict:
    """``{"a.0.b": leaf}`` -> nested dict with integer keys for list indices (``nnx.List``)."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
