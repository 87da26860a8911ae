"""Activation sharding by logical names: spec resolution, a no-op without rules, and on an 8-device
CPU mesh (a subprocess) the sharded forward/backward equals the unsharded one with activations,
logits and the KV cache laid out as the rules say."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

from radflow_jax.models.policy import Policy, policy_config
from radflow_jax.models.sharding import constrain, fitted_spec, sharding_rules
from radflow_jax.parallel.mesh import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# config.DEFAULT_RULES plus the names the models add: the stacked-layer axis, ViT patches, cache rows.
RULES = (
    ("batch", ("data", "fsdp")), ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"),
    ("heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None), ("patch", None),
    ("vit_embed", "fsdp"), ("vit_mlp", "tensor"), ("positions", None), ("length", None),
    ("layers", None), ("patches", None), ("cache_batch", ("data", "fsdp")),
)


def test_specs_follow_the_rules_and_replicate_what_does_not_divide():
    mesh = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))
    assert fitted_spec(("batch", "length", "embed"), (8, 5, 32), mesh, RULES) == PartitionSpec(
        ("data", "fsdp"), None, None)  # embed's fsdp is taken by the batch
    vocab = fitted_spec(("batch", "length", "vocab"), (2, 5, 64), mesh, RULES)  # 2 rows over 4 shards
    assert vocab == PartitionSpec(None, None, "tensor")
    cache = ("layers", "cache_batch", "length", "kv_heads", "head_dim")
    assert fitted_spec(cache, (3, 4, 16, 2, 8), mesh, RULES) == PartitionSpec(
        None, ("data", "fsdp"), None, "tensor", None)
    one_kv_head = fitted_spec(cache, (3, 4, 16, 1, 8), mesh, RULES)
    assert one_kv_head == PartitionSpec(None, ("data", "fsdp"), None, None, None)


def _jaxpr_text(model: Policy) -> str:
    b, n = 2, 4
    args = (jnp.zeros((b, 1, 32, 32, 1)), jnp.ones((b, 1), bool), jnp.ones((b, n), jnp.int32),
            jnp.ones((b, n), bool))
    graphdef, state = nnx.split(model)
    return str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(*args))(state))


def test_constrain_is_a_no_op_without_rules_and_applies_with_them():
    model = Policy(policy_config("toy", 64, 32, 1), rngs=nnx.Rngs(0))
    x = jnp.ones((2, 3))
    assert constrain(x, ("batch", "embed")) is x
    assert "sharding_constraint" not in _jaxpr_text(model)
    with sharding_rules(make_mesh({"data": 1}), RULES):
        assert _jaxpr_text(model).count("sharding_constraint") >= 10  # blocks, heads, logits


_SHARDED = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path.insert(0, sys.argv[1])
    from test_policy import make_batch, toy_model
    from test_sharding import RULES
    from radflow_jax.models.policy import token_scores
    from radflow_jax.models.sharding import sharding_rules
    from radflow_jax.parallel import mesh as mesh_lib

    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = toy_model()
    graphdef, state = nnx.split(model)
    batch = make_batch(0, prompt_lens=[2, 6, 4, 5], target_len=5)

    def loss(s, b):
        scores = token_scores(nnx.merge(graphdef, s), b, chunk_size=2)
        return scores.logp.sum(), scores

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, ref), ref_grads = step(state, batch)
    shardings = mesh_lib.state_shardings(state, mesh, RULES)
    with sharding_rules(mesh, RULES):
        sharded_state = jax.device_put(state, shardings)
        sharded_batch = mesh_lib.shard_batch(batch, mesh, RULES)
        (_, scores), grads = step(sharded_state, sharded_batch)
        prefix = [sharded_batch[k] for k in ("image", "view_mask", "prompt_tokens", "prompt_mask")]
        logits = jax.jit(lambda s, p: nnx.merge(graphdef, s)(*p))(sharded_state, prefix)
        _, cache = jax.jit(lambda s, p: nnx.merge(graphdef, s).prefill(*p, 20))(sharded_state, prefix)
    np.testing.assert_allclose(scores.logp, ref.logp, atol=1e-5)
    np.testing.assert_allclose(scores.entropy, ref.entropy, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):  # float32 sums reordered
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    def laid_out(x, *spec):
        return x.sharding.is_equivalent_to(NamedSharding(mesh, P(*spec)), x.ndim)

    assert laid_out(logits, ("data", "fsdp"), None, "tensor"), logits.sharding
    assert laid_out(cache.k, None, ("data", "fsdp"), None, "tensor", None), cache.k.sharding
    print("ok")
""")


def test_sharded_equals_unsharded_on_an_8_device_mesh():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", _SHARDED, here], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]
