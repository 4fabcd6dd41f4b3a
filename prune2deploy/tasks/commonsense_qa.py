"""CommonsenseQA as multiple choice: a question and 5 answer choices, metric accuracy.

The model scores each (question, choice) pair and picks the highest (transformers'
`AutoModelForMultipleChoice`): inputs are 3-D, (batch, choices, sequence), which the task
declares through `encode` so export, bench and package stay task-agnostic.

Data: the hub's `commonsense_qa` (`--data-dir hub`; train and validation splits, the test
split has no answers) or a local folder with the original JSONL files
(`train_rand_split.jsonl` and `dev_rand_split.jsonl`) or `train.jsonl` and
`validation.jsonl`/`dev.jsonl`, a line being either the original format
(`{"answerKey", "question": {"stem", "choices": [{"label", "text"}]}}`) or the hub's flat one
(`{"question", "choices": {"label": [...], "text": [...]}, "answerKey"}`). No copy ships on
PyPI, so without `--data-dir` the task says how to get one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from .registry import Task
from .hub import load_hub
from .sources import local_dir, rows_for, sampled

NUM_CHOICES = 5
TRAIN_FILES = ("train_rand_split.jsonl", "train.jsonl")
DEV_FILES = ("dev_rand_split.jsonl", "validation.jsonl", "dev.jsonl")


def parse_example(ex: dict, where: str) -> dict:
    """One question in either layout -> {"question", "choices": [5 texts], "label": index}."""
    try:
        q = ex["question"]
        if isinstance(q, dict):  # original CommonsenseQA JSONL
            stem, labels, texts = q["stem"], [c["label"] for c in q["choices"]], [c["text"] for c in q["choices"]]
        else:  # the hub's flat layout
            stem, labels, texts = q, list(ex["choices"]["label"]), list(ex["choices"]["text"])
        key = ex.get("answerKey")
    except (KeyError, TypeError) as e:
        raise UserError(f"{where}: not a CommonsenseQA question (missing field {e})") from None
    if len(texts) != NUM_CHOICES:
        raise UserError(f"{where}: {len(texts)} choices, CommonsenseQA has {NUM_CHOICES}")
    if key not in labels:
        raise UserError(f"{where}: answerKey {key!r} is not one of the choice labels {', '.join(map(str, labels))}")
    return {"question": str(stem), "choices": [str(t) for t in texts], "label": labels.index(key)}


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ex = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not a JSON line ({e.msg})") from None
                rows.append(parse_example(ex, f"{path}:{i}"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not rows:
        raise UserError(f"{path}: no questions")
    return rows


def _find(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise UserError(f"{root}: none of {', '.join(names)} found (CommonsenseQA JSONL)")


def load(recipe):
    def hub():
        ds = load_hub("commonsense_qa", offline_hint="pass --data-dir with the JSONL files")
        return (
            [parse_example(ex, "hub train") for ex in ds["train"]],
            [parse_example(ex, "hub validation") for ex in ds["validation"]],
            {"source": "hub:commonsense_qa"},
        )

    def local(root: Path):
        root = local_dir(root)
        return read_jsonl(_find(root, TRAIN_FILES)), read_jsonl(_find(root, DEV_FILES)), {"source": str(root)}

    train, dev, info = rows_for(
        recipe,
        hub=hub,
        local=local,
        no_packaged="task 'commonsense_qa' has no packaged data: pass --data-dir DIR "
        "(train_rand_split.jsonl, dev_rand_split.jsonl) or --data-dir hub when online",
    )
    return sampled(recipe, train, dev, {**info, "split": "train/dev (the test split has no answers)"})


def _pairs(questions: list[str], choices: list[list[str]]) -> tuple[list[str], list[str]]:
    return [q for q, cs in zip(questions, choices) for _ in cs], [c for cs in choices for c in cs]


def train_features(tokenizer, examples, data_cfg):
    """input_ids etc. as [choices][tokens] per question; the collator pads them to 3-D."""

    def prepare(batch):
        first, second = _pairs(batch["question"], batch["choices"])
        enc = tokenizer(first, second, truncation="longest_first", max_length=data_cfg.max_length)
        out = {k: [v[i:i + NUM_CHOICES] for i in range(0, len(v), NUM_CHOICES)] for k, v in enc.items()}
        out["labels"] = batch["label"]
        return out

    return examples.map(prepare, batched=True, remove_columns=examples.column_names, desc="tokenize")


def evaluate(model, tokenizer, examples, data_cfg, batch_size: int = 16, description: str = "eval"):
    from ..model.inference import forward_batches

    features = train_features(tokenizer, examples, data_cfg)
    labels = np.array(features["labels"])
    (logits,) = forward_batches(model, features.remove_columns(["labels"]), tokenizer, batch_size, description)
    pred = logits.argmax(-1)
    return {"accuracy": float((pred == labels).mean() * 100.0), "eval_examples": len(labels)}, [int(p) for p in pred]


def sample_inputs(examples, n: int):
    """(question, the 5 choices) per example: `encode` turns them into 3-D inputs."""
    return [(ex["question"], tuple(ex["choices"])) for ex in examples.select(range(min(n, len(examples))))]


def encode(
    tokenizer, samples: list[tuple[str, tuple[str, ...]]], batch_size: int, seq_len: int
) -> dict[str, np.ndarray]:
    """Real questions tokenized to exactly (batch_size, choices, seq_len)."""
    rows = [samples[i % len(samples)] for i in range(batch_size)]
    first, second = _pairs([q for q, _ in rows], [list(cs) for _, cs in rows])
    enc = tokenizer(
        first, second, padding="max_length", truncation="longest_first", max_length=seq_len, return_tensors="np"
    )
    return {
        k: v.astype(np.int64).reshape(batch_size, -1, seq_len)
        for k, v in enc.items()
        if k in ("input_ids", "attention_mask", "token_type_ids")
    }


TASK = Task(
    name="commonsense_qa",
    source="CommonsenseQA, 5-way multiple choice, accuracy: --data-dir DIR (train_rand_split.jsonl, dev_rand_split.jsonl) or --data-dir hub",  # noqa: E501 - one message/literal
    auto_class="AutoModelForMultipleChoice",
    export_task="multiple-choice",
    metric="accuracy",
    output_names=("logits",),
    num_labels=None,
    load=load,
    train_features=train_features,
    evaluate=evaluate,
    sample_inputs=sample_inputs,
    max_length=80,
    encode=encode,
    deepsparse_task=None,  # DeepSparse's server has no multiple-choice pipeline
)
