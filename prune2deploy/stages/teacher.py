"""Stage 1: the dense teacher, fine-tuned on the task (or given with --teacher PATH, or the
user's --model when it already has a head for the data's labels: tasks/labels.py).

It is the baseline and the KD teacher. A trained teacher is cached by the hash of what it
was built from (task, model, data, teacher config, seed) under `<runs>/_teachers/`, so every
sparsity and method of the same task/model/profile reuses it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..train import distributed as D
from ..files import hash_dir, read_json, sha256_json, write_json_atomic
from ..model.load import load_config, load_model, load_tokenizer, resolve_model
from ..progress import log
from ..tasks.labels import head_of
from ..train.loop import FitConfig, fit
from .common import StageContext, setup, train_data

NEEDS: tuple[str, ...] = ()
READS = ("task", "model", "seed", "precision", "attention_dropout", "data", "teacher")  # also the cache key
PARALLEL = True  # data parallel: every rank trains


def cache_dir(run_dir: Path, recipe) -> Path:
    d = recipe.to_dict()
    key = sha256_json({k: d[k] for k in READS})
    return run_dir.resolve().parent / "_teachers" / f"{recipe.task}-{key[:16]}"


def run(ctx: StageContext) -> dict:
    recipe, out, run_dir = ctx.recipe, ctx.out, ctx.run_dir
    task, base_model = setup(recipe)
    t = recipe.teacher
    labels = task.labels(recipe) if task.labels else None  # a label set from the user's data
    own_head = labels is not None and not t.path and head_of(recipe, task.auto_class) is not None
    if t.path or own_head:
        model_dir = resolve_model(t.path or recipe.model)
        load_config(model_dir)
        load_model(model_dir, task.auto_class, task.num_labels)  # fails early on a bad dir
        given = "--teacher" if t.path else "--model (its own head for these labels)"
        if own_head:
            log(f"teacher: {model_dir} has a {task.auto_class.replace('AutoModel', '')} head for the data's "
                f"{len(labels)} labels: it is the dense teacher as it is (no teacher training)")
        write_json_atomic(out / "teacher.json", {"model_dir": model_dir, "trained": False, "given": given})
        return {"model_dir": model_dir, "trained": False, "given": given, "labels": labels,
                "_external": {model_dir: hash_dir(model_dir)}}

    cache = cache_dir(run_dir, recipe)
    meta = cache / "teacher.json"
    info = read_json(meta) if meta.is_file() else {}
    # rank 0's view of the cache decides for every rank (one rank reusing while another trains hangs both)
    if D.decide(bool(info) and hash_dir(cache / "model") == info.get("files"), "teacher: reuse the cache"):
        info = info or read_json(meta)  # a rank that looked before rank 0's write finished
        log(f"[dim]teacher: reusing cached {cache}[/dim]")
        write_json_atomic(out / "teacher.json", info)
        return {
            **info["result"],
            "model_dir": str(cache / "model"),
            "cached": True,
            "_external": {str(cache / "model"): info["files"]},
        }
    D.barrier()  # several processes: every rank has looked at the cache before rank 0 replaces it

    tokenizer = load_tokenizer(base_model)
    model = load_model(base_model, task.auto_class, task.num_labels, recipe.attention_dropout, labels=labels)
    features, _, data_info = train_data(recipe, task, tokenizer)
    steps_per_epoch = max(1, len(features) // t.batch_size)
    total = max(1, round(t.epochs * steps_per_epoch))
    warm = round(t.warmup_ratio * total)

    def lr_at(step: int) -> float:
        if step < warm:
            return t.lr * (step + 1) / warm
        return t.lr + (t.lr_min - t.lr) * (step - warm) / max(1, total - warm)

    ckpt = cache.with_name(cache.name + ".ckpt.pt")
    cfg = FitConfig(
        total_steps=total,
        batch_size=t.batch_size,
        lr_at=lr_at,
        weight_decay=t.weight_decay,
        precision=recipe.precision,
        seed=recipe.seed,
        description="teacher",
        group_by_length=recipe.data.group_by_length,
        checkpoint=ckpt,
        checkpoint_every=recipe.checkpoint_every,
        checkpoint_tag=cache.name,
    )
    train_log = fit(model, features, tokenizer, cfg)
    result = {
        "base_model": base_model,
        "trained": True,
        "steps": total,
        "steps_per_epoch": steps_per_epoch,
        "data": data_info,
        "final_loss": train_log["losses"][-1]["loss"] if train_log["losses"] else None,
        "labels": labels,
    }
    if D.is_main():  # one writer of the shared cache
        tmp = cache.with_name(cache.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        info = {"model_dir": str(cache / "model"), "result": result, "files": hash_dir(tmp / "model")}
        write_json_atomic(tmp / "teacher.json", info)
        write_json_atomic(tmp / "train_log.json", train_log)
        if cache.exists():
            shutil.rmtree(cache)
        tmp.rename(cache)
        ckpt.unlink(missing_ok=True)
    D.barrier()
    info = read_json(meta)
    write_json_atomic(out / "teacher.json", info)
    return {
        **result,
        "model_dir": str(cache / "model"),
        "cached": False,
        "_external": {str(cache / "model"): info["files"]},
    }
