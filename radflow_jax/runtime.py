"""What the training stages share to run on devices, composed by each (STYLE §13, no inheritance).

- ``Runtime``: the mesh and logical-axis rules of ``config.mesh``, sharded layouts of whatever a
  stage trains, sharded initialisation, and the host→device transfer of a batch — with every
  shape decided globally (a multi-host batch is assembled from each process's rows, so a shape
  taken from one process's rows would differ between processes).
- ``PolicyTrainState``: the (policy, optimizer) train state of the SFT and RL stages. Both use this one
  layout, so either stage's checkpoint restores through it. The optimizer covers only the
  trainable parameters: frozen modules (a warm vision tower) have no Adam moments and no
  gradients, and stay bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from radflow_jax.models.policy import Policy, PolicyConfig, policy_config
from radflow_jax.models.sharding import sharding_rules
from radflow_jax.parallel import distributed
from radflow_jax.parallel import mesh as mesh_lib

MODEL_KEYS = ("image", "view_mask", "prompt_tokens", "prompt_mask", "target_tokens", "target_mask")
TARGET_KEYS = ("target_tokens", "target_mask")


def bucket_length(longest: int, bucket: int, limit: int) -> int:
    """``longest`` rounded up to a multiple of ``bucket`` (0 = no bucketing), at most ``limit``."""
    if bucket <= 0:
        return limit
    return min(-(-max(longest, 1) // bucket) * bucket, limit)


def trim_targets(batch: Mapping[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
    """Cuts the target padding down to the longest target *of the global batch*, bucketed.

    Reports vary from ~40 to ~200 tokens; padding every batch to the maximum wastes most of the
    decoder's work. Buckets bound the number of compiled shapes; the longest target is agreed
    across processes, so all of them build arrays of the same shape. Dropping columns that are
    padding in every row changes no loss term.
    """
    if bucket <= 0:
        return dict(batch)
    local = int(batch["target_mask"].sum(axis=1).max(initial=1))
    length = bucket_length(distributed.global_max(local), bucket, batch["target_tokens"].shape[1])
    return {k: v[:, :length] if k in TARGET_KEYS else v for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Structure, shardings and abstract (``ShapeDtypeStruct``) state of something a stage trains."""

    graphdef: nnx.GraphDef
    shardings: Any
    abstract_state: Any


class Runtime:
    """Mesh, rules and device transfer for one config."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.mesh = mesh_lib.make_mesh(dict(config.mesh.shape))
        self.rules = tuple(config.mesh.rules)

    def activations(self) -> contextlib.AbstractContextManager:
        """The context in which jitted steps shard their activations (and the KV cache) by the
        same logical rules as the parameters; trace and run every step inside it."""
        return sharding_rules(self.mesh, self.rules)

    def replicated(self, value: Any) -> Any:
        """Host values (the same on every process: labels, token weights, flags) as arrays
        replicated over the mesh — an explicit transfer, allowed under ``jax.transfer_guard``."""
        return jax.device_put(value, NamedSharding(self.mesh, PartitionSpec()))

    def layout(self, factory: Callable[[], Any]) -> Layout:
        """The layout of what ``factory()`` builds, without allocating it."""
        return Layout(*mesh_lib.abstract_sharded(factory, self.mesh, self.rules))

    def init(self, layout: Layout, factory: Callable[[], Any]) -> nnx.State:
        """``factory()``'s state created directly in its sharded layout (STYLE §6)."""
        with jax.set_mesh(self.mesh):
            return jax.jit(lambda: nnx.split(factory())[1], out_shardings=layout.shardings)()

    def in_rules(self, jitted: Callable) -> Callable:
        """``jitted`` traced and run with the activation-sharding rules active — only the jitted
        call is inside the rules' mesh context: eager host-side work around it (RL metrics on numpy
        arrays) must not become global-mesh computations, which deadlocked two processes at RL
        step 2. ``.lower(*abstract_args)`` lowers it the same way (AOT compilation without
        allocating: tools/memory_model.py)."""

        def call(*args):
            with self.activations():
                return jitted(*args)

        def lower(*args):
            with self.activations():
                return jitted.lower(*args)

        call.lower = lower
        return call

    def jit_step(self, step: Callable, layout: Layout, num_inputs: int = 1, num_outputs: int = 1) -> Callable:
        """``step(state, *inputs) -> (state, metrics, ...)`` jitted with the state sharded and
        donated, run ``in_rules``; ``num_outputs`` counts the outputs after the state."""
        jitted = jax.jit(
            step,
            in_shardings=(layout.shardings,) + (None,) * num_inputs,
            out_shardings=(layout.shardings,) + (None,) * num_outputs,
            donate_argnums=0,
        )
        return self.in_rules(jitted)

    def device_batch(
        self, batch: Mapping[str, np.ndarray], keys: Sequence[str], *, length_bucket: int = 0
    ) -> dict[str, jax.Array]:
        """This process's rows of ``keys`` → global arrays sharded over ``batch``, targets trimmed
        to the global batch's length bucket."""
        picked = {k: batch[k] for k in keys}
        if "target_mask" in picked:
            picked = trim_targets(picked, length_bucket)
        return mesh_lib.shard_batch(picked, self.mesh, self.rules)


def _top_level(key) -> str | None:
    """A path entry's name: NNX paths hold strings, optax/pytree paths ``DictKey``/``GetAttrKey``."""
    return key if isinstance(key, str) else getattr(key, "key", getattr(key, "name", None))


def frozen_filter(frozen: Sequence[str]) -> nnx.filterlib.Filter:
    """The NNX filter of variables under the named top-level modules of the policy."""
    frozen = tuple(frozen)
    return lambda path, _: bool(path) and _top_level(path[0]) in frozen


def trainable_filter(frozen: Sequence[str]) -> nnx.filterlib.Filter:
    """Parameters outside the ``frozen`` modules: what gets gradients and optimizer state."""
    return nnx.All(nnx.Param, nnx.Not(frozen_filter(frozen)))


def value_and_grad_trainable(
    fn: Callable[[nnx.Module], tuple[jax.Array, Any]], model: nnx.Module, frozen: Sequence[str]
) -> tuple[tuple[jax.Array, Any], nnx.State]:
    """``((value, aux), grads)`` of ``fn(model)`` for the trainable parameters only; the frozen
    ones are closed over as constants, so XLA drops their backward pass."""
    model_def, train_p, rest = nnx.split(model, trainable_filter(frozen), ...)
    return jax.value_and_grad(lambda p: fn(nnx.merge(model_def, p, rest)), has_aux=True)(train_p)


BFLOAT16_SIZES = ("1b", "7b")  # where float32 activations would not fit, bf16 is the default


def compute_dtype(model: ml_collections.ConfigDict) -> str:
    """``model.dtype`` with ``auto`` resolved: bfloat16 for the billion-parameter sizes, float32
    below (the small models train on CPUs, where bf16 is slower and noisier)."""
    if model.dtype != "auto":
        return model.dtype
    return "bfloat16" if model.size in BFLOAT16_SIZES else "float32"


def scan_layers(model: ml_collections.ConfigDict) -> bool:
    """``model.layer_loop`` with ``auto`` resolved: a scan for the billion-parameter sizes (compile
    time independent of depth), unrolled below (faster steps, few layers to compile)."""
    if model.layer_loop != "auto":
        return model.layer_loop == "scan"
    return model.size in BFLOAT16_SIZES


def make_policy_config(config: ml_collections.ConfigDict, vocab_size: int) -> PolicyConfig:
    """The policy of ``config.model`` for a tokenizer's vocabulary and the data's image size."""
    d = config.data
    return policy_config(
        config.model.size, vocab_size, d.image_size, d.max_views,
        text_len=d.max_prompt_len + d.max_target_len, dtype=compute_dtype(config.model),
        remat=config.model.remat, scan_layers=scan_layers(config.model),
    )


class PolicyTrainState:
    """The (policy, optimizer over the trainable parameters) state of SFT and RL, laid out sharded."""

    def __init__(
        self,
        runtime: Runtime,
        model_config: PolicyConfig,
        tx: optax.GradientTransformation,
        *,
        frozen: Sequence[str] = (),
        seed: int = 0,
    ):
        self.runtime = runtime
        self.model_config = model_config
        self.tx = tx
        self.frozen = tuple(frozen)
        self.trainable = trainable_filter(self.frozen)

        def create():
            model = Policy(model_config, rngs=nnx.Rngs(seed))
            return model, nnx.Optimizer(model, tx, wrt=self.trainable)

        self._create = create
        self.layout = runtime.layout(create)
        self.graphdef, self.shardings = self.layout.graphdef, self.layout.shardings
        self.abstract_state = self.layout.abstract_state
        self.policy_def = nnx.graphdef(nnx.eval_shape(lambda: create()[0]))

    def init_state(self) -> nnx.State:
        """A fresh random policy and optimizer, created sharded."""
        return self.runtime.init(self.layout, self._create)

    def policy(self, state: nnx.State) -> Policy:
        model, _ = nnx.merge(self.graphdef, state)
        return model

    def policy_state(self, state: nnx.State) -> nnx.State:
        """The policy's own variables (no optimizer), e.g. for sampling or a KL reference."""
        return nnx.split(self.policy(state))[1]

    def init_from_policy(self, policy_state: nnx.State) -> nnx.State:
        """A train state with these policy variables and a fresh optimizer, laid out sharded."""

        def build(p):
            model = nnx.merge(self.policy_def, p)
            return nnx.split((model, nnx.Optimizer(model, self.tx, wrt=self.trainable)))[1]

        with jax.set_mesh(self.runtime.mesh):
            return jax.jit(build, out_shardings=self.shardings)(policy_state)
