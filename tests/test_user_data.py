"""Your model, your data: the generic tasks on files written here, on a tiny random BERT.

text-classification (a 7-class CSV with string labels) and token-classification (NER JSONL) run
end to end: `p2d run --profile smoke` -> package -> verify -> serve-check, the served answer
naming its class; question-answering reads a SQuAD-format pair under names of the user's; a
model with a head for the labels is the teacher as it is; every bad input is one line, exit 2,
nothing written.
"""

import csv
import json
import random

import pytest

from tests.test_cli import assert_user_error, p2d, p2d_smoke

CLASSES = {"billing": ["invoice", "charge", "refund"], "login": ["password", "account", "locked"],
           "shipping": ["parcel", "delivery", "courier"], "bug": ["crash", "error", "freeze"],
           "praise": ["great", "love", "thanks"], "cancel": ["cancel", "stop", "terminate"],
           "other": ["question", "hello", "info"]}
FILLER = "my the a please help with about today order app service".split()


def write_csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(fields))
        w.writeheader()
        w.writerows(rows)
    return path


def tickets(n, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = list(CLASSES)[i % len(CLASSES)]
        words = rng.choices(CLASSES[c], k=3) + rng.choices(FILLER, k=5)
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": c})
    return out


def sentences(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 9)):
            r = rng.random()
            if r < 0.2:
                tokens += [rng.choice(["Alice", "Bob", "Carol"]), "Smith"]
                tags += ["B-PER", "I-PER"]
            elif r < 0.35:
                tokens.append(rng.choice(["Paris", "London", "Rome"]))
                tags.append("B-LOC")
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        out.append({"tokens": tokens, "tags": tags})
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ticket_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tickets")
    write_csv(d / "train.csv", tickets(140, 0))
    write_csv(d / "validation.csv", tickets(42, 1))
    return d


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ner")
    write_jsonl(d / "train.jsonl", sentences(80, 0))
    write_jsonl(d / "dev.jsonl", sentences(24, 1))
    return d


def _served(artifact, body: dict):
    from prune2deploy.ship.serve import Server
    from prune2deploy.ship.serve_check import samples

    import urllib.request

    manifest, *_ = samples(artifact)
    with Server(artifact) as server:
        req = urllib.request.Request(f"http://{server.url}/v2/models/{server.name}/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        return {o["name"]: o for o in json.loads(urllib.request.urlopen(req, timeout=60).read())["outputs"]}


def _run_package_serve(task, data_dir, model, tmp_path):
    run = tmp_path / "run"
    res = p2d_smoke(task, model, run, "--sparsity", "0.5", "--data-dir", data_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    art = tmp_path / "art"
    res = p2d("package", run, "--out", art)
    assert res.returncode == 0, res.stderr[-2000:]
    res = p2d("verify", art)
    assert res.returncode == 0, res.stderr[-2000:]
    res = p2d("serve-check", art)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    return run, art


def test_text_classification_on_a_user_csv_end_to_end(ticket_dir, tiny_model_dir, tmp_path):
    run, art = _run_package_serve("text-classification", ticket_dir, tiny_model_dir, tmp_path)
    config = json.loads((art / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(7)] == sorted(CLASSES)  # sorted, stable
    report = json.loads((run / "report.json").read_text())
    assert report["metrics"]["dense"]["eval_examples"] == 32 and "validation.csv" in report["data"]["eval"]["split"]
    texts = ["refund my invoice please", "the app crash and freeze"]
    out = _served(art, {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]})
    logits = out["logits"]["data"]
    best = [max(range(7), key=lambda k: logits[r * 7 + k]) for r in range(2)]
    assert out["label"]["data"] == [sorted(CLASSES)[b] for b in best]


def test_token_classification_on_user_jsonl_end_to_end(ner_dir, tiny_model_dir, tmp_path):
    run, art = _run_package_serve("token-classification", ner_dir, tiny_model_dir, tmp_path)
    config = json.loads((art / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["B-LOC", "B-PER", "I-PER", "O"]
    report = json.loads((run / "report.json").read_text())
    assert report["metric"] == "f1" and 0 <= report["metrics"]["dense"]["f1"] <= 100
    text = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Alice Smith in Paris"]}
    out = _served(art, {"inputs": [text]})
    assert out["label"]["shape"][0] == 1 and set(out["label"]["data"]) <= set(config["id2label"].values())
    assert out["logits"]["shape"][1] == out["label"]["shape"][1]  # one tag per token


def test_entity_f1_is_seqeval_and_first_subtoken_alignment(tiny_model_dir):
    from prune2deploy.model.load import load_tokenizer
    from prune2deploy.recipe import DataConfig
    from prune2deploy.tasks.token_classification import entity_f1, train_features
    from datasets import Dataset

    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert entity_f1(gold, gold) == 100.0
    assert entity_f1(gold, [["B-PER", "O", "O", "B-LOC"]]) == pytest.approx(50.0)  # PER's end wrong
    tok = load_tokenizer(str(tiny_model_dir))
    feats = train_features(tok, Dataset.from_list([{"tokens": ["Unbelievably", "ok"], "tags": [1, 0]}]),
                           DataConfig(max_length=32))
    labels = feats[0]["labels"]
    assert labels[0] == -100 and labels[-1] == -100  # [CLS], [SEP]
    assert labels[1] == 1 and [x for x in labels if x != -100] == [1, 0]  # the first sub-token only


def test_conll_files_are_read(tmp_path):
    from prune2deploy.tasks.token_classification import read_conll

    f = tmp_path / "train.conll"
    f.write_text("-DOCSTART- O\n\nAlice NNP B-PER\nsaw VBD O\n\nRome NNP B-LOC\n")
    assert read_conll(f) == [{"tokens": ["Alice", "saw"], "tags": ["B-PER", "O"]},
                             {"tokens": ["Rome"], "tags": ["B-LOC"]}]


def test_question_answering_reads_a_squad_pair_the_user_names(tiny_model_dir, tmp_path):
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "Ann wrote the book in Paris in 1901.", "qas": [
        {"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": s}]}
        for i, (q, a, s) in enumerate([("Who wrote the book?", "Ann", 0), ("Where?", "Paris", 22),
                                       ("When?", "1901", 31)] * 6)]}]}]}
    (tmp_path / "mine-train.json").write_text(json.dumps(doc))
    (tmp_path / "mine-eval.json").write_text(json.dumps(doc))
    run = tmp_path / "run"
    res = p2d_smoke("question-answering", tiny_model_dir, run, "--sparsity", "0.5", "--data-dir", tmp_path,
                    "--set", "data.train_file=mine-train.json", "--set", "data.eval_file=mine-eval.json")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert report["metric"] == "f1" and "mine-eval.json" in report["data"]["eval"]["split"]


def _head_model(tiny_model_dir, tmp_path, labels):
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_config

    torch.manual_seed(0)
    d = tmp_path / "my-model"
    cfg = tiny_config(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={n: i for i, n in enumerate(labels)})
    BertForSequenceClassification(cfg).save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model_dir / f).is_file():
            shutil.copy2(tiny_model_dir / f, d / f)
    return d


def test_a_model_with_a_head_for_the_labels_is_the_teacher(ticket_dir, tiny_model_dir, tmp_path):
    order = ["praise", "other", "login", "bug", "shipping", "cancel", "billing"]  # its own order, not sorted
    model = _head_model(tiny_model_dir, tmp_path, order)
    run = tmp_path / "run"
    res = p2d_smoke("text-classification", model, run, "--sparsity", "0.5", "--data-dir", ticket_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    teacher = json.loads((run / "teacher" / "stage.json").read_text())["result"]
    assert teacher["trained"] is False and teacher["given"].startswith("--model") and teacher["labels"] == order
    config = json.loads((run / "export" / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(7)] == order
    # a head whose labels are not the data's: one line, nothing written
    other = _head_model(tiny_model_dir, tmp_path / "x", ["positive", "negative"])
    res = p2d_smoke("text-classification", other, tmp_path / "run2", "--sparsity", "0.5", "--data-dir", ticket_dir)
    assert_user_error(res, "is not one of the head's labels", "positive, negative")
    assert not (tmp_path / "run2").exists()


def _bad(tmp_path, name, write):
    d = tmp_path / name
    d.mkdir()
    write(d)
    return d


BAD = {
    "no label column": ("text-classification",
                        lambda d: write_csv(d / "train.csv", [{"text": "a", "y": "b"}], ("text", "y")),
                        "no column 'label'"),
    "one class": ("text-classification", lambda d: write_csv(d / "train.csv", [{"text": "a", "label": "x"}] * 5),
                  "holds one class (x)"),
    "empty file": ("text-classification", lambda d: (d / "train.csv").write_text(""), "the file is empty"),
    "unreadable type": ("text-classification", lambda d: (d / "train.xlsx").write_bytes(b"PK\x03\x04"),
                        "no train file"),
    "named unreadable type": ("text-classification", lambda d: (d / "x.xlsx").write_bytes(b"PK\x03\x04"),
                              "cannot read a '.xlsx' file"),
    "unknown label in dev": ("text-classification", lambda d: (
        write_csv(d / "train.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}] * 3),
        write_csv(d / "dev.csv", [{"text": "c", "label": "z"}])), "label 'z' is not in the training data's labels"),
    "tags/tokens mismatch": ("token-classification", lambda d: write_jsonl(
        d / "train.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}]), "row 1 has 2 tokens and 1 tags"),
    "unknown tag in dev": ("token-classification", lambda d: (
        write_jsonl(d / "train.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "B-X"]}] * 3),
        write_jsonl(d / "dev.jsonl", [{"tokens": ["c"], "tags": ["B-Y"]}])), "label 'B-Y' is not in the training"),
    "no data dir": ("text-classification", None, "trains on your files: pass --data-dir"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_user_data_is_one_line_and_nothing_is_written(case, tiny_model_dir, tmp_path):
    task, write, needle = BAD[case]
    args = ["--sparsity", "0.5"]
    if write is not None:
        args += ["--data-dir", _bad(tmp_path, "data", write)]
    if case == "named unreadable type":
        args += ["--set", "data.train_file=x.xlsx"]
    res = p2d_smoke(task, tiny_model_dir, tmp_path / "run", *args)
    assert_user_error(res, needle)
    assert not (tmp_path / "run").exists()


def test_the_default_profile_sizes_itself_to_the_data(ticket_dir, tiny_model_dir, tmp_path, monkeypatch):
    """data.time_budget_min: more epochs for little data (at most 3x), fewer examples for much;
    the measured rate is kept per machine (the same data sizes alike), a resumed run keeps its sizes."""
    from prune2deploy.train import budget as fit
    from prune2deploy.recipe import load_recipe

    base = {"model": str(tiny_model_dir), "data.data_dir": str(ticket_dir)}
    calls = []

    def rate(value):
        def measure(*a):
            calls.append(value)
            return value
        return measure

    recipe = load_recipe("text-classification", "default", {**base, "data.time_budget_min": 20})
    monkeypatch.setattr(fit, "step_rate", rate(1000.0))  # fast: 140 examples fit many times over
    big = fit.fit_to_data(recipe, tmp_path / "a" / "run")
    assert big.teacher.epochs == 3 * recipe.teacher.epochs and big.prune.epochs == 3 * recipe.prune.epochs
    assert big.prune.prune_freq == pytest.approx(3 * recipe.prune.prune_freq) and big.data.train_examples is None
    slow = load_recipe("text-classification", "default", {**base, "data.time_budget_min": 0.01})
    monkeypatch.setattr(fit, "step_rate", rate(1.0))
    small = fit.fit_to_data(slow, tmp_path / "b" / "run")
    assert small.teacher.epochs == recipe.teacher.epochs and small.data.train_examples is None  # 140 < 200: all kept
    # the rate is measured once per machine and model beside the run dirs
    again = fit.fit_to_data(slow, tmp_path / "b" / "run2")
    assert again == small and calls == [1000.0, 1.0]
    # a run dir begun with other sizes keeps them on resume
    (tmp_path / "a" / "run").mkdir(parents=True)
    (tmp_path / "a" / "run" / "recipe.json").write_text(json.dumps(big.to_dict()))
    monkeypatch.setattr(fit, "step_rate", rate(5.0))
    assert fit.fit_to_data(recipe, tmp_path / "a" / "run").teacher.epochs == big.teacher.epochs


def test_a_tight_budget_on_much_data_samples_it_down_to_the_floor(monkeypatch, tmp_path):
    """Fewer than 100 examples fit: the floor (MIN_EXAMPLES), not every example; and the cached
    rate is per data set (other lengths, another rate)."""
    import datasets

    from prune2deploy.train import budget as fit
    from prune2deploy.recipe import load_recipe

    recipe = load_recipe("rotten_tomatoes", "default", {"data.time_budget_min": 0.01})
    texts = [{"text": "word " * (5 + i % 7), "label": i % 2} for i in range(50_000)]
    train = datasets.Dataset.from_list(texts)

    class Task:
        def load(self, r):
            return train, None, {}

    monkeypatch.setattr("prune2deploy.tasks.registry.get_task", lambda name: Task())
    monkeypatch.setattr(fit, "step_rate", lambda *a: 10.0)
    fitted = fit.fit_to_data(recipe, tmp_path / "run")
    assert fitted.data.train_examples == fit.MIN_EXAMPLES
    long = datasets.Dataset.from_list([{"text": "word " * 200, "label": 0}] * 100)
    assert fit.data_digest(long, 16) != fit.data_digest(train, 16)
    calls = []
    fit.cached_rate(recipe, tmp_path / "run", lambda: calls.append(1) or 1.0, fit.data_digest(train, 16))
    fit.cached_rate(recipe, tmp_path / "run", lambda: calls.append(2) or 2.0, fit.data_digest(long, 16))
    assert calls == [1, 2]  # another data set is measured again


def test_token_classification_with_static_int8_end_to_end(ner_dir, tiny_model_dir, tmp_path):
    """The INT8 graph is scored by the task's own evaluation (which reads the label names from
    the model's config): quantize and bench alike."""
    run = tmp_path / "run"
    res = p2d_smoke("token-classification", tiny_model_dir, run, "--sparsity", "0.5", "--data-dir", ner_dir,
                    "--quantize", "int8-static")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert 0 <= report["quantize"]["metrics"]["sparse_int8"]["f1"] <= 100
    assert any(r["model"] == "sparse-int8" and "p50_ms" in r for r in report["bench"])


def test_roberta_bpe_tokenizer_takes_pre_split_words(tmp_path):
    """Byte-level BPE (RoBERTa) refuses pre-split words unless add_prefix_space: the task sets it."""
    from datasets import Dataset
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    from prune2deploy.recipe import DataConfig
    from prune2deploy.tasks.token_classification import train_features

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["Alice Smith flew to Paris and Rome"] * 20, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    d = tmp_path / "bpe"
    d.mkdir()
    bpe.save_model(str(d))
    RobertaTokenizerFast(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(d)
    tok = RobertaTokenizerFast.from_pretrained(d)
    assert tok.add_prefix_space is False  # as it ships: words alone would fail
    feats = train_features(tok, Dataset.from_list([{"tokens": ["Alice", "flew", "Paris"], "tags": [1, 0, 2]}]),
                           DataConfig(max_length=32))
    assert [x for x in feats[0]["labels"] if x != -100] == [1, 0, 2]
