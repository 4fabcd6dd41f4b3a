"""`p2d report RUN_DIR... --out report.html`: one self-contained page over many runs.

Charts (PNGs beside the page, also inlined as data URIs so the page travels alone):
metric vs sparsity per method, latency vs sparsity per runtime, and the accuracy-latency
Pareto front (dense points included); then the tables behind them.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..errors import UserError
from ..files import read_json
from ..pruning.family import member_of_label
from .summary import BENCH_COLUMNS, _main_name, row_accuracy


def load_runs(run_dirs: list[Path]) -> list[dict]:
    runs = []
    for d in run_dirs:
        d = Path(d)
        path = d / "report.json"
        if not path.is_file():
            raise UserError(f"{d}: no report.json (not a finished p2d run dir); run `p2d run` first")
        try:
            rep = read_json(path)
        except ValueError:
            raise UserError(f"{path}: not valid JSON") from None
        if not isinstance(rep, dict) or "task" not in rep:
            raise UserError(f"{path}: not a p2d report")
        rep["run_dir"] = str(d)
        runs.append(rep)
    if not runs:
        raise UserError("give at least one run dir")
    return runs


def _point(r: dict) -> dict:
    m = r.get("metric")
    return {
        "task": r["task"],
        "method": r["method"],
        "target": r["target_sparsity"],
        "sparsity": (r.get("sparsity") or {}).get("encoder"),
        "metric": m,
        "dense": (r["metrics"]["dense"] or {}).get(m),
        "sparse": (r["metrics"]["sparse"] or {}).get(m),
        "run_dir": r["run_dir"],
        "structured": bool(r.get("target_speedup")),
        "speedup": r.get("target_speedup"),
        "verdict": (r.get("verdict") or {}).get("line"),
    }


def points(runs: list[dict]) -> list[dict]:
    """One row per run: task, method, sparsity, dense/sparse metric."""
    return sorted(map(_point, runs), key=lambda p: (p["task"], p["method"], p["target"]))


def latency_rows(runs: list[dict]) -> list[dict]:
    """Bench rows (timed ones only) tagged with their run's task, method, sparsity and metric."""
    out = []
    for r in runs:
        p = _point(r)
        for b in r.get("bench") or []:
            if "p50_ms" not in b:
                continue
            dense = b["model"].startswith("dense")
            # what the row runs scored: on its runtime where the bench scored it (INT8, bf16), else its
            # graph's (the quantize stage's for every INT8 layout, MatMulInteger included)
            value = row_accuracy(r, b)[0]
            out.append(
                {
                    **b,
                    "task": p["task"],
                    "method": p["method"],
                    "sparsity": 0.0 if dense else (p["sparsity"] or p["target"]),
                    "structured": p["structured"] and not dense,
                    "metric_value": value,
                    "metric": p["metric"],
                    # a --speedup family's member by name (the last rung's bench label is "sparse")
                    "member": member_of_label(b["model"]) or (_main_name(r) if b["model"] == "sparse" else None),
                }
            )
    return out


def pareto(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (lower latency x, higher metric y), sorted by latency."""
    front, best = [], float("-inf")
    for x, y in sorted(pts, key=lambda t: (t[0], -t[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_metric(pts: list[dict], path: Path) -> None:
    plt = _plt()
    tasks = sorted({p["task"] for p in pts})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        tp = [p for p in pts if p["task"] == task and p["sparse"] is not None and not p["structured"]]
        for method in sorted({p["method"] for p in tp}):
            mp = sorted((p for p in tp if p["method"] == method), key=lambda p: p["target"])
            ax.plot([p["sparsity"] or p["target"] for p in mp], [p["sparse"] for p in mp], "o-", label=method)
        dense = [p["dense"] for p in tp if p["dense"] is not None]
        if dense:
            ax.axhline(sum(dense) / len(dense), color="gray", ls="--", label="dense")
        ax.set_xlim(0, 1)
        ax.set_xlabel("encoder sparsity")
        ax.set_ylabel(tp[0]["metric"] if tp else "metric")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pick_shape(rows: list[dict]) -> tuple[int, int] | None:
    shapes = sorted({(r["batch_size"], r["seq_len"]) for r in rows})
    return shapes[0] if shapes else None


def chart_latency(rows: list[dict], path: Path) -> tuple[int, int] | None:
    plt = _plt()
    shape = _pick_shape(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if shape:
        sel = [r for r in rows if (r["batch_size"], r["seq_len"]) == shape and not r.get("structured")]
        for rt in sorted({(r["runtime"], r.get("precision", "")) for r in sel}):
            pts = {}
            for r in sel:
                if (r["runtime"], r.get("precision", "")) == rt:
                    pts.setdefault(round(r["sparsity"], 4), []).append(r["p50_ms"])
            xs = sorted(pts)
            ax.plot(xs, [min(pts[x]) for x in xs], "o-", label=f"{rt[0]} ({rt[1]})")
        ax.set_title(f"p50 latency, batch {shape[0]}, seq {shape[1]}")
    ax.set_xlim(-0.02, 1)
    ax.set_xlabel("encoder sparsity")
    ax.set_ylabel("p50 ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return shape


def chart_pareto(rows: list[dict], path: Path) -> list[tuple[float, float]]:
    plt = _plt()
    shape = _pick_shape(rows)
    sel = [r for r in rows if shape and (r["batch_size"], r["seq_len"]) == shape and r["metric_value"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    pruned = [r for r in sel if not r["model"].startswith("dense")]
    for label, rs, marker in (
        ("dense", [r for r in sel if r["model"].startswith("dense")], "s"),
        ("structured (--speedup): smaller dense model", [r for r in pruned if r.get("structured")], "^"),
        ("unstructured (--sparsity)", [r for r in pruned if not r.get("structured") and r["runtime"] != "deepsparse"],
         "o"),
        ("unstructured on DeepSparse (evaluation licence)", [r for r in pruned if r["runtime"] == "deepsparse"], "x"),
    ):
        if not rs:
            continue
        ax.scatter([r["p50_ms"] for r in rs], [r["metric_value"] for r in rs], marker=marker, label=label, alpha=0.7)
    for r in sel:  # a family's members, by name
        if r.get("member"):
            ax.annotate(r["member"], (r["p50_ms"], r["metric_value"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    front = pareto([(r["p50_ms"], r["metric_value"]) for r in sel])
    if front:
        ax.plot(
            [x for x, _ in front],
            [y for _, y in front],
            "k--",
            lw=1,
            marker="o",
            ms=11,
            mfc="none",
            label="Pareto front",
        )
    ax.set_xlabel(f"p50 ms (batch {shape[0]}, seq {shape[1]})" if shape else "p50 ms")
    ax.set_ylabel(sel[0]["metric"] if sel else "metric")
    ax.set_title("accuracy vs latency (every runtime, every run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return front


def _table(headers: list[str], rows: list[list]) -> str:
    fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}
img{{max-width:100%;display:block;margin:1em 0}}</style>
</head><body>
<h1>{title}</h1>
<p>{n} run(s). Charts are also saved as PNGs beside this page.</p>
{figures}
<h2>Runs</h2>
{runs_table}
<h2>Latency</h2>
{bench_table}
<script>
window.addEventListener("load", function () {{
  var imgs = document.querySelectorAll("img.chart"), ok = 0;
  imgs.forEach(function (i) {{ if (i.complete && i.naturalWidth > 0) ok++; }});
  document.body.setAttribute("data-charts-rendered", ok + "/" + imgs.length);
}});
</script>
</body></html>
"""


def write_report(run_dirs: list[Path], out: Path) -> dict:
    runs = load_runs(run_dirs)
    pts, rows = points(runs), latency_rows(runs)
    out = Path(out)
    if out.suffix != ".html":
        raise UserError(f"--out must end in .html, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    charts = {"metric_vs_sparsity": ("Metric vs sparsity, per method", chart_metric, pts),
              "latency_vs_sparsity": ("Latency vs sparsity, per runtime", chart_latency, rows),
              "pareto": ("Accuracy-latency Pareto front", chart_pareto, rows)}
    figures, files, front = [], [], []
    for name, (title, fn, data) in charts.items():
        png = Path(f"{stem}-{name}.png")
        tmp = png.with_name(f".{png.name}.tmp.png")
        res = fn(data, tmp)
        tmp.replace(png)
        if name == "pareto":
            front = res
        files.append(str(png))
        b64 = base64.b64encode(png.read_bytes()).decode()
        figures.append(
            f'<h2>{html.escape(title)}</h2>\n<img class="chart" id="{name}" alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'  # noqa: E501 - one message/literal
        )
    runs_table = _table(
        ["task", "method", "target", "encoder sparsity", "metric", "dense", "pruned", "retained", "run dir", "verdict"],
        [
            [
                p["task"],
                p["method"],
                f"{p['speedup']:g}x structured" if p["structured"] else p["target"],
                p["sparsity"],
                p["metric"],
                p["dense"],
                p["sparse"],
                (p["sparse"] / p["dense"]) if p["dense"] and p["sparse"] is not None else None,
                p["run_dir"],
                p["verdict"],
            ]
            for p in pts
        ],
    )
    bench_table = _table(
        ["task", "method", "sparsity", *(header for header, _, _ in BENCH_COLUMNS)],
        [[r["task"], r["method"], r["sparsity"], *(r.get(key) for _, key, _ in BENCH_COLUMNS)] for r in rows],
    )
    title = "prune2deploy report: " + ", ".join(sorted({p["task"] for p in pts}))
    page = PAGE.format(
        title=html.escape(title),
        n=len(runs),
        figures="\n".join(figures),
        runs_table=runs_table,
        bench_table=bench_table,
    )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return {"html": str(out), "pngs": files, "runs": len(runs), "pareto": front}
