"""Launch scripts (tpu/): every dry run's exact commands, bad input, and real runs against stubs.

The scripts run as subprocesses, as a user runs them; gcloud, srun and scontrol are small fake
executables on PATH that record their arguments, so nothing here needs the real tools.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POD = ROOT / "tpu" / "pod.py"
SLURM = ROOT / "tpu" / "slurm.py"
SBATCH = ROOT / "tpu" / "slurm.sbatch"
TPU = ("--name=rf", "--zone=us-east5-b")
PY = sys.executable
SLURM_ENV = {  # a 2-node job as sbatch --nodes=2 --gpus-per-node=8 sets it up
    "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_NTASKS": "2",
    "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8",
}
COORDINATOR = f"--coordinator_address=node01:{61440 + 1234 % 4096}"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """gcloud and srun append their argv (one per line, then a blank line) to calls.txt; scontrol
    expands the one node list the tests use."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = f'printf "%s\\n" "$0" "$@" "" >> {tmp_path}/calls.txt'
    _stub(bin_dir, "gcloud", f'{record}\nexit "${{GCLOUD_STATUS:-0}}"')
    _stub(bin_dir, "srun", record)
    _stub(bin_dir, "scontrol", '[ "$*" = "show hostnames node[01-02]" ] || exit 1\nprintf "node01\\nnode02\\n"')
    return bin_dir


def _run(script: Path, *argv: str, env: dict[str, str] | None = None, path: Path | None = None,
         launcher: tuple[str, ...] = (PY,)) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    if path is not None:
        base["PATH"] = f"{path}{os.pathsep}{base['PATH']}"
    return subprocess.run([*launcher, str(script), *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**base, **(env or {})}, timeout=30)


def _dry_run(argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` with ``--dry-run`` among the script's own flags (before any ``--``)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    return (*argv[:cut], "--dry-run", *argv[cut:])


def _dry(script: Path, *argv: str, **kw) -> list[list[str]]:
    """The printed commands, each split back into its argv."""
    out = _run(script, *_dry_run(argv), **kw)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines()]


def _remote(cmd: list[str]) -> str:
    """The shell text an ssh command runs on the workers."""
    (command,) = [a.removeprefix("--command=") for a in cmd if a.startswith("--command=")]
    return command


def _bad(script: Path, *argv: str, **kw) -> str:
    out = _run(script, *argv, **kw)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
    return out.stderr


# --- Cloud TPU: pod.py ---------------------------------------------------------------------------

def test_create_tpu_vm():
    cmds = _dry(POD, "create", *TPU, "--accelerator-type=v6e-16", "--version=v2-alpha-tpuv6e")
    assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "create", "rf", "--zone=us-east5-b",
                     "--accelerator-type=v6e-16", "--version=v2-alpha-tpuv6e"]]


def test_create_queued_spot_in_a_project():
    cmds = _dry(POD, "create", *TPU, "--project=my-proj", "--accelerator-type=v5p-32",
                "--version=v2-alpha-tpuv5", "--queued", "--spot")
    assert cmds == [["gcloud", "compute", "tpus", "queued-resources", "create", "rf", "--zone=us-east5-b",
                     "--project=my-proj", "--node-id=rf", "--accelerator-type=v5p-32",
                     "--runtime-version=v2-alpha-tpuv5", "--spot"]]


def test_create_spot_tpu_vm():
    (cmd,) = _dry(POD, "create", *TPU, "--accelerator-type=v6e-8", "--version=v2-alpha-tpuv6e", "--spot")
    assert cmd[3:5] == ["tpu-vm", "create"] and cmd[-1] == "--spot"


def test_install_copies_the_commit_and_installs_on_every_worker():
    archive, scp, ssh = _dry(POD, "install", *TPU)
    assert archive[:3] == ["git", "-C", str(ROOT)] and archive[3] == "archive" and archive[-1] == "HEAD"
    tarball = archive[-2].removeprefix("--output=")
    assert scp[3:6] == ["tpu-vm", "scp", tarball] and scp[6] == "rf:radflow-jax.tar.gz"
    assert "--worker=all" in scp and "--worker=all" in ssh and ssh[3:6] == ["tpu-vm", "ssh", "rf"]
    remote = _remote(ssh)
    assert remote.startswith("set -e; ")
    assert "tar -xzf radflow-jax.tar.gz -C radflow-jax" in remote
    assert 'pip install --python .venv/bin/python -e ".[metrics]" "jax[tpu]"' in remote
    assert _dry(POD, "install", *TPU, "--ref=v1.2")[0][-1] == "v1.2"


def test_run_starts_the_same_distributed_command_on_all_workers():
    train = ["--config=configs/mimic_cxr.py", "--config.sft.num_steps=10", "--config.data.prompt=chest x-ray"]
    (ssh,) = _dry(POD, "run", *TPU, "--workdir=/mnt/gcs/runs/m", "--data_dir=/mnt/gcs/tfds",
                  "--env=LIBTPU_INIT_ARGS=--xla_foo=1", "--", *train)
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rf"] and "--worker=all" in ssh
    remote = shlex.split(_remote(ssh))
    start = remote.index("nohup")
    assert remote[start:start + 13] == [
        "nohup", "env", "LIBTPU_INIT_ARGS=--xla_foo=1", ".venv/bin/python", "-m", "radflow_jax.train",
        "--distributed", *train, "--workdir=/mnt/gcs/runs/m", "--config.data.dir=/mnt/gcs/tfds", ">",
    ]
    assert remote[start + 13:] == ["$HOME/radflow.log", "2>&1", "<", "/dev/null", "&", "echo", "$!", ">",
                                   "$HOME/radflow.pid"]
    text = _remote(ssh)
    assert text.index('kill -0 "$(cat $HOME/radflow.pid)"') < text.index("cd radflow-jax;") < text.index("nohup")


def test_run_other_entry_points():
    (ssh,) = _dry(POD, "run", *TPU, "--module=evaluate", "--workdir=/mnt/gcs/runs/m", "--", "--stage=rl")
    remote = shlex.split(_remote(ssh))
    i = remote.index("-m")
    assert remote[i:i + 5] == ["-m", "radflow_jax.evaluate", "--distributed", "--stage=rl",
                               "--workdir=/mnt/gcs/runs/m"]


def test_logs_stop_status_delete():
    (logs,) = _dry(POD, "logs", *TPU)
    assert "--worker=0" in logs and _remote(logs) == "tail -n 200 -F $HOME/radflow.log"
    assert "--worker=3" in _dry(POD, "logs", *TPU, "--worker=3")[0]
    (stop,) = _dry(POD, "stop", *TPU)
    assert "--worker=all" in stop and 'kill -TERM "$(cat $HOME/radflow.pid)"' in _remote(stop)
    assert 'kill -KILL "$(cat' in _remote(_dry(POD, "stop", *TPU, "--signal=KILL")[0])
    assert _dry(POD, "status", *TPU, "--queued") == [
        ["gcloud", "compute", "tpus", "queued-resources", "describe", "rf", "--zone=us-east5-b"]]
    assert _dry(POD, "delete", *TPU) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rf", "--zone=us-east5-b", "--quiet"]]
    assert _dry(POD, "delete", *TPU, "--queued") == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "rf", "--zone=us-east5-b", "--force",
         "--quiet"]]


def test_mount_the_bucket_on_every_worker():
    (ssh,) = _dry(POD, "mount", *TPU, "--bucket=gs://my-bucket/", "--mount-point=/mnt/data")
    assert "--worker=all" in ssh
    remote = _remote(ssh)
    assert remote.endswith("mountpoint -q /mnt/data || gcsfuse --implicit-dirs my-bucket /mnt/data")
    assert "apt-get install -y -q gcsfuse" in remote


@pytest.mark.parametrize("argv, says", [
    ((), "required: command"),
    (("deploy", *TPU), "invalid choice: 'deploy'"),
    (("create", "--zone=z", "--accelerator-type=v6e-8", "--version=v"), "--name"),
    (("run", *TPU), "--workdir"),
    (("run", *TPU, "--workdir=runs/m"), "absolute path"),
    (("run", *TPU, "--workdir=gs://b/runs/m"), "URLs are not supported"),
    (("run", *TPU, "--workdir=/w", "--", "--workdir=/other"), "--workdir after --"),
    (("run", *TPU, "--workdir=/w", "--", "--coordinator_address=h:1"), "--coordinator_address after --"),
    (("run", *TPU, "--workdir=/w", "--", "--nodistributed"), "--nodistributed after --"),
    (("run", *TPU, "--workdir=/w", "--data_dir=/d", "--", "--config.data.dir=/e"), "--data_dir sets it"),
    (("run", *TPU, "--workdir=/w", "--module=export", "--data_dir=/d"), "train only"),
    (("run", *TPU, "--workdir=/w", "--env=NOVALUE"), "KEY=VALUE"),
    (("stop", *TPU, "--", "--config=x"), "no training flags"),
])
def test_pod_bad_input_is_one_line_and_status_2(argv, says):
    assert says in _bad(POD, *argv)


def test_pod_runs_the_printed_commands(stubs: Path):
    argv = ("stop", *TPU, "--signal=INT")
    out = _run(POD, *argv, path=stubs)
    assert out.returncode == 0, out.stderr
    calls = (stubs.parent / "calls.txt").read_text().split("\n\n")[0].splitlines()
    assert calls[1:] == _dry(POD, *argv)[0][1:]
    assert out.stderr.startswith("+ gcloud compute tpus tpu-vm ssh rf")


def test_pod_reports_a_failing_or_missing_gcloud(stubs: Path, tmp_path: Path):
    failed = _run(POD, "delete", *TPU, path=stubs, env={"GCLOUD_STATUS": "3"})
    assert failed.returncode == 3 and failed.stderr.splitlines()[-1] == "pod.py: error: gcloud exited with status 3"
    missing = _run(POD, "delete", *TPU, env={"PATH": str(tmp_path)})
    assert missing.returncode == 127 and missing.stderr.splitlines()[-1] == "pod.py: error: gcloud not found on PATH"


# --- SLURM: slurm.py and slurm.sbatch ------------------------------------------------------------

def test_slurm_task_one_process_per_host(stubs: Path):
    env = {**SLURM_ENV, "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    (cmd,) = _dry(SLURM, "task", "--workdir=/shared/runs/m", "--data_dir=/shared/tfds", "--",
                  "--config=configs/mimic_cxr.py", env=env, path=stubs)
    assert cmd == [PY, "-m", "radflow_jax.train", COORDINATOR, "--num_processes=2", "--process_id=1",
                   "--local_device_ids=0,1,2,3,4,5,6,7", "--config=configs/mimic_cxr.py",
                   "--workdir=/shared/runs/m", "--config.data.dir=/shared/tfds"]


def test_slurm_task_one_process_per_gpu(stubs: Path):
    env = {**SLURM_ENV, "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}
    (cmd,) = _dry(SLURM, "task", "--per-gpu", "--port=5000", "--workdir=runs/m", env=env, path=stubs)
    assert cmd[3:7] == ["--coordinator_address=node01:5000", "--num_processes=16", "--process_id=9",
                        "--local_device_ids=1"]
    bound = {**env, "CUDA_VISIBLE_DEVICES": "5"}  # --gpus-per-task: the task sees only its own GPU
    assert _dry(SLURM, "task", "--per-gpu", "--workdir=runs/m", env=bound, path=stubs)[0][6] == "--local_device_ids=0"


def test_sbatch_dry_run_prints_srun_then_every_task(stubs: Path):
    env = {**SLURM_ENV, "SLURM_SUBMIT_DIR": str(ROOT), "PYTHON": PY}
    srun, *tasks = _dry(SBATCH, "--workdir=/shared/runs/m", "--", "--config=configs/mimic_cxr.py",
                        env=env, path=stubs, launcher=("bash",))
    assert srun == ["srun", "--kill-on-bad-exit=1", PY, str(SLURM), "task", "--workdir=/shared/runs/m", "--",
                    "--config=configs/mimic_cxr.py"]
    assert [t[3:6] for t in tasks] == [[COORDINATOR, "--num_processes=2", f"--process_id={i}"] for i in (0, 1)]
    per_gpu = _dry(SBATCH, "--per-gpu", "--workdir=/s", env={**env, "SLURM_NTASKS": "16"}, path=stubs,
                   launcher=("bash",))[1:]
    assert [t[5:7] for t in per_gpu][7:10] == [["--process_id=7", "--local_device_ids=7"],
                                               ["--process_id=8", "--local_device_ids=0"],
                                               ["--process_id=9", "--local_device_ids=1"]]


def test_sbatch_execs_srun(stubs: Path):
    env = {**SLURM_ENV, "SLURM_SUBMIT_DIR": str(ROOT), "PYTHON": PY}
    out = _run(SBATCH, "--workdir=/shared/runs/m", "--", "--config=configs/cxr.py", env=env, path=stubs,
               launcher=("bash",))
    assert out.returncode == 0, out.stderr
    calls = (stubs.parent / "calls.txt").read_text().splitlines()
    assert calls[1:-1] == ["--kill-on-bad-exit=1", PY, str(SLURM), "task", "--workdir=/shared/runs/m", "--",
                           "--config=configs/cxr.py"]


@pytest.mark.parametrize("env, argv, says", [
    (None, ("task", "--workdir=/w"), "SLURM_NTASKS is not set"),
    ({"SLURM_NTASKS": "16", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, ("task", "--workdir=/w"),
     "16 tasks on 2 nodes"),
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "gpu[1-4]"}, ("task", "--workdir=/w"),
     "scontrol show hostnames gpu[1-4] failed"),
    ({}, ("task", "--workdir=gs://b/w"), "URLs are not supported"),
    ({}, ("task", "--workdir=/w", "--", "--process_id=3"), "--process_id after --"),
    ({}, ("submit", "--workdir=/w"), "invalid choice: 'submit'"),
])
def test_slurm_bad_input_is_one_line_and_status_2(stubs: Path, env, argv, says):
    """``env``: variables over the 2-node job's; None: outside any SLURM job."""
    job = None if env is None else {**SLURM_ENV, **env}
    assert says in _bad(SLURM, *_dry_run(argv), env=job, path=stubs)
