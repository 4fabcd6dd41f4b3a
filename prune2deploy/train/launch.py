"""Starting the processes of a data-parallel run: `p2d run ... --launcher accelerate` re-runs
the same command under `accelerate launch` (torchrun underneath), on one machine or several.

One machine: `--processes N` processes (0: one per GPU, or 2 without one). Several machines:
the same command on each, with `--num-machines M --machine-rank R --main-address HOST[:PORT]`
(HOST: machine rank 0's address every machine can reach; PORT its free port, default 29500);
`--processes` counts each machine's processes. The run dir (--out) must be on a filesystem every
machine mounts at the same path (`distributed.check_shared` refuses otherwise). A machine of rank
> 0 first waits for rank 0's port (`--main-timeout`, default 300 s) and stops with one line if it
never answers, instead of hanging in the rendezvous.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from . import distributed as D

OPTIONS = ("--launcher", "--processes", "--num-machines", "--machine-rank", "--main-address", "--main-timeout")
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Machines:
    count: int = 1
    rank: int = 0
    main: str | None = None  # HOST[:PORT] of machine rank 0
    timeout_s: float | None = None  # seconds a machine of rank > 0 waits for rank 0's port (None: 300)

    def checked(self) -> "Machines":
        if self.count < 1:
            raise UserError(f"--num-machines must be 1 or more, got {self.count}")
        if not 0 <= self.rank < self.count:
            raise UserError(f"--machine-rank must be in 0..{self.count - 1} (--num-machines {self.count}), "
                            f"got {self.rank}")
        if self.count > 1 and not self.main:
            raise UserError("--num-machines > 1 needs --main-address HOST[:PORT] (machine rank 0's address)")
        if self.count == 1 and (self.rank or self.main or self.timeout_s is not None):
            raise UserError("--machine-rank, --main-address and --main-timeout apply with --num-machines > 1")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise UserError(f"--main-timeout must be > 0 seconds, got {self.timeout_s:g}")
        if self.main:
            self.host_port()
        return self

    def host_port(self) -> tuple[str, int]:
        return parse_address(str(self.main), DEFAULT_PORT, "--main-address must be HOST[:PORT]")


def parse_address(text: str, default_port: int, what: str) -> tuple[str, int]:
    """'[SCHEME://]HOST[:PORT]' as (host, port); else one line: `what`, got 'text'."""
    rest = text.split("://", 1)[1] if "://" in text else text
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, str(default_port)
    try:
        number = int(port)
        if not host or not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise UserError(f"{what}, got '{text}'") from None
    return host, number


def strip_launch_options(argv: list[str]) -> list[str]:
    """`argv` without the launch options (as `--opt value` or `--opt=value`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in OPTIONS:
            skip = True
        elif not a.startswith(tuple(o + "=" for o in OPTIONS)):
            out.append(a)
    return out


def reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to host:port opens within timeout_s, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.timeout:
        return f"no answer in {timeout_s:g} s"
    except OSError as e:
        return e.strerror or type(e).__name__


def wait_for_main(host: str, port: int, timeout_s: float, rank: int) -> None:
    """Until machine rank 0's port answers; one line when it does not within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        why = reachable(host, port, min(5.0, timeout_s))
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise UserError(
                f"machine rank {rank} cannot reach the main process at {host}:{port} within {timeout_s:g} s "
                f"(--main-timeout; last: {why}): start machine rank 0, and open the port between the machines"
            )
        time.sleep(0.5)


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's store does: TIME_WAIT is free
        try:
            s.bind(("", port))
        except OSError:
            raise UserError(f"--main-address port {port} is in use on this machine (rank 0): pick another") from None


def relaunch(argv: list[str], launcher: str, processes: int, machines: Machines = Machines()) -> int:
    """Run this same `p2d` command (argv after the program name) under `accelerate launch`, with
    `processes` processes on this machine, as machine `machines.rank` of `machines.count`;
    returns its exit code."""
    if launcher != "accelerate":
        raise UserError(f"--launcher must be none or accelerate, got '{launcher}'")
    if processes < 0:
        raise UserError(f"--processes must be 0 (one per GPU, or 2 without one) or more, got {processes}")
    machines = machines.checked()
    processes = processes or torch.cuda.device_count() or 2
    argv = strip_launch_options(argv)
    if D.active():
        raise UserError("--launcher accelerate inside an already launched process: drop --launcher")
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if exe is None:
        raise UserError("--launcher accelerate needs HF Accelerate: pip install accelerate")
    total = processes * machines.count
    cmd = [exe, "launch", "--num_processes", str(total), "--num_machines", str(machines.count),
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    if machines.count > 1:
        host, port = machines.host_port()
        if machines.rank == 0:
            check_port_free(port)
        else:
            wait_for_main(host, port, machines.timeout_s or 300.0, machines.rank)
        cmd += ["--machine_rank", str(machines.rank), "--main_process_ip", host, "--main_process_port", str(port)]
    if total > 1:
        cmd.append("--multi_gpu")  # accelerate's torchrun launcher; without a GPU each process is a CPU (gloo) rank
    cmd += ["-m", "prune2deploy.cli", *argv]
    return subprocess.run(cmd).returncode
