"""A recipe sized to the user's data within a time budget (`data.time_budget_min`, set by the
default profile of the tasks that train on the user's files).

The step time is measured here (three training steps of the model on the data's own examples),
then: the profile's epochs (teacher 2, prune 3; a prune step costs ~1.3 teacher steps: the KD
teacher's forward) fit the data when they fit the budget; a larger data set is sampled down to
what fits; a smaller one gets more epochs (up to 3x, so pruning still has some hundred steps),
the pruning schedule (start, end, interval, in epochs) scaled with them. What it chose is
printed and kept in the recipe (run dir `recipe.json`); a resumed run reuses it, and the measured
rate is kept per machine beside the run dirs (`_fit/`), so runs of the same data size alike.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..files import read_json
from ..progress import log

KD_COST = 1.3  # a prune step over a teacher step (the teacher's forward pass for KD)
TRAINING_SHARE = 0.8  # of the budget: the rest is evaluation, export, bench
MAX_EPOCH_SCALE = 3.0
MIN_EXAMPLES = 200


def step_rate(recipe, task, train, labels) -> float:
    """Training examples per second of this model on this machine (forward, backward, AdamW)."""
    import torch

    from ..model.inference import collate
    from ..model.load import load_model, load_tokenizer, resolve_model
    from .loop import autocast

    model_dir = resolve_model(recipe.model)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, task.auto_class, task.num_labels, recipe.attention_dropout, labels=labels)
    batch_size = recipe.teacher.batch_size
    sample = train.select(range(min(len(train), batch_size * 2)))
    features = task.train_features(tokenizer, sample, recipe.data)
    rows = [features[i % len(features)] for i in range(batch_size)]
    batch = collate(tokenizer)(rows)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with autocast(recipe.precision):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return batch_size / min(times[1:])


def data_digest(train, batch_size: int) -> str:
    """What the step rate depends on in the data: the examples `step_rate` times (their lengths)."""
    from ..files import sha256_json

    return sha256_json([dict(r) for r in train.select(range(min(len(train), batch_size * 2)))])[:16]


def cached_rate(recipe, run_dir: Path, measure, data: str = "") -> float:
    """The step rate measured once per model, length, batch, precision, CPU and data (`data`:
    `data_digest` of the examples timed), kept beside the run dirs (`<runs>/_fit/`): runs of the
    same data on this machine get the same sizes, and so share their teacher (cached by its recipe);
    other data, with other lengths, is measured again."""
    from ..files import sha256_json, write_json_atomic
    from ..measure.machine import cpu_label

    key = {"model": recipe.model, "task": recipe.task, "max_length": recipe.data.max_length,
           "batch_size": recipe.teacher.batch_size, "precision": recipe.precision,
           "attention_dropout": recipe.attention_dropout, "threads": recipe.threads, "cpu": cpu_label(),
           "data": data}
    path = Path(run_dir).resolve().parent / "_fit" / f"rate-{sha256_json(key)[:16]}.json"
    if path.is_file():
        try:
            return float(read_json(path)["examples_per_s"])
        except (ValueError, KeyError, TypeError):
            pass
    rate = measure()
    write_json_atomic(path, {**key, "examples_per_s": rate})
    return rate


def fit_to_data(recipe, run_dir: Path, force: bool = False):
    d = recipe.data
    if not d.time_budget_min:
        return recipe
    old = Path(run_dir) / "recipe.json"
    if old.is_file() and not force:  # resuming: the sizes chosen when the run began
        from ..recipe import Recipe, _build

        kept = _build(Recipe, read_json(old), str(old))
        if kept.data.time_budget_min == d.time_budget_min:
            log(f"fit: the sizes chosen when {run_dir} began (budget {d.time_budget_min:g} min)")
            return replace(recipe, data=kept.data, teacher=kept.teacher, prune=replace(
                recipe.prune, epochs=kept.prune.epochs, prune_start=kept.prune.prune_start,
                prune_end=kept.prune.prune_end, prune_freq=kept.prune.prune_freq))
    from ..tasks.registry import get_task

    task = get_task(recipe.task)
    train, _, info = task.load(recipe)
    labels = info.get("labels")  # a label set from the user's data (with the rows just read)
    rate = cached_rate(recipe, Path(run_dir), lambda: step_rate(recipe, task, train, labels),
                       data_digest(train, recipe.teacher.batch_size))
    n = len(train)
    t, p = recipe.teacher, recipe.prune
    passes = TRAINING_SHARE * d.time_budget_min * 60 * rate  # example-passes the budget holds
    cost = n * (t.epochs + KD_COST * p.epochs)
    scale = passes / cost
    examples, epoch_scale = n, 1.0
    if scale < 1:
        examples = min(n, max(MIN_EXAMPLES, int(n * scale) // 100 * 100))  # a floor, never "all"
    else:
        epoch_scale = min(MAX_EPOCH_SCALE, round(scale * 4) / 4)
    ep = lambda v: round(v * epoch_scale, 3)  # noqa: E731
    fitted = replace(
        recipe,
        data=replace(d, train_examples=examples if examples < n else d.train_examples),
        teacher=replace(t, epochs=ep(t.epochs)),
        prune=replace(p, epochs=ep(p.epochs), prune_start=ep(p.prune_start), prune_end=ep(p.prune_end),
                      prune_freq=ep(p.prune_freq)),
    )
    minutes = examples * (fitted.teacher.epochs + KD_COST * fitted.prune.epochs) / rate / 60
    log(f"fit: {n:,} training examples, {rate:.1f} examples/s measured here; chose {examples:,} examples, teacher "
        f"{fitted.teacher.epochs:g} epochs, prune {fitted.prune.epochs:g} epochs (a pruning step every "
        f"{fitted.prune.prune_freq:g} epochs): ~{minutes:.0f} min of training (budget {d.time_budget_min:g} min)")
    return fitted
