"""Tasks registered by name. A new task is one file defining a `Task` and one line here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..measure.timing import fixed_inputs
from ..errors import UserError


@dataclass(frozen=True)
class Task:
    name: str
    source: str  # where the data comes from, for `p2d tasks` and the report
    auto_class: str  # transformers AutoModel class
    export_task: str  # optimum's task name
    metric: str  # the primary metric key
    output_names: tuple[str, ...]
    num_labels: int | None
    # load(recipe) -> (train examples, eval examples, info dict), each a datasets.Dataset
    load: Callable[[Any], tuple[Any, Any, dict]]
    # train_features(tokenizer, examples, data_cfg) -> datasets.Dataset of model inputs + labels
    train_features: Callable[..., Any]
    # evaluate(model, tokenizer, examples, data_cfg, batch_size, progress) -> (metrics, predictions)
    evaluate: Callable[..., tuple[dict, Any]]
    # sample_inputs(examples, n) -> a list of (text, text_pair|None) for parity checks and bench
    sample_inputs: Callable[..., list[tuple]]
    max_length: int = 128  # the default sequence length its pipelines use (the recipe sets it)
    # encode(tokenizer, samples, batch_size, seq_len) -> fixed-shape model inputs: what export,
    # bench and package feed the graph. (batch, seq) by default; multiple choice is 3-D.
    encode: Callable[..., dict] = fixed_inputs
    # the DeepSparse server pipeline that serves it (`p2d package --format triton`); None: none
    # fits, and the package says so instead of writing a config that would mis-serve it
    deepsparse_task: str | None = "text_classification"
    # labels(recipe) -> the label names in id order, for tasks whose label set comes from the
    # user's data (num_labels None): the teacher's head is made with them (config id2label)
    labels: Callable[[Any], list[str]] | None = None


def _tasks() -> dict[str, Task]:
    from . import bbc_news, classification, commonsense_qa, glue, squad, text_classification, token_classification

    return {
        "squad": squad.TASK,
        "rotten_tomatoes": classification.ROTTEN_TOMATOES,
        "imdb": classification.IMDB,
        "bbc_news": bbc_news.TASK,
        **glue.TASKS,  # sst2, mnli, qqp, qnli, mrpc, rte
        "commonsense_qa": commonsense_qa.TASK,
        # the user's own files (--data-dir): any label set, any SQuAD-format JSON pair
        "text-classification": text_classification.TASK,
        "token-classification": token_classification.TASK,
        "question-answering": squad.USER_TASK,
    }


def task_names() -> list[str]:
    return list(_tasks())


def get_task(name: str) -> Task:
    tasks = _tasks()
    if name not in tasks:
        raise UserError(f"unknown task '{name}' (known: {', '.join(tasks)})")
    return tasks[name]
