"""`--speedup X` means X measured: the latency table timed on graphs exported as the artifact
ships, the latency loop that corrects an optimistic (or pessimistic) table with measurements,
reused tables checked against the run, and the ZipLM Hessians in float64. Every timing here
is a stand-in (a fake runtime or timer whose times the test chooses): no clock."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import PadTokenizer, random_features, tiny_config
from test_cli import assert_user_error, p2d_smoke

from prune2deploy.measure.latency_table import Table
from prune2deploy.pruning import masks as M
from prune2deploy.pruning.allocation import Curve, allocate
from prune2deploy.pruning.latency_loop import close_loop
from prune2deploy.pruning.structured import StructuredPruner
from prune2deploy.pruning.structures import Structure


def _table(L=2, H=4, W=64, floor=1.0, attn=1.0, ffn=2.0, runtime="onnxruntime"):
    return Table(
        runtime=runtime, shapes=[[1, 16]], layers=L, heads=H, ffn=W,
        full_ms=[floor + L * (attn + ffn)], floor_ms=[floor],
        attn_ms=[[attn * h / H for h in range(H + 1)]], ffn_widths=[0, W], ffn_ms=[[0.0, ffn]], scale=[1.0],
    )


def _curves(L, n, per):
    return [Curve(list(range(n)), [per[layer] * k for k in range(n + 1)], 0) for layer in range(L)]


def _search(attn, ffn, budget, uniform=False):
    def search(table):
        r = allocate(attn, ffn, table, budget, uniform)
        counts = {"heads": [4 - x for x in r["attn"]], "ffn": [64 - x for x in r["ffn"]]}
        loss = sum(c.loss[x] for c, x in zip(attn, r["attn"])) + sum(c.loss[x] for c, x in zip(ffn, r["ffn"]))
        return r, counts, loss
    return search


def _timer(true: Table, calls: list):
    def timer(counts):
        calls.append(counts)
        return list(true.full_ms), true.ms(counts)
    return timer


@pytest.mark.parametrize("uniform", [False, True])
def test_loop_corrects_an_optimistic_table_to_the_smallest_removal_that_meets_the_target(uniform):
    table = _table()
    true = replace(table, floor_ms=[2.5], full_ms=[2.5 + 6.0])  # a larger floor: pruning saves less than predicted
    attn, ffn = _curves(2, 4, [1.0, 1.5]), _curves(2, 64, [0.001, 0.003])
    calls = []
    res = close_loop(_search(attn, ffn, 0.6, uniform), table, _timer(true, calls), 1 / 0.6)
    first = res.trail[0]
    assert min(first.speedups) < 1 / 0.6  # the table's own pick misses, measured
    assert res.met and min(res.chosen.speedups) >= 1 / 0.6
    ideal = _search(attn, ffn, 0.6, uniform)(true)[1]  # the search on the true times
    assert res.chosen.counts == ideal
    rec = res.record(1 / 0.6, table.shapes)
    assert rec["measured_speedup"]["b1s16"] >= 1 / 0.6 and rec["met"] and 1 < len(rec["rounds"]) <= len(calls)


def test_loop_refuses_to_overshoot_a_pessimistic_table():
    table = _table(floor=2.5)
    true = replace(table, floor_ms=[1.0], full_ms=[1.0 + 6.0])  # pruning saves more than the table says
    attn, ffn = _curves(2, 4, [1.0, 1.5]), _curves(2, 64, [0.001, 0.003])
    res = close_loop(_search(attn, ffn, 0.6), table, _timer(true, []), 1 / 0.6)
    removed = lambda c: sum(c["heads"]) + sum(c["ffn"])  # noqa: E731 (kept, in fact: more kept = less removed)
    assert removed(res.trail[0].counts) < removed(res.chosen.counts)  # the first pick removed more than needed
    assert res.chosen.counts == _search(attn, ffn, 0.6)(true)[1]
    assert min(res.chosen.speedups) >= 1 / 0.6


def test_a_near_miss_is_timed_again_before_it_counts():
    table = _table()
    calls = []
    noisy = iter([1.0, 0.9])  # the first timing of each shape is 4% slow, the second 6% fast

    def timer(counts):
        calls.append(counts)
        slow = 1.04 if len(calls) == 1 else 1.0
        return list(table.full_ms), [t * next(noisy, 1.0) * slow for t in table.ms(counts)]

    attn, ffn = _curves(2, 4, [1.0, 1.5]), _curves(2, 64, [0.001, 0.003])
    close_loop(_search(attn, ffn, 0.6), table, timer, 1 / 0.6)
    assert len(calls) >= 2 and calls[0] == calls[1]  # the same shape, re-timed


def test_refit_passes_through_the_measured_point():
    t = _table()
    half = {"heads": [2, 2], "ffn": [32, 32]}
    dense, ms = [10.0], [7.0]
    r = t.refit(half, dense, ms)
    assert r.relative(half) == pytest.approx(0.7)
    full = {"heads": [4, 4], "ffn": [64, 64]}
    assert r.ms(full)[0] == pytest.approx(t.full_ms[0])  # the whole model still anchors the top
    assert Table.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def _qa():
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    return BertForQuestionAnswering(tiny_config(num_hidden_layers=2, num_attention_heads=4)).eval()


def test_the_pruner_meets_the_final_target_as_measured_and_records_it():
    model = _qa()
    mods = M.prunable_modules(model)
    M.attach_masks(mods)
    st = Structure.of(model, mods)
    table = _table()
    true = replace(table, floor_ms=[2.5], full_ms=[8.5])
    calls = []
    pruner = StructuredPruner("magnitude", st, table, uniform=True, timer=_timer(true, calls), final_sparsity=0.4)
    pruner.prepare(mods)
    assert calls and pruner.loops["before_training"]["met"]
    assert all(bool(m.all()) for m in M.get_masks(mods).values())  # prepare changes no mask
    pruner.prune_step(mods, 0.2)  # an intermediate event: the (corrected) table alone
    n = len(calls)
    pruner.prune_step(mods, 0.4)  # the final event: measured
    assert len(calls) > n or pruner.loops["final"]["rounds"] == []
    kept = st.kept(mods)
    counts = {"heads": [len(h) for h in kept["heads"]], "ffn": [len(f) for f in kept["ffn"]]}
    assert true.full_ms[0] / true.ms(counts)[0] >= 1 / 0.6 - 1e-9  # the true speedup holds
    assert pruner.loops["final"]["met"]


class _FakeRuntime:
    """Times a graph by the size of its weight initializers (the stand-in for a runtime whose cost
    is the work in its weights), and remembers the op types of each graph it saw."""
    name, precision, format = "onnxruntime", "fp32", "onnx"

    def __init__(self):
        self.ops = []

    def bench(self, path, inputs, threads, warmup, iters, min_time_s, **kw):
        m = onnx.load(str(path))
        self.ops.append({n.op_type for n in m.graph.node})
        size = sum(int(np.prod(i.dims)) for i in m.graph.initializer if len(i.dims) == 2)
        return [0.5 + 1e-4 * size] * 3, []


def _inputs_for(b, s):
    return {"input_ids": np.full((b, s), 1000, np.int64), "attention_mask": np.ones((b, s), np.int64),
            "token_type_ids": np.zeros((b, s), np.int64)}


def test_the_table_times_graphs_exported_as_the_artifact_ships(monkeypatch, tmp_path, tiny_model_dir):
    import prune2deploy.runtimes.registry as registry
    from prune2deploy.measure.latency_table import ShapeTimer, measure
    from prune2deploy.model.load import load_config, load_model
    from prune2deploy.graphs.onnx_export import export_model
    from prune2deploy.tasks.registry import get_task

    fake = _FakeRuntime()
    monkeypatch.setattr(registry, "get_runtime", lambda name: fake)
    task = get_task("squad")
    cfg = load_config(str(tiny_model_dir))
    t = measure(cfg, task, "onnxruntime", [(1, 16)], 1, _inputs_for, 14, 1, 1, 0.0)
    assert (t.exporter, t.opset, t.attn_implementation) == ("optimum", 14, "sdpa")
    shipped = tmp_path / "shipped.onnx"
    export_model(load_model(str(tiny_model_dir), task.auto_class), task.export_task, 14, shipped)
    assert fake.ops[0] == {n.op_type for n in onnx.load(str(shipped)).graph.node}  # the same graph as ships
    # the fake's cost is additive in the weights, so the table predicts a whole model of other widths
    L, H, W = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size
    odd = {"heads": [1] * L, "ffn": [W * 3 // 8] * L}
    dense_ms, ms = ShapeTimer(cfg, task, "onnxruntime", [(1, 16)], 1, _inputs_for, 14, rounds=1,
                                reference="dense")(odd)
    assert t.ms(odd)[0] == pytest.approx(ms[0], rel=1e-3)
    assert t.full_ms[0] == pytest.approx(dense_ms[0], rel=1e-6)
    assert t.ms({"heads": [H] * L, "ffn": [W] * L})[0] == pytest.approx(t.full_ms[0], rel=1e-6)


def _write_table(path, **over):
    t = replace(_table(L=2, H=2, W=64), shapes=[[1, 64]], exporter="optimum", opset=14, attn_implementation="sdpa",
                floor_ms=[0.1], full_ms=[0.1 + 2 * 3.0])
    path.write_text(json.dumps(replace(t, **over).to_dict()))
    return path


@pytest.mark.parametrize(
    "over,needle",
    [
        ({"layers": 12}, "measured for 12 layers, the model has 2"),
        ({"heads": 4, "attn_ms": [[0.0, 0.25, 0.5, 0.75, 1.0]]}, "measured for 4 heads"),
        ({"ffn": 1536}, "measured for 1536 FFN width"),
        ({"shapes": [[1, 128]]}, "this run benches [[1, 64]]"),
        ({"exporter": None, "opset": None}, "torch.onnx with eager attention"),
        ({"runtime": "openvino-nope"}, "unknown runtime"),
    ],
)
def test_a_reused_table_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, tiny_model_dir, over,
                                                                                 needle):
    table = _write_table(tmp_path / "table.json", **over)
    out = tmp_path / "run"
    res = p2d_smoke("rotten_tomatoes", tiny_model_dir, out, "--speedup", "1.3", "--set",
                    f"prune.latency_table={table}")
    assert_user_error(res, "prune.latency_table", needle)
    assert not out.exists()


def test_ziplm_hessians_are_float64_products_under_bf16_autocast(tiny_qa):
    from prune2deploy.train.loop import input_hessians

    mods = M.prunable_modules(tiny_qa)
    name = next(n for n in mods if n.endswith("output.dense") and "attention" not in n)
    features = random_features(4, 16)
    seen = []
    handle = mods[name].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))

    Tok = PadTokenizer

    try:
        H = input_hessians(tiny_qa, features, Tok(), mods, 4, 4, precision="bf16")([name])[name]
    finally:
        handle.remove()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()
    ref = x.T @ x / len(x)
    assert H.dtype == torch.float64
    assert torch.allclose(H, ref, rtol=1e-9, atol=1e-12)  # a bf16 product is off by ~1e-2 relative


def test_obs_losses_in_one_unit_divide_by_the_layernorm_input_variance(tiny_qa):
    """ZipLM's losses normalized per module: the hooks measure each LayerNorm's input variance,
    and a module's curve is its squared error times mean(γ²)/var: in the next layer's units."""
    from prune2deploy.train.loop import input_hessians

    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    st = Structure.of(tiny_qa, mods)
    ln_names = st.norm_names()
    norms = {n: m for n, m in tiny_qa.named_modules() if n in set(ln_names.values())}
    f = st.layers[0].names["f"]
    ln = norms[ln_names[f]]
    seen = []
    handle = ln.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    features = random_features(4, 16)

    Tok = PadTokenizer

    try:
        got = input_hessians(tiny_qa, features, Tok(), mods, 4, 4, precision="fp32", norms=norms)([f, ln_names[f]])
    finally:
        handle.remove()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()
    assert float(got[ln_names[f]]) == pytest.approx(float(x.var(-1, unbiased=False).mean()), rel=1e-9)
    with torch.no_grad():
        ln.weight.fill_(3.0)
    assert StructuredPruner._unit(torch.tensor(2.0, dtype=torch.float64), ln) == pytest.approx(9.0 / 2.0)


class _Int8Faster(_FakeRuntime):
    """Runs a static INT8 graph (QuantizeLinear in it) in half the time of a float one."""

    def bench(self, path, inputs, *a, **kw):
        t, out = super().bench(path, inputs, *a, **kw)
        quantized = any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
        return [x * (0.5 if quantized else 1.0) for x in t], out


def _tiny_half(model_dir):
    """The tiny model's config and a shape of half its widths."""
    from prune2deploy.model.load import load_config

    cfg = load_config(str(model_dir))
    L, W = cfg.num_hidden_layers, cfg.intermediate_size
    return cfg, {"heads": [1] * L, "ffn": [W // 2] * L}


def test_the_loop_times_against_dense_int8_where_it_is_the_faster_dense_option(monkeypatch, tiny_model_dir):
    """reference="best": the dense model's static INT8 is timed in the same rounds; where the
    runtime runs it faster than the float model, it is the dense figure the speedup is over."""
    import prune2deploy.runtimes.registry as registry
    from prune2deploy.measure.latency_table import ShapeTimer
    from prune2deploy.tasks.registry import get_task

    monkeypatch.setattr(registry, "get_runtime", lambda name, fake=_Int8Faster(): fake)
    cfg, half = _tiny_half(tiny_model_dir)
    task = get_task("squad")
    best = ShapeTimer(cfg, task, "onnxruntime", [(1, 16)], 1, _inputs_for, 14, rounds=1, reference="target")
    dense_ms, ms = best(half)
    assert best.references == ["dense-int8 on onnxruntime"]
    plain = ShapeTimer(cfg, task, "onnxruntime", [(1, 16)], 1, _inputs_for, 14, rounds=1, reference="dense")
    float_ms, ms2 = plain(half)
    assert plain.references == ["dense on onnxruntime"] and ms2 == ms
    assert dense_ms[0] < float_ms[0]  # the speedup is over the faster dense option


def test_the_loop_times_against_the_best_dense_option_on_every_production_runtime(monkeypatch, tiny_model_dir):
    """reference="best" (the default): the dense model and its INT8 are timed on every production
    runtime installed here, in the same rounds; the pruned model on the target. A runtime that is
    not installed, or cannot run a graph here (bf16 not engaged), is left out."""
    import prune2deploy.runtimes.registry as registry
    from prune2deploy.errors import UserError
    from prune2deploy.measure.latency_table import ShapeTimer
    from prune2deploy.model.load import load_config
    from prune2deploy.tasks.registry import get_task

    class Scaled(_FakeRuntime):
        def __init__(self, name, float_x, int8_x):
            super().__init__()
            self.name, self.x = name, {False: float_x, True: int8_x}
            self.paths = []

        def bench(self, path, inputs, *a, **kw):
            t, out = super().bench(path, inputs, *a, **kw)
            self.paths.append(Path(path).name)
            quantized = any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
            if self.x[quantized] is None:
                raise RuntimeError(f"{self.name}: bf16 not engaged on this CPU")
            return [x * self.x[quantized] for x in t], out

    fakes = {"onnxruntime": Scaled("onnxruntime", 1.0, 0.8), "openvino": Scaled("openvino", 0.9, 0.5),
             "openvino-bf16": Scaled("openvino-bf16", None, None)}

    def get_runtime(name):
        if name not in fakes:
            raise UserError(f"runtime '{name}' is not installed here")
        return fakes[name]

    monkeypatch.setattr(registry, "get_runtime", get_runtime)
    cfg = load_config(str(tiny_model_dir))
    L, W = cfg.num_hidden_layers, cfg.intermediate_size
    half = {"heads": [1] * L, "ffn": [W // 2] * L}
    task = get_task("squad")
    timer = ShapeTimer(cfg, task, "onnxruntime", [(1, 16)], 1, _inputs_for, 14, rounds=1)
    dense_ms, ms = timer(half)
    assert timer.references == ["dense-int8 on openvino"]
    target = ShapeTimer(cfg, task, "onnxruntime", [(1, 16)], 1, _inputs_for, 14, rounds=1, reference="target")
    target_ms, ms2 = target(half)
    assert target.references == ["dense-int8 on onnxruntime"] and ms2 == ms  # the pruned model: on the target
    assert dense_ms[0] == pytest.approx(target_ms[0] * 0.5 / 0.8)
    assert "pruned.onnx" not in fakes["openvino"].paths and "pruned.onnx" in fakes["onnxruntime"].paths


def test_the_loop_leaves_out_a_dense_int8_option_under_the_accuracy_gate(monkeypatch, tiny_model_dir):
    """`int8_gate` (the teacher's INT8 scored per runtime, `measure.dense_gate`): a runtime whose
    dense INT8 misses the gate is not a reference, however fast; asked once, kept in `gate`."""
    import prune2deploy.runtimes.registry as registry
    from prune2deploy.measure.latency_table import ShapeTimer
    from prune2deploy.tasks.registry import get_task

    monkeypatch.setattr(registry, "get_runtime", lambda name, fake=_Int8Faster(): fake)
    cfg, half = _tiny_half(tiny_model_dir)
    task = get_task("squad")
    asked = []

    def gate(keeps):
        def ask(names):
            asked.append(keeps)
            assert names == ["onnxruntime"]  # reference="target": only the target runtime is scored
            return {"onnxruntime": {"metric": 50.0, "dense": 60.0, "retained": 0.833, "keeps_gate": keeps}}
        return ask

    under = ShapeTimer(cfg, task, "onnxruntime", [(1, 16)], 1, _inputs_for, 14, rounds=1, reference="target",
                       int8_gate=gate(False))
    float_ms, ms = under(half)
    under(half)
    assert under.references == ["dense on onnxruntime"] and asked == [False]  # asked once
    assert under.gate["onnxruntime"]["keeps_gate"] is False
    over = ShapeTimer(cfg, task, "onnxruntime", [(1, 16)], 1, _inputs_for, 14, rounds=1, reference="target",
                      int8_gate=gate(True))
    int8_ms, _ = over(half)
    assert over.references == ["dense-int8 on onnxruntime"] and int8_ms[0] < float_ms[0]
