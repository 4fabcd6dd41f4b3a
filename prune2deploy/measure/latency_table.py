"""What each encoder layer costs at each width, measured on the runtime the user ships on.

ZipLM's way: time one attention block at every head count and one FFN at a grid of widths on
the target runtime, at the recipe's bench shapes; the time of a pruned model is then the
model with every module empty (embeddings, LayerNorms, head: the floor no pruning removes)
plus each layer's attention and FFN at their widths. The models timed are random-weight
copies of the model's shape (a dense runtime's time does not depend on the values), exported
the way the artifact ships (optimum's exporter, the recipe's opset, the model's own attention
implementation); the per-layer times are scaled so the sum over the full model equals the
full model's measured time, and anchored on whole models measured at other sizes.

`ShapeTimer` times a whole model of given widths against the dense model on the target runtime,
interleaved and repeated: what the latency loop (`pruning/latency_loop.py`) corrects the table
with, and what `Table.refit` folds back in.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..progress import Bar, log

# Production runtimes a latency target can be measured on (DeepSparse: evaluation licence, and
# its speed comes from zeros, not widths).
TARGETS = ("onnxruntime", "openvino", "openvino-bf16")
FFN_POINTS = 8  # FFN widths timed: 0, W/8, ..., W (linear in between)


@dataclass(frozen=True)
class Table:
    runtime: str
    shapes: list[list[int]]  # [batch, seq] each
    layers: int
    heads: int
    ffn: int
    full_ms: list[float]  # per shape: the whole dense model
    floor_ms: list[float]  # per shape: every attention and FFN module removed
    attn_ms: list[list[float]]  # per shape: one layer's attention at 0..heads heads
    ffn_widths: list[int]
    ffn_ms: list[list[float]]  # per shape: one layer's FFN at each of ffn_widths
    scale: list[float]  # per shape: measured full / (floor + layers x full layer), applied to layer times
    # per shape, [[sum of layer times, scale], ...]: whole models measured at several uniform widths
    # (full, 1/2, 1/4), so the scale follows the model's size (None: `scale` alone)
    anchors: list[list[list[float]]] | None = None
    # how the timed graphs were made: a table is only valid for graphs exported the same way
    exporter: str | None = None  # "optimum"; None: an older table (torch.onnx, eager attention)
    opset: int | None = None
    attn_implementation: str | None = None
    cpu: str | None = None  # the CPU model it was measured on

    def layer_sum(self, k: int, counts: dict[str, list[int]]) -> float:
        return sum(self.attn(k, h) + self.ffn_time(k, w) for h, w in zip(counts["heads"], counts["ffn"]))

    def attn(self, k: int, heads: int) -> float:
        return float(self.attn_ms[k][heads])

    def ffn_time(self, k: int, width: int) -> float:
        return float(np.interp(width, self.ffn_widths, self.ffn_ms[k]))

    def ms(self, counts: dict[str, list[int]]) -> list[float]:
        """Predicted time per shape of a model with these per-layer head counts and FFN widths."""
        out = []
        for k in range(len(self.shapes)):
            layers = self.layer_sum(k, counts)
            if self.anchors:
                xs, ys = zip(*self.anchors[k])
                factor = float(np.interp(layers, xs, ys))
            else:
                factor = self.scale[k]
            out.append(self.floor_ms[k] + factor * layers)
        return out

    def relative(self, counts: dict[str, list[int]]) -> float:
        """Predicted time as a fraction of the dense model's at the worst shape (a target is met at
        every bench shape, batch 1 and batch 16 alike)."""
        return float(max(t / f for t, f in zip(self.ms(counts), self.full_ms)))

    def max_speedup(self) -> float:
        """The speedup with every structure removed: no target at or above it can be met."""
        return float(min(f / fl for f, fl in zip(self.full_ms, self.floor_ms)))

    def refit(self, counts: dict[str, list[int]], dense_ms: list[float], ms: list[float]) -> "Table":
        """This table with a whole model of widths `counts` measured at `ms` beside the dense model
        at `dense_ms` (the same session, interleaved): that point becomes an anchor, so the table
        predicts exactly the measured ratio there and interpolates between its anchors elsewhere."""
        anchors = []
        for k in range(len(self.shapes)):
            x = self.layer_sum(k, counts)
            if x <= 1e-9:  # nothing left to scale: the floor is what it is
                anchors.append([list(a) for a in self.anchors[k]] if self.anchors else [[0.0, self.scale[k]]])
                continue
            in_table_units = ms[k] * self.full_ms[k] / dense_ms[k]  # the measured ratio, on the table's dense
            factor = max(1e-6, in_table_units - self.floor_ms[k]) / x
            full = self.layers * (self.attn(k, self.heads) + self.ffn_time(k, self.ffn))
            old = [list(a) for a in (self.anchors[k] if self.anchors else [[full, self.scale[k]]])]
            old = [a for a in old if abs(a[0] - x) > 1e-6 * max(1.0, x)]
            anchors.append(sorted(old + [[round(x, 6), round(factor, 6)]]))
        return replace(self, anchors=anchors)

    def check_fits(self, config, shapes: list[list[int]], exporter: str, opset: int, source: str) -> None:
        """Refuse (UserError) a table measured for another model shape, other bench shapes or
        other graphs than the ones this run exports."""
        from ..errors import UserError

        want = {"layers": config.num_hidden_layers, "heads": config.num_attention_heads,
                "FFN width": getattr(config, "intermediate_size", None)}
        have = {"layers": self.layers, "heads": self.heads, "FFN width": self.ffn}
        for what in want:
            if want[what] != have[what]:
                raise UserError(f"{source}: measured for {have[what]} {what}, the model has {want[what]}: "
                                "re-measure it for this model (drop prune.latency_table)")
        if sorted(map(list, shapes)) != sorted(map(list, self.shapes)):
            raise UserError(f"{source}: measured at shapes {self.shapes} (batch, seq), this run benches {shapes}: "
                            "re-measure it, or bench at its shapes")
        if self.exporter != exporter or self.opset != opset:
            made = f"{self.exporter} opset {self.opset}" if self.exporter else "torch.onnx with eager attention"
            raise UserError(f"{source}: timed graphs exported by {made}, this run ships {exporter} opset {opset} "
                            "graphs: re-measure it with this p2d")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Table":
        return Table(**d)


EXPORTER = "optimum"


def _export(model, export_task: str, opset: int, path: Path) -> None:
    from ..graphs.onnx_export import export_model

    export_model(model, export_task, opset, path)


def _variant(config, auto_class: str, layers: int, heads, ffn):
    """A random-weight model of `config`'s shape with `layers` layers of `heads` heads and FFN
    `ffn` (each an int for every layer, or a list per layer), with the model's own attention."""
    import torch
    import transformers

    from ..pruning.structures import shape

    heads = [heads] * layers if isinstance(heads, int) else list(heads)
    ffn = [ffn] * layers if isinstance(ffn, int) else list(ffn)
    cfg = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": layers, "pruned_heads": {}})
    n = cfg.num_attention_heads
    pruned = {i: list(range(h, n)) for i, h in enumerate(heads) if 0 < h < n}
    if pruned:
        cfg.pruned_heads = pruned
    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(cfg)
    return shape(model, {"heads": heads, "ffn": ffn}).eval()


def measure(config, task, runtime: str, shapes: list[tuple[int, int]], threads: int, inputs_for, opset: int,
            warmup: int = 2, iters: int = 5, min_time_s: float = 0.2) -> Table:
    """Time the variants on `runtime` (its registry name) at `shapes`; `inputs_for(b, s)` gives
    the inputs (the same real examples the bench times); graphs exported as `task` ships them."""
    from .machine import cpu_info
    from ..runtimes.registry import get_runtime

    auto_class = task.auto_class

    rt = get_runtime(runtime)
    L, H, W = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    widths = sorted({round(W * k / FFN_POINTS) for k in range(FFN_POINTS + 1)})
    anchors = [(max(1, H // 2), max(1, W // 2)), (max(1, H // 4), max(1, W // 4))]
    variants = [("full", L, H, W), ("floor", L, 0, 0)] + [("anchor", L, h, w) for h, w in anchors]
    variants += [("attn", 1, h, 0) for h in range(H + 1)] + [("ffn", 1, 0, w) for w in widths if w]
    times: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, Bar(f"latency table on {runtime}", len(variants)) as bar:
        for kind, layers, heads, ffn in variants:
            path = Path(tmp) / f"{kind}-{layers}-{heads}-{ffn}.onnx"
            model = _variant(config, auto_class, layers, heads, ffn)
            attn_impl = model.config._attn_implementation
            _export(model, task.export_task, opset, path)
            row = []
            for b, s in shapes:
                t, _ = rt.bench(path, inputs_for(b, s), threads, warmup, iters, min_time_s)
                row.append(float(np.median(t)))
            times[(kind, layers, heads, ffn)] = row
            bar.advance()
    K = range(len(shapes))
    base = times[("attn", 1, 0, 0)]  # one layer with both modules empty
    attn = [np.maximum.accumulate([max(0.0, times[("attn", 1, h, 0)][k] - base[k]) for h in range(H + 1)]) for k in K]
    ffn = [np.maximum.accumulate([0.0] + [max(0.0, times[("ffn", 1, 0, w)][k] - base[k]) for w in widths if w])
           for k in K]
    for k in K:
        attn[k][0] = ffn[k][0] = 0.0
    full, floor = times[("full", L, H, W)], times[("floor", L, 0, 0)]
    scale = [max(1e-6, full[k] - floor[k]) / max(1e-6, L * (attn[k][H] + ffn[k][-1])) for k in K]

    def anchor(k, h, w, measured):  # (sum of one-layer times, the scale that makes it the measured time)
        layers = L * (attn[k][h] + float(np.interp(w, widths, ffn[k])))
        return [round(layers, 4), round(max(1e-6, measured - floor[k]) / max(1e-6, layers), 4)]

    fitted = [sorted([anchor(k, H, W, full[k])] + [anchor(k, h, w, times[("anchor", L, h, w)][k]) for h, w in anchors])
              for k in K]
    table = Table(
        runtime=runtime,
        shapes=[list(s) for s in shapes],
        layers=L,
        heads=H,
        ffn=W,
        full_ms=[round(x, 4) for x in full],
        floor_ms=[round(x, 4) for x in floor],
        attn_ms=[[round(float(x), 4) for x in a] for a in attn],
        ffn_widths=widths,
        ffn_ms=[[round(float(x), 4) for x in f] for f in ffn],
        scale=[round(x, 4) for x in scale],
        anchors=fitted,
        exporter=EXPORTER,
        opset=opset,
        attn_implementation=attn_impl,
        cpu=cpu_info()["model"],
    )
    log(
        f"latency table on {runtime}: dense {', '.join(f'{t:.2f}' for t in full)} ms, floor "
        f"{', '.join(f'{t:.2f}' for t in floor)} ms (at most {table.max_speedup():.2f}x by pruning heads and FFN)"
    )
    return table


def fastest_runtime(config, task, shapes, threads: int, inputs_for, opset: int) -> tuple[str, dict[str, float]]:
    """The production runtime on which the dense model runs fastest here (mean time over the shapes)."""
    from ..runtimes.registry import get_runtime
    from ..errors import UserError

    seen: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "full.onnx"
        _export(_variant(config, task.auto_class, config.num_hidden_layers, config.num_attention_heads,
                         config.intermediate_size), task.export_task, opset, path)
        for name in TARGETS:
            try:
                rt = get_runtime(name)
                per = [float(np.median(rt.bench(path, inputs_for(b, s), threads, 2, 5, 0.2)[0])) for b, s in shapes]
            except (UserError, RuntimeError):  # not installed, or bf16 not engaged on this CPU
                continue
            seen[name] = round(float(np.mean(per)), 4)
    if not seen:
        raise UserError("no production runtime to measure a latency target on (onnxruntime, openvino)")
    return min(seen, key=seen.get), seen


class ShapeTimer:
    """`timer(counts) -> (dense_ms, ms)` per shape: a random-weight model of widths `counts`,
    exported as the artifact ships, timed on `runtime` beside the dense options it is measured
    against, interleaved (dense options, pruned, dense options, pruned, ...) `rounds` times; each
    figure the median of its rounds' medians, so a drift of the machine moves all alike.
    `reference` says which dense options: "best" (default) the dense model and its static INT8
    (calibrated on the bench inputs) on every production runtime installed here: the best dense
    option a user could ship instead, as the bench stage counts it; "target" those two on
    `runtime` only; "dense" the float model on `runtime`. `self.references` says which was
    fastest, per shape (e.g. "dense-int8 on onnxruntime"). `int8_gate(runtimes) -> {runtime: {"keeps_gate":
    bool, ...}}` (`measure.dense_gate.teacher_int8`, asked once): the dense INT8 option of a runtime
    whose trained model's INT8 misses the accuracy gate is left out (`self.gate` keeps the answer)."""

    def __init__(self, config, task, runtime: str, shapes, threads: int, inputs_for, opset: int,
                 rounds: int = 3, warmup: int = 3, iters: int = 10, min_time_s: float = 0.5,
                 reference: str = "best", int8_gate=None):
        from ..runtimes.registry import get_runtime

        self.config, self.task, self.runtime, self.shapes = config, task, runtime, [tuple(s) for s in shapes]
        self.rt, self.threads, self.inputs_for, self.opset = get_runtime(runtime), threads, inputs_for, opset
        self.rounds, self.warmup, self.iters, self.min_time_s = rounds, warmup, iters, min_time_s
        self.reference = reference
        self.int8_gate, self.gate = int8_gate, None
        self._tmp = tempfile.TemporaryDirectory()
        self._dense: list[tuple[str, object, Path]] | None = None
        self.references: list[str] = []

    def _graph(self, counts: dict[str, list[int]], name: str) -> Path:
        path = Path(self._tmp.name) / f"{name}.onnx"
        L = self.config.num_hidden_layers
        _export(_variant(self.config, self.task.auto_class, L, counts["heads"], counts["ffn"]),
                self.task.export_task, self.opset, path)
        return path

    def _dense_graphs(self) -> list[tuple[str, object, Path]]:
        """(label, runtime, graph) of each dense option; a runtime that cannot run one here (not
        installed, bf16 not engaged on this CPU) is left out."""
        from ..errors import UserError
        from ..runtimes.registry import get_runtime

        L, H, W = self.config.num_hidden_layers, self.config.num_attention_heads, self.config.intermediate_size
        dense = self._graph({"heads": [H] * L, "ffn": [W] * L}, "dense")
        if self.reference == "dense":
            return [(f"dense on {self.runtime}", self.rt, dense)]
        from ..graphs.int8 import quantize_int8_static

        int8 = Path(self._tmp.name) / "dense.int8.onnx"
        quantize_int8_static(dense, int8, [self.inputs_for(b, s) for b, s in self.shapes])
        names = [self.runtime] + ([n for n in TARGETS if n != self.runtime] if self.reference == "best" else [])
        if self.int8_gate is not None and self.gate is None:
            try:
                self.gate = self.int8_gate(names)
            except Exception as e:  # noqa: BLE001 - no answer: every INT8 option stays a reference
                log(f"[yellow]latency loop: the dense INT8 options could not be scored ({e}); all are "
                    "references[/yellow]")
                self.gate = {}
        x = self.inputs_for(*self.shapes[0])
        out = []
        for name in names:
            for label, path in (("dense", dense), ("dense-int8", int8)):
                if label == "dense-int8" and not (self.gate or {}).get(name, {}).get("keeps_gate", True):
                    continue  # under the accuracy gate: not what a user would ship instead
                try:
                    rt = self.rt if name == self.runtime else get_runtime(name)
                    if name != self.runtime:
                        rt.bench(path, x, self.threads, 0, 1, 0.0)
                except (UserError, RuntimeError):  # not installed, or bf16 not engaged on this CPU
                    continue
                out.append((f"{label} on {name}", rt, path))
        return out

    def __call__(self, counts: dict[str, list[int]]) -> tuple[list[float], list[float]]:
        if self._dense is None:
            self._dense = self._dense_graphs()
        graphs = self._dense + [("pruned", self.rt, self._graph(counts, "pruned"))]
        dense_ms, ms, self.references = [], [], []
        for b, s in self.shapes:
            x = self.inputs_for(b, s)
            times: dict[str, list[float]] = {name: [] for name, _, _ in graphs}
            for _ in range(self.rounds):
                for name, rt, path in graphs:
                    t, _ = rt.bench(path, x, self.threads, self.warmup, self.iters, self.min_time_s)
                    times[name].append(float(np.median(t)))
            best = min((name for name, _, _ in self._dense), key=lambda n: float(np.median(times[n])))
            self.references.append(best)
            dense_ms.append(round(float(np.median(times[best])), 4))
            ms.append(round(float(np.median(times["pruned"])), 4))
        return dense_ms, ms
