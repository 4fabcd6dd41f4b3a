"""CommonsenseQA as multiple choice: JSONL in both layouts, 3-D inputs through training,
export (sparsity verified, parity), bench, INT8 and package — with tiny BERT and RoBERTa."""

import json

import numpy as np
import pytest
from test_cli import assert_user_error, p2d, p2d_smoke

from prune2deploy.errors import UserError
from prune2deploy.recipe import load_recipe
from prune2deploy.tasks import commonsense_qa as CQ
from prune2deploy.tasks.registry import get_task

WORDS = [
    "river",
    "bank",
    "pencil",
    "kitchen",
    "garden",
    "office",
    "ocean",
    "library",
    "airport",
    "forest",
    "desk",
    "school",
]


def original(i: int, answer: int = 0) -> dict:
    choices = [{"label": "ABCDE"[c], "text": WORDS[(i + c) % len(WORDS)]} for c in range(5)]
    return {
        "answerKey": "ABCDE"[answer],
        "id": f"q{i}",
        "question": {"question_concept": "x", "choices": choices, "stem": f"Where would you find thing number {i}?"},
    }


def flat(i: int, answer: int = 0) -> dict:
    o = original(i, answer)
    return {
        "id": o["id"],
        "question": o["question"]["stem"],
        "question_concept": "x",
        "choices": {"label": list("ABCDE"), "text": [c["text"] for c in o["question"]["choices"]]},
        "answerKey": o["answerKey"],
    }


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def csqa_dir(root, n_train=24, n_dev=8):
    write_jsonl(root / "train_rand_split.jsonl", [original(i, i % 5) for i in range(n_train)])
    write_jsonl(
        root / "dev_rand_split.jsonl", [flat(100 + i, (i * 3) % 5) for i in range(n_dev)]
    )  # the hub's layout mixed in
    return root


def test_both_jsonl_layouts_read_the_same_question(tmp_path):
    a, b = CQ.parse_example(original(3, 2), "a"), CQ.parse_example(flat(3, 2), "b")
    assert a == b and a["label"] == 2 and len(a["choices"]) == 5
    recipe = load_recipe(
        "commonsense_qa",
        "smoke",
        {"data.data_dir": str(csqa_dir(tmp_path)), "data.train_examples": None, "data.eval_examples": None},
    )
    train, dev, info = get_task("commonsense_qa").load(recipe)
    assert len(train) == 24 and len(dev) == 8 and set(train["label"]) == {0, 1, 2, 3, 4}
    assert info["source"] == str(tmp_path)


def test_features_and_fixed_inputs_are_three_dimensional(tmp_path):
    from transformers import AutoTokenizer

    from prune2deploy.model.load import resolve_model
    from prune2deploy.model.inference import collate

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    recipe = load_recipe("commonsense_qa", "smoke", {"data.data_dir": str(csqa_dir(tmp_path))})
    _, dev, _ = get_task("commonsense_qa").load(recipe)
    feats = CQ.train_features(tok, dev, recipe.data)
    batch = collate(tok)([feats[i] for i in range(3)])
    assert batch["input_ids"].shape[:2] == (3, 5) and batch["labels"].shape == (3,)
    # every (question, choice) pair keeps its own tokens: row 0's second choice decodes to it
    assert dev[0]["choices"][1] in tok.decode(batch["input_ids"][0, 1], skip_special_tokens=True)
    x = CQ.encode(tok, CQ.sample_inputs(dev, 2), 3, 32)  # 3 rows from 2 samples: cycled
    assert set(x) == {"input_ids", "attention_mask", "token_type_ids"} and all(
        v.shape == (3, 5, 32) for v in x.values()
    )
    assert np.array_equal(x["input_ids"][2], x["input_ids"][0]) and not np.array_equal(
        x["input_ids"][0, 0], x["input_ids"][0, 1]
    )


@pytest.mark.parametrize("bad, needle", [
    ({"answerKey": "F"}, "answerKey 'F'"),
    ({"drop_choice": True}, "4 choices"),
    ({"no_question": True}, "missing field"),
])
def test_bad_questions_are_refused(bad, needle):
    ex = original(1)
    if bad.get("drop_choice"):
        ex["question"]["choices"].pop()
    elif bad.get("no_question"):
        del ex["question"]
    else:
        ex.update(bad)
    with pytest.raises(UserError, match=needle):
        CQ.parse_example(ex, "x")


def test_cli_bad_data_is_one_line(tmp_path):
    assert_user_error(
        p2d("run", "commonsense_qa", "--profile", "smoke", "--out", tmp_path / "r1"), "no packaged data", "--data-dir"
    )
    d = csqa_dir(tmp_path / "d")
    (d / "dev_rand_split.jsonl").write_text('{"answerKey": "A", "question": \n')
    assert_user_error(
        p2d("run", "commonsense_qa", "--profile", "smoke", "--data-dir", d, "--out", tmp_path / "r2"),
        "dev_rand_split.jsonl:1",
        "not a JSON line",
    )
    assert not (tmp_path / "r2" / "teacher" / "stage.json").exists()


def _tiny_roberta(tmp_path):
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from prune2deploy.model.load import resolve_model

    # no RoBERTa tokenizer ships offline: MiniLM's vocab, without token_type_ids as RoBERTa's
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"), model_input_names=["input_ids", "attention_mask"])
    d = tmp_path / "tiny-roberta"
    cfg = RobertaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
    )
    RobertaModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_multiple_choice_pipeline_export_bench_package(tmp_path, tiny_model_dir, family):
    model = tiny_model_dir if family == "bert" else _tiny_roberta(tmp_path)
    data = csqa_dir(tmp_path / "data")
    run = tmp_path / "run"
    extra = ["--quantize", "int8-static"] if family == "bert" else []  # QDQ calibrated on (batch, 5, seq) inputs
    res = p2d_smoke("commonsense_qa", model, run, "--sparsity", "0.7", "--data-dir", data, *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((run / "report.json").read_text())
    assert rep["metric"] == "accuracy" and rep["metrics"]["sparse"]["eval_examples"] == 8
    for which in ("dense", "sparse"):  # 8 questions: a count of right answers out of 8
        assert rep["metrics"][which]["accuracy"] * 8 / 100 in range(9), rep["metrics"][which]
    assert abs(rep["onnx"]["encoder_sparsity"] - 0.7) < 1e-3  # verified tensor by tensor in the ONNX graph
    export = json.loads((run / "export" / "stage.json").read_text())["result"]
    assert export["tensors_verified"] == 12 and export["max_abs_diff"] <= export["atol"]
    import onnx

    g = onnx.load(str(run / "export" / "model.onnx"), load_external_data=False).graph
    assert [len(i.type.tensor_type.shape.dim) for i in g.input] == [3] * len(g.input)  # (batch, choices, seq)
    rows = rep["bench"]
    assert rows and all("p50_ms" in r for r in rows), rows
    assert {r["model"] for r in rows} >= {"dense", "sparse"} | ({"sparse-int8"} if extra else set())
    if extra:  # activation ranges from the train split, never from the dev questions it is scored on
        cal = json.loads((run / "quantize" / "quantize.json").read_text())["calibration"]
        assert cal["split"] == "train" and cal["method"] == "minmax" and 0 < cal["examples"] <= 256, cal
    if family == "bert":  # `p2d bench FILE.onnx` outside a run dir sees the 3-D inputs in the graph
        res = p2d(
            "bench",
            run / "export" / "model.onnx",
            "--runtime",
            "onnxruntime",
            "--batch-sizes",
            "2",
            "--seq-lens",
            "16",
            "--out",
            tmp_path / "b",
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert [r["batch_size"] for r in json.loads((tmp_path / "b" / "bench.json").read_text())] == [2]
    pkg = tmp_path / "pkg"
    res = p2d("package", run, "--out", pkg, "--format", "triton")
    assert res.returncode == 0, res.stderr[-2000:]
    samples = np.load(pkg / "samples.npz")
    assert (
        samples["input.input_ids"].ndim == 3 and samples["output.logits"].shape == samples["input.input_ids"].shape[:2]
    )
    cfg = next(pkg.glob("model_repository/*/config.pbtxt")).read_text()
    assert "dims: [ -1, -1 ]" in cfg  # choices and sequence: Triton's batch dim dropped
    assert not (pkg / "deepsparse_server.yaml").exists()  # DeepSparse's server has no multiple-choice pipeline
    res = p2d("verify", pkg)
    assert res.returncode == 0, res.stdout + res.stderr
