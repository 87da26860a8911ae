"""Multi-node GPUs under SLURM: one process per host (all its GPUs) or one per GPU, flags made explicit.

``tpu/slurm.sbatch`` runs ``slurm.py launch``, which starts ``slurm.py task`` once per SLURM task
with ``srun``; each task computes its flags from the ``SLURM_*`` variables and execs

    python -m radflow_jax.train --coordinator_address=HOST:PORT --num_processes=N --process_id=I \\
        --local_device_ids=... [training flags] --workdir=... [--config.data.dir=...]

HOST is the job's first node (``scontrol show hostnames``), where task 0 runs under srun's default
block distribution; PORT is derived from the job id as JAX's own SLURM detection does, so two jobs
sharing a node do not collide. ``--local_device_ids`` is always passed: given none, JAX's SLURM
detection narrows every process to the single GPU numbered ``SLURM_LOCALID``, so one process per host
would drive only GPU 0. ``--dry-run`` prints the commands (``launch``: the srun line, then each
task's command) and runs nothing; ``scontrol`` is still asked for the host names.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import cmdline

SCRIPT = Path(__file__).resolve()


def _env_int(parser: argparse.ArgumentParser, env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None:
        parser.error(f"{name} is not set: run inside a SLURM job (sbatch tpu/slurm.sbatch, or salloc)")
    try:
        return int(value)
    except ValueError:
        parser.error(f"{name}={value!r} is not an integer")


@functools.cache  # a dry run plans every task from the same node list
def _first_host(parser: argparse.ArgumentParser, nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist],
                             capture_output=True, text=True, check=True).stdout.split()
    except FileNotFoundError:
        parser.error("scontrol not found on PATH: run on a SLURM node")
    except subprocess.CalledProcessError as e:
        detail = f"scontrol show hostnames {nodelist} failed (status {e.returncode}) {e.stderr.strip()}"
        parser.error(detail.rstrip())
    if not out:
        parser.error(f"scontrol show hostnames {nodelist} printed no host")
    return out[0]


def _local_gpus(parser: argparse.ArgumentParser, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """GPUs this task sees: --gpus, else CUDA_VISIBLE_DEVICES (as SLURM binds it), else the node's."""
    if args.gpus:
        return args.gpus
    if visible := env.get("CUDA_VISIBLE_DEVICES"):
        return len(visible.split(","))
    if "SLURM_GPUS_ON_NODE" in env:
        return _env_int(parser, env, "SLURM_GPUS_ON_NODE")
    parser.error("cannot tell how many GPUs a task sees (no CUDA_VISIBLE_DEVICES or SLURM_GPUS_ON_NODE): "
                 "pass --gpus")


def task_command(parser: argparse.ArgumentParser, args: argparse.Namespace, train_args: list[str],
                 env: Mapping[str, str]) -> list[str]:
    """The training command of the SLURM task described by ``env``."""
    ntasks, nodes = _env_int(parser, env, "SLURM_NTASKS"), _env_int(parser, env, "SLURM_JOB_NUM_NODES")
    procid, localid = _env_int(parser, env, "SLURM_PROCID"), _env_int(parser, env, "SLURM_LOCALID")
    gpus = _local_gpus(parser, args, env)
    if args.per_gpu:
        if gpus > 1 and localid >= gpus:
            parser.error(f"task {procid} is local task {localid} but sees {gpus} GPUs: "
                         "use at most one task per GPU")
        devices = [localid if gpus > 1 else 0]  # a task bound to one GPU sees it as device 0
    else:
        if ntasks != nodes:
            parser.error(f"{ntasks} tasks on {nodes} nodes: one process per host needs "
                         "--ntasks-per-node=1 (or pass --per-gpu)")
        devices = list(range(gpus))
    port = args.port or 61440 + _env_int(parser, env, "SLURM_JOB_ID") % 4096
    if "SLURM_JOB_NODELIST" not in env:
        parser.error("SLURM_JOB_NODELIST is not set: run inside a SLURM job")
    host = _first_host(parser, env["SLURM_JOB_NODELIST"])
    distributed = [f"--coordinator_address={host}:{port}", f"--num_processes={ntasks}",
                   f"--process_id={procid}", f"--local_device_ids={','.join(map(str, devices))}"]
    return cmdline.train_command(sys.executable, args, distributed, train_args)


def srun_command(own: list[str], train_args: list[str]) -> list[str]:
    """This script's ``task`` on every SLURM task, with the same options; one failure ends them all."""
    forwarded = [a for a in own[1:] if a != "--dry-run"]  # own[0] is the subcommand
    return ["srun", "--kill-on-bad-exit=1", sys.executable, str(SCRIPT), "task", *forwarded, "--",
            *train_args]


def planned_tasks(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  train_args: list[str]) -> list[list[str]]:
    """Each task's command as srun's default block distribution would place the tasks (dry run)."""
    ntasks = _env_int(parser, os.environ, "SLURM_NTASKS")
    nodes = _env_int(parser, os.environ, "SLURM_JOB_NUM_NODES")
    if ntasks % nodes:
        parser.error(f"{ntasks} tasks do not divide evenly over {nodes} nodes")
    per_node = ntasks // nodes
    return [
        task_command(parser, args, train_args,
                     {**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i % per_node)})
        for i in range(ntasks)
    ]


def _parser() -> cmdline.Parser:
    common = argparse.ArgumentParser(add_help=False)
    cmdline.add_train_options(common)
    common.add_argument("--per-gpu", action="store_true",
                        help="one process per GPU (sbatch --ntasks-per-node=GPUS) instead of per host")
    common.add_argument("--port", type=int, help="coordinator port (default: 61440 + job id %% 4096)")
    common.add_argument("--gpus", type=int, help="GPUs per task's view (default: from CUDA_VISIBLE_DEVICES)")
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser = cmdline.Parser(prog="slurm.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("launch", parents=[common], help="in the batch script: srun `task` on every SLURM task")
    sub.add_parser("task", parents=[common], help="in each srun task: exec the training command")
    return parser


def main(argv: Sequence[str]) -> int:
    own, train_args = cmdline.split_train_args(argv)
    parser = _parser()
    args = parser.parse_args(own)
    cmdline.check_train_args(parser, args, train_args, absolute=False)
    if args.command == "launch":
        srun = srun_command(own, train_args)
        if not args.dry_run:
            return cmdline.replace_process(srun, prog=parser.prog)
        tasks = planned_tasks(parser, args, train_args)
        return cmdline.execute([srun, *tasks], dry_run=True, prog=parser.prog)
    cmd = task_command(parser, args, train_args, os.environ)
    if args.dry_run:
        return cmdline.execute([cmd], dry_run=True, prog=parser.prog)
    return cmdline.replace_process(cmd, prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
