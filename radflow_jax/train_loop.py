"""The loop every training stage runs: steps, logging, checkpoints, preemption, peer watchdog.

A stage supplies its pure jitted step (wrapped as ``one_step(state, step)``) and what to add to a
logged row; this loop owns the side effects, so ``vision``, ``sft`` and ``rl`` resume, log and stop
the same way (DESIGN §5): a checkpoint every ``checkpoint_every`` steps and at the end, SIGTERM
saves and exits, and on multi-host runs each finished step restarts the peer watchdog's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax

from radflow_jax import checkpoint as ckpt_lib
from radflow_jax.parallel import distributed
from radflow_jax.run_log import RunLog

Metrics = Mapping[str, Any]


def close_iterator(iterator: Any) -> None:
    """Grain iterators with worker processes must be closed, or exit prints shared-memory errors."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def run_loop(
    stage: str,
    workdir: str,
    *,
    state: Any,
    step: int,
    num_steps: int,
    one_step: Callable[[Any, int], tuple[Any, Metrics]],
    checkpointer: ckpt_lib.Checkpointer,
    iterator: grain.DatasetIterator,
    config: Mapping,
    log_every: int,
    examples_per_step: int,
    on_log: Callable[[int, Any, dict], dict] | None = None,
) -> Any:
    """Runs ``one_step`` from ``step`` to ``num_steps``; returns the final state.

    ``one_step(state, step)`` gets the 0-based index of the step it runs. Metrics are fetched
    only on logged steps; ``on_log(step, state, row)`` may add host-side numbers to the row.
    """
    with checkpointer, RunLog(workdir, stage, total_steps=num_steps, initial_step=step) as log, \
            ckpt_lib.PreemptionGuard() as guard:
        start, first = time.perf_counter(), step
        while step < num_steps:
            state, metrics = one_step(state, step)
            step += 1
            distributed.progress(f"{stage} step {step}")
            log.advance(step)
            if step % log_every == 0 or step == num_steps:
                row = dict(jax.device_get(metrics))
                if on_log is not None:
                    row = on_log(step, state, row)
                log.write(step, row, examples=examples_per_step)
            ckpt_lib.save_or_stop(checkpointer, guard, step, num_steps=num_steps, state=state,
                                  iterator=iterator, config=config, stage=stage)
        distributed.idle()
        if step > first:
            print(f"[{stage}] {num_steps} steps done ({time.perf_counter() - start:.0f}s this run)")
    close_iterator(iterator)
    return state
