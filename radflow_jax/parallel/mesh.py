"""Device mesh and logical-axis sharding: the one place where model axis names meet devices.

Parameters are born with logical axis names (``nnx.Param(..., out_sharding=("embed", "mlp"))``);
config maps those names onto the mesh axes ``data``, ``fsdp`` and ``tensor`` with MaxText-style
rules. Everything here is a pure helper, so the same train step runs on one CPU, a GPU host or a
TPU pod by changing only ``config.mesh`` (DESIGN §5, STYLE §4 and §6).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")  # outermost → innermost (fastest links)

MeshTarget = Union[str, tuple[str, ...], None]
Rules = Sequence[tuple[str, MeshTarget]]


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``MESH_AXES`` (missing axes have size 1; one size may be -1 = the rest).

    Axis types are ``Auto``: in jax ≥ 0.7 ``jax.make_mesh`` defaults to explicit axes, under which
    plain embedding gathers fail with ``ShardingTypeError``.
    """
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh.shape: unknown axes {unknown}; the mesh axes are {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    wildcards = [a for a, s in sizes.items() if s == -1]
    bad = {a: s for a, s in sizes.items() if s < 1 and s != -1}
    if bad or len(wildcards) > 1:
        raise ValueError(
            f"mesh.shape {dict(shape)}: sizes must be ≥ 1, "
            "with at most one -1 (= the remaining devices)"
        )
    known = math.prod(s for s in sizes.values() if s != -1)
    if wildcards:
        if len(devices) % known:
            raise ValueError(
                f"mesh.shape {dict(shape)}: the fixed axes use {known} devices, which does not "
                f"divide the {len(devices)} devices available"
            )
        sizes[wildcards[0]] = len(devices) // known
    elif known != len(devices):
        raise ValueError(
            f"mesh.shape {dict(shape)} needs {known} devices but {len(devices)} are available "
            "(set one axis to -1 to use all of them)"
        )
    axis_shapes = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(
        axis_shapes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def _as_axes(target: MeshTarget) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def _rule_table(rules: Rules) -> dict[str, list[tuple[str, ...]]]:
    """Logical name → candidate mesh-axis tuples, in rule order (later ones are fallbacks)."""
    table: dict[str, list[tuple[str, ...]]] = {}
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"mesh.rules: each rule is (logical name, mesh axes); got {rule!r}")
        table.setdefault(rule[0], []).append(_as_axes(rule[1]))
    return table


def validate_rules(rules: Rules, mesh_axes: Iterable[str] = MESH_AXES) -> None:
    """Rejects rules that target axes the mesh does not have, naming the rule."""
    mesh_axes = tuple(mesh_axes)
    for name, candidates in _rule_table(rules).items():
        for axes in candidates:
            missing = [a for a in axes if a not in mesh_axes]
            if missing:
                raise ValueError(
                    f"mesh.rules: {name!r} maps to mesh axes {missing} that the mesh "
                    f"{mesh_axes} does not have"
                )


def logical_to_mesh_spec(logical: PartitionSpec | tuple, rules: Rules) -> PartitionSpec:
    """Logical axis names per dim → mesh axes per dim.

    Each name takes its first rule whose mesh axes are still free in this spec; a name whose axes
    are all taken by earlier dims is replicated (MaxText/Flax behaviour), so ``("mlp", "mlp")``
    shards only the first dim. ``None`` stays replicated; a name without a rule is an error.
    """
    table = _rule_table(rules)
    used: set[str] = set()
    out: list[MeshTarget] = []
    for entry in tuple(logical):
        names = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        dim_axes: list[str] = []
        for name in names:
            if name not in table:
                raise ValueError(
                    f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)} "
                    "(add it to config.mesh.rules, mapping to None to replicate)"
                )
            for axes in table[name]:
                if not used.intersection(axes):
                    dim_axes.extend(axes)
                    used.update(axes)
                    break
        out.append(None if not dim_axes else dim_axes[0] if len(dim_axes) == 1 else tuple(dim_axes))
    return PartitionSpec(*out)


def _fit_to_shape(
    spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, where: str
) -> PartitionSpec:
    """Replicates any dim whose size the mesh axes do not divide (logged, never silent)."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    for dim, (size, axes) in enumerate(zip(shape, entries)):
        n = math.prod(mesh.shape[a] for a in _as_axes(axes))
        if n > 1 and size % n:
            logging.info(
                "%s: dim %d of size %d does not divide over mesh axes %s (%d); replicated",
                where, dim, size, axes, n,
            )
            entries[dim] = None
    return PartitionSpec(*entries)


def _logical_names(variable: nnx.Variable) -> tuple | None:
    """The logical names flax's ``nnx.get_partition_spec`` reads (``out_sharding`` metadata)."""
    names = variable.get_metadata().get("out_sharding")
    return tuple(names) if names else None


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules) -> Any:
    """A ``NamedSharding`` for every array in ``abstract_state``, from its Variable's logical names.

    Works on an ``nnx.State`` (also of an ``nnx.Optimizer``, whose moments inherit the names) and
    on any pytree mixing Variables and plain arrays; unnamed arrays are replicated. The result has
    the structure of the input, ready for ``jax.jit(out_shardings=...)`` or orbax restore.
    """
    validate_rules(rules, mesh.axis_names)

    def leaf(path, x):
        where = jax.tree_util.keystr(path)
        if isinstance(x, nnx.Variable):
            value = x.get_value()
            names = _logical_names(x)
            if names is None or not hasattr(value, "shape"):
                return x.replace(NamedSharding(mesh, PartitionSpec()))
            if len(names) != len(value.shape):
                raise ValueError(
                    f"{where}: logical names {names} do not match the shape {value.shape}"
                )
            spec = _fit_to_shape(logical_to_mesh_spec(names, rules), value.shape, mesh, where)
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(
        leaf, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Leading (batch) dim over the ``batch`` rule's mesh axes, the rest replicated."""
    validate_rules(rules, mesh.axis_names)
    return NamedSharding(mesh, logical_to_mesh_spec(("batch",) + (None,) * (ndim - 1), rules))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
    """This process's slice of the global batch → global arrays sharded over ``batch``.

    Each process passes its own ``B_local`` rows (the Grain pipeline already splits by process);
    the global batch is their concatenation in process order, ``B_local · process_count`` rows.
    """
    out = {}
    for key, local in batch.items():
        local = np.asarray(local)
        if local.ndim == 0:
            raise ValueError(f"shard_batch: {key!r} is a scalar; every entry needs a batch dim")
        sharding = batch_sharding(mesh, rules, local.ndim)
        global_rows = local.shape[0] * jax.process_count()
        shards = math.prod(mesh.shape[a] for a in _as_axes(sharding.spec[0]))
        if global_rows % shards:
            raise ValueError(
                f"shard_batch: {key!r} has {global_rows} global rows, which do not divide over the "
                f"{shards} batch shards of mesh {dict(mesh.shape)}"
            )
        global_shape = (global_rows,) + local.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


def abstract_sharded(factory: Callable[[], Any], mesh: Mesh, rules: Rules) -> tuple[nnx.GraphDef, Any, Any]:
    """``(graphdef, shardings, abstract state)`` of what ``factory()`` builds, without allocating:
    the shapes and layouts a train run jits against and restores checkpoints into."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(factory))
    shardings = state_shardings(abstract_state, mesh, rules)
    sharded = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
    return graphdef, shardings, sharded


def init_sharded(module_factory: Callable[[], nnx.Module], mesh: Mesh, rules: Rules) -> nnx.Module:
    """Builds a module with every parameter created directly in its sharded layout.

    Shapes first (``nnx.eval_shape``, no memory), then the factory is jitted with
    ``out_shardings``, so no device ever holds an unsharded copy (STYLE §6). The factory must be
    deterministic (seed its ``nnx.Rngs`` inside). Eager sharding is off while building: the names
    are logical, not mesh axes, and are resolved here instead.
    """
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(module_factory)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    @functools.partial(jax.jit, out_shardings=shardings)
    def init() -> nnx.State:
        with nnx.use_eager_sharding(False):
            return nnx.split(module_factory())[1]

    return nnx.merge(graphdef, init())
