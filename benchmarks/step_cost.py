"""What one training step costs on this CPU, and which budget levers pay (issue 13's step cost).

The embedded MiniLM-L6 with a QA head, random token ids at SQuAD-like lengths (batches of 8 at
144-256 tokens, as length-grouped prune batches are), fp32, `--threads` threads:
- a train step (forward + backward + AdamW) eager vs `torch.compile(dynamic=True)`;
- AdamW over the model's 22.7M parameters: the default (foreach) step vs `fused=True`;
- the teacher's forward pass (no grad): what reusing its outputs in later epochs saves.
Writes `--out` (JSON, with the CPU named).

    .venv/bin/python benchmarks/step_cost.py --out benchmarks/results/step_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prune2deploy.measure.machine import cpu_label  # noqa: E402
from prune2deploy.model.load import load_model, resolve_model  # noqa: E402

LENGTHS = [192, 176, 224, 160, 208, 256, 144, 200, 184, 232, 168, 216]
BATCH = 8


def model():
    torch.manual_seed(0)
    return load_model(resolve_model("minilm-l6"), "AutoModelForQuestionAnswering", None, 0.0)


def batch(length: int) -> dict:
    ids = torch.randint(1000, 20000, (BATCH, length))
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "start_positions": torch.randint(0, length, (BATCH,)),
        "end_positions": torch.randint(0, length, (BATCH,)),
    }


def train_steps(compiled: bool, fused: bool) -> dict:
    m = model().train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=fused)
    f = torch.compile(m, dynamic=True) if compiled else m

    def step(length):
        f(**batch(length)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step(200)
    first = time.perf_counter() - t0
    for n in LENGTHS[:3]:
        step(n)
    t0 = time.perf_counter()
    for n in LENGTHS:
        step(n)
    return {"first_step_s": round(first, 2), "s_per_step": round((time.perf_counter() - t0) / len(LENGTHS), 3)}


def optimizer_step(fused: bool) -> float:
    params = [p for p in model().parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-5, fused=fused)
    for _ in range(3):
        opt.step()
    t0 = time.perf_counter()
    for _ in range(10):
        opt.step()
    return round((time.perf_counter() - t0) / 10 * 1000, 1)


@torch.no_grad()
def teacher_forward() -> float:
    m = model().eval()
    for n in LENGTHS[:3]:
        m(**{k: v for k, v in batch(n).items() if "positions" not in k})
    t0 = time.perf_counter()
    for n in LENGTHS:
        m(**{k: v for k, v in batch(n).items() if "positions" not in k})
    return round((time.perf_counter() - t0) / len(LENGTHS), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/step_cost.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = sum(p.numel() for p in model().parameters())
    result = {
        "cpu": cpu_label(),
        "threads": args.threads,
        "torch": torch.__version__,
        "model": f"MiniLM-L6 QA head, {params / 1e6:.1f}M parameters, fp32, batch {BATCH}, lengths {LENGTHS}",
        "adamw_step_ms": {"foreach": optimizer_step(False), "fused": optimizer_step(True)},
        "teacher_forward_s": teacher_forward(),
        "train_step": {
            "eager_foreach": train_steps(False, False),
            "eager_fused": train_steps(False, True),
            "compiled_fused": train_steps(True, True),
        },
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
