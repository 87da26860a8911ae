"""Sampler: cached == teacher-forced, group sharing == separate prefills, greedy, EOS, padding;
with a mesh (8 CPU devices, a subprocess) the sharded sampler gives the same tokens."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radflow_jax.models.policy import Policy, policy_config, token_scores
from radflow_jax.rl.sampling import SamplerSettings, categorical, filter_logits, sample

VOCAB, IMAGE, VIEWS, T = 64, 32, 2, 8
LENS = [3, 6]  # real prompt lengths in the padded batch


def toy_policy():
    """(graphdef, state) of the toy size with parameters spread out (std ~0.3)."""
    graphdef, state = nnx.split(Policy(policy_config("toy", VOCAB, IMAGE, VIEWS), rngs=nnx.Rngs(0)))
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    spread = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return graphdef, jax.tree.unflatten(treedef, spread)


def prefix_batch():
    rng = np.random.default_rng(0)
    prompt = np.zeros((len(LENS), max(LENS)), np.int32)
    for i, n in enumerate(LENS):
        prompt[i, max(LENS) - n :] = [1, *rng.integers(7, VOCAB, n - 1)]
    return dict(
        image=rng.uniform(-1, 1, (len(LENS), VIEWS, IMAGE, IMAGE, 1)).astype(np.float32),
        view_mask=np.array([[True, True], [True, False]]),
        prompt_tokens=prompt,
        prompt_mask=prompt != 0,
    )


@pytest.fixture(scope="module")
def policy():
    return toy_policy()


@pytest.fixture(scope="module")
def batch():
    return prefix_batch()


def repeat(batch: dict, g: int) -> dict:
    return {k: np.repeat(v, g, axis=0) for k, v in batch.items()}


SAMPLING = dict(max_new_tokens=T, temperature=1.3, top_k=40, top_p=0.95)


@pytest.fixture(scope="module")
def grouped(policy, batch):
    return sample(*policy, batch, rng=jax.random.key(7), group_size=3, **SAMPLING)


def test_sampled_logprobs_equal_teacher_forced(policy, batch, grouped):
    """Cached decoding gives the full forward's log-probs (temperature-1 policy) to 1e-5."""
    out = grouped
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (6, T)
    full = dict(repeat(batch, 3), target_tokens=np.asarray(out.tokens), target_mask=np.asarray(out.mask))
    graphdef, state = policy
    logp = jax.jit(lambda s, b: token_scores(nnx.merge(graphdef, s), b).logp)(state, full)
    np.testing.assert_allclose(out.logprobs, logp, atol=1e-5, rtol=1e-5)
    assert np.asarray(out.mask).sum() > 10 and float(jnp.min(out.logprobs)) < -1.0


def test_group_sharing_equals_separate_prefills(policy, batch, grouped):
    separate = sample(*policy, repeat(batch, 3), rng=jax.random.key(7), group_size=1, **SAMPLING)
    np.testing.assert_array_equal(grouped.tokens, separate.tokens)
    np.testing.assert_array_equal(grouped.mask, separate.mask)
    np.testing.assert_allclose(grouped.logprobs, separate.logprobs, atol=1e-5, rtol=1e-5)
    assert len({tuple(r) for r in np.asarray(grouped.tokens)[:3]}) > 1  # group members differ


def test_greedy_deterministic_and_equal_to_top_k_1_and_tiny_top_p(policy, batch):
    kw = dict(max_new_tokens=T, eos_id=-1)
    a = sample(*policy, batch, rng=jax.random.key(0), greedy=True, **kw)
    b = sample(*policy, batch, rng=jax.random.key(1), greedy=True, **kw)
    k1 = sample(*policy, batch, rng=jax.random.key(2), top_k=1, temperature=2.0, **kw)
    p0 = sample(*policy, batch, rng=jax.random.key(3), top_p=1e-6, temperature=2.0, **kw)
    for other in (b, k1, p0):
        np.testing.assert_array_equal(a.tokens, other.tokens)
        np.testing.assert_allclose(a.logprobs, other.logprobs, atol=1e-6)
    assert np.asarray(a.mask).all() and np.asarray(a.truncated).all()


def test_left_padded_batch_equals_unpadded_single_runs(policy, batch):
    padded = sample(*policy, batch, rng=jax.random.key(0), greedy=True, max_new_tokens=T, eos_id=-1)
    for i, n in enumerate(LENS):
        single = {k: v[i : i + 1] for k, v in batch.items()}
        single["prompt_tokens"] = single["prompt_tokens"][:, -n:]
        single["prompt_mask"] = single["prompt_mask"][:, -n:]
        alone = sample(*policy, single, rng=jax.random.key(0), greedy=True, max_new_tokens=T, eos_id=-1)
        np.testing.assert_array_equal(padded.tokens[i], alone.tokens[0])
        np.testing.assert_allclose(padded.logprobs[i], alone.logprobs[0], atol=1e-5)


def test_eos_is_kept_and_followed_by_pads(policy, batch):
    free = sample(*policy, batch, rng=jax.random.key(0), greedy=True, max_new_tokens=T, eos_id=-1)
    free_tokens = np.asarray(free.tokens)
    eos = int(free_tokens[0, 3])
    out = sample(*policy, batch, rng=jax.random.key(0), greedy=True, max_new_tokens=T, eos_id=eos, pad_id=0)
    for i in range(len(LENS)):
        hits = np.flatnonzero(free_tokens[i] == eos)
        length = int(hits[0]) + 1 if hits.size else T
        assert int(out.lengths[i]) == length and bool(out.truncated[i]) == (hits.size == 0)
        np.testing.assert_array_equal(out.mask[i], np.arange(T) < length)
        np.testing.assert_array_equal(out.tokens[i, :length], free_tokens[i, :length])
        assert (np.asarray(out.tokens[i, length:]) == 0).all()
        assert (np.asarray(out.logprobs[i, length:]) == 0).all()
    assert int(out.lengths[0]) <= 4 and int(out.tokens[0, out.lengths[0] - 1]) == eos


def test_filter_logits_by_hand():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    settings = functools.partial(
        SamplerSettings, max_new_tokens=1, group_size=1, greedy=False, eos_id=2, pad_id=0
    )
    top2 = filter_logits(logits, settings(temperature=1.0, top_k=2, top_p=1.0))
    assert (np.asarray(top2[0, :2]) < -1e29).all() and np.allclose(top2[0, 2:], logits[0, 2:])
    # nucleus 0.5: 0.4 alone has mass before it 0 (<0.5); 0.3 has 0.4 before it (<0.5); 0.2 has 0.7.
    nucleus = filter_logits(logits, settings(temperature=1.0, top_k=0, top_p=0.5))
    np.testing.assert_array_equal(np.asarray(nucleus[0]) > -1e29, [False, False, True, True])
    hot = filter_logits(logits, settings(temperature=2.0, top_k=0, top_p=1.0))
    np.testing.assert_allclose(hot, logits / 2.0)


@pytest.mark.parametrize("vocab, block", [(300, 128), (300, 7), (5, 128)])
def test_categorical_draws_follow_the_distribution(vocab, block):
    """Inverse-CDF draws: every frequency within 5 standard errors of its probability (a wrong
    block offset or an off-by-one in either level moves mass by whole entries), and entries
    filtered out (p = 0) never drawn. Deterministic: one seed."""
    probs = np.random.default_rng(vocab).dirichlet(np.full(vocab, 0.5))
    probs[::3] = 0.0
    probs /= probs.sum()
    logits = jnp.asarray(np.where(probs > 0, np.log(np.maximum(probs, 1e-30)), -1e30), jnp.float32)[None]
    n = 100_000
    draw = jax.jit(jax.vmap(lambda k: categorical(k, logits, block=block)[0]))
    freq = np.bincount(np.asarray(draw(jax.random.split(jax.random.key(0), n))), minlength=vocab) / n
    assert freq[probs == 0].sum() == 0
    np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / n) + 1 / n)


@pytest.mark.parametrize("size", ["tiny", "small", "base", "1b", "7b"])
def test_sampler_shapes_for_named_sizes(size):
    cfg = policy_config(size, vocab_size=4000, image_size=64, max_views=1)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Policy(cfg, rngs=nnx.Rngs(0))))
    prefix = {
        "image": jax.ShapeDtypeStruct((2, 1, 64, 64, 1), jnp.float32),
        "view_mask": jax.ShapeDtypeStruct((2, 1), bool),
        "prompt_tokens": jax.ShapeDtypeStruct((2, 8), jnp.int32),
        "prompt_mask": jax.ShapeDtypeStruct((2, 8), bool),
    }
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    out = jax.eval_shape(
        lambda s, p, k: sample(graphdef, s, p, rng=k, max_new_tokens=16, group_size=4), state, prefix, key
    )
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (8, 16)
    assert out.lengths.shape == out.truncated.shape == (8,)


def test_argument_errors(policy, batch):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample(*policy, batch, rng=jax.random.key(0), max_new_tokens=4, temperature=0.0)
    with pytest.raises(KeyError, match="prompt_mask"):
        partial = {k: batch[k] for k in ("image", "view_mask", "prompt_tokens")}
        sample(*policy, partial, rng=jax.random.key(0), max_new_tokens=4)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        sample(*policy, batch, rng=jax.random.key(0), max_new_tokens=1000)


_SHARDED = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path[:0] = sys.argv[1:3]
    from test_sampling import prefix_batch, toy_policy
    from test_sharding import RULES
    from radflow_jax.parallel import mesh as mesh_lib
    from radflow_jax.rl.sampling import sample

    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, state = toy_policy()
    prefix = prefix_batch()  # 2 rows: fewer than the 4 batch shards, so replicated
    kw = dict(rng=jax.random.key(3), max_new_tokens=6, group_size=2, temperature=1.3, eos_id=-1)
    ref = sample(graphdef, state, prefix, **kw)
    for _ in range(2):  # the second call reuses the jitted sampler
        out = sample(graphdef, state, prefix, mesh=mesh, rules=RULES, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    assert out.tokens.sharding.is_equivalent_to(rows, 2) and out.lengths.sharding.is_equivalent_to(rows, 1)
    print("ok")
""")


def test_sharded_sampler_on_an_8_device_mesh_equals_one_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [os.path.join(tests, "rl"), os.path.join(tests, "models")]
    out = subprocess.run([sys.executable, "-c", _SHARDED, *args], env=env, cwd=os.path.dirname(tests),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]
