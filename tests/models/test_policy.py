"""Policy model: shapes for every named size, padding invariance, cached == full, pure use;
stacked layers (init as unrolled, scan == unrolled scan == loop), remat policies, chunked token scores."""

import contextlib
import io

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radflow_jax.models.decoder import Decoder, DecoderLayer, TextConfig
from radflow_jax.models.layers import stack_layers
from radflow_jax.models.policy import (
    REMAT_POLICIES,
    SIZES,
    Policy,
    count_params,
    policy_config,
    target_hidden,
    token_scores,
)
from radflow_jax.models.vit import VisionConfig, VisionTransformer, patchify

VOCAB, IMAGE, VIEWS = 64, 32, 2
AXIS_NAMES = {
    "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "patch", "vit_embed", "vit_mlp", "positions",
    "layers",
}


def teacher_forced(model: Policy, batch: dict) -> tuple[jax.Array, jax.Array]:
    """The reference: full float32 logits [B, T, vocab] and the log-softmax of the targets."""
    logits = model.language_model.logits(target_hidden(model, batch))
    target = batch["target_tokens"]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), target[..., None], axis=-1)[..., 0]
    return jnp.where(batch["target_mask"], logp, 0.0), logits


def teacher_forced_logprobs(graphdef: nnx.GraphDef, state: nnx.State, batch: dict):
    """Pure (graphdef, state) form, as the jitted steps use the model."""
    return teacher_forced(nnx.merge(graphdef, state), batch)


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
        assert (names[0] == "layers") == ("layers" in path), (path, names)  # stacked blocks only


def test_hf_layout_names_and_shapes():
    cfg = policy_config("toy", VOCAB, IMAGE, VIEWS)
    flat = {
        ".".join(map(str, p)): v[...].shape
        for p, v in nnx.to_flat_state(nnx.state(Policy(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    }
    t, v = cfg.text, cfg.vision
    assert flat["vision_tower.patch_embedding.kernel"] == (v.patch_size**2 * v.channels, v.hidden)
    assert flat["vision_tower.position_embedding"] == (v.num_patches, v.hidden)
    assert flat["vision_tower.layers.self_attn.out_proj.kernel"] == (
        v.layers, v.heads, v.hidden // v.heads, v.hidden
    )
    assert flat["multi_modal_projector.linear_2.kernel"] == (t.hidden, t.hidden)
    assert flat["language_model.model.embed_tokens.weight"] == (VOCAB, t.hidden)
    assert flat["language_model.model.layers.self_attn.k_proj.kernel"] == (
        t.layers, t.hidden, t.kv_heads, t.head_dim
    )
    assert flat["language_model.model.layers.mlp.down_proj.kernel"] == (t.layers, t.mlp, t.hidden)
    assert flat["language_model.lm_head.kernel"] == (t.hidden, VOCAB)
    assert "language_model.model.layers.self_attn.o_proj.bias" not in flat
    per_layer = 2 + 4 + 3  # two norms, q/k/v/o, gate/up/down
    assert sum(k.startswith("language_model.model.layers.") for k in flat) == per_layer


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


def test_bfloat16_compute():
    batch = make_batch(5, prompt_lens=[4, 6])
    logp16, logits16 = logprobs(toy_model(dtype="bfloat16"), batch)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logp16, logprobs(toy_model(), batch)[0], atol=0.25)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        policy_config("huge", VOCAB, IMAGE)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        policy_config("toy", VOCAB, 40)
    with pytest.raises(ValueError, match="dtype must be one of"):
        policy_config("toy", VOCAB, IMAGE, dtype="float16")


def test_init_equals_the_unrolled_layers_of_before():
    """Stacked layers start from the values per-layer modules had with the same seed (numbers
    printed by the unrolled implementation), so runs stay comparable across the change."""
    flat = {
        ".".join(map(str, p)): np.asarray(v[...], np.float64)
        for p, v in nnx.to_flat_state(nnx.state(Policy(policy_config("toy", VOCAB, IMAGE, VIEWS),
                                                       rngs=nnx.Rngs(0)), nnx.Param))
    }
    expected = {  # key, layer: first value, last value, sum
        ("vision_tower.layers.mlp.fc2.kernel", 1):
            (-0.011517999693751335, 0.017800820991396904, 0.977454439511348),
        ("language_model.model.layers.self_attn.q_proj.kernel", 0):
            (-0.00606549670919776, -0.0015152471605688334, 0.7444040352911543),
        ("language_model.model.layers.mlp.down_proj.kernel", 1):
            (-0.009863946586847305, -0.04191126674413681, -0.5005184339906918),
        ("language_model.lm_head.kernel", None):
            (-0.04745551571249962, -0.03169124945998192, -1.038426991701499),
    }
    for (key, layer), (first, last, total) in expected.items():
        x = (flat[key] if layer is None else flat[key][layer]).reshape(-1)
        assert (x[0], x[-1]) == (first, last), key
        np.testing.assert_allclose(x.sum(), total, rtol=1e-9, err_msg=key)


def _unstack(stacked: nnx.Module, n: int) -> list[nnx.Module]:
    """Layer i of a stacked block as a module of its own (slices of the same arrays)."""
    graphdef, state = nnx.split(stacked)
    return [nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state)) for i in range(n)]


def test_stack_layers_draws_like_separate_layers():
    cfg = TextConfig(vocab_size=VOCAB, hidden=16, layers=3, heads=4, kv_heads=2, head_dim=4, mlp=24)
    rngs = nnx.Rngs(5)
    stacked = stack_layers(lambda: DecoderLayer(cfg, dtype=jnp.float32, rngs=rngs), 3)
    rngs = nnx.Rngs(5)
    separate = [DecoderLayer(cfg, dtype=jnp.float32, rngs=rngs) for _ in range(3)]
    for one, ref in zip(_unstack(stacked, 3), separate):
        for a, b in zip(jax.tree.leaves(nnx.state(one)), jax.tree.leaves(nnx.state(ref))):
            np.testing.assert_array_equal(a, b)


def _saved_residuals(fn, *args) -> int:
    """How many arrays the backward pass of ``fn`` keeps (``print_saved_residuals`` lines)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.ad_checkpoint.print_saved_residuals(fn, *args)
    return len(printed.getvalue().splitlines())


def test_scanned_layers_equal_a_python_loop_for_every_remat_policy():
    """The decoder's and the tower's scan == each layer applied in turn, values and gradients,
    whatever the remat policy; the policies differ in what the backward pass keeps."""
    t = TextConfig(vocab_size=VOCAB, hidden=16, layers=3, heads=4, kv_heads=2, head_dim=4, mlp=24)
    v = VisionConfig(image_size=16, patch_size=8, channels=1, hidden=16, layers=3, heads=2, mlp=24)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    positions = jnp.asarray([[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]])
    real = jnp.asarray([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], bool)  # row 0 starts with a pad
    mask = jnp.tril(jnp.ones((5, 5), bool))[None] & real[:, None]
    images = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 1)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((5, 16)), jnp.float32)

    def decoder_scanned(dec):
        hidden, (k, _) = dec(x, positions, mask)
        return (hidden * w).sum() + k.sum()

    def decoder_loop(dec):
        h, ks = x, []
        for layer in _unstack(dec.model.layers, t.layers):
            h, (k, _) = layer(h, positions, mask)
            ks.append(k)
        return (h * w).sum() + jnp.stack(ks).sum()

    def tower_loop(vit):
        h = vit.patch_embedding(patchify(images, v.patch_size)) + vit.position_embedding[...]
        for block in _unstack(vit.layers, v.layers):
            h = block(h)
        return (vit.post_layernorm(h) * w[0]).sum()

    cases = [
        (lambda remat, unroll: Decoder(t, dtype=jnp.float32, remat=remat, unroll=unroll, rngs=nnx.Rngs(1)),
         decoder_scanned, decoder_loop),
        (lambda remat, unroll: VisionTransformer(v, dtype=jnp.float32, remat=remat, unroll=unroll, rngs=nnx.Rngs(2)),
         lambda vit: (vit(images) * w[0]).sum(), tower_loop),
    ]
    for make, scanned, loop in cases:
        ref_value, ref_grads = nnx.jit(nnx.value_and_grad(loop))(make("none", False))
        for unroll in (False, True):  # model.layer_loop: scan or unroll
            saved = {}
            for remat in REMAT_POLICIES:
                graphdef, state = nnx.split(make(remat, unroll))
                fn = lambda s: scanned(nnx.merge(graphdef, s))  # noqa: E731
                value, grads = jax.jit(jax.value_and_grad(fn))(state)
                np.testing.assert_allclose(value, ref_value, rtol=1e-5)
                for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
                    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
                saved[remat] = _saved_residuals(fn, state)
            assert saved["full"] < saved["dots_saveable"] < saved["none"], (unroll, saved)


T_SCORES = 6  # target positions: chunk size 3 divides it, 4 does not


def _scores_batch():
    batch = make_batch(6, prompt_lens=[3, 6], target_len=T_SCORES)
    batch["target_mask"][0, 4:] = False
    return batch


def test_token_scores_equal_teacher_forced_for_every_chunking():
    model, batch, temperature = toy_model(), _scores_batch(), 0.7
    _, logits = logprobs(model, batch)
    batch["target_tokens"][1, -1] = np.argmax(logits[1, -1])  # the last target feeds no position
    scaled = np.asarray(logits, np.float64) / temperature
    logz = np.log(np.exp(scaled - scaled.max(-1, keepdims=True)).sum(-1)) + scaled.max(-1)
    probs = np.exp(scaled - logz[..., None])
    mask = batch["target_mask"]
    logp = np.take_along_axis(scaled, batch["target_tokens"][..., None], -1)[..., 0] - logz
    entropy = -(probs * np.log(probs)).sum(-1)
    correct = (scaled.argmax(-1) == batch["target_tokens"]) & mask
    graphdef, state = nnx.split(model)

    def total(s, chunk):
        scores = token_scores(nnx.merge(graphdef, s), batch, temperature=temperature, chunk_size=chunk)
        return scores.logp.sum(), scores

    ref_grads = None
    for chunk in (0, 3, 4):
        (_, scores), grads = jax.jit(jax.value_and_grad(total, has_aux=True), static_argnums=1)(state, chunk)
        assert scores.logp.dtype == scores.entropy.dtype == jnp.float32 and scores.correct.dtype == bool
        np.testing.assert_allclose(scores.logp, np.where(mask, logp, 0), atol=2e-6)
        np.testing.assert_allclose(scores.entropy, np.where(mask, entropy, 0), atol=2e-6)
        np.testing.assert_array_equal(scores.correct, correct)
        ref_grads = grads if ref_grads is None else ref_grads
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
    assert correct[1, -1] and not np.asarray(scores.logp[0, 4:]).any()


def test_chunked_token_scores_never_hold_the_full_logits():
    """No [B, T, vocab] float32 array in the program (forward or backward) once chunked."""
    model, batch = toy_model(), _scores_batch()
    graphdef, state = nnx.split(model)
    full = f"tensor<2x{T_SCORES}x{VOCAB}xf32>"

    def program(chunk):
        def loss(s):
            return token_scores(nnx.merge(graphdef, s), batch, chunk_size=chunk).logp.sum()

        return jax.jit(jax.grad(loss)).lower(state).as_text()

    assert full in program(0)  # the check can see them
    assert full not in program(4) and f"tensor<2x4x{VOCAB}xf32>" in program(4)


def test_a_group_shares_its_case_image_features(monkeypatch):
    """G token rows per image row: the tower encodes each case once (B images, not B*G), and the
    scores and gradients equal those of the images repeated to every row."""
    model, g = toy_model(), 3
    cases = make_batch(7, prompt_lens=[3, 5])
    group = {k: np.repeat(v, g, axis=0) for k, v in cases.items()}
    group["target_tokens"] = np.random.default_rng(8).integers(3, VOCAB, group["target_tokens"].shape).astype(np.int32)
    shared = dict(group, image=cases["image"], view_mask=cases["view_mask"])
    encoded = []
    tower_call = VisionTransformer.__call__

    def counting_call(self, image, *args, **kwargs):
        encoded.append(image.shape[0])
        return tower_call(self, image, *args, **kwargs)

    monkeypatch.setattr(VisionTransformer, "__call__", counting_call)
    graphdef, state = nnx.split(model)

    def scores(s, batch):
        out = token_scores(nnx.merge(graphdef, s), batch, temperature=0.5, chunk_size=4)
        return out.logp.sum(), out.logp

    (_, logp_shared), grad_shared = jax.jit(jax.value_and_grad(scores, has_aux=True))(state, shared)
    (_, logp_repeated), grad_repeated = jax.jit(jax.value_and_grad(scores, has_aux=True))(state, group)
    assert encoded == [2 * VIEWS, 2 * g * VIEWS]  # views are encoded one by one: B*V tower rows
    np.testing.assert_allclose(logp_shared, logp_repeated, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grad_shared), jax.tree.leaves(grad_repeated)):
        # summed in another order (over the group, then the tower's rows): float32 rounding only
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())), rtol=1e-5)
    with pytest.raises(ValueError, match="not a whole group"):
        token_scores(model, dict(group, image=cases["image"][:1].repeat(4, 0), view_mask=cases["view_mask"][:1].repeat(4, 0)))
