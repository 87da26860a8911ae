"""Policy model: shapes for every named size, padding invariance, cached == full, pure use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radflow_jax.models.policy import (
    SIZES,
    Policy,
    count_params,
    policy_config,
    teacher_forced,
    teacher_forced_logprobs,
)

VOCAB, IMAGE, VIEWS = 64, 32, 2
AXIS_NAMES = {
    "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "patch", "vit_embed", "vit_mlp", "positions"
}


_logprobs_jit = jax.jit(teacher_forced_logprobs, static_argnums=0)


def logprobs(model: Policy, batch: dict):
    """Jitted teacher-forced (logp, logits); compiles once per config and batch shape."""
    return _logprobs_jit(*nnx.split(model), batch)


def toy_model(seed: int = 0, **overrides) -> Policy:
    """The toy size with parameters spread out (std ~0.3), so logits are far from uniform."""
    model = Policy(policy_config("toy", VOCAB, IMAGE, VIEWS, **overrides), rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    spread = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(treedef, spread))
    return model


def make_batch(seed: int, prompt_lens, target_len: int = 6, prompt_width: int = 6, views=None) -> dict:
    """Left-padded prompts of the given real lengths (each starts with <bos>=1)."""
    rng = np.random.default_rng(seed)
    b = len(prompt_lens)
    prompt = np.zeros((b, prompt_width), np.int32)
    for i, n in enumerate(prompt_lens):
        prompt[i, prompt_width - n :] = [1, *rng.integers(7, VOCAB, n - 1)]
    view_mask = np.ones((b, VIEWS), bool) if views is None else np.asarray(views, bool)
    return dict(
        image=rng.uniform(-1, 1, (b, VIEWS, IMAGE, IMAGE, 1)).astype(np.float32),
        view_mask=view_mask,
        prompt_tokens=prompt,
        prompt_mask=prompt != 0,
        target_tokens=rng.integers(3, VOCAB, (b, target_len)).astype(np.int32),
        target_mask=np.ones((b, target_len), bool),
    )


def row(batch: dict, i: int, prompt_len: int | None = None) -> dict:
    """Row i alone, with its prompt cut to its real tokens when prompt_len is given."""
    out = {k: v[i : i + 1] for k, v in batch.items()}
    if prompt_len is not None:
        out["prompt_tokens"] = out["prompt_tokens"][:, -prompt_len:]
        out["prompt_mask"] = out["prompt_mask"][:, -prompt_len:]
    return out


@pytest.mark.parametrize("size,low,high", [
    ("toy", 1e5, 5e5), ("tiny", 1.5e6, 3e6), ("small", 2e7, 3.5e7), ("base", 8e7, 1.3e8),
    ("1b", 8e8, 1.5e9), ("7b", 6e9, 8e9),
])  # fmt: skip
def test_named_sizes_shapes(size, low, high):
    cfg = policy_config(size, vocab_size=4000, image_size=128, max_views=2)
    abstract = nnx.eval_shape(lambda: Policy(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    assert low <= count_params(state) <= high
    batch = {
        "image": jax.ShapeDtypeStruct((2, 2, 128, 128, 1), jnp.float32),
        "view_mask": jax.ShapeDtypeStruct((2, 2), bool),
        "prompt_tokens": jax.ShapeDtypeStruct((2, 8), jnp.int32),
        "prompt_mask": jax.ShapeDtypeStruct((2, 8), bool),
        "target_tokens": jax.ShapeDtypeStruct((2, 16), jnp.int32),
        "target_mask": jax.ShapeDtypeStruct((2, 16), bool),
    }
    logp, logits = jax.eval_shape(lambda s, b: teacher_forced_logprobs(graphdef, s, b), state, batch)
    assert logp.shape == (2, 16) and logits.shape == (2, 16, 4000) and logits.dtype == jnp.float32
    assert set(SIZES) == {"toy", "tiny", "small", "base", "1b", "7b"}


def test_params_are_fp32_with_logical_axis_names():
    model = Policy(policy_config("toy", VOCAB, IMAGE, VIEWS, dtype="bfloat16"), rngs=nnx.Rngs(0))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata()["out_sharding"]
        assert var[...].dtype == jnp.float32, path
        assert len(names) == var[...].ndim and set(names) <= AXIS_NAMES, (path, names)
        assert len(set(names)) == len(names), (path, names)  # a mesh axis may appear once


def test_hf_layout_names_and_shapes():
    cfg = policy_config("toy", VOCAB, IMAGE, VIEWS)
    flat = {
        ".".join(map(str, p)): v[...].shape
        for p, v in nnx.to_flat_state(nnx.state(Policy(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    }
    t, v = cfg.text, cfg.vision
    assert flat["vision_tower.patch_embedding.kernel"] == (v.patch_size**2 * v.channels, v.hidden)
    assert flat["vision_tower.position_embedding"] == (v.num_patches, v.hidden)
    assert flat["vision_tower.layers.1.self_attn.out_proj.kernel"] == (v.heads, v.hidden // v.heads, v.hidden)
    assert flat["multi_modal_projector.linear_2.kernel"] == (t.hidden, t.hidden)
    assert flat["language_model.model.embed_tokens.weight"] == (VOCAB, t.hidden)
    assert flat["language_model.model.layers.0.self_attn.k_proj.kernel"] == (t.hidden, t.kv_heads, t.head_dim)
    assert flat["language_model.model.layers.1.mlp.down_proj.kernel"] == (t.mlp, t.hidden)
    assert flat["language_model.lm_head.kernel"] == (t.hidden, VOCAB)
    assert "language_model.model.layers.0.self_attn.o_proj.bias" not in flat
    per_layer = 2 + 4 + 3  # two norms, q/k/v/o, gate/up/down
    assert sum(k.startswith("language_model.model.layers.0.") for k in flat) == per_layer


def test_padded_equals_unpadded():
    model = toy_model()
    batch = make_batch(0, prompt_lens=[2, 6, 4])
    logp, logits = logprobs(model, batch)
    for i, n in enumerate([2, 6, 4]):
        logp_i, logits_i = logprobs(model, row(batch, i, n))
        np.testing.assert_allclose(logits[i], logits_i[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(logp[i], logp_i[0], atol=1e-5)
    assert np.ptp(np.asarray(logp)) > 1.0  # the check is not vacuous: logits are far from uniform


def test_missing_view_is_ignored():
    model = toy_model()
    batch = make_batch(1, prompt_lens=[4, 4], views=[[True, False], [True, False]])
    noisy = dict(batch, image=batch["image"].copy())
    noisy["image"][:, 1] = 7.0  # garbage in the missing view
    one_view = dict(batch, image=batch["image"][:, :1], view_mask=batch["view_mask"][:, :1])
    logp, _ = logprobs(model, batch)
    np.testing.assert_allclose(logprobs(model, noisy)[0], logp, atol=1e-6)
    np.testing.assert_allclose(logprobs(model, one_view)[0], logp, atol=1e-5)
    emb, mask = model.encode_images(batch["image"], batch["view_mask"])
    n = model.cfg.vision.num_patches
    assert emb.shape == (2, VIEWS * n, model.cfg.text.hidden)
    assert not np.asarray(mask[:, n:]).any() and not np.asarray(emb[:, n:]).any()


def test_target_padding_masks_logprobs():
    model = toy_model()
    batch = make_batch(2, prompt_lens=[3, 5])
    batch["target_mask"][0, 4:] = False
    logp, _ = logprobs(model, batch)
    assert (np.asarray(logp[0, 4:]) == 0).all() and (np.asarray(logp[0, :4]) < 0).all()


def test_pure_split_merge_jit_matches_module():
    """The pure (graphdef, state) function under jax.jit equals the module under nnx.jit."""
    model = toy_model()
    batch = make_batch(3, prompt_lens=[6, 3])
    graphdef, state = nnx.split(model)
    logp, logits = jax.jit(teacher_forced_logprobs, static_argnums=0)(graphdef, state, batch)
    ref_logp, ref_logits = nnx.jit(teacher_forced)(model, batch)
    np.testing.assert_allclose(logp, ref_logp, atol=1e-6)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-6)


def test_prefill_decode_equals_full_forward():
    """Cached decoding of a known continuation gives the full forward's logits (fp32, 1e-5)."""
    model = toy_model()
    batch = make_batch(4, prompt_lens=[3, 6], target_len=5)
    _, full_logits = logprobs(model, batch)
    capacity = VIEWS * model.cfg.vision.num_patches + 6 + 5
    prefill = nnx.jit(
        lambda m, b: m.prefill(b["image"], b["view_mask"], b["prompt_tokens"], b["prompt_mask"], capacity)
    )
    logits, cache = prefill(model, batch)
    step = nnx.jit(lambda m, tok, c: m.decode_step(tok, c))
    for t in range(5):
        np.testing.assert_allclose(logits, full_logits[:, t], atol=1e-5, rtol=1e-5)
        logits, cache = step(model, jnp.asarray(batch["target_tokens"][:, t]), cache)
    assert int(cache.index) == capacity and cache.positions.tolist() == [VIEWS * 4 + 3 + 5, VIEWS * 4 + 6 + 5]


def test_bfloat16_compute_and_remat_gradients():
    batch = make_batch(5, prompt_lens=[4, 6])
    ref = toy_model()
    bf16 = toy_model(dtype="bfloat16")
    logp16, logits16 = logprobs(bf16, batch)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logp16, logprobs(ref, batch)[0], atol=0.25)

    def loss(model):
        return -teacher_forced(model, batch)[0].sum()

    g_plain = nnx.jit(nnx.grad(loss))(ref)
    g_remat = nnx.jit(nnx.grad(loss))(toy_model(remat="full"))
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        policy_config("huge", VOCAB, IMAGE)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        policy_config("toy", VOCAB, 40)
    with pytest.raises(ValueError, match="dtype must be one of"):
        policy_config("toy", VOCAB, IMAGE, dtype="float16")
