"""What several stages do alike: resolve the model, load task data and features."""

from __future__ import annotations

from pathlib import Path

from ..models import load_tokenizer, resolve_model
from ..tasks.registry import get_task
from ..training import seed_everything, set_threads


def setup(recipe):
    """Seed, threads, task, resolved model id and tokenizer."""
    seed_everything(recipe.seed)
    set_threads(recipe.threads)
    task = get_task(recipe.task)
    model_id = resolve_model(recipe.model)
    return task, model_id


def train_data(recipe, task, tokenizer):
    train, dev, info = task.load(recipe)
    features = task.train_features(tokenizer, train, recipe.data)
    info = dict(info, train_features=len(features))
    return features, dev, info


def checkpoint_path(run_dir: Path, stage: str) -> Path:
    """Where a long stage keeps its resumable state (outside the stage's temp dir)."""
    return run_dir / ".checkpoints" / f"{stage}.pt"
