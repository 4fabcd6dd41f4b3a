"""`token-classification` (NER and the like): the user's files, metric entity-level F1.

Files: JSONL/JSON/parquet with a list of tokens (`data.tokens_column`, tokens) and a list of
tags (`data.tags_column`, tags) per row, or CoNLL-style text (`.conll`, `.iob`, `.txt`: one
token per line, its tag in the last column, a blank line between sentences, -DOCSTART- lines
skipped). The tag set comes from the data (labels.py); a tag in dev that train never had, or a
row whose tokens and tags differ in length, is refused in one line.

Training labels sit on each word's first sub-token (the others and special tokens are -100,
left out of the loss); predictions are read there too. F1 is seqeval's entity-level F1 (its
default, conlleval-compatible: an entity counts when its type and both ends match), in percent,
beside token accuracy.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .labels import label_names, to_ids
from .registry import Task
from .sources import sampled
from .user_files import holdout, need_columns, read_rows, split_files, split_info

AUTO_CLASS = "AutoModelForTokenClassification"
CONLL = (".conll", ".iob", ".txt")


def read_conll(path: Path) -> list[dict]:
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    rows, tokens, tags = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    for n, line in enumerate(lines + [""], 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                rows.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise UserError(f"{path}:{n}: '{line.strip()[:60]}' has no tag column (token ... tag per line)")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if not rows:
        raise UserError(f"{path}: no sentences")
    return rows


def _rows(path: Path, d) -> list[dict]:
    if path.suffix.lower() in CONLL:
        return read_conll(path)
    rows = read_rows(path)
    need_columns(path, rows, (d.tokens_column, d.tags_column),
                 "set --set data.tokens_column=... --set data.tags_column=...")
    out = []
    for i, r in enumerate(rows, 1):
        tokens, tags = r[d.tokens_column], r[d.tags_column]
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise UserError(f"{path}: row {i}: '{d.tokens_column}' and '{d.tags_column}' must be lists")
        if len(tokens) != len(tags):
            raise UserError(f"{path}: row {i} has {len(tokens)} tokens and {len(tags)} tags")
        if tokens:
            out.append({"tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags]})
    if not out:
        raise UserError(f"{path}: no rows with tokens")
    return out


def read(recipe) -> tuple[list, list, dict]:
    d = recipe.data
    train_path, dev_path = split_files(recipe, "token-classification", CONLL)
    train = _rows(train_path, d)
    if dev_path is None:
        train, dev = holdout(train, d.eval_split_fraction)
    else:
        dev = _rows(dev_path, d)
    tags = [t for r in train for t in r["tags"]]
    if len(set(tags)) < 2:
        raise UserError(f"{train_path}: every tag is '{tags[0]}'; token classification needs at least two")
    names = label_names(tags, recipe, AUTO_CLASS, str(train_path))
    for rows, path in ((train, train_path), (dev, dev_path or train_path)):
        for r in rows:
            r["tags"] = to_ids(r["tags"], names, str(path))
    return train, dev, {**split_info(train_path, dev_path, d.eval_split_fraction), "labels": names}


def load(recipe):
    return sampled(recipe, *read(recipe))


def labels(recipe) -> list[str]:
    return read(recipe)[2]["labels"]


def _check_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("token-classification needs a fast tokenizer (tokenizer.json) to align words to sub-tokens")


def for_words(tokenizer):
    """A tokenizer that takes pre-split words: byte-level BPE (RoBERTa's) needs `add_prefix_space`
    (each word as the model saw it inside a sentence, after a space); others are returned as they are."""
    if getattr(tokenizer, "add_prefix_space", None) is False:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_prefix_space=True, use_fast=True,
                                             trust_remote_code=False)
    return tokenizer


def train_features(tokenizer, examples, data_cfg):
    """Words tokenized; each word's tag on its first sub-token, -100 elsewhere."""
    _check_fast(tokenizer)
    tokenizer = for_words(tokenizer)

    def prepare(batch):
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=data_cfg.max_length)
        labels = []
        for i, tags in enumerate(batch["tags"]):
            prev, row = None, []
            for w in enc.word_ids(i):
                row.append(-100 if w is None or w == prev else tags[w])
                prev = w
            labels.append(row)
        enc["labels"] = labels
        return enc

    return examples.map(prepare, batched=True, remove_columns=examples.column_names, desc="tokenize")


def entity_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    from seqeval.metrics import f1_score

    return 100.0 * float(f1_score(gold, pred, zero_division=0))


def evaluate(model, tokenizer, examples, data_cfg, batch_size: int = 32, description: str = "eval"):
    from ..model.inference import forward_batches

    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    features = train_features(tokenizer, examples, data_cfg)
    labels = features["labels"]
    width = max(len(r) for r in labels)
    (logits,) = forward_batches(model, features.remove_columns(["labels"]), tokenizer, batch_size, description,
                                pad_to=width)
    pred_ids = logits.argmax(-1)
    gold, pred, right, total = [], [], 0, 0
    for row, p in zip(labels, pred_ids):
        keep = [j for j, t in enumerate(row) if t != -100]
        g = [row[j] for j in keep]
        q = [int(p[j]) for j in keep]
        right += sum(int(a == b) for a, b in zip(g, q))
        total += len(g)
        gold.append([names[t] for t in g])
        pred.append([names[t] for t in q])
    metrics = {"f1": entity_f1(gold, pred), "accuracy": 100.0 * right / max(1, total), "eval_examples": len(labels),
               "eval_tokens": total}
    return metrics, pred


def sample_inputs(examples, n: int):
    return [(" ".join(ex["tokens"]), None) for ex in examples.select(range(min(n, len(examples))))]


TASK = Task(
    name="token-classification",
    source="your tagged files (--data-dir: train + validation/dev/test JSONL with tokens,tags, or CoNLL text)",
    auto_class=AUTO_CLASS,
    export_task="token-classification",
    metric="f1",
    output_names=("logits",),
    num_labels=None,
    load=load,
    train_features=train_features,
    evaluate=evaluate,
    sample_inputs=sample_inputs,
    labels=labels,
    deepsparse_task="token_classification",
)
