"""`p2d package`: a shippable artifact from a finished run dir, written atomically.

plain:   model.onnx, tokenizer files, config.json, samples.npz, manifest.json, README.md
triton:  the same, with the model in a Triton repository: model_repository/<name>/1/model.onnx
         and model_repository/<name>/config.pbtxt (onnxruntime backend, dims from the graph);
         plus a DeepSparse server config (deepsparse_server.yaml).

manifest.json: sha256 of every file, per-layer sparsity, metrics, bench rows, the recipe,
package versions, the p2d version and git commit, and the reference outputs' location.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from ..files import hash_dir, inside, read_json, write_json_atomic
from ..pruning.family import label, member_of_label

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "config.json",
)
# --layout -> (the quantize stage's graph, the model label of its rows in the run's bench)
INT8_LAYOUTS = {"qdq": ("model.int8.onnx", "sparse-int8"), "matmulinteger": ("model.int8-mmi.onnx", "sparse-int8-mmi")}
MAX_BATCH = 64  # Triton's max_batch_size and the served batch limit
ONNX_TYPES = {1: "TYPE_FP32", 7: "TYPE_INT64", 6: "TYPE_INT32", 10: "TYPE_FP16", 9: "TYPE_BOOL"}


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def graph_io(onnx_path: Path) -> tuple[list[dict], list[dict]]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append({"name": v.name, "dtype": ONNX_TYPES.get(t.elem_type, f"ONNX_{t.elem_type}"), "dims": dims})
        return out

    return describe(model.graph.input), describe(model.graph.output)


def triton_config(name: str, inputs: list[dict], outputs: list[dict], max_batch: int = MAX_BATCH) -> str:
    """config.pbtxt for the onnxruntime backend; the batch dim is Triton's (dims drop it)."""

    def block(kind: str, items: list[dict]) -> str:
        parts = []
        for it in items:
            dims = ", ".join(str(d) for d in it["dims"][1:])
            parts.append(f'  {{\n    name: "{it["name"]}"\n    data_type: {it["dtype"]}\n    dims: [ {dims} ]\n  }}')
        return f"{kind} [\n" + ",\n".join(parts) + "\n]"

    return (
        "\n".join(
            [
                f'name: "{name}"',
                'backend: "onnxruntime"',
                f"max_batch_size: {max_batch}",
                block("input", inputs),
                block("output", outputs),
                "instance_group [ { kind: KIND_CPU } ]",
                "dynamic_batching { }",
            ]
        )
        + "\n"
    )


# What a served output may differ from the stored reference by. Against the reference made on the
# same runtime at package time: fp32 agrees to rounding; bf16 and INT8 kernels may block a batch
# differently (a share of the output range). Against ONNX Runtime's reference, for a runtime not
# installed when the artifact was made: fp32 1e-4 (the tolerance `p2d verify` uses), bf16 and
# INT8 the bench's cross-runtime tolerance (`latency.tolerance`: runtimes round and requantize
# INT8 differently, 0.3-2.4 on squad logits).
SAME_RUNTIME_ATOL = {"fp32": 1e-4, "bf16": 0.05, "int8": 0.05}
FP32_ATOL = 1e-4


def reference_atol(precision: str, reference: list[np.ndarray], same_runtime: bool) -> float:
    from ..measure.bench_rows import tolerance

    if same_runtime:
        scale = 1.0 if precision == "fp32" else 1.0 + max(float(np.abs(r).max()) for r in reference)
        return round(SAME_RUNTIME_ATOL[precision] * scale, 6)
    return FP32_ATOL if precision == "fp32" else tolerance(precision, reference)


def reference_outputs(
    onnx_path: Path, export_dir: Path, task, dev, precision: str, n: int = 4, seq: int = 128, threads: int = 1
) -> tuple[dict[str, np.ndarray], dict]:
    """(the samples file's arrays, the manifest's `reference`): stored inputs, ONNX Runtime's
    outputs (what `p2d verify` compares), and each serving runtime installed here's own outputs
    on the same graph with the tolerance it is checked with when served; a runtime not
    installed here is checked against ONNX Runtime's with the cross-runtime tolerance."""
    from ..model.load import load_tokenizer
    from ..runtimes import onnxruntime as ort_rt
    from ..runtimes.registry import _all
    from .serve import RUNTIMES

    tokenizer = load_tokenizer(str(export_dir))
    inputs = task.encode(tokenizer, task.sample_inputs(dev, n), n, seq)
    names = task.output_names
    ort_out = ort_rt.load(onnx_path, threads)(inputs)
    arrays = {f"input.{k}": v for k, v in inputs.items()}  # outputs: each runtime's, ORT's as output.*
    ref = {"file": "samples.npz", "atol": FP32_ATOL, "runtimes": {}, "cross_runtime_atol": {}}
    runtimes = _all()
    for rt_name in RUNTIMES:
        rt = runtimes.get(rt_name)
        # what the runtime computes the graph in (an INT8 graph is INT8 anywhere): the registry's
        p = "int8" if precision == "int8" else (rt.precision if rt else "fp32")
        ref["cross_runtime_atol"][rt_name] = reference_atol(p, ort_out, same_runtime=False)
        if rt_name == "onnxruntime":
            outs = ort_out
        elif rt is None or not rt.available():
            continue
        else:
            try:
                if rt.session is not None:
                    outs = rt.session(onnx_path, threads)(inputs)
                else:  # DeepSparse: fixed shapes, one compile at the samples' shape
                    _, outs = rt.bench(onnx_path, inputs, threads, 0, 1, 0.0)
            except Exception as e:  # noqa: BLE001 - a runtime that cannot run this graph: no reference of its own
                ref.setdefault("not_run", {})[rt_name] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                continue
        outs = [np.asarray(o, dtype=np.float32) for o in outs]
        key = "output" if rt_name == "onnxruntime" else f"{rt_name}.output"
        arrays.update({f"{key}.{name}": o for name, o in zip(names, outs)})
        ref["runtimes"][rt_name] = {"key": key, "atol": reference_atol(p, outs, same_runtime=True)}
    return arrays, ref


def measured_runtime(report: dict, label: str, wanted: str | None) -> dict:
    """The runtime the artifact is packaged for and its rows of the run's bench: the one named,
    else the verdict's where it ships this graph on a production runtime, else the production
    runtime that ran this graph fastest at the smallest bench shape."""
    from ..runtimes.registry import EVALUATION_ONLY, licence_of
    from .serve import PRODUCTION, RUNTIMES

    rows = [r for r in report.get("bench") or [] if r.get("model") == label and "p50_ms" in r]
    if wanted is not None and wanted not in RUNTIMES:
        raise UserError(f"--runtime must be one of {', '.join(RUNTIMES)}, got '{wanted}'")
    name = wanted
    verdict = report.get("verdict") or {}
    if name is None and verdict.get("model") == label and verdict.get("runtime") in PRODUCTION:
        name = verdict["runtime"]
    if name is None:
        small = min(((r["batch_size"], r["seq_len"]) for r in rows if r["runtime"] in PRODUCTION), default=None)
        timed = [r for r in rows if r["runtime"] in PRODUCTION and (r["batch_size"], r["seq_len"]) == small]
        name = min(timed, key=lambda r: r["p50_ms"])["runtime"] if timed else "onnxruntime"
    licence = licence_of(name) or "unknown"
    return {
        "name": name,
        "licence": "evaluation licence: " + licence if licence == EVALUATION_ONLY else licence,
        "production": name in PRODUCTION,
        "bench": [
            {k: r.get(k) for k in ("batch_size", "seq_len", "precision", "p50_ms", "p90_ms", "speedup_vs_best_dense")}
            for r in rows if r["runtime"] == name
        ],
    }


def model_card(report: dict, name: str) -> str:
    metric = report.get("metric")
    d, s = report["metrics"]["dense"], report["metrics"]["sparse"]
    lines = [
        f"# {name}",
        "",
        (
            f"A structurally pruned ({report['method']}, {report['target_speedup']:g}x target) encoder of `{report['model']}` fine-tuned for **{report['task']}**, made by prune2deploy {__version__} ({report['profile']} profile)."  # noqa: E501 - one message/literal
            if report.get("target_speedup")
            else f"A {report['target_sparsity']:.0%}-sparse ({report['method']}) encoder of `{report['model']}` fine-tuned for **{report['task']}**, made by prune2deploy {__version__} ({report['profile']} profile)."  # noqa: E501 - one message/literal
        ),
        "Embeddings and the task head are dense; "
        + ("whole attention heads and FFN neurons are removed (a smaller dense model)."
           if report.get("target_speedup") else "the encoder's Linear weights are pruned."),
        "",
        "## Data",
        "",
        f"- train: {report['data'].get('train')}",
        f"- eval: {report['data'].get('eval')}",
        "",
        "## Results",
        "",
        "| | dense | sparse |",
        "|---|---|---|",
    ]
    for key in sorted(set(d) & set(s)):
        if isinstance(d[key], float):
            lines.append(f"| {key} | {d[key]:.2f} | {s[key]:.2f} |")
    lines += [
        "",
        f"Encoder sparsity (verified in the ONNX graph): {report['onnx'].get('encoder_sparsity', 0):.4f}",
        "",
        "| runtime | precision | model | batch | seq | p50 ms | p90 ms | items/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("bench") or []:
        if "p50_ms" not in r:
            lines.append(
                f"| {r['runtime']} | {r.get('precision', '')} | {r['model']} | {r['batch_size']} | {r['seq_len']} | failed: {r.get('error', '')[:60]} | | |"  # noqa: E501 - one message/literal
            )
            continue
        lines.append(
            f"| {r['runtime']} | {r.get('precision', '')} | {r['model']} | {r['batch_size']} | {r['seq_len']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['throughput']:.1f} |"  # noqa: E501 - one message/literal
        )
    lines += ["", f"Primary metric: {metric}. Verify this artifact with `p2d verify <dir>`.", ""]
    return "\n".join(lines)


def package(
    run_dir: Path,
    out: Path,
    fmt: str = "plain",
    name: str | None = None,
    int8: bool = False,
    dense: bool = False,
    layout: str | None = None,
    runtime: str | None = None,
    member: str | None = None,
) -> Path:
    """`layout` (with int8): "qdq" (ORT's QDQ pairs, per-channel weights) or "matmulinteger"
    (per-tensor MatMulInteger → Cast → Mul, the layout DeepSparse accelerates; made by static
    runs); default: matmulinteger where the run has it."""
    if name is not None:  # a name is a path segment (the Triton layout's folder) and a URL segment
        from .serve import check_name

        check_name(name)
    from ..run import load_run_recipe
    from ..tasks.registry import get_task

    if fmt not in ("plain", "triton"):
        raise UserError(f"--format must be plain or triton, got '{fmt}'")
    if int8 and dense:
        raise UserError("--int8 and --dense: choose one (the dense INT8 graph is not shipped)")
    recipe = load_run_recipe(run_dir)
    report_path = run_dir / "report.json"
    export_dir = run_dir / "export"
    if not report_path.is_file() or not (export_dir / "model.onnx").is_file():
        raise UserError(f"{run_dir}: no finished run (report.json and export/model.onnx needed); run `p2d run` first")
    report = read_json(report_path)
    export_rec = read_json(export_dir / "stage.json")["result"]
    member, member_rec = _member(report, export_rec, member, int8, dense)
    if member_rec is not None:  # a family's member below the last: its graph, its files, its counts
        export_rec = member_rec
        export_dir = inside(run_dir, Path(member_rec["path"]).parent, "export record member")
        report = _as_member(report, member, member_rec)
    source = inside(run_dir, export_rec["path"], "export record") if member_rec else export_dir / "model.onnx"
    initializers = {
        k: {"onnx_name": v["onnx_name"], "zeros": v["onnx_zeros"], "numel": v["numel"]}
        for k, v in export_rec["per_tensor"].items()
    }
    encoder_sparsity = export_rec["encoder_sparsity"]
    if int8:  # the sparse INT8 graph of the quantize stage, with its own verified zero counts
        qjson = run_dir / "quantize" / "quantize.json"
        q = read_json(qjson) if qjson.is_file() else {}
        if q.get("quantize") not in ("int8", "int8-static"):
            raise UserError(f"{run_dir}: no INT8 model; run with --quantize int8 first")
        has_mmi = "mmi" in q.get("zeros", {})
        layout = layout or ("matmulinteger" if has_mmi else "qdq")
        if layout not in INT8_LAYOUTS:
            raise UserError(f"--layout must be one of {', '.join(INT8_LAYOUTS)}, got '{layout}'")
        if layout == "matmulinteger" and not has_mmi:
            raise UserError(f"{run_dir}: no MatMulInteger graph; run with --quantize int8-static")
        source = run_dir / "quantize" / INT8_LAYOUTS[layout][0]
        zeros = q["zeros"]["mmi"] if layout == "matmulinteger" else q["zeros"]
        qt = zeros["tensors"]
        initializers = {
            k: {
                "onnx_name": f"{v['onnx_name']}_quantized",
                "zeros": qt[v["onnx_name"]]["zeros_int8"],
                "numel": v["numel"],
            }
            for k, v in initializers.items()
            if v["onnx_name"] in qt
        }
        encoder_sparsity = zeros["encoder_sparsity_int8"]
    if dense:  # the dense baseline graph of the same run: what the sparse one is served against
        source, initializers, encoder_sparsity = export_dir / "dense.onnx", {}, 0.0
        if not source.is_file():
            raise UserError(f"{run_dir}: no export/dense.onnx to ship")
    name = name or (
        f"{recipe.task}-dense"
        if dense
        else f"{recipe.task}-{recipe.prune.method}-" + (
            member if member else f"{recipe.prune.target_speedup:g}x" if recipe.prune.target_speedup
            else f"{int(round(recipe.prune.target_sparsity * 100))}"
        )
        + ("-int8" if int8 else "")
    )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for f in TOKENIZER_FILES:
            if (export_dir / f).is_file():
                shutil.copy2(export_dir / f, tmp / f)
        if fmt == "triton":
            model_rel = f"model_repository/{name}/1/model.onnx"
        else:
            model_rel = "model.onnx"
        (tmp / model_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, tmp / model_rel)
        inputs, outputs = graph_io(tmp / model_rel)
        task = get_task(recipe.task)
        if fmt == "triton":
            (tmp / f"model_repository/{name}/config.pbtxt").write_text(triton_config(name, inputs, outputs))
            if task.deepsparse_task:
                (tmp / "deepsparse_server.yaml").write_text(
                    f"# DeepSparse server (community licence, non-production): deepsparse.server --config_file deepsparse_server.yaml\n"  # noqa: E501 - one message/literal
                    f"endpoints:\n  - task: {task.deepsparse_task}\n"
                    f"    model: {model_rel}\n    batch_size: 1\n    kwargs: {{sequence_length: 128}}\n"
                )
        _, dev, _ = task.load(recipe)
        precision = "int8" if int8 else "fp32"
        arrays, reference = reference_outputs(tmp / model_rel, export_dir, task, dev, precision)
        np.savez(tmp / "samples.npz", **arrays)
        measured_as = INT8_LAYOUTS[layout][1] if int8 else ("dense" if dense else label(member) if member_rec
                                                             else "sparse")
        target = measured_runtime(report, measured_as, runtime)
        card = model_card(report, name)
        if dense:
            card = f"**The dense baseline graph of this run** (what the sparse one is measured against).\n\n{card}"
        (tmp / "README.md").write_text(card)
        from ..run import versions
        from ..runtimes.registry import licence_of

        manifest = {
            "name": name,
            "format": fmt,
            "model": model_rel,
            "prune2deploy": __version__,
            "git_commit": git_commit(),
            "versions": versions(),
            "task": recipe.task,
            "metric": report.get("metric"),
            "metrics": report["metrics"],
            "target_sparsity": recipe.prune.target_sparsity,
            "target_speedup": report.get("target_speedup"),
            "member": member,  # a --speedup family's member (None: a run without one)
            "encoder_sparsity": encoder_sparsity,
            "precision": precision,
            "int8_layout": layout if int8 else None,
            "measured_as": measured_as,  # its bench rows' model label
            "runtime": target,  # what it is packaged for (`p2d serve` serves on it by default)
            "graph": "dense" if dense else "sparse",
            "max_batch_size": MAX_BATCH,
            "per_layer_sparsity": report["sparsity"]["per_layer"],
            "onnx_initializers": initializers,
            "quantize": report.get("quantize"),
            "inputs": inputs,
            "outputs": outputs,
            "bench": [{**r, "licence": r.get("licence") or licence_of(r.get("runtime", ""))}
                      for r in report.get("bench") or []],
            "recipe": recipe.to_dict(),
            "reference": reference,
            "files": hash_dir(tmp),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _member(report: dict, export_rec: dict, wanted: str | None, int8: bool,
            dense: bool) -> tuple[str | None, dict | None]:
    """(the family member packaged, its export record where it is below the last, else None): the
    one named, else the verdict's (a run without a family: None, the run's pruned model)."""
    names = [m["name"] for m in report.get("family") or []]
    if wanted is not None:
        if int8 or dense:
            raise UserError("--member picks a pruned float graph of the family: not with --int8 or --dense")
        if wanted not in names:
            known = ", ".join(names) if names else "none: this run made one model"
            raise UserError(f"--member {wanted}: not a member of this run's family (members: {known})")
    elif not (int8 or dense) and names:
        verdict = report.get("verdict") or {}
        wanted = member_of_label(verdict.get("model") or "") or names[-1]
    if wanted is None:
        return None, None
    return wanted, (export_rec.get("members") or {}).get(wanted)


def _as_member(report: dict, name: str, export_rec: dict) -> dict:
    """The report as the model card and manifest tell it for member `name` (its metrics, target, graph)."""
    fam = next(m for m in report["family"] if m["name"] == name)
    metrics = dict(report["metrics"], sparse=report["metrics"].get("members", {}).get(name, {}))
    onnx = {**(report.get("onnx") or {}), "path": export_rec["path"],
            "encoder_sparsity": export_rec["encoder_sparsity"], "max_abs_diff": export_rec["max_abs_diff"]}
    return {**report, "metrics": metrics, "target_speedup": fam["target_speedup"], "member": name, "onnx": onnx,
            "sparsity": {**report["sparsity"], "per_layer": {}}}  # the masks' are the last member's
