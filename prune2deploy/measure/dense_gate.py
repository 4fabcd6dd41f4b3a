"""Which dense options a user who gates on accuracy could ship instead of pruning.

A dense option is the dense model in some precision on some production runtime: fp32, bf16,
and its calibrated static INT8. An INT8 graph can lose more accuracy than `bench.accuracy_gate`
allows (the squad teacher's INT8 on OpenVINO kept 89% of dense F1 on the Zen 4): such a graph
is timed and shown, but it is not what a user would ship instead, so it is not "the best dense
option" a speedup is measured against. Two places ask:

- the bench: the best dense option is the fastest dense row that keeps the gate (its accuracy on
  its runtime against the dense fp32 model's on the same dev examples; a row the bench did not
  score, fp32, keeps it); the faster rows left out are kept beside it (`keeps_gate`);
- the latency loop, before training: the teacher's static INT8 (calibrated as the quantize stage
  calibrates it) is scored on each production runtime on the bench's dev examples, and an INT8
  option under the gate is not a reference the loop measures against (`teacher_int8`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..progress import log


def keeps_gate(row: dict, gate: float | None) -> bool:
    """Whether a bench row's graph keeps `gate` of the dense model's accuracy on the same
    examples; a row without a measured accuracy (fp32, the model itself) keeps it."""
    acc, dense = row.get("accuracy"), row.get("accuracy_dense")
    if gate is None or acc is None or not dense:
        return True
    return acc >= gate * dense


def judged_on(recipe, dev):
    """The dev examples every bench row (and the teacher's INT8 here) is scored on: the first
    `bench.accuracy_examples`, or all of them (None, the default: the ones validate scores)."""
    return dev.select(range(min(recipe.bench.accuracy_examples or len(dev), len(dev))))


def teacher_int8(recipe, task, teacher_dir: str, tokenizer, train, dev, runtimes, threads: int) -> dict[str, dict]:
    """{runtime: {"metric", "dense", "retained", "keeps_gate"}}: the teacher's static INT8 graph
    (calibrated on the train split as the quantize stage does) scored on each of `runtimes` on
    the bench's dev examples (`bench.accuracy_examples`; default: all the run's), beside the dense
    fp32 graph on ONNX Runtime on the same examples; a runtime that cannot run it here is left out."""
    from ..errors import UserError
    from ..graphs.int8 import OnnxAsModel, calibration_batches, calibration_count, quantize_int8_static
    from ..graphs.onnx_export import export_onnx
    from ..runtimes.registry import session_of

    e, gate = recipe.export, recipe.bench.accuracy_gate
    examples = judged_on(recipe, dev)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "dense.onnx", Path(tmp) / "dense.int8.onnx"
        export_onnx(teacher_dir, task, e.opset, fp32)
        batches = calibration_batches(task, tokenizer, train, recipe.data.max_length,
                                      n=calibration_count(e.calibration, e.calibration_examples))
        quantize_int8_static(fp32, int8, batches, calibration=e.calibration)

        def score(path, runtime):
            m, _ = task.evaluate(OnnxAsModel(path, threads, task.output_names, session_of(runtime)), tokenizer,
                                 examples, recipe.data, description=f"dense gate: {path.stem} on {runtime}")
            return float(m[task.metric])

        dense = score(fp32, "onnxruntime")
        out = {}
        for name in runtimes:
            if session_of(name) is None:
                continue
            try:
                acc = score(int8, name)
            except (UserError, RuntimeError) as err:  # not installed, or bf16 not engaged on this CPU
                log(f"[dim]dense gate: INT8 on {name} not scored ({err})[/dim]")
                continue
            retained = acc / dense if dense else None  # a model that scores 0 dense gives no evidence either way
            out[name] = {"metric": round(acc, 3), "dense": round(dense, 3),
                         "retained": None if retained is None else round(retained, 4),
                         "keeps_gate": acc >= gate * dense, "examples": len(examples)}
            log(f"dense gate: the teacher's static INT8 on {name}: {task.metric} {acc:.2f} of dense {dense:.2f}"
                + ("" if retained is None else f" ({retained:.1%}; gate {gate:.0%})")
                + ("" if out[name]["keeps_gate"] else ": under the gate, not a reference"))
    return out
