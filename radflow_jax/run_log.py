"""Where a stage's numbers go: ``metrics.jsonl``, TensorBoard event files and a progress bar.

The trainers hand over plain dicts of scalars at the edge of the loop; this module owns the files,
so the jitted steps stay free of side effects. Only process 0 writes (multi-host runs would
otherwise write the same line N times).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter


def _scalar(value) -> float | int | None:
    value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; None keeps the line valid and the gap visible
    return value


class RunLog:
    """Appends one JSON object per logged step and mirrors it to TensorBoard and a tqdm bar."""

    def __init__(self, workdir: str, stage: str, *, total_steps: int, initial_step: int = 0):
        self.stage = stage
        self._is_writer = jax.process_index() == 0
        self._bar = tqdm.tqdm(
            total=total_steps,
            initial=initial_step,
            desc=stage,
            dynamic_ncols=True,
            disable=not self._is_writer,
        )
        self._jsonl = None
        self._tb = None
        if self._is_writer:
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", stage))
        self._last = (time.perf_counter(), initial_step)

    def advance(self, step: int) -> None:
        """Moves the bar to ``step`` (called every step; cheap)."""
        self._bar.update(step - self._bar.n)

    def write(self, step: int, metrics: Mapping[str, object], *, examples: int = 0) -> dict:
        """Logs ``metrics`` at ``step``; adds throughput since the previous call when ``examples``."""
        now = time.perf_counter()
        last_time, last_step = self._last
        row = {"stage": self.stage, "step": step}
        row.update({k: _scalar(v) for k, v in metrics.items()})
        if examples and step > last_step:
            row["examples_per_s"] = examples * (step - last_step) / max(now - last_time, 1e-9)
        self._last = (now, step)
        self.advance(step)
        postfix = {k: row[k] for k in ("loss", "reward") if isinstance(row.get(k), float)}
        self._bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)
        if self._is_writer:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(f"{self.stage}/{k}", v, step)
        return row

    def close(self) -> None:
        self._bar.close()
        if self._is_writer:
            self._jsonl.close()
            self._tb.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(workdir: str, stage: str | None = None) -> list[dict]:
    """The rows of ``metrics.jsonl`` (of one stage, if given), in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if stage is None or r["stage"] == stage]
