"""Multi-host start and the rules every process follows: who writes, how peers wait, how runs fail.

Every entry point (``train``, ``evaluate``, ``export``) calls ``initialize_from_flags()`` first.
With ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or ``--distributed``,
which lets JAX detect Cloud TPU, SLURM, GKE, ... itself) it starts JAX's multi-controller runtime;
without them the run is one process and nothing here does anything.

A peer that never arrives, or dies mid-run, must not leave the others hanging in a collective.
JAX's own coordination service does notice (after its heartbeat timeout) but then aborts the
process from C++ with a stack trace. So a watchdog thread of ours exits first, with one line that
names this process and the last step every process reached, and status ``PEER_LOST_STATUS``; JAX's
timeouts are set well above ours as the backstop. The watchdog is armed only between progress
beats that need peers (training steps, evaluation batches, barriers, the start-up handshake), never
during a process's own long work such as the first step's compilation. One exception we cannot
turn into a line: when the *coordinator* process dies, the others' JAX client aborts at once with
"Terminating process because the JAX distributed service detected fatal errors" — still within
seconds, never a hang.

Console output: processes other than 0 print nothing to stdout (their absl logs are limited to
errors); errors still reach stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

PEER_LOST_STATUS = 75  # EX_TEMPFAIL: a peer process vanished; rerunning every process resumes

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Start JAX's multi-controller runtime with its cluster auto-detection (Cloud TPU, SLURM, GKE, ...).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator (implies --distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_LOCAL_DEVICES = flags.DEFINE_list(
    "local_device_ids", None, "Devices this process drives, e.g. 0,1 (default: all local ones)."
)
_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300,
    "Seconds to wait for a peer process (start-up, each step) before exiting with one line.",
)


class DistributedError(RuntimeError):
    """The multi-host setup is invalid (bad flags); the message names the flag."""


class Watchdog:
    """Ends the process with one line when the peers make no progress for ``timeout`` seconds.

    ``beat(where)`` records progress and arms the clock; ``idle()`` disarms it (work that needs no
    peer, however long). The thread is a daemon and exits with ``os._exit``: the main thread may be
    blocked inside a collective that will never complete, so nothing else could end the process.
    """

    def __init__(self, timeout: float, process_index: int, process_count: int):
        self.timeout = float(timeout)
        self._who = f"process {process_index} of {process_count}"
        self._lock = threading.Lock()
        self._armed_at: float | None = None
        self._where = "start-up"
        self._thread = threading.Thread(target=self._watch, name="radflow-watchdog", daemon=True)
        self._thread.start()

    def beat(self, where: str) -> None:
        with self._lock:
            self._armed_at, self._where = time.monotonic(), where

    def idle(self) -> None:
        with self._lock:
            self._armed_at = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 10))
            with self._lock:
                late = self._armed_at is not None and time.monotonic() - self._armed_at > self.timeout
                where = self._where
            if late:
                sys.stderr.write(  # a fresh line: a progress bar may hold the current one
                    f"\nradflow: {self._who}: no progress from the other processes for "
                    f"{self.timeout:.0f} s after {where}; a peer died or is unreachable — exiting "
                    f"(status {PEER_LOST_STATUS}; rerun every process to resume from the last checkpoint)\n"
                )
                sys.stderr.flush()
                os._exit(PEER_LOST_STATUS)


_watchdog: Watchdog | None = None


def _local_host(address: str) -> bool:
    return address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    auto: bool = False,
    timeout: int = 300,
) -> bool:
    """Starts the multi-controller runtime if asked (an address, or ``auto``); returns whether it did.

    Explicit settings must come together; with ``auto`` JAX fills in whatever is unset from the
    cluster environment. A loopback coordinator binds to loopback only (local multi-process tests).
    """
    global _watchdog
    explicit = [coordinator_address, num_processes, process_id]
    if not auto and coordinator_address is None:
        if any(v is not None for v in explicit) or local_device_ids:
            raise DistributedError(
                "--num_processes/--process_id/--local_device_ids need --coordinator_address "
                "(or --distributed for cluster auto-detection)"
            )
        return False
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise DistributedError("--coordinator_address needs --num_processes and --process_id")
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"--num_processes={num_processes} must be >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"--process_id={process_id} must be in [0, {num_processes})")
    if timeout < 1:
        raise DistributedError(f"--distributed_timeout={timeout} must be >= 1 second")
    if coordinator_address is not None and ":" not in coordinator_address:
        raise DistributedError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT")
    pid, count = process_id if process_id is not None else 0, num_processes or 0
    _watchdog = Watchdog(timeout, pid, count or "?")
    _watchdog.beat(f"connecting to the coordinator {coordinator_address or '(auto-detected)'}")
    bind = coordinator_address if coordinator_address and _local_host(coordinator_address) else None
    # Explicit settings are the whole truth: JAX would otherwise still consult the cluster (under
    # SLURM it narrows a per-host process to the GPU of SLURM_LOCALID).
    detect = None if auto else "deactivate"
    jax.distributed.initialize(
        cluster_detection_method=detect,
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=[int(i) for i in local_device_ids] if local_device_ids else None,
        coordinator_bind_address=bind,
        # JAX's own timeouts are the backstop behind the watchdog's (their failure is an abort)
        initialization_timeout=2 * timeout + 30,
        heartbeat_timeout_seconds=2 * timeout + 30,
    )
    _watchdog.idle()
    _watchdog = Watchdog(timeout, jax.process_index(), jax.process_count())  # names it right
    if jax.process_index() != 0:
        # console output from process 0 only: fd 1 itself, so C++ prints (gloo) go too
        sys.stdout.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        logging.set_verbosity(logging.ERROR)
    return True


def initialize_from_flags() -> bool:
    """``initialize`` with this module's flags (call after absl parsed them)."""
    ids = _LOCAL_DEVICES.value
    try:
        local = [int(i) for i in ids] if ids else None
    except ValueError:
        raise DistributedError(f"--local_device_ids={','.join(ids)} must be integers") from None
    return initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
        local_device_ids=local,
        auto=_DISTRIBUTED.value,
        timeout=_TIMEOUT.value,
    )


def is_writer() -> bool:
    """Process 0 writes logs, eval files and shared artefacts; the others only read them."""
    return jax.process_index() == 0


def progress(where: str) -> None:
    """A step (or batch) that every process completed: restarts the watchdog's clock."""
    if _watchdog is not None:
        _watchdog.beat(where)


def idle() -> None:
    """Work ahead that needs no peer (compilation, local I/O): the watchdog waits indefinitely."""
    if _watchdog is not None:
        _watchdog.idle()


@contextlib.contextmanager
def waiting_for_peers(where: str) -> Iterator[None]:
    """Marks a block that waits on the other processes; the watchdog bounds it."""
    progress(where)
    try:
        yield
    finally:
        idle()


def barrier(name: str) -> None:
    """All processes reach ``name`` before any goes on (e.g. after process 0 wrote the dataset)."""
    if jax.process_count() > 1:
        with waiting_for_peers(f"the barrier {name!r}"):
            multihost_utils.sync_global_devices(name)


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's rows of a host array, concatenated in process order (the global batch)."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def to_host(x: jax.Array) -> np.ndarray:
    """A global array as one host numpy array on every process (sharded arrays are gathered)."""
    if jax.process_count() == 1 or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_max(value: int) -> int:
    """The largest ``value`` over all processes: one decision for a shape every process must share."""
    if jax.process_count() == 1:
        return int(value)
    return int(gather_rows(np.asarray([value], np.int64)).max())
