"""GLUE sentence and sentence-pair classification: sst2, mnli, qqp, qnli, mrpc, rte.

One table row per task (as optimum keeps one config per architecture): the hub config
name, the local GLUE-layout folder and files, which TSV columns hold the text(s) and the
label, the label names, and the metrics. Data comes from the hub's `glue` (`--data-dir hub`)
or from a local folder in the layout of the original GLUE download (`--data-dir DIR`, with
DIR/<Folder>/train.tsv and dev.tsv, or DIR holding those files directly). GLUE ships no
offline copy on PyPI, so without `--data-dir` the task says how to get one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import UserError
from . import classification as C
from .registry import Task
from .hub import load_hub
from .sources import rows_for, seeded_sample


@dataclass(frozen=True)
class GlueSpec:
    hub_name: str  # load_dataset("glue", hub_name)
    folder: str  # local GLUE layout: DIR/<folder>/train.tsv
    dev_files: tuple[str, ...]  # the eval files; several = groups (MNLI matched, mismatched)
    hub_dev_splits: tuple[str, ...]
    tsv_text: tuple[str, ...]  # TSV header names of the text column(s)
    tsv_label: str
    hub_text: tuple[str, ...]  # hub column names
    labels: tuple[str, ...]  # label names in class-id order (TSV labels may be names or ids)
    f1: bool = False
    max_length: int = 128


GLUE = {
    "sst2": GlueSpec("sst2", "SST-2", ("dev.tsv",), ("validation",), ("sentence",), "label", ("sentence",), ("0", "1")),
    "mnli": GlueSpec(
        "mnli",
        "MNLI",
        ("dev_matched.tsv", "dev_mismatched.tsv"),
        ("validation_matched", "validation_mismatched"),
        ("sentence1", "sentence2"),
        "gold_label",
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
    ),
    "qqp": GlueSpec(
        "qqp",
        "QQP",
        ("dev.tsv",),
        ("validation",),
        ("question1", "question2"),
        "is_duplicate",
        ("question1", "question2"),
        ("0", "1"),
        f1=True,
    ),
    "qnli": GlueSpec(
        "qnli",
        "QNLI",
        ("dev.tsv",),
        ("validation",),
        ("question", "sentence"),
        "label",
        ("question", "sentence"),
        ("entailment", "not_entailment"),
    ),
    "mrpc": GlueSpec(
        "mrpc",
        "MRPC",
        ("dev.tsv",),
        ("validation",),
        ("#1 String", "#2 String"),
        "Quality",
        ("sentence1", "sentence2"),
        ("0", "1"),
        f1=True,
    ),
    "rte": GlueSpec(
        "rte",
        "RTE",
        ("dev.tsv",),
        ("validation",),
        ("sentence1", "sentence2"),
        "label",
        ("sentence1", "sentence2"),
        ("entailment", "not_entailment"),
    ),
}


def _row(texts: list[str], label: int) -> dict:
    row = {"text": texts[0], "label": label}
    if len(texts) > 1:
        row["text_pair"] = texts[1]
    return row


def read_tsv(path: Path, spec: GlueSpec) -> list[dict]:
    if not path.is_file():
        raise UserError(
            f"GLUE file not found: {path} (expected the GLUE layout: <dir>/{spec.folder}/train.tsv, {', '.join(spec.dev_files)})"  # noqa: E501 - one message/literal
        )
    csv.field_size_limit(1 << 24)
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = set(spec.tsv_text + (spec.tsv_label,)) - set(reader.fieldnames or [])
        if missing:
            raise UserError(
                f"{path}: missing column(s) {', '.join(sorted(missing))} (GLUE {spec.folder} has {', '.join(spec.tsv_text + (spec.tsv_label,))})"  # noqa: E501 - one message/literal
            )
        for i, r in enumerate(reader, 2):
            raw = (r.get(spec.tsv_label) or "").strip()
            if raw == "-":  # a few MNLI rows have no gold label: GLUE drops them
                continue
            if raw not in spec.labels:
                raise UserError(f"{path}:{i}: label {raw!r} is not one of {', '.join(spec.labels)}")
            rows.append(_row([r[c] or "" for c in spec.tsv_text], spec.labels.index(raw)))
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _local_dir(root: Path, spec: GlueSpec) -> Path:
    return root / spec.folder if (root / spec.folder).is_dir() else root


def load(recipe, name: str):
    from datasets import Dataset

    spec = GLUE[name]
    d = recipe.data

    def hub():
        ds = load_hub("glue", spec.hub_name, offline_hint="pass --data-dir with GLUE TSV files")
        train = [_row([ex[c] for c in spec.hub_text], int(ex["label"])) for ex in ds["train"]]
        groups = [
            [_row([ex[c] for c in spec.hub_text], int(ex["label"])) for ex in ds[s] if int(ex["label"]) >= 0]
            for s in spec.hub_dev_splits
        ]
        return train, groups, {"source": f"hub:glue/{spec.hub_name}"}

    def local(root: Path):
        root = _local_dir(root, spec)
        return (
            read_tsv(root / "train.tsv", spec),
            [read_tsv(root / f, spec) for f in spec.dev_files],
            {"source": str(root)},
        )

    train, groups, info = rows_for(
        recipe,
        hub=hub,
        local=local,
        no_packaged=f"task '{name}' has no packaged data: pass --data-dir DIR "
        f"(GLUE layout, DIR/{spec.folder}/train.tsv) or --data-dir hub when online",
    )
    train = seeded_sample(train, d.train_examples, recipe.seed)
    dev = []  # each dev group (MNLI matched, mismatched) sampled on its own
    for g, (rows, fname) in enumerate(zip(groups, spec.dev_files)):
        per_group = None if d.eval_examples is None else max(1, d.eval_examples // len(groups))
        group = fname.removesuffix(".tsv").removeprefix("dev_") if len(groups) > 1 else None
        dev += [
            {**r, **({"group": group} if group else {})} for r in seeded_sample(rows, per_group, recipe.seed + 1 + g)
        ]
    info = {**info, "split": "GLUE train/dev", "train_examples": len(train), "eval_examples": len(dev)}
    return Dataset.from_list(train), Dataset.from_list(dev), info


def _task(name: str) -> Task:
    spec = GLUE[name]
    pair = "sentence pairs" if len(spec.tsv_text) > 1 else "sentences"
    metrics = (
        "accuracy" + (" + F1" if spec.f1 else "") + (" (matched; mismatched too)" if len(spec.dev_files) > 1 else "")
    )
    return Task(
        name=name,
        source=f"GLUE {spec.folder}, {pair}, {len(spec.labels)} classes, {metrics}: --data-dir DIR (GLUE TSV layout) or --data-dir hub",  # noqa: E501 - one message/literal
        auto_class="AutoModelForSequenceClassification",
        export_task="text-classification",
        metric="accuracy",
        output_names=("logits",),
        num_labels=len(spec.labels),
        load=partial(load, name=name),
        train_features=C.train_features,
        evaluate=partial(C.evaluate, f1=spec.f1),
        sample_inputs=C.sample_inputs,
        max_length=spec.max_length,
    )


TASKS = {name: _task(name) for name in GLUE}
