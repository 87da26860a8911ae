"""Name/layout mapping without torch: bit-identical round trips, per-layer HF tensors as slices of
our stacked ones, exact grayscale folding, aliases."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from radflow_jax.hf import convert
from radflow_jax.models.policy import Policy, policy_config
from radflow_jax.models.vit import patchify


def _params(attention_bias: bool):
    cfg = policy_config("toy", 50, 32, text_len=16)
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, attention_bias=attention_bias))
    rng = np.random.default_rng(0)
    shapes = convert.param_shapes(cfg)
    return cfg, {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.parametrize("attention_bias", [False, True])
def test_round_trip_is_bit_identical_and_hf_shaped(attention_bias):
    cfg, params = _params(attention_bias)
    hf = convert.to_hf(params, cfg)
    t = cfg.text
    attn = "language_model.model.layers.0.self_attn"
    assert hf[f"{attn}.q_proj.weight"].shape == (t.heads * t.head_dim, t.hidden)
    assert hf[f"{attn}.o_proj.weight"].shape == (t.hidden, t.heads * t.head_dim)
    assert hf["language_model.lm_head.weight"].shape == (t.vocab_size, t.hidden)
    p = cfg.vision.patch_size
    assert hf["vision_tower.embeddings.patch_embedding.weight"].shape == (cfg.vision.hidden, 1, p, p)
    o_bias = [k for k in hf if k.endswith("o_proj.bias")]
    assert len(o_bias) == (t.layers if attention_bias else 0)
    assert all(not hf[k].any() for k in o_bias)
    back = convert.from_hf(hf, cfg, convert.export_layout(cfg))
    assert back.keys() == params.keys()
    for key in params:
        assert back[key].dtype == params[key].dtype and np.array_equal(back[key], params[key]), key


def test_hf_layer_i_is_slice_i_of_our_stacked_arrays():
    cfg, params = _params(False)
    hf = convert.to_hf(params, cfg)
    for i in range(cfg.text.layers):
        ours = params["language_model.model.layers.mlp.down_proj.kernel"][i]
        np.testing.assert_array_equal(hf[f"language_model.model.layers.{i}.mlp.down_proj.weight"], ours.T)
        norm = params["language_model.model.layers.input_layernorm.weight"][i]
        np.testing.assert_array_equal(hf[f"language_model.model.layers.{i}.input_layernorm.weight"], norm)
    for i in range(cfg.vision.layers):
        fc1 = params["vision_tower.layers.mlp.fc1.bias"][i]
        np.testing.assert_array_equal(hf[f"vision_tower.encoder.layers.{i}.mlp.fc1.bias"], fc1)
    assert f"language_model.model.layers.{cfg.text.layers}.input_layernorm.weight" not in hf


def test_q_projection_matches_torch_linear_semantics():
    cfg, params = _params(True)
    hf = convert.to_hf(params, cfg)
    x = np.random.default_rng(1).standard_normal((3, cfg.text.hidden)).astype(np.float32)
    ours = np.tensordot(x, params["language_model.model.layers.self_attn.q_proj.kernel"][1], 1)
    ours = ours + params["language_model.model.layers.self_attn.q_proj.bias"][1]
    q = "language_model.model.layers.1.self_attn.q_proj"
    w, b = hf[f"{q}.weight"], hf[f"{q}.bias"]
    np.testing.assert_allclose(ours.reshape(3, -1), x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_rgb_tower_and_processor_normalisation_fold_exactly_for_grayscale():
    rng = np.random.default_rng(2)
    d, p, size = 8, 4, 8
    weight = rng.standard_normal((d, 3, p, p))
    bias = rng.standard_normal(d)
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    gray = rng.random((2, size, size))
    # HF: a stride-p conv over three normalised copies of the grayscale image.
    planes = np.stack([(gray - m) / s for m, s in zip(mean, std)], axis=1)  # [B, 3, H, W]
    blocks = planes.reshape(2, 3, size // p, p, size // p, p)
    hf = np.einsum("bcyixj,dcij->byxd", blocks, weight).reshape(2, -1, d) + bias
    layout = convert.HFLayout(channels=3, image_mean=mean, image_std=std)
    kernel, folded_bias = convert._patch_from_hf(weight, bias, layout)
    ours = patchify((gray * 2 - 1)[..., None], p) @ kernel + folded_bias
    np.testing.assert_allclose(ours, hf, rtol=1e-10, atol=1e-10)


def test_other_key_spellings_are_canonicalised():
    keys = {
        "model.language_model.norm.weight": "language_model.model.norm.weight",
        "lm_head.weight": "language_model.lm_head.weight",
        "model.vision_tower.vision_model.post_layernorm.bias": "vision_tower.post_layernorm.bias",
        "vision_tower.vision_model.embeddings.position_embedding.weight":
            "vision_tower.embeddings.position_embedding.weight",
        "model.multi_modal_projector.linear_1.bias": "multi_modal_projector.linear_1.bias",
        "language_model.model.embed_tokens.weight": "language_model.model.embed_tokens.weight",
    }
    assert list(convert.canonical_hf_keys({k: 0 for k in keys})) == list(keys.values())
    with pytest.raises(ValueError, match="both named 'language_model.lm_head.weight'"):
        convert.canonical_hf_keys({"lm_head.weight": 0, "language_model.lm_head.weight": 1})


def test_flatten_and_unflatten_invert_each_other_on_a_policy_state():
    cfg, _ = _params(False)
    state = nnx.state(nnx.eval_shape(lambda: Policy(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    pure = nnx.to_pure_dict(state)
    flat = convert.flatten(pure)
    assert flat["vision_tower.layers.self_attn.q_proj.kernel"].shape[0] == cfg.vision.layers
    assert convert.unflatten(flat) == pure
