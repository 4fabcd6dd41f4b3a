"""`text-classification`: the user's labelled files, any number of classes, metric accuracy.

Columns `data.text_column` (text), optional `data.text_pair_column` (text_pair, used where the
file has it) and `data.label_column` (label: class names or ids). The label set comes from the
data (labels.py): its names go into the model's config (`id2label`), the artifact, and the served
answers. Files: user_files.py (csv, tsv, json, jsonl, parquet; train + validation/dev/test, or a
seeded hold-out).
"""

from __future__ import annotations

from ..errors import UserError
from . import classification as C
from .labels import label_names, to_ids
from .registry import Task
from .sources import sampled
from .user_files import holdout, need_columns, read_rows, split_files, split_info

AUTO_CLASS = "AutoModelForSequenceClassification"


def _rows(path, d) -> list[dict]:
    rows = read_rows(path)
    need_columns(path, rows, (d.text_column, d.label_column),
                 "set --set data.text_column=... --set data.label_column=...")
    pair = d.text_pair_column if d.text_pair_column in rows[0] else None
    out = []
    for i, r in enumerate(rows):
        text, label = r[d.text_column], r[d.label_column]
        if text is None or label is None or (isinstance(label, str) and not label.strip()):
            raise UserError(f"{path}: row {i + 1} has no {d.text_column if text is None else d.label_column}")
        row = {"text": str(text), "label": label.strip() if isinstance(label, str) else label}
        if pair:
            row["text_pair"] = "" if r[pair] is None else str(r[pair])
        out.append(row)
    return out


def read(recipe) -> tuple[list, list, dict]:
    d = recipe.data
    train_path, dev_path = split_files(recipe, "text-classification")
    train = _rows(train_path, d)
    if dev_path is None:
        train, dev = holdout(train, d.eval_split_fraction)
    else:
        dev = _rows(dev_path, d)
        if ("text_pair" in train[0]) != ("text_pair" in dev[0]):
            raise UserError(f"{dev_path}: column '{d.text_pair_column}' is in one split and not the other")
    if len({r["label"] for r in train}) < 2:
        raise UserError(f"{train_path}: column '{d.label_column}' holds one class ({train[0]['label']}); "
                        "classification needs at least two")
    names = label_names([r["label"] for r in train], recipe, AUTO_CLASS, str(train_path))
    for rows, path in ((train, train_path), (dev, dev_path or train_path)):
        for r, i in zip(rows, to_ids([r["label"] for r in rows], names, str(path))):
            r["label"] = i
    return train, dev, {**split_info(train_path, dev_path, d.eval_split_fraction), "labels": names}


def load(recipe):
    return sampled(recipe, *read(recipe))


def labels(recipe) -> list[str]:
    return read(recipe)[2]["labels"]


TASK = Task(
    name="text-classification",
    source="your labelled files (--data-dir: train + validation/dev/test csv, tsv, json, jsonl or parquet; "
           "columns text[, text_pair], label)",
    auto_class=AUTO_CLASS,
    export_task="text-classification",
    metric="accuracy",
    output_names=("logits",),
    num_labels=None,
    load=load,
    train_features=C.train_features,
    evaluate=C.evaluate,
    sample_inputs=C.sample_inputs,
    labels=labels,
)
