"""What each encoder layer costs at each width, measured on the runtime the user ships on.

ZipLM's way: time one attention block at every head count and one FFN at a grid of widths on
the target runtime, at the recipe's bench shapes; the time of a pruned model is then the
model with every module empty (embeddings, LayerNorms, head: the floor no pruning removes)
plus each layer's attention and FFN at their widths. The models timed are random-weight
copies of the model's shape (a dense runtime's time does not depend on the values), exported
with torch.onnx; the per-layer times are scaled so the sum over the full model equals the
full model's measured time.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .progress import Bar, log

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

    def attn(self, k: int, heads: int) -> float:
        return float(self.attn_ms[k][heads])

    def ffn_time(self, k: int, width: int) -> float:
        return float(np.interp(width, self.ffn_widths, self.ffn_ms[k]))

    def ms(self, counts: dict[str, list[int]]) -> list[float]:
        """Predicted time per shape of a model with these per-layer head counts and FFN widths."""
        out = []
        for k in range(len(self.shapes)):
            layers = sum(self.attn(k, h) + self.ffn_time(k, w) for h, w in zip(counts["heads"], counts["ffn"]))
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

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Table":
        return Table(**d)


def _export(model, path: Path, shape: tuple[int, int]) -> None:
    import torch

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.config.type_vocab_size > 1 else [])
    b, s = shape
    args = tuple(torch.ones(b, s, dtype=torch.long) for _ in names)
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    model.config.return_dict = False
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=names, dynamic_axes=axes, opset_version=14, dynamo=False)


def _variant(config, auto_class: str, layers: int, heads: int, ffn: int):
    """A random-weight model of `config`'s shape with `layers` layers of `heads` heads and FFN `ffn`."""
    import torch
    import transformers

    from .pruning.structures import shape

    cfg = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": layers, "pruned_heads": {}})
    cfg._attn_implementation = "eager"  # exports plain MatMul/Softmax that every runtime runs
    n = cfg.num_attention_heads
    if 0 < heads < n:
        cfg.pruned_heads = {i: list(range(heads, n)) for i in range(layers)}
    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(cfg)
    return shape(model, {"heads": [heads] * layers, "ffn": [ffn] * layers}).eval()


def measure(config, auto_class: str, runtime: str, shapes: list[tuple[int, int]], threads: int,
            inputs_for, warmup: int = 2, iters: int = 5, min_time_s: float = 0.2) -> Table:
    """Time the variants on `runtime` (its registry name) at `shapes`; `inputs_for(b, s)` gives
    the inputs (the same real examples the bench times)."""
    from .runtimes.registry import get_runtime

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
            _export(_variant(config, auto_class, layers, heads, ffn), path, shapes[0])
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
    )
    log(
        f"latency table on {runtime}: dense {', '.join(f'{t:.2f}' for t in full)} ms, floor "
        f"{', '.join(f'{t:.2f}' for t in floor)} ms (at most {table.max_speedup():.2f}x by pruning heads and FFN)"
    )
    return table


def fastest_runtime(config, auto_class: str, shapes, threads: int, inputs_for) -> tuple[str, dict[str, float]]:
    """The production runtime on which the dense model runs fastest here (mean time over the shapes)."""
    from .runtimes.registry import get_runtime
    from .errors import UserError

    seen: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "full.onnx"
        _export(_variant(config, auto_class, config.num_hidden_layers, config.num_attention_heads,
                         config.intermediate_size), path, shapes[0])
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
