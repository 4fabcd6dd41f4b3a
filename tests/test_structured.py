"""Structured pruning: heads and FFN neurons as masks, the compact model, its ONNX check, the
latency table's arithmetic, the target search, the OBS criterion, and `p2d run --speedup`."""

import json

import pytest
import torch
from conftest import PadTokenizer, random_features, tiny_config
from test_cli import assert_user_error, p2d, p2d_smoke

from prune2deploy.errors import UserError
from prune2deploy.measure.latency_table import Table
from prune2deploy.model.load import load_model
from prune2deploy.pruning import masks as M
from prune2deploy.pruning.allocation import Curve, allocate
from prune2deploy.pruning.structured import StructuredPruner, obs_curve, obs_update
from prune2deploy.pruning.structures import Structure, compact, widths_of


def _qa(**kw):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    return BertForQuestionAnswering(tiny_config(num_hidden_layers=3, num_attention_heads=4, **kw)).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = {"input_ids": torch.randint(1000, 2000, (2, 16), generator=g), "attention_mask": torch.ones(2, 16).long()}
    x["attention_mask"][1, 9:] = 0
    return x


KEPT = {"heads": [[0, 2], [], [0, 1, 2, 3]], "ffn": [list(range(0, 64, 3)), list(range(10)), []]}


def _masked(model, kept=KEPT):
    mods = M.prunable_modules(model)
    M.attach_masks(mods)
    st = Structure.of(model, mods)
    M.set_masks(mods, st.masks_for(mods, kept))
    return mods, st


def test_masks_remove_whole_structures_and_read_back():
    model = _qa()
    mods, st = _masked(model)
    assert st.kept(mods) == KEPT
    masks = M.get_masks(mods)
    st.check(masks)
    name = st.layers[0].names["o"] + ".weight"
    broken = dict(masks)
    broken[name] = masks[name].clone()
    broken[name][0, 0] = not bool(broken[name][0, 0])  # one weight of a kept head
    with pytest.raises(AssertionError, match="partly pruned"):
        st.check(broken)


def test_compact_equals_masked_model_and_reloads(tmp_path):
    model = _qa()
    _masked(model)
    x = _inputs()
    with torch.no_grad():
        ref = model(**x)
    mods = M.prunable_modules(model)
    for m in mods.values():
        del m._buffers[M.MASK]
    compact(model, KEPT)
    # removed for real: 2 heads x 8 dims in layer 0, an empty attention and an empty FFN
    assert widths_of(model) == {"heads": [2, 0, 4], "ffn": [22, 10, 0]}
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    assert model.bert.encoder.layer[0].output.dense.weight.shape == (32, 22)
    with torch.no_grad():
        got = model(**x)
    for a, b in ((ref.start_logits, got.start_logits), (ref.end_logits, got.end_logits)):
        assert torch.allclose(a, b, atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), "AutoModelForQuestionAnswering")
    assert widths_of(again) == widths_of(model)
    with torch.no_grad():
        assert torch.allclose(again(**x).start_logits, ref.start_logits, atol=1e-5)


def test_uniform_widths_load_in_plain_transformers(tmp_path):
    from transformers import AutoModelForQuestionAnswering

    model = _qa()
    kept = {"heads": [[1, 3]] * 3, "ffn": [list(range(0, 64, 2))] * 3}
    _masked(model, kept)
    for m in M.prunable_modules(model).values():
        del m._buffers[M.MASK]
    compact(model, kept)
    model.save_pretrained(tmp_path / "m")
    plain = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "m").eval()  # pruned_heads, intermediate_size
    with torch.no_grad():
        assert torch.allclose(plain(**_inputs()).start_logits, model(**_inputs()).start_logits, atol=1e-5)


def test_roberta_pruned_heads_compact_and_reload(tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    model = RobertaForSequenceClassification(
        RobertaConfig(vocab_size=3000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=70, type_vocab_size=1, pad_token_id=1)
    ).eval()
    kept = {"heads": [[0], [1, 2, 3]], "ffn": [list(range(40)), list(range(5, 64))]}
    _masked(model, kept)
    x = {"input_ids": torch.randint(5, 3000, (2, 12)), "attention_mask": torch.ones(2, 12).long()}
    with torch.no_grad():
        ref = model(**x).logits
    for m in M.prunable_modules(model).values():
        del m._buffers[M.MASK]
    compact(model, kept)
    model.save_pretrained(tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["pruned_heads"] == {"0": [1, 2, 3], "1": [0]} and cfg["p2d_structure"]["ffn"] == [40, 59]
    again = load_model(str(tmp_path / "r"), "AutoModelForSequenceClassification")
    with torch.no_grad():
        assert torch.allclose(again(**x).logits, ref, atol=1e-5)


def _table(L=2, H=4, W=64, attn=1.0, ffn=2.0, floor=1.0):
    """A made-up table: each head costs attn/H ms, the FFN ffn ms at full width, linearly."""
    return Table(
        runtime="onnxruntime", shapes=[[1, 16]], layers=L, heads=H, ffn=W,
        full_ms=[floor + L * (attn + ffn)], floor_ms=[floor],
        attn_ms=[[attn * h / H for h in range(H + 1)]], ffn_widths=[0, W], ffn_ms=[[0.0, ffn]], scale=[1.0],
    )


def test_table_arithmetic():
    t = _table()
    assert t.ms({"heads": [4, 4], "ffn": [64, 64]}) == [7.0]
    assert t.ms({"heads": [2, 0], "ffn": [32, 0]}) == [1.0 + 0.5 + 1.0]
    assert t.relative({"heads": [0, 0], "ffn": [0, 0]}) == pytest.approx(1 / 7)
    assert t.max_speedup() == pytest.approx(7.0)
    assert Table.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def _curves(L, n, per, removed=0):
    return [Curve(list(range(n)), [per[layer] * k for k in range(n + 1)], removed) for layer in range(L)]


def test_allocate_meets_the_budget_cheapest_loss_first():
    t = _table()
    attn = _curves(2, 4, [1.0, 1.0])  # heads are costly to lose
    ffn = _curves(2, 64, [0.001, 0.002])  # layer 0's neurons are the cheapest per ms
    r = allocate(attn, ffn, t, budget=0.7)
    widths = {"heads": [4 - x for x in r["attn"]], "ffn": [64 - x for x in r["ffn"]]}
    assert t.relative(widths) <= 0.7
    assert r["attn"] == [0, 0]  # the search spent no head
    assert r["ffn"][0] >= r["ffn"][1]
    u = allocate(attn, ffn, t, budget=0.7, uniform=True)
    assert len(set(u["attn"])) == 1 and len(set(u["ffn"])) == 1


def test_allocate_keeps_what_is_removed_and_refuses_the_unreachable():
    t = _table()
    attn = _curves(2, 4, [1.0, 1.0], removed=2)
    ffn = _curves(2, 64, [0.001, 0.001])
    r = allocate(attn, ffn, t, budget=0.99)
    assert r["attn"] == [2, 2]  # already removed stays removed, though the budget needs nothing
    with pytest.raises(UserError, match="cannot be reached"):
        allocate(attn, ffn, t, budget=0.1)  # below the floor (1/7)


def test_obs_criterion_and_update():
    torch.manual_seed(0)
    X = torch.randn(400, 16, dtype=torch.float64) * torch.linspace(0.2, 2.0, 16, dtype=torch.float64)
    X[:, 5] = X[:, 4] + 0.01 * torch.randn(400, dtype=torch.float64)  # column 5 is almost column 4
    W = torch.randn(8, 16, dtype=torch.float64)
    H = X.T @ X / len(X)
    Hinv = torch.linalg.inv(H)
    c = obs_curve(W, Hinv, 1, set())
    j = c.order[0]
    assert c.loss[1] == pytest.approx(float(W[:, j].pow(2).sum() / Hinv[j, j]), rel=1e-6)
    assert j in (4, 5)  # a column its twin can stand in for is the cheapest to remove
    cols = torch.tensor([4, 6])
    upd = obs_update(W, Hinv, cols)
    zeroed = W.clone()
    zeroed[:, cols] = 0
    err = lambda V: float(((X @ W.T) - (X @ V.T)).pow(2).mean())  # noqa: E731
    assert bool((upd[:, cols] == 0).all())
    assert err(upd) < err(zeroed)
    groups = obs_curve(W, Hinv, 4, {1})  # 4 groups of 4 columns, group 1 already gone
    assert groups.order[0] == 1 and groups.loss[1] == 0.0 and groups.removed == 1


def test_structured_pruner_step_masks_and_history():
    model = _qa()
    mods = M.prunable_modules(model)
    M.attach_masks(mods)
    st = Structure.of(model, mods)
    t = _table(L=3, H=4, W=64)
    pruner = StructuredPruner("magnitude", st, t)
    pruner.prune_step(mods, 0.5)
    kept = st.kept(mods)
    st.check(M.get_masks(mods))
    widths = {"heads": [len(h) for h in kept["heads"]], "ffn": [len(f) for f in kept["ffn"]]}
    assert t.relative(widths) <= 0.5 + 1e-9
    assert {k: pruner.history[-1][k] for k in ("heads", "ffn")} == widths  # the record is what the masks keep
    before = kept
    pruner.prune_step(mods, 0.6)  # a later step never brings a structure back
    after = st.kept(mods)
    assert all(set(a) <= set(b) for a, b in zip(after["heads"], before["heads"]))
    assert all(set(a) <= set(b) for a, b in zip(after["ffn"], before["ffn"]))


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--speedup", "1"], ["--speedup must be a number > 1"]),
        (["--speedup", "fast"], ["--speedup must be a number > 1"]),
        (["--speedup", "inf"], ["--speedup must be a number > 1"]),
        (["--speedup", "nan"], ["--speedup must be a number > 1"]),
        (["--speedup", "2", "--sparsity", "0.8"], ["two targets"]),
        (["--speedup", "2", "--pattern", "2:4"], ["not '2:4'"]),
        (["--speedup", "2", "--method", "obert"], ["not obert"]),
        (["--sparsity", "0.5", "--method", "ziplm"], ["pass --speedup"]),
        (["--set", "prune.latency_runtime=deepsparse", "--speedup", "2"], ["production runtime"]),
    ],
)
def test_speedup_bad_input(args, needles):
    assert_user_error(p2d("run", "squad", "--profile", "smoke", *args), *needles)


def test_speedup_on_a_model_it_cannot_restructure_is_refused_before_anything_runs(tmp_path):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from prune2deploy.model.load import resolve_model

    d = tmp_path / "tiny-distilbert"
    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2)).save_pretrained(d)
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(d)
    out = tmp_path / "run"
    res = p2d_smoke("rotten_tomatoes", d, out, "--speedup", "1.5")
    assert_user_error(res, "--speedup removes heads and FFN neurons", "is a distilbert", "--sparsity")
    assert not out.exists()


def test_a_bf16_latency_runtime_on_a_cpu_without_bf16_is_refused(monkeypatch):
    import prune2deploy.measure.machine as machine
    from prune2deploy.run import _check_latency_runtime

    pytest.importorskip("openvino")
    monkeypatch.setattr(machine, "cpu_info", lambda: {"model": "AVX2 only", "isa": ["avx2"]})
    with pytest.raises(UserError, match="no bf16"):
        _check_latency_runtime("openvino-bf16")
    _check_latency_runtime("openvino")  # fp32 runs anywhere


def test_unreachable_speedup_writes_nothing(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    res = p2d_smoke("rotten_tomatoes", tiny_model_dir, out, "--speedup", "5000")
    assert_user_error(res, "cannot be reached", "without removing every head and FFN neuron")
    assert not out.exists()


def table_shapes(run):
    return Table.from_dict(json.loads((run / "latency" / "table.json").read_text())).shapes


def test_speedup_smoke_pipeline_ships_a_smaller_verified_model(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    res = p2d_smoke("squad", tiny_model_dir, out, "--speedup", "1.5", "--method", "ziplm")
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    st = rep["structured"]
    assert st["target_speedup"] == 1.5
    loop = st["latency_loop"]["final"]  # the shipped widths were measured on the target runtime
    assert loop["rounds"]
    assert any({"heads": r["heads"], "ffn": r["ffn"]} == st["widths"] for r in loop["rounds"])
    assert set(loop["measured_speedup"]) == {f"b{b}s{s}" for b, s in table_shapes(out)}
    assert st["parameters"]["pruned"] < st["parameters"]["dense"]
    exp = json.loads((out / "export" / "stage.json").read_text())["result"]
    assert exp["widths"] == st["widths"] and exp["tensors_verified"] > 0
    assert exp["max_abs_diff"] <= exp["atol"]  # ONNX of the compact model = the compact model trained
    c = st["compaction"]  # recovery after the final event trained the compact model
    pr = json.loads((out / "prune" / "stage.json").read_text())["result"]
    assert c["step"] == pr["prune_steps"][-1][0] and c["max_abs_diff"] < 1e-3 and c["extra_steps"] >= 0
    assert pr["masked_model_dir"] is None and "recovery on the compact model from step" in res.stdout
    compact_model = load_model(str(out / "prune" / "model"), "AutoModelForQuestionAnswering")
    assert widths_of(compact_model) == st["widths"]
    assert rep["bench"] and all("p50_ms" in r for r in rep["bench"])
    assert not any(r.get("sparse_kernel") is False for r in rep["bench"])  # fewer FLOPs, not zeros
    art = tmp_path / "art"
    res = p2d("package", out, "--out", art)
    assert res.returncode == 0, res.stderr[-2000:]
    res = p2d("verify", art)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def test_speedup_with_static_int8_quantizes_the_compact_model(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    res = p2d_smoke("rotten_tomatoes", tiny_model_dir, out, "--speedup", "1.3", "--quantize", "int8-static")
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    q = rep["quantize"]
    assert q["quantize"] == "int8-static" and q["tensors"] > 0  # every compact encoder weight quantized
    assert {r["model"] for r in rep["bench"]} >= {"sparse", "sparse-int8", "dense-int8"}
    assert all(r.get("structured") for r in rep["bench"] if r["model"].startswith("sparse"))
    assert rep["verdict"]["line"].startswith("ship: ") and "vs the best dense" in rep["verdict"]["line"]


def test_table_targets_the_worst_shape_and_follows_its_anchors():
    t = Table(
        runtime="openvino-bf16", shapes=[[1, 16], [16, 16]], layers=1, heads=2, ffn=8,
        full_ms=[3.0, 30.0], floor_ms=[1.0, 2.0], attn_ms=[[0, 0.5, 1.0], [0, 7.0, 14.0]], ffn_widths=[0, 8],
        ffn_ms=[[0, 1.0], [0, 14.0]], scale=[1.0, 1.0],
        anchors=[[[1.0, 1.5], [2.0, 1.0]], [[14.0, 1.0], [28.0, 1.0]]],
    )
    half = {"heads": [1], "ffn": [4]}
    assert t.ms(half) == [1.0 + 1.5 * 1.0, 2.0 + 14.0]  # at half size batch 1 costs 1.5x its one-layer sum
    assert t.relative(half) == pytest.approx(max(2.5 / 3.0, 16.0 / 30.0))  # the worst shape decides


def test_ziplm_step_updates_the_kept_weights_to_lower_the_layers_output_error():
    """The OBS branch of the prune step: Hessians from forward hooks on calibration features,
    then the write-back into the kept columns; the layer's output error against the unmasked
    layer is lower than masking the same structures without the update."""
    from prune2deploy.train.loop import input_hessians

    model = _qa()
    mods = M.prunable_modules(model)
    features = random_features(16, 12)

    Tok = PadTokenizer

    names = [n for n in mods if n.endswith("output.dense")]
    seen = {n: [] for n in names}
    handles = [mods[n].register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach().clone()))
               for n in names]
    with torch.no_grad():
        model(**Tok().pad(features))
    for h in handles:
        h.remove()
    before = {n: mods[n].weight.detach().clone() for n in names}
    M.attach_masks(mods)
    st = Structure.of(model, mods)
    hessians = input_hessians(model, features, Tok(), mods, 16, 16, precision="fp32")
    pruner = StructuredPruner("obs", st, _table(L=3, H=4, W=64), hessians=hessians)
    pruner.prune_step(mods, 0.5)
    changed = 0
    for n in names:
        mask = getattr(mods[n], M.MASK)
        if bool(mask.all()):
            continue  # nothing removed in this module
        x = torch.cat(seen[n]).reshape(-1, before[n].shape[1]).double()
        ref = x @ before[n].double().T
        err = lambda w: float((ref - x @ (w.double() * mask).T).pow(2).sum())  # noqa: E731
        assert err(mods[n].weight.detach()) < err(before[n])
        changed += 1
    assert changed >= 2  # attention and FFN output projections alike


def test_uniform_search_sees_past_a_plateau_of_the_table():
    """Attention costs the same at 5-8 heads (AMX-like steps): one head saves nothing, four save a
    step. The one-step search thins the FFN instead; trying every head count finds the cheaper
    removal of four heads."""
    L, H, W = 2, 8, 64
    t = Table(runtime="openvino-bf16", shapes=[[1, 128]], layers=L, heads=H, ffn=W,
              full_ms=[1.0 + L * (0.5 + 0.4)], floor_ms=[1.0],
              attn_ms=[[0.0, 0.2, 0.2, 0.2, 0.2, 0.5, 0.5, 0.5, 0.5]], ffn_widths=[0, W], ffn_ms=[[0.0, 0.4]],
              scale=[1.0])
    attn = _curves(L, H, [1.0, 1.0])  # a head costs 1.0
    convex = [0.0] + [0.002 * k + (0.05 * (k - 32) ** 2 / 2 if k > 32 else 0.0) for k in range(1, W + 1)]
    ffn = [Curve(list(range(W)), convex, 0) for _ in range(L)]
    budget = (1.0 + L * (0.2 + 0.4)) / t.full_ms[0]  # exactly what removing four heads everywhere saves
    u = allocate(attn, ffn, t, budget, uniform=True)
    assert u == {"attn": [4, 4], "ffn": [0, 0]}
    g = allocate(attn, ffn, t, budget)  # per layer, one step at a time: the FFN goes first
    loss = lambda r: sum(c.loss[x] for c, x in zip(attn, r["attn"])) + sum(c.loss[x] for c, x in zip(ffn, r["ffn"]))  # noqa: E731
    assert loss(u) < loss(g)


def test_the_pruner_removes_whole_attention_modules_when_the_table_makes_them_cheapest():
    """Attention that costs the same at any head count but none: only removing it whole saves
    time, so a target the FFN cannot meet alone empties every attention block (a tiny BERT,
    magnitude losses, a stand-in table); the compact model builds and computes the masked one."""
    model = _qa()
    mods = M.prunable_modules(model)
    M.attach_masks(mods)
    st = Structure.of(model, mods)
    t = Table(runtime="onnxruntime", shapes=[[1, 16]], layers=3, heads=4, ffn=64,
              full_ms=[1.0 + 3 * (1.0 + 0.2)], floor_ms=[1.0], attn_ms=[[0.0, 1.0, 1.0, 1.0, 1.0]],
              ffn_widths=[0, 64], ffn_ms=[[0.0, 0.2]], scale=[1.0])
    pruner = StructuredPruner("magnitude", st, t, uniform=True)
    pruner.prune_step(mods, 0.6)  # 2.5x: the FFN alone gives at most 4.6 / 4.0
    kept = st.kept(mods)
    assert [len(h) for h in kept["heads"]] == [0, 0, 0]
    x = _inputs()
    with torch.no_grad():
        masked = model(**x).start_logits
    for m in mods.values():
        del m._buffers[M.MASK]
    compact(model, kept)
    with torch.no_grad():
        assert torch.allclose(model(**x).start_logits, masked, atol=1e-5)


def test_events_on_the_way_head_for_the_final_widths():
    """A gradual schedule: an early event's cheapest removal (FFN: its first 48 neurons cost
    almost nothing) would strip what the final target keeps (it removes three heads and keeps the
    FFN whole), and structures never come back. An event removes only towards the final widths."""
    L, H, W = 3, 4, 64
    t = Table(runtime="openvino-bf16", shapes=[[1, 16]], layers=L, heads=H, ffn=W, full_ms=[1.0 + L * 1.0],
              floor_ms=[1.0], attn_ms=[[0.0, 0.2, 0.4, 0.6, 0.8]], ffn_widths=[0, W], ffn_ms=[[0.0, 0.2]],
              scale=[1.0])
    attn = _curves(L, H, [1.0] * L)
    cheap = [0.0] + [1e-4 * k if k <= 48 else 48e-4 + (k - 48) for k in range(1, W + 1)]
    ffn = [Curve(list(range(W)), cheap, 0) for _ in range(L)]

    class Pruner(StructuredPruner):
        def _curves(self, modules):
            return attn, ffn, None

    model = _qa()
    mods = M.prunable_modules(model)
    M.attach_masks(mods)
    st = Structure.of(model, mods)
    final = allocate(attn, ffn, t, 0.55, uniform=True)
    assert final == {"attn": [3] * L, "ffn": [0] * L}
    assert allocate(attn, ffn, t, 0.95, uniform=True)["ffn"][0] > 0  # alone, the early event thins the FFN
    Pruner("magnitude", st, t, uniform=True, final_sparsity=0.45).prune_step(mods, 0.05)
    kept = st.kept(mods)
    assert [len(f) for f in kept["ffn"]] == [W] * L and [len(h) for h in kept["heads"]] == [H - 1] * L
