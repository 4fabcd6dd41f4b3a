"""The Ray engine: every point a Ray task with the resources it declares, on a running cluster
(`--address HOST:PORT`, `ray://HOST:PORT` or `auto`) or, with no --address, Ray's default (the
cluster RAY_ADDRESS or `ray start` on this machine names, else a local one started for the
sweep with all this machine's CPUs).

- **Shared root.** Every node must see the run root at the same path (a shared filesystem: NFS,
  a mounted bucket, one host's disk for a local cluster): the points' run dirs, the teacher
  cache and the summary live there, and a task first checks it reads the token this driver
  wrote, so a node that sees another disk fails with one line instead of training apart.
- **Teacher first.** One task per distinct teacher (the points of one seed share it) runs its
  first point through the teacher stage; then every point is submitted and finds the teacher
  in the root's cache.
- **Retries.** A point whose worker dies (killed, out of memory, its node lost) is retried by
  Ray (`--retries`, default 3) and resumes from its stage records: a finished stage is not
  redone, a stage cut short restarts from its last checkpoint. A Python error is not retried:
  the point is failed, as on the local engine. Each start is a line in
  `<root>/.ray/<point>.attempts`; the summary says how many there were and on which node.
- **Ctrl-C** marks the points still running or queued `cancelled`, says which had finished and
  ends the job (Ray kills its workers; no `ray.cancel`, which can race a reply and abort the driver).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

from ..errors import UserError
from ..progress import log, warn
from ..recipe import Recipe
from ..sweep import entry, label

TOKEN = ".p2d-sweep-root"  # written by the driver into the root; a task checks it sees the same
ENV_PREFIXES = ("P2D_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")  # passed to the workers
SECRET = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # not: a runtime_env is visible cluster-wide (set it on the nodes)


def check_available() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError(
            "--engine ray needs Ray: pip install 'prune2deploy[ray]' (scripts/bootstrap installs it)"
        ) from None


def connect(address: str | None) -> str:
    """ray.init on `address` (None: Ray's default, the cluster RAY_ADDRESS or `ray start` on this
    machine names, else a local one started here for the sweep); returns where it is."""
    import ray

    if address and address != "auto":
        from ..train.launch import parse_address, reachable

        host, port = parse_address(address, 10001 if address.startswith("ray://") else 6379,
                                   "--address must be HOST:PORT (or auto)")
        why = reachable(host, port, 5.0)
        if why:
            raise UserError(f"cannot reach the Ray cluster at {host}:{port} ({why}): start it with "
                            "`ray start --head` there, or check --address")
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) and k not in SECRET}
    try:
        ctx = ray.init(address=address, include_dashboard=False, log_to_driver=True,
                       runtime_env={"env_vars": env}, configure_logging=False)
    except ConnectionError as e:
        raise UserError(f"cannot connect to a Ray cluster at '{address}': {str(e).splitlines()[0]}") from None
    return getattr(ctx, "address_info", {}).get("gcs_address") or address or "a local cluster"


def check_fits(cpus: float, gpus: float, memory_gb: float | None) -> None:
    """Some alive node has what one point asks for (a task no node can take waits forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need = {"CPU": cpus, "GPU": gpus, "memory": (memory_gb or 0) * 2**30}
    if any(all(res.get(k, 0) >= v for k, v in need.items() if v) for res in nodes):
        return
    most = {k: max((res.get(k, 0) for res in nodes), default=0) for k in need}
    raise UserError(
        f"no node of the Ray cluster has what a point asks for ({cpus:g} CPUs, {gpus:g} GPUs"
        + (f", {memory_gb:g} GB" if memory_gb else "")
        + f"; the largest node: {most['CPU']:g} CPUs, {most['GPU']:g} GPUs, {most['memory'] / 2**30:.1f} GB): "
        "lower --cpus-per-point / --gpus-per-point / --memory-gb-per-point or add a node"
    )


def _point(recipe: Recipe, run_dir: str, root: str, token: str, cwd: str, force: bool, until: str | None):
    """A Ray task: one point's pipeline (or its stages through `until`) on a worker."""
    from ..run import run_pipeline, stages_through

    if os.path.isdir(cwd):  # relative paths in the recipe mean what they meant to the driver
        os.chdir(cwd)
    node = socket.gethostname()
    mark = Path(root) / TOKEN
    if not mark.is_file() or mark.read_text() != token:
        raise UserError(f"node {node} does not see the sweep's run root {root} (the driver's): "
                        "put --root on a filesystem every node mounts at the same path")
    attempts = Path(root) / ".ray" / f"{Path(run_dir).name}.attempts"
    if until is None:
        attempts.parent.mkdir(exist_ok=True)
        with attempts.open("a") as f:  # this sweep's starts carry its token (an earlier sweep's do not count)
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {node} sweep {token} pid {os.getpid()}\n")
    started = time.time()
    if until is not None:
        run_pipeline(recipe, Path(run_dir), stages=stages_through(until), force=force)
        return None
    report = run_pipeline(recipe, Path(run_dir), force=force)
    return entry(recipe, run_dir, report, seconds=round(time.time() - started, 1), node=node,
                 attempts=sum(f" sweep {token} " in line for line in attempts.read_text().splitlines()))


def stops_the_sweep(cause: BaseException) -> bool:
    """Bad input stops the sweep (every point would meet it); a point's failed check or a rank's
    error fails that point only."""
    from ..errors import OtherRankFailed, OutOfStep, VerificationError

    return isinstance(cause, UserError) and not isinstance(cause, (VerificationError, OutOfStep, OtherRankFailed))


def _failure(e: BaseException) -> tuple[BaseException, str]:
    """The error a task raised (unwrapped from Ray's), and one line of it."""
    import ray

    cause = getattr(e, "cause", None) if isinstance(e, ray.exceptions.RayTaskError) else None
    if cause is not None:
        return cause, f"{type(cause).__name__}: {cause}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return e, f"{type(e).__name__}: {first}"


def run_points(
    points: list[Recipe],
    dirs: list[Path],
    root: Path,
    force: bool,
    done,
    address: str | None = None,
    cpus: float | None = None,
    gpus: float = 0.0,
    memory_gb: float | None = None,
    retries: int = 3,
) -> None:
    import ray

    cpus = cpus if cpus is not None else float(points[0].threads or 1)
    if cpus <= 0 or gpus < 0 or (memory_gb is not None and memory_gb <= 0) or retries < 0:
        raise UserError("--cpus-per-point must be > 0, --gpus-per-point >= 0, --memory-gb-per-point > 0, "
                        "--retries >= 0")
    root = Path(root).resolve()
    dirs = [root / d.name for d in dirs]
    where = connect(address)
    try:
        check_fits(cpus, gpus, memory_gb)
        root.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        (root / TOKEN).write_text(token)
        opts = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": retries, "retry_exceptions": False}
        if memory_gb:
            opts["memory"] = int(memory_gb * 2**30)
        # max_calls=1: a fresh worker process per point, nothing held over from the last
        task = ray.remote(max_calls=1)(_point).options(**opts)
        log(f"[bold]sweep on Ray[/bold] ({where}): {len(points)} points, {cpus:g} CPUs"
            + (f", {gpus:g} GPUs" if gpus else "") + (f", {memory_gb:g} GB" if memory_gb else "")
            + f" each; cluster {ray.cluster_resources().get('CPU', 0):g} CPUs; run root {root}")
        args = dict(root=str(root), token=token, cwd=os.getcwd(), force=force)
        _run(task, points, dirs, args, done)
    finally:
        ray.shutdown()


def _run(task, points, dirs, args, done) -> None:
    import ray

    from ..run import teacher_cache

    first: dict[str, int] = {}  # teacher cache dir: the first point that needs it
    for i, (recipe, run_dir) in enumerate(zip(points, dirs)):
        first.setdefault(str(teacher_cache(recipe, run_dir)), i)
    pending = {}  # ref: point index
    teachers = {}  # ref: the point index whose run trains that teacher
    finished: list[int] = []
    try:
        teachers.update({task.remote(points[i], str(dirs[i]), until="teacher", **args): i for i in first.values()})
        log(f"sweep: {len(teachers)} teacher(s) first ({', '.join(label(points[i]) for i in teachers.values())})")
        failed_teacher = {}
        for ref, i in teachers.items():
            try:
                ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the points of that teacher fail, the others go on
                cause, line = _failure(e)
                if stops_the_sweep(cause):
                    raise cause from None
                failed_teacher[str(teacher_cache(points[i], dirs[i]))] = f"teacher: {line}"
        for i, (recipe, run_dir) in enumerate(zip(points, dirs)):
            why = failed_teacher.get(str(teacher_cache(recipe, run_dir)))
            if why:
                done(i, entry(recipe, run_dir, error=why))
                finished.append(i)
            else:
                pending[task.remote(recipe, str(run_dir), until=None, **args)] = i
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                point = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - one failed point must not lose the others
                cause, line = _failure(e)
                if stops_the_sweep(cause):
                    raise cause from None
                warn(f"sweep point {label(points[i])} failed: {line}")
                point = entry(points[i], dirs[i], error=line)
            done(i, point)
            finished.append(i)
            log(f"sweep point {len(finished)}/{len(points)} ended: {label(points[i])} {point['status']}"
                + (f" in {point['seconds']:g} s on {point['node']}"
                   + (f" ({point['attempts']} attempts)" if point.get("attempts", 1) > 1 else "")
                   if point["status"] == "done" else ""))
    except (KeyboardInterrupt, UserError) as e:
        # No ray.cancel: in Ray 2.60 a cancel that races a task's completion reply aborts the driver
        # (task_manager.cc "Tried to complete task that was not pending", exit 1 instead of 130).
        # The points still queued or running end with this driver's job: ray.shutdown() (the caller's
        # finally) disconnects it, and Ray kills every worker of a finished job.
        for i in set(range(len(points))) - set(finished):
            done(i, {**entry(points[i], dirs[i]), "status": "cancelled"})
        if isinstance(e, KeyboardInterrupt):
            ended = ", ".join(label(points[i]) for i in finished) or "none"
            warn(f"sweep interrupted: cancelled {len(points) - len(finished)} point(s) on Ray; finished: {ended}")
        raise
