"""What several stages do alike: resolve the model, load task data and features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..files import inside
from ..model.load import load_model, resolve_model
from ..tasks.registry import get_task
from ..train.loop import seed_everything, set_threads


@dataclass(frozen=True)
class StageContext:
    """What the runner hands a stage: the recipe, the folder to write (renamed into place when
    the stage finished), the run dir, the upstream records it declared in NEEDS, and its key."""

    recipe: object
    out: Path
    run_dir: Path
    upstream: dict
    key: str

    def result(self, stage: str) -> dict:
        """An upstream stage's recorded result (only stages named in NEEDS are here)."""
        return self.upstream[stage]["result"]

    def path(self, stage: str, field: str) -> Path:
        """A path an upstream record names (relative to the run dir; never outside it)."""
        return inside(self.run_dir, self.result(stage)[field], f"{stage} record {field}")


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


def load_teacher(ctx: StageContext, task):
    """The teacher stage's model, frozen (a KD teacher and a baseline, never trained here)."""
    teacher = load_model(ctx.result("teacher")["model_dir"], task.auto_class, task.num_labels)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def prune_masks(ctx: StageContext) -> dict:
    """The prune stage's masks (its record may not point outside the run dir)."""
    from ..pruning import masks as M

    return M.load_masks(ctx.path("prune", "masks"))


def checkpoint_path(run_dir: Path, stage: str) -> Path:
    """Where a long stage keeps its resumable state (outside the stage's temp dir)."""
    return run_dir / ".checkpoints" / f"{stage}.pt"


def checkpoint_files(run_dir: Path, stage: str) -> Path:
    """A long stage's resumable files beside its checkpoint (removed with it when the stage is recorded)."""
    return run_dir / ".checkpoints" / f"{stage}-files"


def inputs_cache(task, tokenizer, samples):
    """`inputs_for(batch, seq)`: the real task samples encoded at that shape, once per shape
    (the same inputs for every model and runtime)."""
    cache: dict = {}

    def inputs_for(b, s):
        if (b, s) not in cache:
            cache[(b, s)] = task.encode(tokenizer, samples, b, s)
        return cache[(b, s)]

    return inputs_for
