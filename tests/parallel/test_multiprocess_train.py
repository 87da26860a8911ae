"""The main job across processes: 2 processes × 2 CPU devices equal 1 process × 4 devices.

Both runs go through the real CLI (``python -m radflow_jax.train``) on 127.0.0.1: data → sft →
rl → eval on the quick config. Every global batch, every sampled rollout and every eval case must
be the same, so the logged SFT losses, RL rewards and final metrics agree. A second test kills one
process mid-run and checks the other ends with the watchdog's one line within its timeout.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from radflow_jax.parallel import distributed
from radflow_jax.run_log import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = "--config.stages=('data','sft','rl','eval')"
QUICK = [
    "--config=configs/cxr.py:quick", STAGES, "--config.sft.num_steps=6", "--config.sft.log_every=1",
    "--config.sft.checkpoint_every=3", "--config.rl.num_steps=2", "--config.rl.log_every=1",
    "--config.rl.batch_size=4", "--config.eval.num_cases=12", "--config.data.num_train=48",
]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(workdir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "radflow_jax.train", f"--workdir={workdir}", *QUICK, *extra]


def _two_processes(workdir: str, *extra: str, timeout: int = 60) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        subprocess.Popen(
            _train(workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                   f"--process_id={i}", f"--distributed_timeout={timeout}", *extra),
            cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one = str(tmp_path_factory.mktemp("one_process"))
    two = str(tmp_path_factory.mktemp("two_processes"))
    # All three processes at once: on a 2-core runner they overlap compiles and host work.
    single = subprocess.Popen(_train(one), cwd=REPO, env=_env(4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    procs = _two_processes(two, timeout=900)  # the watchdog spans recompiles of new shapes
    (single_out, single_err), *outputs = _finish([single, *procs], 900)
    assert single.returncode == 0, single_err[-4000:]
    for i, (proc, (_, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"process {i}:\n{err[-4000:]}"
    return {"one": one, "two": two, "single_out": single_out, "outputs": outputs}


def _rows(workdir: str, stage: str, keys: tuple[str, ...]) -> list[tuple]:
    return [tuple(r.get(k) for k in keys) for r in read_metrics(workdir, stage)]


def test_two_processes_train_exactly_like_one(runs):
    sft = ("step", "loss", "token_accuracy", "grad_norm")
    a, b = _rows(runs["one"], "sft", sft), _rows(runs["two"], "sft", sft)
    assert len(a) == 6 and [r[0] for r in a] == [r[0] for r in b]
    np.testing.assert_allclose([r[1:] for r in b], [r[1:] for r in a], rtol=1e-5)
    rl = ("step", "reward", "reward/correctness", "reward/consistency", "response_length", "loss", "kl")
    a, b = _rows(runs["one"], "rl", rl), _rows(runs["two"], "rl", rl)
    assert len(a) == 2 and a[0][1] is not None
    np.testing.assert_allclose(np.array([r for r in b], float), np.array([r for r in a], float),
                               rtol=1e-4, atol=1e-6)
    for stage in ("sft", "rl"):
        with open(os.path.join(runs["one"], "eval", f"{stage}.json")) as f:
            one = json.load(f)
        with open(os.path.join(runs["two"], "eval", f"{stage}.json")) as f:
            two = json.load(f)
        assert [c["prediction"] for c in two["cases"]] == [c["prediction"] for c in one["cases"]]
        assert len(two["cases"]) == 12
        for key in ("gt_ce14_micro_f1", "consistency_rate", "Bleu_4", "ROUGE_L"):
            assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-9), key


def test_only_process_zero_writes_and_prints(runs):
    (out0, _), (out1, _) = runs["outputs"]
    assert "4 devices · 2 processes" in out0 and "[eval]" in out0
    assert out1 == ""
    rows = read_metrics(runs["two"])
    assert len(rows) == len(read_metrics(runs["one"]))  # one line per step, not one per process
    folder = os.path.join(runs["two"], "checkpoints", "sft", "6", "iterator")
    iterators = [n for n in os.listdir(folder) if n.endswith(".json")]  # one Grain state per process
    assert sorted(iterators) == ["process_0-of-2.json", "process_1-of-2.json"], iterators


def test_a_dead_peer_ends_the_run_with_one_line_within_the_timeout(tmp_path):
    workdir = str(tmp_path)
    procs = _two_processes(workdir, "--config.sft.num_steps=400", timeout=20)
    deadline = time.time() + 300
    try:
        while not any(r["stage"] == "sft" for r in read_metrics(workdir)):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "no SFT step logged"
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        _, err = procs[0].communicate(timeout=120)
        waited = time.time() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == distributed.PEER_LOST_STATUS, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("radflow: process 0 of 2")]
    assert len(lines) == 1 and "after sft step" in lines[0], err[-3000:]
    assert waited < 20 + 30, waited


def test_bad_multihost_flags_are_one_line():
    bad = subprocess.run(_train("/tmp/unused", "--num_processes=2"), cwd=REPO, env=_env(1),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("distributed: --num_processes"), bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr
