"""A --speedup family in one run: the ladder, its events, the members the pruner saves on the way,
their snapshots and compact recovery, the verdict over the family, and `p2d run` / `p2d package`."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config
from test_cli import assert_user_error, p2d, p2d_smoke
from test_structured import _inputs, _qa, _table

from prune2deploy.errors import UserError
from prune2deploy.measure import bench_rows
from prune2deploy.pruning import family
from prune2deploy.pruning import masks as M
from prune2deploy.pruning.structured import StructuredPruner
from prune2deploy.pruning.structures import Structure, counts, widths_of
from prune2deploy.report.summary import family_summary, summary_notes, verdict


def test_default_ladder_is_the_two_standard_rungs_below_the_target():
    assert family.default_ladder(2.0) == (1.5, 2.0)
    assert family.default_ladder(3.0) == (1.5, 2.0, 3.0)
    assert family.default_ladder(8.0) == (4.0, 6.0, 8.0)
    assert family.default_ladder(1.3) == (1.3,)
    assert family.parse_ladder("1.5, 2,3") == (1.5, 2.0, 3.0)


@pytest.mark.parametrize("text,needle", [
    ("2,1.5", "must rise"), ("1.5,1.5", "no repeats"), ("1,2", "every target must be a number > 1, got 1"),
    ("1.5,inf", "got inf"), ("1.5,x", "rising ladder"), ("0.5", "must be a number > 1"),
    ("1.2345671,1.2345672", "share a name"),
])
def test_a_bad_ladder_is_one_line(text, needle):
    with pytest.raises(UserError, match=needle):
        family.parse_ladder(text)


@pytest.mark.parametrize("args,needle", [
    (["--speedup", "2,1.5"], "must rise"),
    (["--speedup", "1.5,2,2"], "no repeats"),
    (["--speedup", "1,2"], "every target must be a number > 1"),
    (["--speedup", "2", "--set", "prune.ladder=[1.5,3]"], "must end at the run's --speedup 2"),
    (["--sparsity", "0.5", "--set", "prune.ladder=[1.5,2]"], "a family of --speedup targets"),
])
def test_a_bad_ladder_on_the_command_line_writes_nothing(tmp_path, tiny_model_dir, args, needle):
    out = tmp_path / "run"
    assert_user_error(p2d_smoke("squad", tiny_model_dir, out, *args), needle)
    assert not out.exists()


def test_each_rung_gets_its_own_event_at_exactly_its_fraction():
    events = [(0, 0.1), (10, 0.2), (20, 0.3), (30, 0.4), (40, 0.5)]
    placed, rungs = family.place_rungs(events, [1 - 1 / 1.5, 1 - 1 / 1.25])
    assert placed == [(0, 0.1), (10, pytest.approx(0.2)), (20, 0.3), (30, pytest.approx(1 / 3)), (40, 0.5)]
    assert rungs == [pytest.approx(0.2), pytest.approx(1 / 3)]
    assert [s for _, s in placed] == sorted(s for _, s in placed)  # still rising
    late, _ = family.place_rungs([(0, 0.1), (10, 0.2), (20, 0.5)], [0.4])  # no event reaches it before the final
    assert late == [(0, 0.1), (10, 0.4), (20, 0.5)]
    with pytest.raises(UserError, match="too few for 2 rungs"):  # a ladder the user gave
        family.place_rungs([(0, 0.2), (10, 0.5)], [0.25, 0.4])
    # the default ladder on a short schedule: the lowest rungs are left out, the run goes on
    assert family.place_rungs([(0, 0.2), (10, 0.5)], [0.25, 0.4], strict=False) == ([(0, 0.4), (10, 0.5)], [0.4])
    assert family.place_rungs([(0, 0.5)], [1 / 3], strict=False) == ([(0, 0.5)], [])  # one shot: no member


def _pruned_model():
    model = _qa()
    mods = M.prunable_modules(model)
    M.attach_masks(mods)
    return model, mods, Structure.of(model, mods)


def _stand_in_timer(table, calls):
    """Times a shape as the table predicts it (no clock), against the dense model."""
    def timer(counts):
        calls.append(counts)
        return list(table.full_ms), table.ms(counts)
    timer.references = ["dense on onnxruntime"]
    return timer


def test_the_pruner_saves_a_member_at_its_rung_measured_and_snapshots_it_before_the_next_event():
    model, mods, st = _pruned_model()
    t = _table(L=3, H=4, W=64)
    seen = []

    def snapshot(name):  # what the model keeps when the snapshot is taken
        seen.append((name, counts(st.kept(mods))))

    calls = []
    pruner = StructuredPruner("magnitude", st, t, uniform=True, timer=_stand_in_timer(t, calls), final_sparsity=0.5,
                              rungs={"1.5x": 1 - 1 / 1.5}, snapshot=snapshot)
    pruner.prune_step(mods, 0.2)  # an event on the way: no loop, no member
    assert not calls and not pruner.members and not seen
    pruner.prune_step(mods, 1 - 1 / 1.5)
    member = pruner.members["1.5x"]
    assert calls and pruner.loops["member_1.5x"]["met"]  # its widths measured against its own target
    assert member["widths"] == counts(st.kept(mods)) and t.relative(member["widths"]) <= 1 / 1.5 + 1e-9
    assert not seen  # taken at the next event, after the steps at the member's width
    state = pruner.state_dict()
    pruner.prune_step(mods, 0.5)
    assert seen == [("1.5x", member["widths"])]
    final = counts(st.kept(mods))
    assert sum(final["heads"]) + sum(final["ffn"]) < sum(member["widths"]["heads"]) + sum(member["widths"]["ffn"])
    again = StructuredPruner("magnitude", st, t, uniform=True, final_sparsity=0.5, rungs={"1.5x": 1 - 1 / 1.5})
    again.load_state_dict(state)  # a checkpoint keeps the members and the snapshot still to take
    assert again.members == {"1.5x": member} and again.pending == "1.5x"


def test_a_snapshot_reads_back_from_disk_and_recovers_to_its_compact_model(tmp_path):
    model, mods, st = _pruned_model()
    kept = {"heads": [[0, 2], [1], [0, 1, 2, 3]], "ffn": [list(range(0, 64, 2)), list(range(20)), list(range(64))]}
    M.set_masks(mods, st.masks_for(mods, kept))
    M.apply_masks(mods)
    x = _inputs()
    with torch.no_grad():
        masked = model(**x).start_logits
    family.Snapshots(tmp_path, model, mods).take("1.5x")
    fresh = family.Snapshots(tmp_path, None, None)  # a resumed stage: from disk

    def build():
        from transformers import BertForQuestionAnswering

        return BertForQuestionAnswering(tiny_config(num_hidden_layers=3, num_attention_heads=4)).eval()

    def check(structure, modules, masks):
        structure.check(masks)

    compact, got = family.recover("1.5x", fresh, build, M.prunable_modules, None, 0, None, None, None, check)
    assert got == kept and widths_of(compact) == counts(kept)
    with torch.no_grad():
        assert torch.allclose(compact.eval()(**x).start_logits, masked, atol=1e-5)
    with pytest.raises(UserError, match="no snapshot"):
        fresh.get("3x")


def _row(runtime, model, b, ms, precision="fp32", **kw):
    return {"runtime": runtime, "model": model, "batch_size": b, "seq_len": 128, "p50_ms": ms,
            "precision": precision, **kw}


def _family_report(f1_2x=56.9, f1_15x=59.0):
    rows = []
    for b, k in ((1, 1), (16, 12)):
        rows += [
            _row("openvino", "dense", b, 8.0 * k), _row("onnxruntime", "dense-int8", b, 6.0 * k, "int8"),
            _row("openvino", "sparse@1.5x", b, 4.0 * k, structured=True),
            _row("openvino", "sparse", b, 2.9 * k, structured=True),
        ]
    bench_rows.add_speedups(rows)
    rep = {"task": "squad", "method": "ziplm", "target_sparsity": 0.0, "target_speedup": 2.0, "profile": "default",
           "metric": "f1", "metrics": {"dense": {"f1": 60.0}, "sparse": {"f1": f1_2x},
                                       "members": {"1.5x": {"f1": f1_15x}}},
           "quantize": {"metrics": {"dense_int8": {"f1": 59.5}}}, "bench": rows, "bench_skipped": []}
    prune = {"target_speedup": 2.0, "name": "2x", "widths": {"heads": [6] * 6, "ffn": [312] * 6},
             "members": [{"name": "1.5x", "target_speedup": 1.5, "widths": {"heads": [8] * 6, "ffn": [768] * 6}}]}
    rep["family"] = family_summary(rep, prune, 0.95)
    rep["verdict"] = verdict(rep, 0.95)
    return rep


def test_the_verdict_ships_the_fastest_member_over_the_gate_and_says_which_missed():
    rep = _family_report()  # the 2x member keeps 94.8%: under the gate
    fam = rep["family"]
    assert [m["name"] for m in fam] == ["1.5x", "2x"] and [m["label"] for m in fam] == ["sparse@1.5x", "sparse"]
    assert fam[0]["worst_speedup_vs_best_dense"] == pytest.approx(1.5) and fam[0]["keeps_gate"]
    assert not fam[1]["keeps_gate"] and fam[1]["retained"] == pytest.approx(56.9 / 60, abs=1e-4)
    v = rep["verdict"]
    assert (v["runtime"], v["model"], v["member"]) == ("openvino", "sparse@1.5x", "1.5x")
    assert v["line"].startswith("ship: pruned 1.5x fp32 on openvino, 1.50x / 1.50x vs the best dense")
    assert "gate missed by the 2x member (94.83%, 0.17% under)" in v["line"] and v["missed_gate"] == ["2x"]
    assert any(line.startswith("family (worst shape vs the best dense): 1.5x: 8 heads / 768 FFN")
               for line in summary_notes(rep))
    ok = _family_report(f1_2x=58.0)["verdict"]  # both keep it: the faster ships
    assert (ok["model"], ok["member"]) == ("sparse", "2x") and "gate missed" not in ok["line"]
    none = _family_report(f1_2x=50.0, f1_15x=50.0)["verdict"]  # neither: dense INT8, both misses said
    assert none["model"] == "dense-int8" and "the 1.5x member" in none["line"] and "the 2x member" in none["line"]


def test_a_ladder_run_validates_exports_and_benches_every_member_and_packages_any(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    res = p2d_smoke("squad", tiny_model_dir, out, "--speedup", "1.2,1.4", "--method", "gmp")
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    pr = json.loads((out / "prune" / "stage.json").read_text())["result"]
    (member,) = pr["members"]
    assert member["name"] == "1.2x" and member["target_speedup"] == pytest.approx(1.2)
    loop = member["latency_loop"]  # its widths measured on the target runtime (what the clock said is not asserted)
    assert loop["rounds"] and loop["target_speedup"] == pytest.approx(1.2) and member["recovery_steps"] > 0
    assert set(loop["measured_speedup"]) == set(pr["latency_loop"]["final"]["measured_speedup"])
    gate = pr["dense_gate"]  # the teacher's static INT8 scored per runtime: one under the gate is no reference
    assert "onnxruntime" in gate and gate["onnxruntime"]["examples"] > 0
    for info in gate.values():  # (rounded figures: not judged within a hair of the line)
        if abs(info["metric"] - 0.95 * info["dense"]) > 0.01:
            assert info["keeps_gate"] == (info["metric"] >= 0.95 * info["dense"])
    for ref in pr["latency_loop"]["final"]["reference"].values():
        assert not ref.startswith("dense-int8") or gate[ref.split(" on ")[1]]["keeps_gate"]
    assert [s for _, s in pr["prune_steps"]].count(pytest.approx(1 - 1 / 1.2)) == 1  # its own event
    assert widths_of_dir(out / member["model_dir"]) == member["widths"]
    val = json.loads((out / "validate" / "stage.json").read_text())["result"]
    assert "f1" in val["members"]["1.2x"]
    exp = json.loads((out / "export" / "stage.json").read_text())["result"]["members"]["1.2x"]
    assert exp["widths"] == member["widths"] and exp["max_abs_diff"] <= 1e-3 and exp["tensors_verified"] > 0
    assert {r["model"] for r in rep["bench"]} >= {"sparse", "sparse@1.2x", "dense"}
    assert [m["name"] for m in rep["family"]] == ["1.2x", "1.4x"]
    assert "family (worst shape vs the best dense): 1.2x:" in res.stdout.replace("\n", " ")
    art = tmp_path / "art"
    res = p2d("package", out, "--out", art, "--member", "1.2x")
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["member"] == "1.2x" and manifest["measured_as"] == "sparse@1.2x"
    assert manifest["target_speedup"] == pytest.approx(1.2)
    res = p2d("verify", art)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert_user_error(p2d("package", out, "--out", tmp_path / "none", "--member", "9x"), "not a member", "1.2x, 1.4x")
    assert not (tmp_path / "none").exists()


def widths_of_dir(path):
    from prune2deploy.model.load import load_model

    return widths_of(load_model(str(path), "AutoModelForQuestionAnswering"))


def test_a_sweep_point_is_one_model_and_a_run_gets_the_default_ladder():
    from prune2deploy.recipe import load_recipe
    from prune2deploy.sweep import plan_points

    (point,) = plan_points("squad", "smoke", None, ["ziplm"], {}, speedups=[2.0])
    assert family.ladder_of(point.prune) == (2.0,)  # the sweep's targets are its points
    r = load_recipe("squad", "smoke", {"prune.target_speedup": 2.0, "prune.pattern": "structured",
                                       "prune.method": "ziplm", "prune.target_sparsity": 0.0})
    assert family.ladder_of(r.prune) == (1.5, 2.0)
    assert family.ladder_of(replace(r.prune, ladder=(2.0,))) == (2.0,)


def test_a_members_latency_loop_measures_at_most_a_few_shapes():
    from prune2deploy.pruning.structured import MEMBER_LOOP_ROUNDS

    model, mods, st = _pruned_model()
    t = _table(L=3, H=4, W=64)
    calls = []

    def slow_timer(counts):  # every shape 30% slower than any table says: the loop keeps correcting
        calls.append(counts)
        return list(t.full_ms), [1.3 * x for x in t.ms(counts)]
    slow_timer.references = ["dense on onnxruntime"]

    pruner = StructuredPruner("magnitude", st, t, uniform=True, timer=slow_timer, final_sparsity=0.6,
                              rungs={"1.5x": 1 - 1 / 1.5})
    pruner.prune_step(mods, 1 - 1 / 1.5)
    assert 1 < len(calls) <= MEMBER_LOOP_ROUNDS < 8
    assert len(pruner.loops["member_1.5x"]["rounds"]) == len(calls)
