"""Driven by test_distributed.py, under `torchrun --nproc_per_node N` or as one process:
fine-tunes a tiny BERT with KD and pruning events (GMP or oBERT) through `training.fit` and
saves this rank's final masks and weights to OUT/rank<r>.safetensors.

    python ddp_worker.py OUT METHOD TOTAL_STEPS [STOP_AT] [CHECKPOINT]
STOP_AT > 0 interrupts the run at that step (after the checkpoint of an earlier step).
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("P2D_QUIET", "1")


def main(out: Path, method: str, total: int, stop_at: int = 0, ckpt: str = "") -> None:
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertForSequenceClassification

    from conftest import tiny_config
    from prune2deploy.train import distributed as D
    from prune2deploy.model.load import resolve_model
    from prune2deploy.pruning import gmp, obert
    from prune2deploy.pruning import masks as M
    from prune2deploy.train.loop import FitConfig, fit, gradient_stream

    torch.set_num_threads(1)
    cfg_kw = dict(num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(1)
    teacher = BertForSequenceClassification(tiny_config(**cfg_kw)).eval()
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(**cfg_kw))
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(6, 20, (64,), generator=g).tolist()
    ids = [[101] + torch.randint(2000, 5000, (n,), generator=g).tolist() + [102] for n in lengths]
    features = Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": [int(x[1] % 2) for x in ids]}
    )

    modules = M.prunable_modules(model)
    M.attach_masks(modules)
    ctx = {
        "obert": {"block_size": 16, "num_grads": 8, "damp": 1e-4},
        "rank": D.rank(),
        "sum_across_ranks": D.sum_ if D.active() else None,
        "gradients": gradient_stream(
            model,
            features,
            tok,
            modules,
            8,
            4,
            teacher=teacher,
            precision="fp32",
            seed=0,
            rank=D.rank(),
            world=D.world_size(),
        ),
    }
    step_fn = gmp.prune_step if method == "gmp" else obert.prune_step

    def prune_fn(mods, sparsity):
        step_fn(mods, sparsity, "global", ctx)

    def lr_at(step: int) -> float:
        if stop_at and step == stop_at:
            raise SystemExit(3)  # an interruption after the checkpoint
        return 1e-3

    cfg = FitConfig(
        total_steps=total,
        batch_size=8,
        lr_at=lr_at,
        precision="fp32",
        seed=0,
        prune_events={1: 0.5, 4: 0.7},
        checkpoint=Path(ckpt) if ckpt else None,
        checkpoint_every=3 if ckpt else 0,
        checkpoint_tag="t",
    )
    fit(model, features, tok, cfg, teacher=teacher, modules=modules, prune_fn=prune_fn)
    tensors = {f"mask.{k}": v.to(torch.uint8) for k, v in M.get_masks(modules).items()}
    tensors.update({f"weight.{n}": p.detach().clone() for n, p in model.named_parameters()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / f"rank{D.rank()}.safetensors"))


def together(out: Path) -> None:
    """Rank 1 fails inside `D.together`; rank 0 must stop with OtherRankFailed, not hang."""
    from prune2deploy.train import distributed as D
    from prune2deploy.errors import OtherRankFailed

    out.mkdir(parents=True, exist_ok=True)
    try:
        with D.together("stage 'x'"):
            if D.rank() == 1:
                raise ValueError("boom on rank 1")
    except (OtherRankFailed, ValueError) as e:
        (out / f"rank{D.rank()}.txt").write_text(f"{type(e).__name__}: {e}")


def out_of_step(out: Path) -> None:
    """The ranks reach agreements of different blocks (the old mis-pairing): both must raise
    OutOfStep, not pair one block's agreement with the other's."""
    from prune2deploy.train import distributed as D

    out.mkdir(parents=True, exist_ok=True)
    try:
        with D.together("stage 'quantize'" if D.rank() == 0 else "stage 'bench'"):
            pass
        (out / f"rank{D.rank()}.txt").write_text("paired")
    except D.OutOfStep as e:
        (out / f"rank{D.rank()}.txt").write_text(f"OutOfStep: {e}")


def decide(out: Path) -> None:
    """Rank 0's view decides for all (rank 1 would have skipped); `local()` issues no collective."""
    from prune2deploy.train import distributed as D

    out.mkdir(parents=True, exist_ok=True)
    got = D.decide(D.rank() == 1, "run or skip stage 'quantize'")  # rank 1 alone sees a record
    lines = [f"decided {got}"]
    if D.rank() == 0:
        with D.local():  # rank 1 is not there: a collective here would hang or mis-pair
            lines.append(f"local world {D.world_size()} active {D.active()} mean {D.mean(3.0)}")
    lines.append(f"after world {D.world_size()}")
    D.barrier()
    (out / f"rank{D.rank()}.txt").write_text("; ".join(lines))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[1] in ("together", "out_of_step", "decide"):
        {"together": together, "out_of_step": out_of_step, "decide": decide}[a[1]](Path(a[0]))
        sys.exit(0)
    main(Path(a[0]), a[1], int(a[2]), int(a[3]) if len(a) > 3 else 0, a[4] if len(a) > 4 else "")
