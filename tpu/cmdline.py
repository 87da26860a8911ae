"""Command lines for the launch scripts: parse with one-line errors, check, then print or run in order.

``pod.py`` (Cloud TPU) and ``slurm.py`` (SLURM) each turn their flags into a list of commands and
hand it to ``execute``, so ``--dry-run`` prints exactly what a real run executes. Only the standard
library is used: the scripts run on a laptop or a login node before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import NoReturn

MODULES = ("train", "evaluate", "export")  # entry points that take the multi-host flags
DISTRIBUTED_FLAGS = ("distributed", "coordinator_address", "num_processes", "process_id", "local_device_ids")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit status 2 (usage stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def split_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits at the first ``--``: the script's own flags, then the training CLI's, passed verbatim."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The options every launcher passes through to ``python -m radflow_jax.<module>``."""
    parser.add_argument("--workdir", required=True,
                        help="run folder on storage every host shares (passed as --workdir)")
    parser.add_argument("--data_dir",
                        help="prepared dataset folder on shared storage (passed as --config.data.dir)")
    parser.add_argument("--module", choices=MODULES, default="train",
                        help="entry point: python -m radflow_jax.MODULE (default: train)")


def check_train_args(parser: argparse.ArgumentParser, args: argparse.Namespace, train_args: list[str],
                     *, absolute: bool) -> None:
    """Rejects what would break a multi-host run before any host starts it.

    A workdir must be one folder all hosts see: never a ``gs://`` URL (the training code writes it
    with plain file I/O) and, with ``absolute``, never relative (each TPU worker would resolve it on
    its own disk). Flags the launcher sets itself may not be repeated after ``--``: absl keeps the
    last value, so which one won would depend on the order.
    """
    for flag, path in (("--workdir", args.workdir), ("--data_dir", args.data_dir)):
        if path is None:
            continue
        if "://" in path:
            parser.error(f"{flag}={path}: URLs are not supported; mount the bucket (gcsfuse) or use "
                         "a shared filesystem and pass its path")
        if absolute and not path.startswith("/"):
            parser.error(f"{flag}={path} must be an absolute path on storage every worker mounts")
    if args.data_dir and args.module != "train":
        parser.error(f"--data_dir applies to train only, not {args.module}")
    owned = {name: "the launcher sets it" for name in DISTRIBUTED_FLAGS} | {"workdir": "use --workdir"}
    if args.data_dir:
        owned["config.data.dir"] = "--data_dir sets it"
    for arg in train_args:
        name = arg.lstrip("-").split("=", 1)[0]
        name = name if name in owned else name.removeprefix("no")  # absl's --noflag
        if arg.startswith("-") and name in owned:
            parser.error(f"{arg.split('=', 1)[0]} after --: {owned[name]}; remove it there")

def train_command(python: str, args: argparse.Namespace, distributed: Sequence[str],
                  train_args: Sequence[str]) -> list[str]:
    """``python -m radflow_jax.<module>`` with the multi-host flags, the user's, then the shared paths.

    The paths come last because ``--config.*`` overrides must follow ``--config=`` on the command line.
    """
    cmd = [python, "-m", f"radflow_jax.{args.module}", *distributed, *train_args, f"--workdir={args.workdir}"]
    if args.data_dir:
        cmd.append(f"--config.data.dir={args.data_dir}")
    return cmd


def execute(commands: Sequence[Sequence[str]], *, dry_run: bool, prog: str) -> int:
    """Prints each command (dry run) or echoes it to stderr and runs it; stops at the first failure."""
    for cmd in commands:
        line = shlex.join(cmd)
        if dry_run:
            print(line)
            continue
        print(f"+ {line}", file=sys.stderr, flush=True)
        try:
            status = subprocess.call(cmd)
        except FileNotFoundError:
            print(f"{prog}: error: {cmd[0]} not found on PATH", file=sys.stderr)
            return 127
        except KeyboardInterrupt:  # Ctrl-C ends `logs`; the remote job keeps running
            return 130
        if status:
            print(f"{prog}: error: {cmd[0]} exited with status {status}", file=sys.stderr)
            return status
    return 0


def replace_process(cmd: Sequence[str], *, prog: str) -> int:
    """Echoes ``cmd`` to stderr and execs it: it keeps this pid, so SLURM's signals reach it directly."""
    print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    try:
        os.execvp(cmd[0], list(cmd))
    except FileNotFoundError:
        print(f"{prog}: error: {cmd[0]} not found on PATH", file=sys.stderr)
    return 127
