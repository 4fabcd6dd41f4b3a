"""Data-parallel training under HF Accelerate (torch DDP underneath).

Launch with `p2d run ... --launcher accelerate --processes N` (on several machines too:
`train/launch.py`), or yourself with
`accelerate launch --multi_gpu --num_processes N -m prune2deploy.cli run ...` (or `torchrun
--nproc_per_node N -m prune2deploy.cli run ...`). Without a GPU every process is a CPU rank
on the gloo backend; with GPUs, one GPU per process on NCCL.

What runs where (the stage runner decides, see `run.run_stage`):
- teacher and prune run on every rank. A global batch (`batch_order`, the same on every
  rank) is split between ranks; DDP averages the gradients, so N processes take the same
  optimizer steps as one process with the same global batch. Masks are computed on rank 0
  and broadcast with the pruned weights after every pruning event; oBERT's Fisher sums are
  all-reduced (each rank computes its share of the m gradients).
- only rank 0 writes: stage records, models, the teacher cache, checkpoints. Other ranks
  write into a scratch dir that is removed. Checkpoints hold no per-rank state, so a run
  resumes on a different number of processes.
- validate, export, quantize and bench run on rank 0 while the others wait.
One process (no launcher) is the plain path: every helper here is then a no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import OtherRankFailed, OutOfStep, UserError

_accelerator = None
_local = 0  # > 0 inside `local()`: this process acts alone (no collectives)


def world_size() -> int:
    return 1 if _local else int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return world_size() > 1


def accelerator():
    """The process's Accelerator (created once: it owns the process group)."""
    global _accelerator
    if _accelerator is None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        # masks are buffers, identical on every rank (broadcast after each pruning event):
        # no per-forward buffer broadcast. Long rank-0-only stages (export, bench) need a
        # generous timeout for the others' wait.
        _accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[
                DistributedDataParallelKwargs(broadcast_buffers=False),
                InitProcessGroupKwargs(timeout=timedelta(hours=12)),
            ],
        )
        atexit.register(_shutdown)
    return _accelerator


def _shutdown() -> None:
    """Tear the process group down before the interpreter exits (a live gloo thread aborts it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_launched(main) -> None:
    """Run `main` (the CLI) in a launched rank and end the process on purpose: the process
    group destroyed while the interpreter is whole, stdout/stderr flushed, then `os._exit` with
    the CLI's exit code. Letting the interpreter finalize instead can abort a rank whose work
    is done and written (gloo's worker threads meet a half-torn-down interpreter: SIGABRT,
    "terminate called without an active exception"; seen once in ~190 launched runs, under
    load). An exception other than an exit (only with --debug) propagates as usual."""
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    _shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device() -> torch.device:
    """Where training runs: this rank's device, else the GPU when there is one, else the CPU."""
    if active():
        return accelerator().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rank() -> int:
    return accelerator().process_index if active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        accelerator().wait_for_everyone()


def _tag(what: str) -> int:
    return zlib.crc32(what.encode()) & 0xFFFFFF  # exact in a float64


def agree(ok: bool, what: str = "") -> bool:
    """True on every rank when `ok` is true on every rank (a barrier that carries failure).

    Every rank sends the identity of the point it is at (`what`): ranks that meet at different
    points raise `OutOfStep` instead of pairing one block's agreement with another's."""
    if not active():
        return ok
    dev = accelerator().device
    mine = torch.tensor([0.0 if ok else 1.0, float(_tag(what))], dtype=torch.float64, device=dev)
    got = [torch.zeros_like(mine) for _ in range(world_size())]
    torch.distributed.all_gather(got, mine)
    tags = {float(g[1]) for g in got}
    if len(tags) > 1:
        raise OutOfStep(f"ranks out of step: rank {rank()} is at '{what}', another rank elsewhere")
    return all(float(g[0]) == 0.0 for g in got)


def decide(value: bool, what: str) -> bool:
    """Rank 0's `value` on every rank (only rank 0's view of the disk decides), checked to be
    taken at the same point `what` on every rank."""
    return bool(share(1.0 if value else 0.0, what))


def share(value: float, what: str) -> float:
    """Rank 0's `value` on every rank (a measurement or decision only rank 0's counts), taken at
    `what` on every rank (else `OutOfStep`)."""
    if not active():
        return value
    t = torch.tensor([float(value), float(_tag(what))], dtype=torch.float64, device=accelerator().device)
    torch.distributed.broadcast(t, 0)
    if int(t[1]) != _tag(what):
        raise OutOfStep(f"ranks out of step: rank {rank()} is at '{what}', rank 0 elsewhere")
    return float(t[0])


@contextlib.contextmanager
def local():
    """Inside: this process runs alone, as with one process (a rank-0-only stage that trains,
    e.g. QAT, must not issue collectives the other ranks never join)."""
    global _local
    _local += 1
    try:
        yield
    finally:
        _local -= 1


@contextlib.contextmanager
def together(what: str):
    """All ranks leave the block together; when it failed on another rank, this one stops
    too with one line (the failing rank raises its own error)."""
    ok = False
    try:
        yield
        ok = True
    finally:
        if not agree(ok, what) and ok:
            raise OtherRankFailed(f"{what} failed on another rank (see its error)")


def shard(indices: list[int]) -> list[int]:
    """This rank's part of a global batch."""
    return indices[rank()::world_size()] if active() else indices


def check_batch(batch_size: int, what: str) -> None:
    if active() and batch_size % world_size():
        raise UserError(
            f"{what} {batch_size} is not divisible by the {world_size()} processes: every rank must take an equal share of the global batch"  # noqa: E501 - one message/literal
        )


def wrap(model, replacing=None):
    """DDP-wrapped model for training (the model itself with one process). `replacing`: an
    earlier wrapper this one replaces (accelerate lets go of it and of the weights it holds)."""
    if not active():
        return model
    if replacing is not None and replacing is not model:
        acc = accelerator()
        acc._models = [m for m in acc._models if m is not replacing]
    import warnings

    with warnings.catch_warnings():  # torch renames broadcast_buffers; accelerate still passes the old name
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")
        return accelerator().prepare_model(model)


def sum_(t: torch.Tensor) -> torch.Tensor:
    """In place: the sum over ranks."""
    if active():
        torch.distributed.all_reduce(t)
    return t


def mean(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator().device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world_size()


@torch.no_grad()
def broadcast_masks_and_weights(modules: dict) -> None:
    """Rank 0's masks and weights of the prunable modules on every rank."""
    if not active():
        return
    from ..pruning import masks as M

    for module in modules.values():
        torch.distributed.broadcast(module.weight.data, 0)
        mask = getattr(module, M.MASK)
        as_int = mask.to(torch.uint8)  # gloo has no bool
        torch.distributed.broadcast(as_int, 0)
        mask.copy_(as_int.bool())


def scratch(run_dir: Path, stage: str) -> Path:
    """Where a non-main rank's copy of a stage's outputs goes (removed after the stage)."""
    return run_dir / f".{stage}.rank{rank()}.tmp"


def check_shared(run_dir: Path) -> None:
    """Every rank sees rank 0's run dir (ranks read the records rank 0 writes): on several
    machines it must be one filesystem, mounted at the same path on each. Rank 0 creates it."""
    if not active():
        return
    import time

    run_dir = Path(run_dir)
    mark = run_dir / ".ranks-share-this-dir"
    token, error = 0, None
    if is_main():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            token = secrets.randbits(48)
            mark.write_text(str(token))
        except OSError as e:
            token, error = -1, e
    token = int(share(token, "run dir shared"))  # after rank 0 wrote the mark
    if token < 0:
        if error is not None:
            raise UserError(f"cannot write to run dir {run_dir}: {error.strerror or error}")
        raise OtherRankFailed(f"rank 0 cannot write the run dir {run_dir} (see its error)")
    seen, deadline = False, time.monotonic() + 10.0  # a network filesystem may show a new file late
    while not seen:
        try:
            seen = mark.read_text() == str(token)
        except OSError:
            pass
        if seen or time.monotonic() > deadline:
            break
        with contextlib.suppress(OSError):
            os.listdir(run_dir.parent)  # refreshes a client's cached view of the directory
        time.sleep(0.5)
    ok = agree(seen, "run dir shared: read")
    if is_main():
        mark.unlink(missing_ok=True)
    if not ok:
        raise UserError(
            f"the run dir {run_dir} is not the same directory on every machine: put it (--out, or a sweep's "
            "--root) on a filesystem every machine mounts at the same path"
        )
