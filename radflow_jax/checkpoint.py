"""Checkpoints for every stage: orbax ``CheckpointManager`` plus a SIGTERM-to-flag preemption guard.

One step directory holds three items side by side, so a stage restarted with the same workdir
resumes exactly where it stopped (DESIGN §5):

  ``state``     any pytree of arrays (``nnx.State`` of model + optimizer, optax state, counters),
                restored onto whatever shardings the caller asks for — any mesh, any device count;
  ``iterator``  the Grain iterator position, one JSON file per process (Grain's own orbax handler);
  ``config``    the run config as JSON, for provenance and for tools that only have the checkpoint.

Saves are asynchronous: ``save`` returns once arrays are copied to host memory (so the caller may
donate them to the next step) and the files are written in the background.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

PyTree = Any

_STATE, _ITERATOR, _CONFIG = "state", "iterator", "config"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names its path."""


def _abstract_leaf(x: Any) -> Any:
    """Restore target for one leaf: shape, dtype and (where known) the sharding to restore onto."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, (np.ndarray, np.generic)):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x  # Python scalars restore as themselves


def _jsonable(config: Mapping) -> dict:
    """ConfigDict/Mapping → plain JSON-able dict (tuples become lists), with a clear error."""
    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    try:
        return json.loads(json.dumps(plain))
    except TypeError as e:
        raise TypeError(f"checkpoint config must be JSON-serialisable: {e}") from None


class Checkpointer:
    """Saves every ``save_every`` steps, keeps the last ``keep``, restores the latest by default.

    Call ``save`` and ``restore`` on every process (orbax coordinates multi-host writes).
    """

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        if save_every < 1 or keep < 1:
            raise ValueError(f"save_every ({save_every}) and keep ({keep}) must be ≥ 1")
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint directory {self.directory} is not a directory")
        policy = ocp.checkpoint_managers.AnySavePolicy([
            ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
            ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
        ])
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            save_decision_policy=policy,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(_STATE, _ITERATOR, _CONFIG)
        )

    def latest_step(self) -> int | None:
        """The newest finished (or in-flight) checkpoint step, None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """True every ``save_every`` steps, and at a multi-host preemption sync point."""
        return self._manager.should_save(step)

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        iterator: grain.DatasetIterator | None = None,
        config: Mapping | None = None,
        force: bool = False,
    ) -> bool:
        """Starts saving ``state`` (plus iterator position and config) if ``step`` is due.

        ``force`` saves regardless of the interval (final or preemption save). Saving a step that
        already exists is a no-op, so a forced final save right after a periodic one is safe.
        Returns whether a save was started.
        """
        if step in self._manager.all_steps():
            return False
        items = {_STATE: ocp.args.StandardSave(state)}
        if iterator is not None:
            items[_ITERATOR] = grain.checkpoint.CheckpointSave(iterator)
        if config is not None:
            items[_CONFIG] = ocp.args.JsonSave(_jsonable(config))
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def _step_to_read(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no checkpoint found in {self.directory}")
            return steps[-1]
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}"
            )
        return step

    def _restore(self, step: int, items: dict[str, Any]) -> Any:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            path = os.path.join(self.directory, str(step))
            raise CheckpointError(
                f"cannot restore {sorted(items)} from checkpoint {path}: {type(e).__name__}: {e}"
            ) from e

    def restore(
        self,
        abstract_state: PyTree,
        *,
        step: int | None = None,
        iterator: grain.DatasetIterator | None = None,
    ) -> tuple[PyTree, int]:
        """Restores ``(state, step)``, the latest step unless ``step`` is given.

        ``abstract_state`` gives the structure and, per leaf, the target: ``ShapeDtypeStruct``
        with ``.sharding`` (or a live array, whose sharding is reused), so a checkpoint written on
        one mesh loads onto any other. ``iterator`` is set in place to the saved position.
        """
        step = self._step_to_read(step)
        items = {_STATE: ocp.args.StandardRestore(jax.tree.map(_abstract_leaf, abstract_state))}
        if iterator is not None:
            items[_ITERATOR] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self._restore(step, items)
        return restored[_STATE], step

    def restore_config(self, step: int | None = None) -> dict:
        """The config saved with ``step`` (latest by default), as a plain dict."""
        step = self._step_to_read(step)
        return dict(self._restore(step, {_CONFIG: ocp.args.JsonRestore()})[_CONFIG])

    def reached_preemption(self, step: int) -> bool:
        """True on every host at the same step once any host got a preemption notice."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until in-flight async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jax_preemption_service() -> bool:
    """Whether JAX's own coordination service watches SIGTERM (multi-process runs)."""
    from jax._src import distributed  # no public accessor for the sync manager

    return jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None


class PreemptionGuard:
    """Turns SIGTERM into a flag, so the loop saves a final checkpoint and exits cleanly.

    Usage::

        with PreemptionGuard() as guard:
            for step in range(start, num_steps):
                ...
                if guard.should_stop(step):
                    ckpt.save(step, state, iterator=it, force=True)
                    break

    Single process: a Python signal handler sets ``stop_requested``. Multi-process: JAX's
    preemption service (started by ``jax.distributed.initialize``) already catches SIGTERM and
    agrees on one step for all hosts, so no handler is installed (it would replace JAX's) and
    ``should_stop`` asks that service — every host stops at the same step instead of hanging in a
    collective that the others never join.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._requested = threading.Event()

    @property
    def stop_requested(self) -> bool:
        """A stop signal reached this process."""
        return self._requested.is_set()

    def should_stop(self, step: int) -> bool:
        """Poll once per step: True when the loop should save and exit at ``step``."""
        if self._requested.is_set():
            return True
        return _jax_preemption_service() and multihost_utils.reached_preemption_sync_point(step)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        logging.warning("received signal %d: will save a checkpoint and stop", signum)
        self._requested.set()

    def __enter__(self) -> PreemptionGuard:
        if not _jax_preemption_service():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def save_or_stop(
    checkpointer: Checkpointer,
    guard: PreemptionGuard,
    step: int,
    *,
    num_steps: int,
    state: PyTree,
    iterator: grain.DatasetIterator | None,
    config: Mapping,
    stage: str,
) -> None:
    """The end of a training step: a periodic save, a forced final one, or save-and-exit on SIGTERM."""
    stop = guard.should_stop(step)
    last = step == num_steps or stop
    if checkpointer.should_save(step) or last:
        checkpointer.save(step, state, iterator=iterator, config=config, force=last)
    if stop:
        checkpointer.wait()
        raise SystemExit(f"[{stage}] stopped by SIGTERM at step {step}; checkpoint saved")
