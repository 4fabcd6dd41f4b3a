"""The stage runner: a run directory, one folder and one `stage.json` record per stage.

A stage's key hashes the recipe fields it reads and its upstream records' output hashes; a
stage whose key is unchanged and whose outputs still hash as recorded is skipped. A stage
writes into a temp folder that is renamed into place only when it finished, so a run dir
never holds half a stage.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .train import distributed as D
from .errors import UserError
from .files import hash_dir, read_json, replace_dir, sha256_json, write_json_atomic
from .progress import log
from .recipe import Recipe
from .stages import STAGES  # the registry: stage names in order (see stages/__init__.py)
from .stages.common import StageContext, checkpoint_files, checkpoint_path



def stage_module(stage: str):
    return importlib.import_module(f".stages.{stage}", __package__)


def needs(stage: str) -> tuple[str, ...]:
    return stage_module(stage).NEEDS


def reads(stage: str) -> tuple[str, ...]:
    return stage_module(stage).READS


def default_run_dir(recipe: Recipe, root: str | Path = "runs") -> Path:
    p = recipe.prune
    target = f"{p.target_speedup:g}x" if p.target_speedup else f"{p.target_sparsity:g}"
    return Path(root) / f"{recipe.task}-{p.method}-{target}"


def versions() -> dict[str, str]:
    out = {"prune2deploy": __version__, "python": platform.python_version()}
    for mod in ("torch", "transformers", "optimum", "onnx", "onnxruntime", "datasets", "numpy"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is simply not listed
            pass
    return out


def read_fields(recipe: Recipe, keys) -> dict:
    """The recipe's values a stage reads: a section ("prune") or one field of one ("bench.accuracy_gate")."""
    d = recipe.to_dict()
    out = {}
    for k in keys:
        section, _, name = k.partition(".")
        out[k] = d[section][name] if name else d[section]
    return out


def stage_key(stage: str, recipe: Recipe, upstream: dict[str, dict]) -> str:
    return sha256_json(
        {
            "stage": stage,
            "reads": read_fields(recipe, reads(stage)),
            "upstream": {k: v["output_hash"] for k, v in upstream.items()},
            "p2d": __version__,
        }
    )


def read_record(run_dir: Path, stage: str) -> dict | None:
    path = run_dir / stage / "stage.json"
    if not path.is_file():
        return None
    try:
        rec = read_json(path)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and rec.get("status") == "done" else None


def record_is_valid(run_dir: Path, rec: dict) -> bool:
    """The outputs (and external files, e.g. a cached teacher) still hash as recorded."""
    stage_dir = run_dir / rec["stage"]
    current = {k: v for k, v in hash_dir(stage_dir).items() if k != "stage.json"}
    if current != rec.get("outputs"):
        return False
    for path, hashes in (rec.get("external") or {}).items():
        if not Path(path).is_dir() or hash_dir(path) != hashes:
            return False
    return True


def prepare_run_dir(recipe: Recipe, run_dir: Path, force: bool = False) -> None:
    """Create the run dir, or refuse one made for another config (unless `force`)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run dir {run_dir}: {e.strerror}") from None
    path = run_dir / "recipe.json"
    if path.is_file() and not force:
        try:  # fill fields added since (their defaults) so an older run dir still matches
            from .recipe import _build

            old = json.loads(json.dumps(_build(Recipe, read_json(path), str(path)).to_dict()))
        except (ValueError, UserError, TypeError):
            old = None
        new = json.loads(json.dumps(recipe.to_dict()))  # tuples as lists, as read back
        if old != new:
            diff = sorted(k for k in new if not isinstance(old, dict) or old.get(k) != new[k])
            raise UserError(
                f"run dir {run_dir} holds a run of another config (differs in: {', '.join(diff) or 'format'}); use --out for a new dir or --force"  # noqa: E501 - one message/literal
            )
    write_json_atomic(path, recipe.to_dict())


def load_run_recipe(run_dir: Path) -> Recipe:
    from .recipe import _build, validate

    path = Path(run_dir) / "recipe.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run dir (no recipe.json); start one with `p2d run TASK`")
    recipe = _build(Recipe, upgrade_record(read_json(path)), str(path))
    validate(recipe)
    return recipe


def upgrade_record(d: dict) -> dict:
    """A recipe.json written by an earlier p2d, in today's shape: the flat `prune.obert_<key>`
    fields became `prune.options.obert.<key>` (a run dir made before still packages and reports)."""
    prune = dict(d.get("prune") or {})
    old = {k: prune.pop(k) for k in list(prune) if k.startswith("obert_")}
    if not old:
        return d
    options = dict(prune.get("options") or {})
    options["obert"] = {**{k.removeprefix("obert_"): v for k, v in old.items()}, **options.get("obert", {})}
    return {**d, "prune": {**prune, "options": options}}


def run_stage(stage: str, recipe: Recipe, run_dir: Path, force: bool = False) -> dict:
    upstream = {}
    for dep in needs(stage):
        rec = read_record(run_dir, dep)
        if rec is None:
            raise UserError(f"stage '{stage}' needs '{dep}' in {run_dir}: run `p2d {dep} {run_dir}` first")
        upstream[dep] = rec
    key = stage_key(stage, recipe, upstream)
    existing = read_record(run_dir, stage)
    up_to_date = bool(existing and not force and existing.get("key") == key and record_is_valid(run_dir, existing))
    # several processes: rank 0 alone reads the disk to decide (another rank could see a
    # record rank 0 has just written and skip a stage rank 0 runs)
    if D.decide(up_to_date, f"run or skip stage '{stage}'"):
        log(f"[dim]{stage}: up to date, skipped[/dim]")
        return existing if D.is_main() else read_record(run_dir, stage)
    if D.active():  # every rank trains, rank 0 alone writes the record
        return _run_stage_ranks(stage, recipe, run_dir, upstream, key)
    return _run_stage_here(stage, recipe, run_dir, upstream, key)


def _run_stage_ranks(stage: str, recipe: Recipe, run_dir: Path, upstream: dict, key: str) -> dict:
    """Teacher and prune run on every rank (data parallel), the others on rank 0 only; a
    non-main rank's outputs go to a scratch dir that is removed. After the stage every rank
    waits for rank 0's record and returns it; a failure on rank 0 stops every rank."""
    with D.together(f"stage '{stage}'"):
        parallel = stage_module(stage).PARALLEL
        if D.is_main():
            # rank 0 alone (not parallel): whatever it trains (QAT) runs as one process, no collectives
            with contextlib.nullcontext() if parallel else D.local():
                _run_stage_here(stage, recipe, run_dir, upstream, key)
        elif parallel:  # computed here, never committed
            scratch = D.scratch(run_dir, stage)
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            try:
                stage_module(stage).run(StageContext(recipe, scratch, run_dir, upstream, key))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    rec = read_record(run_dir, stage)
    if rec is None:
        raise RuntimeError(f"stage '{stage}': no record from rank 0 in {run_dir} (all ranks need the same run dir)")
    return rec


def _run_stage_here(stage: str, recipe: Recipe, run_dir: Path, upstream: dict, key: str) -> dict:
    module = stage_module(stage)
    tmp = run_dir / f".{stage}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    log(f"[bold]{stage}[/bold]")
    started = time.time()
    try:
        result = module.run(StageContext(recipe, tmp, run_dir, upstream, key))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    external = result.pop("_external", None)
    outputs = hash_dir(tmp)
    record = {
        "stage": stage,
        "status": "done",
        "key": key,
        "reads": read_fields(recipe, module.READS),
        "upstream": {k: v["output_hash"] for k, v in upstream.items()},
        "outputs": outputs,
        "external": external,
        "output_hash": sha256_json({"outputs": outputs, "external": external}),
        "result": result,
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 2),
        "versions": versions(),
    }
    write_json_atomic(tmp / "stage.json", record)
    replace_dir(tmp, run_dir / stage)
    checkpoint_path(run_dir, stage).unlink(missing_ok=True)
    shutil.rmtree(checkpoint_files(run_dir, stage), ignore_errors=True)
    return record


def _check_latency_runtime(name: str) -> None:
    """A latency target's runtime must run here, in its precision."""
    from .measure.machine import cpu_info
    from .runtimes.registry import get_runtime

    rt = get_runtime(name)  # installed (UserError otherwise)
    isa = cpu_info()["isa"]
    if rt.precision == "bf16" and rt.device == "cpu" and not {"avx512_bf16", "amx_bf16"} & set(isa):
        raise UserError(f"prune.latency_runtime={name}: this CPU has no bf16 (avx512_bf16 or AMX), OpenVINO would "
                        "run fp32 there: use openvino or auto")


def preflight(recipe: Recipe) -> None:
    """Fail on a bad model, teacher or data before anything is written."""
    from .model.load import STRUCTURED_TYPES, check_weights, load_config, resolve_model
    from .tasks.registry import get_task

    for spec in (recipe.model, recipe.teacher.path):
        if spec:
            path = resolve_model(spec)
            config = load_config(path)
            check_weights(path)
            if recipe.prune.target_speedup and config.model_type not in STRUCTURED_TYPES:
                raise UserError(
                    f"--speedup removes heads and FFN neurons from BERT-style layers "
                    f"({', '.join(sorted(STRUCTURED_TYPES))}); '{spec}' is a {config.model_type}: "
                    "use --sparsity, or a model of those types"
                )
    if recipe.prune.target_speedup and recipe.prune.latency_runtime != "auto":
        _check_latency_runtime(recipe.prune.latency_runtime)
    get_task(recipe.task).load(recipe)
    from .runtimes.registry import resolve

    resolve(recipe.bench.runtimes)  # a runtime asked for by name must be installed
    if recipe.prune.target_speedup and recipe.prune.latency_table:  # a reused table must fit this run
        from .stages.latency import reused_table

        reused_table(recipe)


def teacher_cache(recipe: Recipe, run_dir: Path) -> Path:
    """Where the teacher stage caches this run's teacher: the runs that share it train it once."""
    return stage_module("teacher").cache_dir(Path(run_dir), recipe)


def stages_through(stage: str) -> tuple[str, ...]:
    """The pipeline's stages up to and including `stage`."""
    return STAGES[: STAGES.index(stage) + 1]


def run_pipeline(recipe: Recipe, run_dir: Path, stages: tuple[str, ...] = STAGES, force: bool = False) -> dict:
    """Run `stages` in a run dir; the whole pipeline ends with its report (returned; {} on a
    rank other than 0 and after part of the stages)."""
    from .report.summary import build_report, print_summary

    preflight(recipe)
    fresh = not Path(run_dir).exists()
    try:
        D.check_shared(run_dir)  # several machines: every rank reads rank 0's records there
    except UserError:
        if fresh and D.is_main():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    with D.together(f"preparing {run_dir}"):
        if D.is_main():  # one writer of the run dir
            prepare_run_dir(recipe, run_dir, force=force)
    records = {}
    for stage in stages:
        try:
            records[stage] = run_stage(stage, recipe, run_dir)
        except UserError:
            # bad input found by the first stage (an unreachable --speedup): leave nothing behind
            if fresh and not records and D.is_main():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    if not D.is_main() or tuple(stages) != STAGES:
        return {}
    report = build_report(recipe, run_dir)
    write_json_atomic(run_dir / "report.json", report)
    print_summary(report)
    return report
