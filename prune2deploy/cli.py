"""`p2d`: parse, build a Recipe, delegate to run.py. No logic here; bad input exits 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prune a BERT-family model for a task; ship a verified, benchmarked ONNX.",
)
STATE = {"debug": False}


def _guard(fn: Callable[[], object]) -> None:
    """Run `fn`; a UserError or OS error becomes one line on stderr and exit code 2."""
    try:
        fn()
    except UserError as e:
        if STATE["debug"]:
            raise
        print(f"p2d: error: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    except OSError as e:
        if STATE["debug"]:
            raise
        import errno

        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        hint = (
            "; free some space or point --out at another disk (nothing half-written was kept)"
            if e.errno == errno.ENOSPC
            else ""
        )
        print(f"p2d: error: {e.strerror or e}{where}{hint}", file=sys.stderr)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        print("p2d: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None


def _overrides(sets: list[str] | None, **named) -> dict:
    out = {k: v for k, v in named.items() if v is not None}
    for item in sets or []:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE (e.g. prune.lr=1e-4), got '{item}'")
        key, value = item.split("=", 1)
        import yaml

        out[key.strip()] = yaml.safe_load(value)
    return out


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    STATE["debug"] = debug
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)


@app.command()
def run(
    task: str = typer.Argument(..., help="Task name (see `p2d tasks`)."),
    sparsity: Optional[str] = typer.Option(
        None, "--sparsity", "-s",
        help="Unstructured (or N:M) target: the fraction of encoder weights set to zero, in [0, 1). The research's "
        "headline; a speedup only on a runtime with sparse kernels (DeepSparse, evaluation licence).",
    ),
    speedup: Optional[str] = typer.Option(
        None, "--speedup",
        help="Structured target: remove whole attention heads and FFN neurons until the model is X times faster "
        "than the best dense option, measured on the latency runtime (prune.latency_runtime; default the fastest "
        "production runtime here). A ladder (1.5,2,3) makes a family in one run, a member per target; one X makes "
        "the default ladder up to X (prune.ladder=[X]: one model). Ships the fastest member that keeps "
        "bench.accuracy_gate. Not with --sparsity.",
    ),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="Pruning method (see `p2d methods`); with --speedup: gmp (norm) or ziplm."
    ),
    profile: str = typer.Option("default", "--profile", "-p", help="smoke | default | paper"),
    model: Optional[str] = typer.Option(
        None, "--model", help="Local HF model dir or hub id (default: embedded all-MiniLM-L6-v2)."
    ),
    teacher: Optional[str] = typer.Option(
        None, "--teacher", help="A fine-tuned dense model dir to use as teacher (skips training)."
    ),
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", help="Local data files, or 'hub' to load from the Hugging Face hub."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run dir (default runs/<task>-<method>-<sparsity>)."),
    seed: Optional[str] = typer.Option(None, "--seed"),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU threads for training and bench (0: all)."),
    recipe_file: Optional[Path] = typer.Option(
        None, "--recipe", help="A pipeline YAML other than pipelines/<task>.yaml."
    ),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", "-r", help="Bench runtimes, comma-separated, or 'auto' (see `p2d runtimes`)."
    ),
    quantize: Optional[str] = typer.Option(
        None,
        "--quantize",
        help="'int8' (dynamic) or 'int8-static' (QDQ, calibrated): also a sparse INT8 graph (zeros kept, accuracy re-measured).",  # noqa: E501 - one message/literal
    ),
    pattern: Optional[str] = typer.Option(
        None,
        "--pattern",
        help="'unstructured', '2:4' (N:M semi-structured, with --sparsity 0.5) or 'block4' (4 input weights together).",
    ),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override any recipe field: --set prune.lr=1e-4"),
    force: bool = typer.Option(False, "--force", help="Reuse a run dir made for another config."),
    launcher: str = typer.Option(
        "none",
        "--launcher",
        help="'accelerate': teacher and prune data-parallel under HF Accelerate (DDP; gloo on CPU).",
    ),
    processes: int = typer.Option(
        0, "--processes", help="With --launcher accelerate: processes on this machine (0: one per GPU, else 2)."
    ),
    num_machines: int = typer.Option(
        1, "--num-machines", help="With --launcher accelerate: machines in the run (the same command on each)."
    ),
    machine_rank: int = typer.Option(0, "--machine-rank", help="With --num-machines: this machine's rank (0..N-1)."),
    main_address: Optional[str] = typer.Option(
        None, "--main-address", help="With --num-machines: HOST[:PORT] of machine rank 0 (port default 29500)."
    ),
    main_timeout: Optional[float] = typer.Option(
        None, "--main-timeout", help="With --num-machines: seconds a machine waits for rank 0's port (300)."
    ),
) -> None:
    """Run the whole pipeline: (latency →) teacher → prune → validate → export → (quantize →) bench.

    --speedup X: structured (heads and FFN neurons removed, a smaller dense model every runtime runs
    faster, sized by measured latency). --sparsity S: unstructured zeros (the research's headline).
    """
    if launcher == "none" and (num_machines != 1 or machine_rank or main_address or main_timeout is not None):

        def refuse():
            raise UserError("--num-machines, --machine-rank, --main-address and --main-timeout apply with "
                            "--launcher accelerate")

        _guard(refuse)
    if launcher != "none":
        code = {"rc": 0}

        def launch():
            from .train.launch import Machines, relaunch

            machines = Machines(num_machines, machine_rank, main_address, main_timeout)
            code["rc"] = relaunch(sys.argv[1:], launcher, processes, machines)

        _guard(launch)
        raise typer.Exit(code["rc"])

    def go():
        from .errors import UserError
        from .recipe import load_recipe
        from .run import default_run_dir, run_pipeline

        ladder = None
        if speedup is not None:
            from .pruning.family import parse_ladder

            ladder = parse_ladder(speedup)  # one number, or a family: 1.5,2,3
        if speedup is not None and sparsity is not None:
            raise UserError(
                "--speedup (structured: heads and FFN neurons removed) and --sparsity (unstructured zeros) are "
                "two targets: pass one"
            )
        overrides = _overrides(
            sets,
            **{
                "prune.target_speedup": ladder[-1] if ladder else None,
                "prune.ladder": list(ladder) if ladder and len(ladder) > 1 else None,
                "prune.method": method or ("ziplm" if speedup is not None else None),
                "prune.pattern": "structured" if speedup is not None and pattern is None else pattern,
                "prune.target_sparsity": 0.0 if speedup is not None else sparsity,
                "model": model,
                "teacher.path": teacher,
                "data.data_dir": data_dir,
                "seed": seed,
                "threads": threads,
                "bench.runtimes": runtime,
                "export.quantize": quantize,
            },
        )
        from .train.budget import fit_to_data

        recipe = load_recipe(task, profile, overrides, recipe_file=recipe_file)
        run_dir = out or default_run_dir(recipe)
        run_pipeline(fit_to_data(recipe, run_dir, force), run_dir, force=force)

    _guard(go)


def _stage_command(stage: str):
    def cmd(
        run_dir: Path = typer.Argument(..., help="A run dir made by `p2d run`."),
        force: bool = typer.Option(False, "--force", help="Redo the stage even if up to date."),
    ) -> None:
        def go():
            from .report.summary import build_report
            from .files import write_json_atomic
            from .run import load_run_recipe, run_stage

            recipe = load_run_recipe(run_dir)
            run_stage(stage, recipe, run_dir, force=force)
            write_json_atomic(run_dir / "report.json", build_report(recipe, run_dir))

        _guard(go)

    cmd.__doc__ = f"Run the {stage} stage on a run dir."
    return cmd


from .stages import STAGES  # noqa: E402 - the names only; the stage modules load when a command runs

for _stage in (s for s in STAGES if s != "bench"):  # bench has its own command (it also takes an ONNX file)
    app.command(name=_stage)(_stage_command(_stage))


@app.command()
def bench(
    path: Path = typer.Argument(..., help="A run dir, or any ONNX file."),
    dense: Optional[Path] = typer.Option(None, "--dense", help="With an ONNX file: the dense model to compare with."),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", "-r", help="Comma-separated runtimes, or 'auto' (see `p2d runtimes`)."
    ),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="e.g. 1,16"),
    seq_lens: Optional[str] = typer.Option(None, "--seq-lens", help="e.g. 128,384"),
    threads: Optional[str] = typer.Option(None, "--threads"),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="With an ONNX file: where to write bench.json/.md/.png."
    ),
    force: bool = typer.Option(False, "--force", help="Redo the stage even if up to date."),
) -> None:
    """Benchmark dense vs sparse: the bench stage of a run dir, or any ONNX file."""

    def go():
        from .measure.bench_cli import bench_path

        bench_path(path, dense, runtime, batch_sizes, seq_lens, threads, out, force)

    _guard(go)


@app.command()
def runtimes() -> None:
    """List registered runtimes and whether each is installed here."""
    from .runtimes.registry import _all

    for name, rt in _all().items():
        ok = rt.available()
        print(f"{name:22s} {rt.precision:5s} {rt.device:5s} {'installed ' + rt.version() if ok else 'not installed'}")


@app.command()
def gate(
    run_dir: Path = typer.Argument(..., help="A finished run dir (report.json)."),
    baseline: Path = typer.Option(..., "--baseline", "-b", help="gates.yaml: bounds per task/model/sparsity."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the checks as JSON here."),
    update_baseline: bool = typer.Option(
        False, "--update-baseline", help="Write this run's values (loosened by --margin) into the baseline."
    ),
    margin: float = typer.Option(
        0.1, "--margin", help="Fraction by which --update-baseline loosens the current values."
    ),
) -> None:
    """CI gate: exit 0 when every check passes, 1 when one fails, 2 on bad input."""
    failed = {"n": 0}

    def go():
        from .ship import gate_cli

        failed["n"] = gate_cli.run(run_dir, baseline, junit, json_out, update_baseline, margin)

    _guard(go)
    if failed["n"]:
        raise typer.Exit(1)


@app.command()
def package(
    run_dir: Path = typer.Argument(..., help="A finished run dir."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact dir to create (must not exist or be empty)."),
    fmt: str = typer.Option("plain", "--format", help="plain | triton"),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default <task>-<method>-<sparsity%>)."),
    int8: bool = typer.Option(False, "--int8", help="Ship the sparse INT8 graph (a run made with --quantize int8)."),
    dense: bool = typer.Option(False, "--dense", help="Ship the run's dense baseline graph instead (to compare)."),
    layout: Optional[str] = typer.Option(
        None, "--layout", help="With --int8: matmulinteger (DeepSparse's; default where made) | qdq (ORT's QDQ)."
    ),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", "-r",
        help="The serving runtime it is for (default: the verdict's, else the fastest production runtime benched).",
    ),
    member: Optional[str] = typer.Option(
        None, "--member", help="A --speedup family's member by name, e.g. 1.5x (default: the one the verdict ships)."
    ),
) -> None:
    """Package a run's pruned ONNX with tokenizer, manifest and model card."""

    def go():
        from .ship.package import package as do_package

        if layout and not int8:
            raise UserError("--layout applies to --int8 only")
        from .ship.verify import manifest_digest

        path = do_package(run_dir, out, fmt, name, int8=int8, dense=dense, layout=layout, runtime=runtime,
                          member=member)
        digest = manifest_digest(path)
        print(f"wrote {path} (manifest.json sha256 {digest}: pin it with --expect-manifest-sha256 {digest})")

    _guard(go)


PIN_HELP = "Refuse unless manifest.json has this sha256 (it lists every file's; `p2d package` prints it)."


@app.command()
def verify(
    artifact: Path = typer.Argument(..., help="An artifact dir made by `p2d package`."),
    pin: Optional[str] = typer.Option(None, "--expect-manifest-sha256", help=PIN_HELP),
) -> None:
    """Re-check an artifact: hashes, ONNX checker, sparsity, reference outputs. Exit 1 on a mismatch."""
    bad = {"msg": None}

    def go():
        from .ship.verify import verify_artifact

        bad["msg"], passed = verify_artifact(artifact, pin)
        for line in passed:
            print(f"ok   {line}")

    _guard(go)
    if bad["msg"]:
        print(f"FAIL {bad['msg']}", file=sys.stderr)
        raise typer.Exit(1)


SERVE_RUNTIMES = "onnxruntime | openvino | openvino-bf16 | deepsparse (evaluation licence only)"


@app.command()
def serve(
    artifact: Path = typer.Argument(..., help="An artifact dir made by `p2d package`."),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", "-r", help=f"{SERVE_RUNTIMES}; default: the production runtime it was packaged for."
    ),
    port: int = typer.Option(8080, "--port", help="HTTP port (KServe V2 REST)."),
    host: str = typer.Option(
        os.environ.get("P2D_SERVE_HOST", "127.0.0.1"), "--host",
        help="Address to listen on (default $P2D_SERVE_HOST or 127.0.0.1; the Docker image sets 0.0.0.0).",
    ),
    threads: int = typer.Option(2, "--threads", help="Threads of the runtime."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: the artifact's)."),
    metrics_port: int = typer.Option(8082, "--metrics-port", help="Prometheus /metrics port (0: off)."),
    grpc_port: int = typer.Option(0, "--grpc-port", help="KServe V2 gRPC port (0, the default: off)."),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="Largest request body accepted (413 above)."),
    max_batch_rows: int = typer.Option(16, "--max-batch-rows", help="Rows merged into one inference (1: no batching)."),
    max_batch_time_ms: float = typer.Option(
        0.0, "--max-batch-time-ms", help="How long a request waits for others while the runtime is idle."
    ),
    log: Optional[Path] = typer.Option(
        None, "--log", help="Server log (default under ~/.local/state/prune2deploy/serve; kept after exit)."
    ),
    pin: Optional[str] = typer.Option(None, "--expect-manifest-sha256", help=PIN_HELP),
) -> None:
    """Serve an artifact with MLServer over the KServe V2 / Open Inference Protocol (Triton's)."""
    code = {"rc": 0}

    def go():
        from .ship.serve import serve_forever

        if max_body_mb <= 0 or max_batch_rows < 1 or max_batch_time_ms < 0:
            raise UserError("--max-body-mb must be > 0, --max-batch-rows >= 1, --max-batch-time-ms >= 0")
        code["rc"] = serve_forever(
            artifact, runtime, threads, host, port, name, metrics_port=metrics_port, grpc_port=grpc_port,
            max_body_bytes=int(max_body_mb * (1 << 20)), max_batch_rows=max_batch_rows,
            max_batch_time_ms=max_batch_time_ms, log=log, pin=pin,
        )

    _guard(go)
    if code["rc"]:
        raise typer.Exit(1)


@app.command("serve-check")
def serve_check(
    artifact: Path = typer.Argument(..., help="An artifact dir made by `p2d package`."),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", "-r", help=f"{SERVE_RUNTIMES}; default: the production runtime it was packaged for."
    ),
    threads: int = typer.Option(2, "--threads", help="Threads of the runtime."),
    pin: Optional[str] = typer.Option(None, "--expect-manifest-sha256", help=PIN_HELP),
) -> None:
    """Start the server on loopback, send the manifest's samples with tritonclient, compare with
    the reference outputs, then malformed requests (each must be refused, the next served)."""
    bad = {"msg": None}

    def go():
        from .ship.serve import DEEPSPARSE_LICENCE, Server
        from .ship.serve_check import malformed_check, reference_check

        server = Server(artifact, runtime, threads, pin=pin)  # runtime None: the one it was packaged for
        rt = server.runtime
        if rt == "deepsparse":
            print(f"note {DEEPSPARSE_LICENCE}")
        with server:
            print(f"ok   {server.name} ready on {rt} at http://{server.url}")
            for check in (reference_check, malformed_check):
                bad["msg"], passed = check(server.url, server.name, artifact, rt)
                for line in passed:
                    print(f"ok   {line}")
                if bad["msg"]:
                    return

    _guard(go)
    if bad["msg"]:
        print(f"FAIL {bad['msg']}", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def sweep(
    task: str = typer.Argument(..., help="Task name (see `p2d tasks`)."),
    sparsity: Optional[str] = typer.Option(
        None, "--sparsity", "-s", help="Comma-separated target sparsities (default 0.5,0.7,0.8,0.9,0.95)."
    ),
    speedup: Optional[str] = typer.Option(
        None, "--speedup", help="Comma-separated structured targets instead (e.g. 1.5,2,3; as `p2d run --speedup`)."
    ),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="Comma-separated methods (see `p2d methods`; default gmp, ziplm with --speedup)."
    ),
    seed: Optional[str] = typer.Option(
        None, "--seed", help="Comma-separated seeds: every point once per seed (run dirs end in -seed<N>)."
    ),
    profile: str = typer.Option("default", "--profile", "-p", help="smoke | default | paper"),
    root: Path = typer.Option(
        Path("runs"), "--root", help="Where the point run dirs go (<root>/<task>-<method>-<target>)."
    ),
    model: Optional[str] = typer.Option(None, "--model"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r"),
    quantize: Optional[str] = typer.Option(
        None, "--quantize", help="'int8' or 'int8-static': also a sparse INT8 graph per point."
    ),
    recipe_file: Optional[Path] = typer.Option(None, "--recipe"),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override any recipe field for every point."),
    force: bool = typer.Option(False, "--force", help="Reuse run dirs made for another config."),
    engine: str = typer.Option(
        "local", "--engine", help="local: the points one after another here | ray: each point a Ray task."
    ),
    address: Optional[str] = typer.Option(
        None, "--address",
        help="With --engine ray: the cluster, HOST:PORT (ray://HOST:PORT, auto); default a local one started here.",
    ),
    cpus_per_point: Optional[float] = typer.Option(
        None, "--cpus-per-point", help="With --engine ray: CPUs a point takes (default the recipe's threads, or 1)."
    ),
    gpus_per_point: Optional[float] = typer.Option(None, "--gpus-per-point", help="With --engine ray (default 0)."),
    memory_gb_per_point: Optional[float] = typer.Option(
        None, "--memory-gb-per-point", help="With --engine ray: memory a point reserves (default none)."
    ),
    retries: Optional[int] = typer.Option(
        None, "--retries", help="With --engine ray: restarts of a point whose worker died (default 3)."
    ),
) -> None:
    """Run the pipeline at several targets (methods, seeds), sharing the teacher; re-run resumes."""
    bad = {"n": 0}

    def go():
        from .sweep import parse_list, plan_points, run_sweep

        ray_options = {"address": address, "cpus": cpus_per_point, "gpus": gpus_per_point,
                       "memory_gb": memory_gb_per_point, "retries": retries}
        ray_options = {k: v for k, v in ray_options.items() if v is not None}
        if engine != "ray" and ray_options:
            raise UserError("--address, --cpus-per-point, --gpus-per-point, --memory-gb-per-point and --retries "
                            "apply to --engine ray")
        if speedup is not None and sparsity is not None:
            raise UserError("--speedup (structured) and --sparsity (unstructured) are two kinds of target: pass one")
        overrides = _overrides(
            sets, **{"model": model, "data.data_dir": data_dir, "bench.runtimes": runtime, "export.quantize": quantize}
        )
        points = plan_points(
            task,
            profile,
            None if speedup is not None else parse_list(sparsity or "0.5,0.7,0.8,0.9,0.95", "sparsity", float),
            parse_list(method or ("ziplm" if speedup is not None else "gmp"), "method"),
            overrides,
            recipe_file,
            speedups=parse_list(speedup, "speedup", float) if speedup is not None else None,
            seeds=parse_list(seed, "seed", int) if seed is not None else None,
        )
        summary = run_sweep(points, root, force=force, engine=engine, seeded=seed is not None, **ray_options)
        bad["n"] = sum(p["status"] != "done" for p in summary["points"])
        print(f"sweep summary: {summary['path']}")

    _guard(go)
    if bad["n"]:
        print(f"FAIL {bad['n']} sweep point(s) failed; see the log above", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Finished run dirs (e.g. runs/squad-*)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML page; PNGs go beside it."),
) -> None:
    """One self-contained HTML page over runs: metric/latency vs sparsity, Pareto front, tables."""

    def go():
        from .report.html import write_report

        res = write_report(run_dirs, out)
        print(f"wrote {res['html']} ({res['runs']} runs; charts: {', '.join(res['pngs'])})")

    _guard(go)


@app.command()
def tasks() -> None:
    """List registered tasks and where their data comes from."""
    from .tasks.registry import get_task, task_names

    width = max(map(len, task_names()))
    for name in task_names():
        t = get_task(name)
        print(f"{name:{width}s} {t.metric:9s} len {t.max_length:<4d} {t.export_task:20s} {t.source}")


@app.command()
def methods() -> None:
    """List registered pruning methods."""
    from .pruning.registry import describe

    for name, text in describe().items():
        print(f"{name:8s} {text}")


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank started by `accelerate launch` / torchrun
        from .train.distributed import run_launched

        run_launched(app)  # ends the process
    else:
        app()
