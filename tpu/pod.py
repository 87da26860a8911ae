"""Cloud TPU VM slices: create one, set up every worker, run the same job on all of them, stop, delete.

    python tpu/pod.py create  --name=rf --zone=us-east5-b --accelerator-type=v6e-16 \\
        --version=v2-alpha-tpuv6e [--queued] [--spot]
    python tpu/pod.py status  --name=rf --zone=us-east5-b [--queued]
    python tpu/pod.py mount   --name=rf --zone=us-east5-b --bucket=my-bucket [--mount-point=/mnt/gcs]
    python tpu/pod.py install --name=rf --zone=us-east5-b [--ref=HEAD]
    python tpu/pod.py run     --name=rf --zone=us-east5-b --workdir=/mnt/gcs/runs/mimic \\
        --data_dir=/mnt/gcs/tfds -- --config=configs/mimic_cxr.py [more training flags]
    python tpu/pod.py logs    --name=rf --zone=us-east5-b [--worker=0]
    python tpu/pod.py stop    --name=rf --zone=us-east5-b [--signal=TERM]
    python tpu/pod.py delete  --name=rf --zone=us-east5-b [--queued]

Every subcommand also takes ``--project`` and ``--dry-run`` (print the commands, one per line,
shell-quoted, in order; run nothing). Options follow gcloud's spelling; the two passed through to
the training CLI (``--workdir``, ``--data_dir``) keep its spelling. A multi-host TPU job is the same
command started on every worker (JAX finds its peers through the TPU metadata, ``--distributed``);
``run`` starts it under ``nohup`` with one log file per worker, so it outlives the ssh session.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cmdline

ROOT = Path(__file__).resolve().parent.parent  # the checkout `install` copies
REPO = "radflow-jax"  # the copy on each worker, below the login's home folder (where ssh starts)
PYTHON = ".venv/bin/python"  # inside REPO
PYTHON_VERSION = "3.12"  # the runtime images' system Python is older than JAX supports
UV = '"$HOME/.local/bin/uv"'
LOG = "$HOME/radflow.log"  # each worker's console output of the current job
PID = "$HOME/radflow.pid"
GCSFUSE_APT = (  # Google's apt repository for gcsfuse, as its install guide sets it up
    'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
    'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" '
    "| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null",
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
    "| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null",
    "sudo apt-get update -q",
    "sudo apt-get install -y -q gcsfuse",
)

Command = list[str]


def _gcloud(args: argparse.Namespace, *words: str) -> Command:
    cmd = ["gcloud", "compute", "tpus", *words, f"--zone={args.zone}"]
    return cmd + [f"--project={args.project}"] if args.project else cmd


def _ssh(args: argparse.Namespace, remote: Sequence[str], worker: str = "all") -> Command:
    """One ssh command that runs ``remote`` (shell lines, joined with ``;``) on the given workers."""
    return _gcloud(args, "tpu-vm", "ssh", args.name) + [f"--worker={worker}", f"--command={'; '.join(remote)}"]


def create(args: argparse.Namespace) -> list[Command]:
    if args.queued:  # waits in Cloud TPU's queue for capacity; the node gets the same name
        cmd = _gcloud(args, "queued-resources", "create", args.name) + [
            f"--node-id={args.name}", f"--accelerator-type={args.accelerator_type}",
            f"--runtime-version={args.version}",
        ]
    else:
        cmd = _gcloud(args, "tpu-vm", "create", args.name) + [
            f"--accelerator-type={args.accelerator_type}", f"--version={args.version}",
        ]
    return [cmd + ["--spot"] if args.spot else cmd]


def status(args: argparse.Namespace) -> list[Command]:
    kind = "queued-resources" if args.queued else "tpu-vm"
    return [_gcloud(args, kind, "describe", args.name)]


def mount(args: argparse.Namespace) -> list[Command]:
    """gcsfuse on every worker, the bucket at the same path everywhere (idempotent)."""
    bucket = args.bucket.removeprefix("gs://").rstrip("/")
    point = shlex.quote(args.mount_point)
    return [_ssh(args, [
        "set -e",
        f"if ! command -v gcsfuse >/dev/null; then {'; '.join(GCSFUSE_APT)}; fi",
        f'sudo mkdir -p {point}',
        f'sudo chown "$USER" {point}',
        f"mountpoint -q {point} || gcsfuse --implicit-dirs {shlex.quote(bucket)} {point}",
    ])]


def install(args: argparse.Namespace) -> list[Command]:
    """Copies the committed tree at ``--ref`` to every worker and installs it with ``jax[tpu]``."""
    tarball = Path(tempfile.gettempdir()) / f"{REPO}-{args.name}.tar.gz"
    return [
        ["git", "-C", str(ROOT), "archive", "--format=tar.gz", f"--output={tarball}", args.ref],
        _gcloud(args, "tpu-vm", "scp", str(tarball), f"{args.name}:{REPO}.tar.gz") + ["--worker=all"],
        _ssh(args, [
            "set -e",
            f"mkdir -p {REPO}",
            f"tar -xzf {REPO}.tar.gz -C {REPO}",
            f"[ -x {UV} ] || curl -LsSf https://astral.sh/uv/install.sh "
            '| env UV_INSTALL_DIR="$HOME/.local/bin" UV_NO_MODIFY_PATH=1 sh',
            f"cd {REPO}",
            f"[ -x {PYTHON} ] || {UV} venv --python {PYTHON_VERSION} .venv",
            f'{UV} pip install --python {PYTHON} -e ".[metrics]" "jax[tpu]"',
        ]),
    ]


def run(args: argparse.Namespace, train_args: list[str]) -> list[Command]:
    """Starts the same command on every worker in the background, one log and pid file each."""
    env = "".join(f"{shlex.quote(e)} " for e in args.env)
    train = cmdline.train_command(PYTHON, args, ["--distributed"], train_args)
    return [_ssh(args, [
        "set -e",
        f'if [ -f {PID} ] && kill -0 "$(cat {PID})" 2>/dev/null; then '
        f'echo "$(hostname): a job is still running (pid $(cat {PID})); stop it first" >&2; exit 1; fi',
        f"cd {REPO}",
        f"nohup env {env}{shlex.join(train)} > {LOG} 2>&1 < /dev/null & echo $! > {PID}",
    ])]


def logs(args: argparse.Namespace) -> list[Command]:
    """Follows one worker's log; worker 0 runs process 0, the only one that prints progress."""
    return [_ssh(args, [f"tail -n 200 -F {LOG}"], worker=args.worker)]


def stop(args: argparse.Namespace) -> list[Command]:
    """SIGTERM by default: the training saves a checkpoint and exits, so ``run`` resumes it."""
    sig = args.signal
    return [_ssh(args, [
        f'if [ -f {PID} ] && kill -{sig} "$(cat {PID})" 2>/dev/null; '
        f'then echo "$(hostname): SIG{sig} sent to pid $(cat {PID})"; '
        'else echo "$(hostname): no job running"; fi',
    ])]


def delete(args: argparse.Namespace) -> list[Command]:
    if args.queued:  # --force deletes the node along with the request
        return [_gcloud(args, "queued-resources", "delete", args.name) + ["--force", "--quiet"]]
    return [_gcloud(args, "tpu-vm", "delete", args.name) + ["--quiet"]]


def _parser() -> cmdline.Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
    common.add_argument("--zone", required=True, help="zone, e.g. us-east5-b")
    common.add_argument("--project", help="Google Cloud project (default: gcloud's configured one)")
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    queued = argparse.ArgumentParser(add_help=False)
    queued.add_argument("--queued", action="store_true", help="a queued resource, not a plain TPU VM")

    parser = cmdline.Parser(prog="pod.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", parents=[common, queued], help="create the slice")
    p.add_argument("--accelerator-type", required=True, help="slice type, e.g. v6e-16, v5p-32")
    p.add_argument("--version", required=True, help="TPU software version, e.g. v2-alpha-tpuv6e")
    p.add_argument("--spot", action="store_true", help="Spot capacity: cheaper, can be preempted")
    sub.add_parser("status", parents=[common, queued], help="describe the slice or queued resource")
    p = sub.add_parser("mount", parents=[common], help="mount a GCS bucket with gcsfuse on every worker")
    p.add_argument("--bucket", required=True, help="bucket name (gs:// optional)")
    p.add_argument("--mount-point", default="/mnt/gcs", help="same path on every worker (default /mnt/gcs)")
    p = sub.add_parser("install", parents=[common], help="copy this checkout to every worker, install it")
    p.add_argument("--ref", default="HEAD", help="git commit to copy (default HEAD: commit your changes)")
    p = sub.add_parser("run", parents=[common], help="start the job on every worker: run [...] -- TRAIN FLAGS")
    cmdline.add_train_options(p)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable), e.g. LIBTPU_INIT_ARGS=...")
    p = sub.add_parser("logs", parents=[common], help="follow a worker's log (Ctrl-C stops following)")
    p.add_argument("--worker", default="0", help="worker index (default 0: process 0)")
    p = sub.add_parser("stop", parents=[common], help="signal the job on every worker")
    p.add_argument("--signal", choices=("TERM", "INT", "KILL"), default="TERM",
                   help="TERM (default) checkpoints and exits; KILL does not wait")
    sub.add_parser("delete", parents=[common, queued], help="delete the slice (or queued resource)")
    return parser


BUILDERS = {"create": create, "status": status, "mount": mount, "install": install,
            "logs": logs, "stop": stop, "delete": delete}  # `run` also takes the training flags


def main(argv: Sequence[str]) -> int:
    own, train_args = cmdline.split_train_args(argv)
    parser = _parser()
    args = parser.parse_args(own)
    if args.command == "run":
        cmdline.check_train_args(parser, args, train_args, absolute=True)
        if bad := [e for e in args.env if "=" not in e or e.startswith("=")]:
            parser.error(f"--env={bad[0]} must be KEY=VALUE")
        commands = run(args, train_args)
    elif train_args:
        parser.error(f"{args.command} takes no training flags after --")
    else:
        commands = BUILDERS[args.command](args)
    return cmdline.execute(commands, dry_run=args.dry_run, prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
