"""Activation sharding by logical axis names, resolved through the rules of the active context.

Parameters carry logical names from birth (``layers.param``); activations get theirs at block
boundaries through ``constrain``. Which mesh axes a name means is decided by the caller, once,
with ``with sharding_rules(mesh, rules):`` around tracing *and* calling the jitted functions
(the context also enters ``jax.set_mesh``, which is part of jit's cache key, so a function traced
outside the context is traced again inside it). Without a context ``constrain`` does nothing, so
the models run unchanged on one CPU and in tests.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from radflow_jax.parallel.mesh import Rules, logical_to_mesh_spec, validate_rules

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "radflow_sharding_rules", default=None
)


def canonical_rules(rules: Rules) -> Rules:
    """``rules`` as nested tuples, hashable (a config read back from JSON holds lists)."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


@contextlib.contextmanager
def sharding_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Makes ``constrain`` shard activations over ``mesh`` by ``rules`` (logical name -> mesh axes)."""
    rules = canonical_rules(rules)
    validate_rules(rules, mesh.axis_names)
    token = _ACTIVE.set((mesh, rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE.reset(token)


def active_rules() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) of the innermost ``sharding_rules`` context, or None."""
    return _ACTIVE.get()


def fitted_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """The mesh spec of logical ``names``, with every dim the mesh axes do not divide replicated
    (a batch of 2 rows on 4 data shards, 2 kv heads over 4 tensor shards)."""
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match the shape {tuple(shape)}")
    spec = list(logical_to_mesh_spec(tuple(names), rules))
    for dim, (size, axes) in enumerate(zip(shape, spec)):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        if size % math.prod(mesh.shape[a] for a in axes):
            spec[dim] = None
    return PartitionSpec(*spec)


def named_sharding(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> NamedSharding:
    """``fitted_spec`` on ``mesh``."""
    return NamedSharding(mesh, fitted_spec(names, shape, mesh, rules))


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """``x`` laid out by its logical axis ``names`` under the active rules; ``x`` itself without them."""
    active = _ACTIVE.get()
    if active is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(names, x.shape, *active))
