"""Tasks: GLUE from local TSVs in the GLUE layout, BBC news from the package, metrics."""

import numpy as np
import pytest

from prune2deploy.errors import UserError
from prune2deploy.recipe import load_recipe
from prune2deploy.tasks import classification as C
from prune2deploy.tasks.registry import get_task, task_names


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def mnli_dir(root):
    h = ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1", "gold_label"]
    labels = ["entailment", "neutral", "contradiction"]
    write_tsv(
        root / "MNLI" / "train.tsv",
        h,
        [[i, 0, 0, "g", f"premise {i}", f"hypothesis {i}", "x", labels[i % 3]] for i in range(30)],
    )
    write_tsv(
        root / "MNLI" / "dev_matched.tsv",
        h,
        [[i, 0, 0, "g", f"m premise {i}", f"m hyp {i}", "x", labels[i % 3]] for i in range(6)]
        + [[9, 0, 0, "g", "a", "b", "x", "-"]],
    )
    write_tsv(
        root / "MNLI" / "dev_mismatched.tsv",
        h,
        [[i, 0, 0, "g", f"mm premise {i}", f"mm hyp {i}", "x", labels[(i + 1) % 3]] for i in range(4)],
    )
    return root


EXPORT_TASKS = ("text-classification", "token-classification", "question-answering", "multiple-choice")


def test_every_task_has_a_pipeline_and_declares_its_export():
    for name in task_names():
        t = get_task(name)
        assert (
            t.metric
            and t.max_length > 0
            and t.output_names
            and t.export_task in EXPORT_TASKS
        )
        load_recipe(name, "default")  # pipelines/<name>.yaml exists and validates
    assert {"sst2", "mnli", "qqp", "qnli", "mrpc", "rte", "bbc_news"} <= set(task_names())


def test_mnli_from_glue_layout_with_matched_and_mismatched(tmp_path):
    recipe = load_recipe(
        "mnli",
        "smoke",
        {"data.data_dir": str(mnli_dir(tmp_path)), "data.eval_examples": None, "data.train_examples": None},
    )
    train, dev, info = get_task("mnli").load(recipe)
    assert len(train) == 30 and set(train["label"]) == {0, 1, 2}
    assert train[0]["text"] == "premise 0" and train[0]["text_pair"] == "hypothesis 0"
    assert dev["group"].count("matched") == 6 and dev["group"].count("mismatched") == 4  # the "-" row dropped
    assert info["source"].endswith("MNLI")


def test_grouped_accuracy_and_f1_are_computed_per_group(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from prune2deploy.model.load import resolve_model

    recipe = load_recipe("mnli", "smoke", {"data.data_dir": str(mnli_dir(tmp_path)), "data.eval_examples": None})
    _, dev, _ = get_task("mnli").load(recipe)
    labels = np.array(dev["label"])
    pred = np.array([0, 1, 2, 0, 0, 0, 1, 1, 1, 1])  # fixed predictions, through a stub forward pass

    import prune2deploy.model.inference as T

    monkeypatch.setattr(T, "forward_batches", lambda model, feats, tok, bs, desc: (np.eye(3)[pred],))
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    m, out = C.evaluate(None, tok, dev, recipe.data, f1=False)
    matched = np.array(dev["group"]) == "matched"
    assert m["accuracy"] == pytest.approx(100 * (pred[matched] == labels[matched]).mean())
    assert m["accuracy_mismatched"] == pytest.approx(100 * (pred[~matched] == labels[~matched]).mean())
    assert out == pred.tolist()


def test_binary_f1_known_values():
    assert C.binary_f1(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(50.0)
    assert C.binary_f1(np.array([1, 1, 1]), np.array([1, 1, 1])) == pytest.approx(100.0)
    assert C.binary_f1(np.array([0, 0]), np.array([1, 1])) == 0.0


def test_glue_bad_input(tmp_path):
    with pytest.raises(UserError, match="no packaged data"):
        get_task("rte").load(load_recipe("rte", "smoke"))
    with pytest.raises(UserError, match="GLUE file not found"):
        get_task("rte").load(load_recipe("rte", "smoke", {"data.data_dir": str(tmp_path)}))
    write_tsv(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "maybe"]])
    write_tsv(tmp_path / "RTE" / "dev.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "entailment"]])
    with pytest.raises(UserError, match="'maybe' is not one of"):
        get_task("rte").load(load_recipe("rte", "smoke", {"data.data_dir": str(tmp_path)}))
    write_tsv(tmp_path / "QQP" / "train.tsv", ["id", "question1", "is_duplicate"], [[0, "a", 1]])
    with pytest.raises(UserError, match="missing column.*question2"):
        get_task("qqp").load(load_recipe("qqp", "smoke", {"data.data_dir": str(tmp_path)}))


def test_bbc_news_packaged_and_local(tmp_path):
    recipe = load_recipe("bbc_news", "default")
    train, dev, _ = get_task("bbc_news").load(recipe)
    assert len(train) + len(dev) == 2225 and len(dev) == 222
    assert set(train["label"]) == set(range(5))
    _, dev2, _ = get_task("bbc_news").load(load_recipe("bbc_news", "default", {"seed": 7}))
    assert dev2["text"] == dev["text"]  # the hold-out does not move with the seed
    (tmp_path / "business").mkdir()
    with pytest.raises(UserError, match="missing class folder"):
        get_task("bbc_news").load(load_recipe("bbc_news", "smoke", {"data.data_dir": str(tmp_path)}))
