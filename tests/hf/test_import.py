"""Import: tiny random HF Llava models (SigLIP/CLIP towers; Llama/Mistral/Qwen2 text) built from
configs, saved as safetensors, loaded into our policy; logits must equal HF's in fp32. Sizes that
are none of ours load through ``policy_config_from_hf`` and ``init_from_hf``."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from radflow_jax.hf import load  # noqa: E402
from radflow_jax.models.policy import SIZES, Policy  # noqa: E402
from radflow_jax.parallel import mesh as mesh_lib  # noqa: E402

IMAGE, PATCH, VOCAB, IMAGE_TOKEN = 32, 16, 64, 3
N_PATCHES = (IMAGE // PATCH) ** 2
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _vision(kind, channels, **kw):
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE, patch_size=PATCH, num_channels=channels)
    if kind == "clip":
        return transformers.CLIPVisionConfig(**{**common, **kw})
    return transformers.SiglipVisionConfig(**{**common, "vision_use_head": False, **kw})


def _text(kind, **kw):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rope_theta=5000.0, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}
    return classes[kind](**{"tie_word_embeddings": False, **common, **kw})


def _save(path, vision, text, *, mean=(0.5,), std=(0.5,), strategy="full", layer=-1, zero_o_bias=True):
    """Random Llava (every tensor perturbed, so norms and biases matter) saved with a processor config."""
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        vision_feature_select_strategy=strategy, vision_feature_layer=layer, projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
            if zero_o_bias and name.endswith("o_proj.bias"):
                p.zero_()
    model.save_pretrained(path)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": list(mean), "image_std": list(std), "do_normalize": True,
                   "do_rescale": True, "rescale_factor": 1 / 255}, f)
    return model


def _inputs(seed=0, batch=2, length=7):
    rng = np.random.default_rng(seed)
    gray = rng.random((batch, IMAGE, IMAGE)).astype(np.float32)  # p in [0, 1]
    text = rng.integers(IMAGE_TOKEN + 1, VOCAB, (batch, length)).astype(np.int64)
    text[:, 0] = 1  # <bos>
    return gray, text


def _hf_logits(model, gray, text, channels, mean, std, with_image=True):
    with torch.no_grad():
        if not with_image:
            return model(input_ids=torch.tensor(text)).logits.numpy()
        planes = [(gray - m) / s for m, s in zip(mean, std)][:channels]
        pixels = torch.tensor(np.stack(planes, axis=1))
        n = model.config.image_seq_length
        ids = np.concatenate([np.full((len(text), n), IMAGE_TOKEN), text], axis=1)
        return model(input_ids=torch.tensor(ids), pixel_values=pixels).logits.numpy()[:, n:]


def _our_logits(policy, gray, text, with_image=True):
    b = len(text)
    image = jnp.asarray(gray * 2.0 - 1.0)[:, None, :, :, None]
    view_mask = jnp.full((b, 1), with_image)
    return np.asarray(policy(image, view_mask, jnp.asarray(text, jnp.int32), jnp.ones(text.shape, bool)))


@pytest.mark.parametrize(
    "text_kind, text_kw, channels, mean, std",
    [
        ("llama", {}, 3, CLIP_MEAN, CLIP_STD),  # RGB tower, CLIP normalisation folded into the kernel
        ("mistral", {"tie_word_embeddings": True}, 1, [0.5], [0.5]),  # tied head: no lm_head tensor
        ("qwen2", {}, 3, [0.5] * 3, [0.5] * 3),  # q/k/v biases
        ("llama", {"attention_bias": True, "head_dim": 16}, 1, [0.5], [0.5]),  # zero o_proj bias
    ],
)
def test_siglip_import_matches_hf_logits(tmp_path, text_kind, text_kw, channels, mean, std):
    vision = _vision("siglip", channels, tie_last_hidden_states=True)
    model = _save(str(tmp_path), vision, _text(text_kind, **text_kw), mean=mean, std=std)
    policy, report = load.load_pretrained(str(tmp_path))
    assert report.exact, report.notes
    assert policy.cfg.text.attention_bias == (text_kind == "qwen2" or "attention_bias" in text_kw)
    gray, text = _inputs()
    diff = np.abs(_our_logits(policy, gray, text) - _hf_logits(model, gray, text, channels, mean, std))
    assert diff.max() < 1e-4, diff.max()


def test_siglip_features_before_post_layernorm_are_refused_unless_inexact(tmp_path):
    _save(str(tmp_path), _vision("siglip", 3), _text("llama"), mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(load.InexactImportError, match="post_layernorm.*\n.*exact=False"):
        load.load_pretrained(str(tmp_path))
    policy, report = load.load_pretrained(str(tmp_path), exact=False)
    assert not report.exact and any("post_layernorm" in n for n in report.notes)
    assert policy.cfg.vision.layers == 2


def test_clip_tower_loads_as_warm_start_with_exact_text_path(tmp_path):
    vision = _vision("clip", 3, num_hidden_layers=3)
    model = _save(str(tmp_path), vision, _text("llama"), mean=CLIP_MEAN, std=CLIP_STD,
                  strategy="default", layer=-2)
    with pytest.raises(load.InexactImportError, match="class token"):
        load.load_pretrained(str(tmp_path))
    policy, report = load.load_pretrained(str(tmp_path), exact=False)
    assert policy.cfg.vision.layers == 2  # hidden_states[-2] of 3 layers: the last one is unused
    assert "vision_tower.embeddings.class_embedding" in report.ignored
    assert any(k.startswith("vision_tower.encoder.layers.2.") for k in report.ignored)
    gray, text = _inputs(seed=1)
    ours = _our_logits(policy, gray, text, with_image=False)
    theirs = _hf_logits(model, gray, text, 3, CLIP_MEAN, CLIP_STD, with_image=False)
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.all(np.isfinite(_our_logits(policy, gray, text)))


def test_nonzero_o_proj_bias_is_inexact(tmp_path):
    vision = _vision("siglip", 1, tie_last_hidden_states=True)
    _save(str(tmp_path), vision, _text("llama", attention_bias=True), zero_o_bias=False)
    with pytest.raises(load.InexactImportError, match="o_proj.bias is non-zero"):
        load.load_pretrained(str(tmp_path))


def test_unsupported_architectures_list_what_is_supported(tmp_path):
    other = tmp_path / "next"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava_next"}))
    supported = "'llava_next'.*siglip_vision_model or clip_vision_model"
    with pytest.raises(load.UnsupportedModelError, match=supported):
        load.describe(str(other))
    gemma = tmp_path / "gemma"
    config = transformers.LlavaConfig(
        vision_config=_vision("siglip", 1), text_config=transformers.GemmaConfig(vocab_size=VOCAB),
    )
    config.save_pretrained(str(gemma))
    with pytest.raises(load.UnsupportedModelError, match="'gemma'.*llama, mistral, qwen2"):
        load.describe(str(gemma))


def test_missing_unexpected_and_pickle_files_are_reported(tmp_path):
    path = str(tmp_path)
    _save(path, _vision("siglip", 1, tie_last_hidden_states=True), _text("llama"))
    tensors = load.read_safetensors(path)
    tensors.pop("language_model.model.layers.1.mlp.up_proj.weight")
    tensors["language_model.model.extra_adapter.weight"] = np.zeros((2,), np.float32)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(load.CheckpointKeysError) as err:
        load.load_pretrained(path)
    assert "missing 1 tensor(s): language_model.model.layers.1.mlp.up_proj.weight" in str(err.value)
    assert "unexpected 1 tensor(s): language_model.model.extra_adapter.weight" in str(err.value)
    os.remove(os.path.join(path, "model.safetensors"))
    open(os.path.join(path, "pytorch_model.bin"), "wb").close()
    with pytest.raises(FileNotFoundError, match="pickle files are never loaded"):
        load.load_pretrained(path)


# Mesh rules for every logical name of the policy's parameters, all replicated on one device.
RULES = tuple((name, None) for name in ("vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "patch",
                                        "vit_embed", "vit_mlp", "positions", "layers"))


class _TrainState:
    """What ``init_from_hf`` reads of a trainer's state (``runtime.PolicyTrainState``): the model
    config, a fresh (policy, optimizer) state and its shardings."""

    def __init__(self, cfg):
        self.model_config = cfg
        self._create = lambda: self._with_optimizer(Policy(cfg, rngs=nnx.Rngs(0)))
        self.graphdef, abstract = nnx.split(nnx.eval_shape(self._create))
        self.shardings = mesh_lib.state_shardings(abstract, mesh_lib.make_mesh({"data": 1}), RULES)

    @staticmethod
    def _with_optimizer(model):
        return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    def init_state(self):
        return nnx.split(self._create())[1]


@pytest.mark.parametrize(
    "text_kind, vision_kw, text_kw",
    [
        ("llama", dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3,
                       patch_size=8, layer_norm_eps=1e-5),
         dict(hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=3, head_dim=12, rope_theta=20000.0, rms_norm_eps=1e-6)),
        ("qwen2", dict(hidden_size=40, intermediate_size=56, num_hidden_layers=1, num_attention_heads=5),
         dict(vocab_size=80, hidden_size=40, intermediate_size=88, num_hidden_layers=5, num_attention_heads=5,
              num_key_value_heads=1)),
    ],
)
def test_any_size_builds_from_the_hf_config_and_loads_exactly(tmp_path, text_kind, vision_kw, text_kw):
    vision = _vision("siglip", 1, tie_last_hidden_states=True, **vision_kw)
    text = _text(text_kind, **text_kw)
    model = _save(str(tmp_path), vision, text)
    cfg = load.policy_config_from_hf(str(tmp_path), max_views=2, text_len=20, dtype="float32",
                                     remat="dots_saveable")
    v, t = cfg.vision, cfg.text
    n = (IMAGE // vision.patch_size) ** 2
    assert (v.hidden, v.layers, v.heads, v.mlp, v.patch_size, v.image_size, v.channels, v.layer_norm_eps) == (
        vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size,
        vision.patch_size, IMAGE, 1, vision.layer_norm_eps)
    assert (t.vocab_size, t.hidden, t.layers, t.heads, t.kv_heads, t.mlp, t.rms_eps) == (
        text.vocab_size, text.hidden_size, text.num_hidden_layers, text.num_attention_heads,
        text.num_key_value_heads, text.intermediate_size, text.rms_norm_eps)
    assert t.head_dim == text_kw.get("head_dim", text.hidden_size // text.num_attention_heads)
    assert t.rope_theta == text_kw.get("rope_theta", 5000.0) and t.attention_bias == (text_kind == "qwen2")
    assert t.max_seq_len == 2 * n + 20 and (cfg.dtype, cfg.remat) == ("float32", "dots_saveable")
    assert all((t.hidden, t.layers) != (s["text"]["hidden"], s["text"]["layers"]) for s in SIZES.values())

    run = _TrainState(cfg)
    state = load.init_from_hf(run, str(tmp_path))
    for x, sharding in zip(jax.tree.leaves(state[0]), jax.tree.leaves(run.shardings[0])):  # the policy
        assert isinstance(x, jax.Array) and x.sharding == sharding
    policy, optimizer = nnx.merge(run.graphdef, state)
    assert not any(np.any(x) for x in jax.tree.leaves(nnx.state(optimizer, nnx.optimizer.OptState)))
    gray, ids = _inputs()
    diff = np.abs(_our_logits(policy, gray, ids) - _hf_logits(model, gray, ids, 1, [0.5], [0.5]))
    assert diff.max() < 1e-4, diff.max()
