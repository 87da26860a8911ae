"""One XLA compilation cache for the whole test session, shared with the CLI subprocesses.

Many tests compile the same programs (the quick config's SFT/RL steps in-process and in every
`python -m radflow_jax.train` subprocess). JAX's persistent cache (it works on CPU) keys each
executable by its HLO, devices and flags, so a hit runs the very program a fresh compile would
build; the cache only removes the repeated compile time. It lives in a fresh temporary folder per
session, so no state leaks between CI runs.
"""

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="radflow-test-xla-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)  # read by jax and inherited by subprocesses
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)
