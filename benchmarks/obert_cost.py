"""Cost of one oBERT pruning step (Fisher collection + saliency + OBS update) vs one GMP step.

Random-weight models of two shapes (MiniLM-L6: 6 x 384; BERT-base: 12 x 768), batch of
gradients from random token ids at seq 128. Reports seconds and peak RSS; the amortised
overhead over a run is (oBERT step time - GMP step time) * pruning events / training time.

    .venv/bin/python benchmarks/obert_cost.py [--grads 64] [--block 50] [--shapes minilm,bert-base]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from prune2deploy.pruning import gmp, obert
from prune2deploy.pruning import masks as M

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_payoff import SHAPES  # noqa: E402  (the benchmarks' one table of shapes)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grads", type=int, default=64)
    ap.add_argument("--grad-batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--shapes", default="minilm,bert-base")
    ap.add_argument("--chunk-mb", type=int, default=4096)
    ap.add_argument("--out", default="benchmarks/results/obert_cost.json")
    args = ap.parse_args()
    rows = []
    for shape in args.shapes.split(","):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(num_labels=2, **SHAPES[shape]))
        mods = M.prunable_modules(model)
        M.attach_masks(mods)
        n_params = sum(m.weight.numel() for m in mods.values())

        t = time.perf_counter()
        gmp.prune_step(mods, 0.5, "global")
        gmp_s = time.perf_counter() - t

        def gradients(names, model=model, mods=mods):
            gen = torch.Generator().manual_seed(1)
            for _ in range(args.grads):
                ids = torch.randint(1000, 20000, (args.grad_batch, args.seq), generator=gen)
                model.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(input_ids=ids, labels=torch.zeros(args.grad_batch, dtype=torch.long))
                out.loss.backward()
                yield {n: mods[n].weight.grad.float() for n in names}

        t = time.perf_counter()
        for _ in gradients(list(mods)[:1]):
            pass
        grads_only_s = time.perf_counter() - t

        ctx = {
            "obert": {
                "block_size": args.block,
                "num_grads": args.grads,
                "damp": 1e-7,
                "chunk_bytes": args.chunk_mb << 20,
            },
            "gradients": gradients,
        }
        t = time.perf_counter()
        obert.prune_step(mods, 0.7, "global", ctx)
        obert_s = time.perf_counter() - t

        # one training step at the same shape (batch 16), for the amortised overhead
        ids = torch.randint(1000, 20000, (16, args.seq))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for _ in range(2):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=torch.zeros(16, dtype=torch.long)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            step_s = time.perf_counter() - t
        fisher_gb = (n_params + args.block * len(mods)) * args.block * 4 / 2**30
        row = {
            "shape": shape,
            "prunable_params": n_params,
            "grads": args.grads,
            "grad_batch": args.grad_batch,
            "block": args.block,
            "seq": args.seq,
            "gmp_step_s": round(gmp_s, 3),
            "obert_step_s": round(obert_s, 2),
            "of_which_gradients_s": round(grads_only_s, 2),
            "train_step_s": round(step_s, 3),
            "fisher_inverse_gib": round(fisher_gb, 2),
            "peak_rss_mb": round(peak_rss_mb()),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model, mods, opt
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
