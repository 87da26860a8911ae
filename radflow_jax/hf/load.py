"""Import Hugging Face Llava-format weights into our policy (``load_pretrained``, ``init_from_hf``).

``policy_config_from_hf`` reads the architecture of any size from ``config.json``, so a run can be
built around a checkpoint rather than one of our named sizes.

Supported: ``LlavaForConditionalGeneration`` folders with a SigLIP or CLIP vision tower and a
Llama, Mistral or Qwen2 text model (Qwen2's q/k/v biases map to ``attention_bias``). Weights are
read from safetensors only (never pickle); the image processor's channels and mean/std are folded
into our grayscale patch embedding (``convert._patch_from_hf``).

Exactness is the default contract: ``exact=True`` refuses a checkpoint whose forward pass our
architecture cannot reproduce, and says why. Such differences are real for popular models:
CLIP's class token and pre-layernorm, SigLIP features taken before ``post_layernorm`` (Llava's
default with SigLIP; our exports set ``tie_last_hidden_states``), features from an inner layer.
``exact=False`` loads them anyway as a warm start for fine-tuning and lists every difference in
``ImportReport.notes``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
from absl import logging
import numpy as np
from flax import nnx
from safetensors import safe_open

from radflow_jax.hf import convert
from radflow_jax.models.decoder import TextConfig
from radflow_jax.models.policy import Policy, PolicyConfig
from radflow_jax.models.vit import VisionConfig

SUPPORTED = (
    "LlavaForConditionalGeneration (model_type 'llava') with a vision tower of type "
    f"{' or '.join(convert.VISION_TYPES)} and a text model of type {', '.join(convert.TEXT_TYPES)}"
)
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")
_BUFFERS = ("rotary_emb.inv_freq", "position_ids")  # non-parameters some files carry


class UnsupportedModelError(ValueError):
    """The folder holds an architecture we cannot represent; the message lists what is supported."""


class InexactImportError(ValueError):
    """The checkpoint loads only approximately (``exact=False`` allows it); the message says why."""


class CheckpointKeysError(ValueError):
    """Tensors are missing from, or unexpected in, the safetensors files."""


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """``notes``: why our forward pass differs from HF's (empty = exact); ``ignored``: HF tensors
    that HF's own Llava forward does not use either (or, with notes, that we drop)."""

    notes: tuple[str, ...]
    ignored: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return not self.notes


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_safetensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` or its sharded index, as float32 numpy arrays."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(_read_json(index)["weight_map"].values()))
    elif os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        others = [f for f in os.listdir(hf_dir) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        hint = f" (found {others}: pickle files are never loaded; convert to safetensors)" if others else ""
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {hf_dir}{hint}")
    tensors = {}
    for name in files:
        with safe_open(os.path.join(hf_dir, name), framework="numpy") as f:
            for key in f.keys():
                tensors[key] = np.asarray(f.get_tensor(key), np.float32)
    return convert.canonical_hf_keys(tensors)


def _pixel_normalisation(hf_dir: str, notes: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the folder's image processor applies after rescaling pixels to [0, 1]."""
    for name, field in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = os.path.join(hf_dir, name)
        if os.path.isfile(path):
            cfg = _read_json(path)
            cfg = cfg.get(field, {}) if field else cfg
            if cfg:
                break
    else:
        notes.append("no image processor config: assumed pixels normalised with mean = std = 0.5")
        return (0.5,), (0.5,)
    if cfg.get("do_rescale", True) and abs(cfg.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        notes.append(f"image processor rescale_factor {cfg['rescale_factor']} is not 1/255")
    if not cfg.get("do_normalize", True):
        return (0.0,), (1.0,)
    mean, std = cfg.get("image_mean", [0.5]), cfg.get("image_std", [0.5])
    return _floats(mean), _floats(std)


def _floats(value) -> tuple[float, ...]:
    return (float(value),) if isinstance(value, (int, float)) else tuple(float(x) for x in value)


def describe(hf_dir: str) -> tuple[PolicyConfig, convert.HFLayout, list[str]]:
    """(our config, the file layout, notes on inexactness) from the folder's config files.

    Raises ``UnsupportedModelError`` for architectures outside ``SUPPORTED``.
    """
    from transformers import AutoConfig

    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {hf_dir}")
    model_type = _read_json(path).get("model_type")
    if model_type != "llava":
        raise UnsupportedModelError(
            f"{hf_dir}: model_type {model_type!r} is not supported; supported: {SUPPORTED}"
        )
    config = AutoConfig.from_pretrained(hf_dir)
    vc, tc = config.vision_config, config.text_config
    if vc.model_type not in convert.VISION_TYPES or tc.model_type not in convert.TEXT_TYPES:
        raise UnsupportedModelError(
            f"{hf_dir}: vision tower {vc.model_type!r} with text model {tc.model_type!r} is not "
            f"supported; supported: {SUPPORTED}"
        )
    if not isinstance(config.vision_feature_layer, int):
        raise UnsupportedModelError(
            f"{hf_dir}: vision_feature_layer={config.vision_feature_layer} concatenates several "
            "layers; supported: a single layer"
        )
    if getattr(tc, "mlp_bias", False):
        raise UnsupportedModelError(f"{hf_dir}: text mlp_bias=True is not supported (SwiGLU without biases)")
    notes: list[str] = []
    clip = vc.model_type == "clip_vision_model"
    layer = config.vision_feature_layer
    used = layer if layer >= 0 else vc.num_hidden_layers + 1 + layer
    if clip:
        notes.append("CLIP tower: its class token and pre_layrnorm have no counterpart in our ViT "
                     "(dropped; CLIP's post_layernorm becomes our final norm)")
        if config.vision_feature_select_strategy == "full":
            notes.append("strategy 'full' feeds CLIP's class token to the text model; we have none")
    else:
        if config.vision_feature_select_strategy != "full":
            notes.append("strategy 'default' drops the first SigLIP patch; our ViT keeps every patch")
        if used == vc.num_hidden_layers and not getattr(vc, "tie_last_hidden_states", None):
            notes.append("HF Llava feeds SigLIP's states before post_layernorm (tie_last_hidden_states "
                         "unset); our ViT applies post_layernorm")
    if used != vc.num_hidden_layers:
        notes.append(f"features come from vision layer {used} of {vc.num_hidden_layers}: later layers "
                     "are dropped and our post_layernorm is applied where HF applies none")
    if vc.hidden_act not in _TANH_GELU:
        notes.append(f"vision activation {vc.hidden_act!r}; our ViT uses tanh-approximated GELU")
    if config.projector_hidden_act != "gelu":
        notes.append(f"projector activation {config.projector_hidden_act!r}; ours is exact GELU")
    if tc.hidden_act != "silu":
        notes.append(f"text activation {tc.hidden_act!r}; our SwiGLU uses silu")
    rope = dict(getattr(tc, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        notes.append(f"rope_type {rope['rope_type']!r} (scaled RoPE); ours is plain RoPE")
    window = getattr(tc, "sliding_window", None)
    if window and (tc.model_type == "mistral" or getattr(tc, "use_sliding_window", False)) \
            and window < tc.max_position_embeddings:
        notes.append(f"sliding-window attention ({window} tokens); ours attends to the whole sequence")
    mean, std = _pixel_normalisation(hf_dir, notes)
    bias = tc.model_type == "qwen2" or (tc.model_type == "llama" and tc.attention_bias)
    heads = tc.num_attention_heads
    cfg = PolicyConfig(
        vision=VisionConfig(
            image_size=vc.image_size, patch_size=vc.patch_size, channels=1, hidden=vc.hidden_size,
            layers=used, heads=vc.num_attention_heads, mlp=vc.intermediate_size,
            layer_norm_eps=vc.layer_norm_eps,
        ),
        text=TextConfig(
            vocab_size=tc.vocab_size, hidden=tc.hidden_size, layers=tc.num_hidden_layers, heads=heads,
            kv_heads=tc.num_key_value_heads or heads,
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // heads,
            mlp=tc.intermediate_size, rope_theta=float(rope.get("rope_theta", 10000.0)),
            rms_eps=tc.rms_norm_eps, attention_bias=bias, max_seq_len=tc.max_position_embeddings,
        ),
    )
    layout = convert.HFLayout(
        vision_type=vc.model_type, text_type=tc.model_type, channels=vc.num_channels,
        image_mean=mean, image_std=std, o_proj_bias=tc.model_type == "llama" and tc.attention_bias,
        tied=bool(config.tie_word_embeddings or tc.tie_word_embeddings),
        projector_bias=config.multimodal_projector_bias,
    )
    return cfg, layout, notes


def policy_config_from_hf(
    hf_dir: str, *, max_views: int, text_len: int, dtype: str = "float32", remat: str = "none"
) -> PolicyConfig:
    """The policy architecture of an HF Llava folder, for a run of ``max_views`` views and
    ``text_len`` prompt + report tokens (``max_seq_len`` as ``policy_config`` computes it).

    Widths, depths, heads, kv heads, head_dim, MLP sizes, RoPE theta, norm epsilons, q/k/v
    biases (Qwen2), vocabulary, image and patch size all come from ``config.json``; the tower
    is grayscale (channels folded on import). ``dtype`` and ``remat`` are run settings.
    """
    cfg, _, _ = describe(hf_dir)
    text = dataclasses.replace(cfg.text, max_seq_len=max_views * cfg.vision.num_patches + text_len)
    return dataclasses.replace(cfg, text=text, dtype=dtype, remat=remat)


def _unused(key: str, cfg: PolicyConfig, layout: convert.HFLayout) -> bool:
    """HF tensors that HF's Llava forward ignores, or that have no counterpart (CLIP extras)."""
    v = "vision_tower."
    if key.endswith(_BUFFERS) or key.startswith(f"{v}head."):
        return True
    if layout.vision_type == "clip_vision_model" and key.startswith(
        (f"{v}embeddings.class_embedding", f"{v}pre_layrnorm.")
    ):
        return True
    prefix = f"{v}encoder.layers."
    if key.startswith(prefix):
        return int(key[len(prefix):].split(".")[0]) >= cfg.vision.layers
    return False


def _listing(keys: list[str], limit: int = 12) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_params(
    hf_dir: str, *, exact: bool = True
) -> tuple[PolicyConfig, dict[str, np.ndarray], ImportReport]:
    """(our config, flat float32 parameters, report) of an HF Llava folder.

    Raises ``CheckpointKeysError`` naming missing and unexpected tensors, ``InexactImportError``
    (with ``exact=True``) naming every difference.
    """
    cfg, layout, notes = describe(hf_dir)
    tensors = read_safetensors(hf_dir)
    table = convert.key_table(cfg, layout)
    zeros = convert.zero_keys(cfg, layout)
    expected = {e.hf for e in table} | set(zeros)
    missing = sorted(expected - set(tensors) - convert.optional_keys(layout))
    unknown = sorted(k for k in set(tensors) - expected if not _unused(k, cfg, layout))
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensor(s): {_listing(missing)}")
        if unknown:
            problems.append(f"unexpected {len(unknown)} tensor(s): {_listing(unknown)}")
        raise CheckpointKeysError(f"{hf_dir}: " + "; ".join(problems))
    for key in zeros:
        if np.any(tensors[key]):
            notes.append(f"{key} is non-zero; our attention has no o_proj bias (dropped)")
    if exact and notes:
        raise InexactImportError(
            f"{hf_dir} cannot be imported exactly:\n- " + "\n- ".join(notes)
            + "\nPass exact=False to load it anyway as a warm start."
        )
    ignored = tuple(sorted(k for k in tensors if k not in expected))
    params = convert.from_hf(tensors, cfg, layout)
    return cfg, params, ImportReport(notes=tuple(notes), ignored=ignored)


def load_pretrained(
    hf_dir: str, *, exact: bool = True, dtype: str = "float32"
) -> tuple[Policy, ImportReport]:
    """Our ``Policy`` (compute ``dtype``) with the weights of an HF Llava folder, and the report."""
    cfg, params, report = load_params(hf_dir, exact=exact)
    cfg = dataclasses.replace(cfg, dtype=dtype)
    policy = nnx.eval_shape(lambda: Policy(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(policy, nnx.Param)
    nnx.replace_by_pure_dict(state, convert.unflatten({k: jax.numpy.asarray(v) for k, v in params.items()}))
    nnx.update(policy, state)
    return policy, report


def _mismatches(ours: PolicyConfig, theirs: PolicyConfig) -> list[str]:
    """Fields that differ, ignoring ``max_seq_len`` (RoPE has no table) and run-only settings."""
    out = []
    for part in ("vision", "text"):
        a, b = dataclasses.asdict(getattr(ours, part)), dataclasses.asdict(getattr(theirs, part))
        differ = [k for k in a if k != "max_seq_len" and a[k] != b[k]]
        out += [f"{part}.{k}: run {a[k]} vs checkpoint {b[k]}" for k in differ]
    return out


def _place(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array laid out by ``sharding``; each process builds only its own shards (multi-host)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def init_from_hf(run, hf_dir: str, *, exact: bool = True) -> nnx.State:
    """A fresh training state of ``run`` (a ``PolicyTrainState``) whose parameters come from ``hf_dir``.

    ``run`` provides ``model_config``, ``init_state()`` and ``shardings``. The optimizer state
    is freshly initialised; the parameters are placed on ``run.shardings``. The run's model
    config must match the checkpoint's (build it with ``policy_config_from_hf`` for any size).
    """
    cfg, params, report = load_params(hf_dir, exact=exact)
    problems = _mismatches(run.model_config, cfg)
    if problems:
        raise ValueError(f"{hf_dir} does not fit the run's model:\n- " + "\n- ".join(problems))
    state = run.init_state()
    pure = nnx.to_pure_dict(state)
    model = convert.flatten(pure[0])
    model.update(params)
    pure[0] = convert.unflatten(model)
    nnx.replace_by_pure_dict(state, pure)
    for note in report.notes:
        logging.warning("init_from_hf: inexact import: %s", note)
    return jax.tree.map(
        lambda x, sharding: _place(x, sharding) if isinstance(x, np.ndarray) else x, state, run.shardings
    )
