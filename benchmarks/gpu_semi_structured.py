"""The GPU payoff of 2:4 (semi-structured) sparsity: dense fp16 vs 2:4 on sparse tensor cores.

Random-weight BERT shapes (MiniLM-L6: 6 x 384; BERT-base: 12 x 768), every encoder Linear
pruned 2:4 by magnitude with p2d's own masks (`masks.nm_masks`, checked by `check_pattern`;
embeddings and head dense), in fp16 on CUDA. Each model is timed three ways at fixed shapes:
dense fp16 (cuBLAS), and the same weights as `torch.sparse.to_sparse_semi_structured`
tensors on the cuSPARSELt and on the CUTLASS backend. The sparse models' logits are compared
with the dense-masked model's (the same function, so they must agree to fp16 rounding). Also
timed: the Linears alone (one layer's four matmuls at the model's token count), to show the
share of time the pattern can touch. Needs a GPU with sparse tensor cores (Ampere or newer):
one line and exit 2 otherwise.

    python benchmarks/gpu_semi_structured.py --out benchmarks/results/gpu_semi_structured
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from prune2deploy.pruning import masks as M

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_payoff import SHAPES  # noqa: E402  (the benchmarks' one table of shapes)

BACKENDS = ("dense", "cusparselt", "cutlass")


def build(shape: str):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**SHAPES[shape]))
    mods = M.prunable_modules(model)
    scores = {n: m.weight.detach().abs() for n, m in mods.items()}
    current = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    masks = M.nm_masks(scores, current, 2, 4)
    M.check_pattern(masks, 2, 4)
    with torch.no_grad():
        for n, m in mods.items():
            m.weight.mul_(masks[n])
    return model.half().cuda().eval(), list(mods)


def to_semi_structured(model, names: list[str], backend: str):
    """A copy of `model` whose pruned Linears hold 2:4 compressed weights on `backend`."""
    import copy

    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    sparse = copy.deepcopy(model)
    mods = dict(sparse.named_modules())
    for n in names:
        lin = mods[n]
        lin.weight = torch.nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
    return sparse, type(mods[names[0]].weight).__name__


def time_ms(fn, iters: int) -> dict:
    """p50/mean of `iters` CUDA-event timings after warm-up."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return {"p50_ms": round(ts[len(ts) // 2], 4), "mean_ms": round(sum(ts) / len(ts), 4), "iters": iters}


def linear_only(shape: str, tokens: int, iters: int) -> dict:
    """One layer's four matmul shapes (QKV, attn-out, FFN-in, FFN-out) at `tokens` rows."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    h, i = SHAPES[shape]["hidden_size"], SHAPES[shape]["intermediate_size"]
    out = {}
    for name, (n_out, k) in {"qkv": (3 * h, h), "attn_out": (h, h), "ffn_in": (i, h), "ffn_out": (h, i)}.items():
        w = torch.randn(n_out, k, device="cuda", dtype=torch.float16)
        mask = M.nm_masks({"w": w.abs()}, {"w": torch.ones_like(w, dtype=torch.bool)}, 2, 4)["w"]
        w = w * mask
        x = torch.randn(tokens, k, device="cuda", dtype=torch.float16)
        row = {"dense": time_ms(lambda: torch.nn.functional.linear(x, w), iters)}
        for backend in ("cusparselt", "cutlass"):
            SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
            try:  # one backend failing (CUTLASS's kernels are sm80 only) keeps the other's timing
                ws = to_sparse_semi_structured(w)
                row[backend] = time_ms(lambda: torch.nn.functional.linear(x, ws), iters)
            except Exception as e:
                row[backend] = {"error": str(e).splitlines()[0]}
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="minilm,bert-base")
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_semi_structured"))
    a = ap.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        print("gpu_semi_structured: needs a CUDA GPU with sparse tensor cores (Ampere or newer)", file=sys.stderr)
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu = {"name": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        gpu["cusparselt"] = torch.backends.cusparselt.version()
    except Exception as e:  # older torch or no cuSPARSELt build
        gpu["cusparselt"] = f"unavailable: {e}"
    rows = []
    for shape in a.shapes.split(","):
        model, names = build(shape)
        variants = {"dense-fp16": (model, "Tensor")}
        for backend in ("cusparselt", "cutlass"):
            try:
                variants[f"2:4-fp16-{backend}"] = to_semi_structured(model, names, backend)
            except Exception as e:  # say which backend cannot run here, keep the others
                rows.append({"shape": shape, "variant": f"2:4-fp16-{backend}", "error": str(e).splitlines()[0]})
        for b in map(int, a.batch_sizes.split(",")):
            ids = torch.randint(1000, 2000, (b, a.seq_len), device="cuda")
            mask = torch.ones_like(ids)
            with torch.inference_mode():
                ref = model(input_ids=ids, attention_mask=mask).start_logits.float()
                dense_p50 = None
                for label, (m, wtype) in variants.items():
                    try:
                        got = m(input_ids=ids, attention_mask=mask).start_logits.float()
                        t = time_ms(lambda: m(input_ids=ids, attention_mask=mask), a.iters)
                    except Exception as e:  # a backend that cannot run this shape: a row saying so
                        rows.append({"shape": shape, "variant": label, "batch": b, "error": str(e).splitlines()[0]})
                        print(json.dumps(rows[-1]), flush=True)
                        continue
                    dense_p50 = dense_p50 or t["p50_ms"]
                    row = {"shape": shape, "variant": label, "weight_type": wtype, "batch": b, "seq": a.seq_len, **t,
                           "max_abs_diff_vs_dense_masked": round(float((got - ref).abs().max()), 5),
                           "speedup_vs_dense": round(dense_p50 / t["p50_ms"], 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        for tokens in (128, 128 * 16, 128 * 64):
            try:
                lin = linear_only(shape, tokens, a.iters)
            except Exception as e:  # say so, keep the model rows
                rows.append({"shape": shape, "variant": "linears-only-error", "error": str(e).splitlines()[0]})
                continue
            rows.append({"shape": shape, "variant": "linears-only", "tokens": tokens, "per_matmul": lin})
            print(json.dumps(rows[-1]), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    lines = [f"# 2:4 on GPU: {gpu['name']}, torch {gpu['torch']}, CUDA {gpu['cuda']}, cuSPARSELt {gpu['cusparselt']}",
             "", "| shape | variant | batch x seq | p50 ms | vs dense fp16 | max abs diff |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "p50_ms" in r:
            lines.append(f"| {r['shape']} | {r['variant']} | {r['batch']}x{r['seq']} | {r['p50_ms']:.3f} | "
                         f"{r['speedup_vs_dense']:.2f}x | {r['max_abs_diff_vs_dense_masked']:.4f} |")
        elif "error" in r:
            lines.append(f"| {r['shape']} | {r['variant']} | - | error: {r['error'][:80]} | | |")
    lines += ["", "Linears alone (one layer's matmuls; p50 ms dense / cuSPARSELt / CUTLASS):", "",
              "| shape | tokens | matmul | dense | cuSPARSELt | CUTLASS |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["variant"] == "linears-only":
            for mm, t in r["per_matmul"].items():
                ms = [f"{t[k]['p50_ms']:.4f}" if "p50_ms" in t[k] else "error" for k in BACKENDS]
                lines.append(f"| {r['shape']} | {r['tokens']} | {mm} | " + " | ".join(ms) + " |")
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
